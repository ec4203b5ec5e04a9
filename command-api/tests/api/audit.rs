//! `/v1/audit`: search scoping and pagination, cross-tenant reads recorded,
//! proofs that verify against the signed checkpoint, and ledger verification.

use crate::helpers::*;
use glassbox_events::{Digest, SigningKey, VerifierKey, merkle};
use serde_json::{Value, json};
use std::collections::BTreeSet;

pub(crate) async fn audited_app() -> (TestApp, SigningKey) {
    let dir = std::env::temp_dir().join(format!(
        "glassbox-audit-key-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let key_file = dir.join("ledger.key");
    let key = SigningKey::generate("glassbox.test/ledger").expect("key");
    key.write_new_file(&key_file).expect("key file");
    let app = spawn_app_with(&[("GLASSBOX_LEDGER_KEY_FILE", key_file.to_str().expect("p"))]).await;
    (app, key)
}

/// `POST /v1/audit/exports`. Until the projector's audit index reaches the
/// checkpoint the answer is 503 "try again shortly" (under load that can take
/// a moment): retry as a client would.
async fn export(app: &TestApp, token: &str, body: &Value) -> reqwest::Response {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let resp = app
            .client
            .post(format!("{}/v1/audit/exports", app.addr))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("export");
        if resp.status().as_u16() != 503 || std::time::Instant::now() > deadline {
            return resp;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn positions(v: &Value) -> Vec<u64> {
    v["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["position"].as_u64().expect("position"))
        .collect()
}

#[tokio::test]
async fn search_is_scoped_paginated_and_cross_tenant_reads_are_recorded() {
    let (app, key) = audited_app().await;
    let projector = app.run_projector();
    let mut last = 0;
    for (tenant, n) in [("acme", 5), ("globex", 3)] {
        for i in 0..n {
            let r = app
                .submit(
                    &token(tenant),
                    &json!({"language": "python", "code": format!("print({i})")}),
                    None,
                )
                .await;
            last = last.max(r.body["position"].as_u64().expect("pos"));
        }
    }
    // Wait for the audit index.
    app.get(&token("acme"), &format!("/v1/jobs?min_position={last}"))
        .await;
    let admin = sign(&claims("acme", "ada", &["admin"]));
    // Own tenant only, newest first, every acme record exactly once across pages.
    let acme_records: BTreeSet<u64> = app
        .records()
        .await
        .iter()
        .filter(|r| r.record.tenant == "acme")
        .map(|r| r.record.position)
        .collect();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/v1/audit/events?limit=4".to_owned();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let r = app.get(&admin, &path).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        for e in r.body["events"].as_array().expect("events") {
            assert_eq!(e["record"]["tenant"], "acme");
            assert_eq!(e["entry_hash"].as_str().map(str::len), Some(64));
        }
        seen.extend(positions(&r.body));
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "newest first");
    assert_eq!(
        seen.iter().copied().collect::<BTreeSet<_>>(),
        acme_records,
        "exactly the matching records"
    );
    assert_eq!(seen.len(), acme_records.len(), "no duplicates");
    // Filters: one type, oldest first, a position range.
    let r = app
        .get(
            &admin,
            &format!("/v1/audit/events?event_type=job.accepted&order=asc&to_position={last}"),
        )
        .await;
    let p = positions(&r.body);
    assert_eq!(p.len(), 5);
    assert!(p.windows(2).all(|w| w[0] < w[1]));
    assert!(
        r.body["events"]
            .as_array()
            .expect("e")
            .iter()
            .all(|e| e["record"]["type"] == "job.accepted")
    );
    // By correlation ID: exactly the records of one request (a submission's
    // job.submitted, policy decisions and job.accepted), oldest first.
    let records = app.records().await;
    let correlation_of = |tenant: &str| {
        records
            .iter()
            .find(|r| r.record.tenant == tenant && r.record.event_type == "job.accepted")
            .map(|r| r.record.correlation_id.clone())
            .expect("a submission")
    };
    let run = correlation_of("acme");
    let in_run: Vec<u64> = records
        .iter()
        .filter(|r| r.record.correlation_id == run)
        .map(|r| r.record.position)
        .collect();
    assert!(in_run.len() >= 3, "{in_run:?}");
    let r = app
        .get(
            &admin,
            &format!("/v1/audit/events?correlation_id={run}&order=asc&limit=500"),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(positions(&r.body), in_run);
    assert!(
        r.body["events"]
            .as_array()
            .expect("e")
            .iter()
            .all(|e| e["record"]["correlation_id"] == run.as_str())
    );
    // With another filter: AND.
    let r = app
        .get(
            &admin,
            &format!("/v1/audit/events?correlation_id={run}&event_type=job.accepted"),
        )
        .await;
    assert_eq!(positions(&r.body).len(), 1);
    // Another tenant's request is not the admin's to read: nothing matches.
    let theirs = correlation_of("globex");
    let r = app
        .get(&admin, &format!("/v1/audit/events?correlation_id={theirs}"))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(positions(&r.body), Vec::<u64>::new());
    // A submitter has no audit rights; an admin cannot read another tenant.
    let r = app.get(&token("acme"), "/v1/audit/events").await;
    assert_problem(&r, 403, "forbidden");
    let r = app.get(&admin, "/v1/audit/events?tenant=globex").await;
    assert_problem(&r, 403, "forbidden");
    // An auditor may, and the read is recorded.
    let auditor = sign(&claims("restricted", "audrey", &["auditor"]));
    let r = app
        // (The refusals above are acme records too, maybe not yet indexed: pin the range.)
        .get(
            &auditor,
            &format!("/v1/audit/events?tenant=acme&limit=500&to_position={last}"),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        positions(&r.body).into_iter().collect::<BTreeSet<_>>(),
        acme_records
    );
    let all = app
        .get(&auditor, "/v1/audit/events?tenant=*&limit=500")
        .await;
    let tenants: BTreeSet<String> = all.body["events"]
        .as_array()
        .expect("e")
        .iter()
        .map(|e| e["record"]["tenant"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        tenants.contains("acme") && tenants.contains("globex"),
        "{tenants:?}"
    );
    let recorded = app.records_of_type("audit.cross_tenant_queried").await;
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[0].record.actor.id, "audrey");
    assert_eq!(recorded[0].record.data["query"]["tenant"], "acme");
    // `*` is recorded as what it was: a read of every tenant.
    assert_eq!(recorded[1].record.data["query"]["tenant"], "*");
    // Bad parameters are 400s.
    for bad in [
        "/v1/audit/events?limit=0",
        "/v1/audit/events?cursor=zz",
        "/v1/audit/events?order=sideways",
        "/v1/audit/events?stream=%00",
        "/v1/audit/events?correlation_id=%00",
        "/v1/audit/events?correlation_id=",
    ] {
        assert_problem(&app.get(&admin, bad).await, 400, "invalid_request");
    }

    // Integrity: a signed checkpoint, proofs that verify against it.
    let signed = app
        .store
        .publish_checkpoint(&key, "glassbox.test/ledger")
        .await
        .expect("sign")
        .expect("signed");
    let r = app.get(&admin, "/v1/audit/verifier-key").await;
    let vk = VerifierKey::parse(r.body["verifier_key"].as_str().expect("key")).expect("parse");
    assert_eq!(vk, key.verifier());
    let cp = app.get(&admin, "/v1/audit/checkpoints/latest").await;
    let opened = vk
        .open(cp.body["note"].as_str().expect("note"))
        .expect("note verifies");
    assert_eq!(opened, signed.checkpoint);
    let mine = *acme_records.iter().next().expect("an acme record");
    let r = app
        .get(
            &admin,
            &format!("/v1/audit/proofs/inclusion?position={mine}"),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let hex = |v: &Value| Digest::from_hex(v.as_str().expect("hex")).expect("digest");
    let proof: Vec<Digest> = r.body["proof"]
        .as_array()
        .expect("proof")
        .iter()
        .map(hex)
        .collect();
    merkle::verify_inclusion(
        mine - 1,
        opened.size,
        &hex(&r.body["leaf_hash"]),
        &proof,
        &opened.root,
    )
    .expect("the proof verifies against the signed root");
    let theirs = app
        .records()
        .await
        .iter()
        .find(|r| r.record.tenant == "globex")
        .map(|r| r.record.position)
        .expect("a globex record");
    let r = app
        .get(
            &admin,
            &format!("/v1/audit/proofs/inclusion?position={theirs}"),
        )
        .await;
    assert_problem(&r, 404, "not_found");
    // An auditor of another tenant gets it — and that read is recorded too.
    let before = app
        .records_of_type("audit.cross_tenant_queried")
        .await
        .len();
    let r = app
        .get(
            &auditor,
            &format!("/v1/audit/proofs/inclusion?position={theirs}"),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let recorded = app.records_of_type("audit.cross_tenant_queried").await;
    assert_eq!(recorded.len(), before + 1);
    let q = &recorded[before].record.data["query"];
    assert_eq!(q["inclusion_proof"], theirs);
    assert_eq!(q["tenant"], "globex");
    assert_eq!(recorded[before].record.actor.id, "audrey");
    assert_problem(
        &app.get(&admin, "/v1/audit/proofs/inclusion?position=0")
            .await,
        400,
        "invalid_request",
    );
    let r = app
        .get(
            &admin,
            &format!("/v1/audit/proofs/consistency?from=3&to={}", opened.size),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let proof: Vec<Digest> = r.body["proof"]
        .as_array()
        .expect("proof")
        .iter()
        .map(hex)
        .collect();
    merkle::verify_consistency(
        3,
        opened.size,
        &proof,
        &hex(&r.body["from_root"]),
        &opened.root,
    )
    .expect("consistency proof verifies");
    let r = app.post(&admin, "/v1/audit/verify", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["verifies"], true, "{:?}", r.body);
    // An evidence bundle over HTTP verifies offline and is recorded.
    let resp = export(&app, &admin, &json!({"tenant": "acme"})).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/x-tar")
    );
    let sha = resp
        .headers()
        .get("x-glassbox-bundle-sha256")
        .and_then(|v| v.to_str().ok())
        .expect("digest header")
        .to_owned();
    let bytes = resp.bytes().await.expect("bundle");
    assert_eq!(Digest::of(&bytes).to_hex(), sha);
    let file = app.data_dir.join("evidence.tar");
    std::fs::write(&file, &bytes).expect("write");
    let report = glassbox_audit_query::bundle::verify_bundle(&file, &key.verifier())
        .expect("bundle verifies");
    assert_eq!(report.filters.tenant.as_deref(), Some("acme"));
    // Exactly acme's records up to the signed tree (the verifier also checked
    // each record's tenant against the filter). acme's own records may mention
    // globex — the admin's refused attempt to read it is one of them.
    let want = app
        .records()
        .await
        .iter()
        .filter(|r| r.record.tenant == "acme" && r.record.position <= report.tree_size)
        .count() as u64;
    assert_eq!(report.records, want);
    let exported = app.records_of_type("audit.exported").await;
    assert_eq!(exported.len(), 1);
    assert_eq!(exported[0].record.data["bundle_digest"], sha.as_str());
    assert_eq!(exported[0].record.actor.id, "ada");
    // A bundle of one request (correlation ID): exactly its records, each
    // checked against the filter by the offline verifier.
    let resp = export(&app, &admin, &json!({"correlation_id": run})).await;
    assert_eq!(resp.status().as_u16(), 200);
    let bytes = resp.bytes().await.expect("bundle");
    let file = app.data_dir.join("run.tar");
    std::fs::write(&file, &bytes).expect("write");
    let report = glassbox_audit_query::bundle::verify_bundle(&file, &key.verifier())
        .expect("bundle verifies");
    assert_eq!(report.filters.correlation_id.as_deref(), Some(run.as_str()));
    assert_eq!(report.filters.tenant.as_deref(), Some("acme"));
    assert_eq!(report.records, in_run.len() as u64);
    assert_eq!(report.first_position, in_run.first().copied());
    assert_eq!(report.last_position, in_run.last().copied());
    let exported = app.records_of_type("audit.exported").await;
    assert_eq!(exported.len(), 2);
    assert_eq!(
        exported[1].record.data["query"]["correlation_id"],
        run.as_str()
    );
    assert_eq!(exported[1].record.data["record_count"], in_run.len());
    let r = app
        .post(
            &admin,
            "/v1/audit/exports",
            Some(&json!({"correlation_id": "a\u{0}b"})),
        )
        .await;
    assert_problem(&r, 400, "invalid_request");
    let r = app
        .post(&token("acme"), "/v1/audit/exports", Some(&json!({})))
        .await;
    assert_problem(&r, 403, "forbidden");
    // A tampered record is found by the same endpoint.
    app.db
        .tamper(&format!(
            "UPDATE ledger.records SET canonical = overlay(canonical placing '\\x20'::bytea from 5 for 1) WHERE position = {mine}"
        ))
        .await
        .expect("tamper");
    let r = app.post(&admin, "/v1/audit/verify", Some(&json!({}))).await;
    assert_eq!(r.body["verifies"], false, "{:?}", r.body);
    assert_eq!(r.body["failure"]["position"], mine);
    projector.cancel();
    app.stop().await;
}

#[tokio::test]
async fn replay_at_a_position_equals_the_read_model_then_and_decisions_reproduce() {
    let (app, _key) = audited_app().await;
    let admin = sign(&claims("acme", "ada", &["admin"]));
    let r = app
        .submit(
            &token("acme"),
            &json!({"language": "python", "code": "print(1)", "secrets": ["OPENAI_API_KEY"]}),
            None,
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["job_id"].as_str().expect("id").to_owned();
    let accepted_at = r.body["position"].as_u64().expect("pos");
    let c = app
        .post(&token("acme"), &format!("/v1/jobs/{id}/cancel"), None)
        .await;
    assert_eq!(c.status, 202);
    app.submit(
        &token("acme"),
        &json!({"language": "cobol", "code": "x"}),
        None,
    )
    .await;
    // The read model as it stood at `accepted_at`: fold one record at a time.
    let p = app.projector().with_batch(1);
    while p.position().await.expect("pos") < accepted_at {
        p.step().await.expect("step");
    }
    // The read model's view of the job, as the API serves it.
    let row = async || -> Value {
        let job = glassbox_projector::queries::job(&app.db.pool, "acme", &id)
            .await
            .expect("read")
            .expect("a row");
        serde_json::to_value(job.view().expect("a view")).expect("json")
    };
    let then = row().await;
    assert_eq!(then["status"], "accepted");
    p.catch_up().await.expect("catch up");
    let now = row().await;
    assert_eq!(now["status"], "cancelled");
    // Replay at that position equals it; replay now equals the live row.
    let r = app
        .get(
            &admin,
            &format!("/v1/audit/replay/job-{id}?at={accepted_at}"),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["state"], then);
    assert_eq!(r.body["at_position"], accepted_at);
    let types: Vec<&str> = r.body["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|e| e["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(types.last(), Some(&"job.accepted"));
    assert!(r.body["timeline"][0]["actor"]["id"] == "user@acme");
    let r = app
        .get(
            &admin,
            &format!("/v1/audit/replay/job-{id}?reevaluate=true"),
        )
        .await;
    assert_eq!(r.body["state"], now);
    // Every recorded decision of the stream reproduces against its bundle.
    assert_eq!(r.body["all_reproduce"], true, "{:?}", r.body["reevaluated"]);
    assert_eq!(r.body["reevaluated"].as_array().expect("re").len(), 3);
    // Another tenant's stream does not exist for acme; bad `at` is a 400.
    let globex = sign(&claims("globex", "gil", &["admin"]));
    assert_problem(
        &app.get(&globex, &format!("/v1/audit/replay/job-{id}"))
            .await,
        404,
        "not_found",
    );
    assert_problem(
        &app.get(&admin, &format!("/v1/audit/replay/job-{id}?at=yesterday"))
            .await,
        400,
        "invalid_request",
    );

    // Every policy decision recorded so far in this run reproduces.
    let all = app.records().await;
    let every = glassbox_audit_query::replay::reevaluate(&app.app_state.core.blobs, &all).await;
    assert_eq!(
        every.len(),
        app.records_of_type("policy.evaluated").await.len()
    );
    assert!(every.len() >= 5, "{}", every.len());
    assert!(every.iter().all(|x| x.reproduces), "{every:?}");

    // A decision recorded against a changed bundle does not reproduce.
    let mut files = glassbox_policies::Bundle::builtin().files().clone();
    let tenants = String::from_utf8(files["data/tenants.json"].clone()).expect("utf8");
    let changed = tenants.replace(
        r#""languages": ["python", "node", "bash"]"#,
        r#""languages": ["bash"]"#,
    );
    assert_ne!(changed, tenants);
    files.insert("data/tenants.json".into(), changed.into_bytes());
    let bundle = glassbox_policies::Bundle::from_files(files);
    let digest =
        glassbox_audit_query::policy_bundles::keep(&app.store, &app.app_state.core.blobs, &bundle)
            .await
            .expect("keep the changed bundle");
    let recorded = app
        .records_of_type("policy.evaluated")
        .await
        .into_iter()
        .find(|r| {
            r.record.data["policy"] == "glassbox.admission" && r.record.data["decision"] == "allow"
        })
        .expect("an allowed admission");
    let mut data = recorded.record.data.clone();
    data.insert("bundle_digest".into(), json!(digest.to_hex()));
    let mut actor = glassbox_events::Actor::system("test");
    actor.id = "tamperer".into();
    app.store
        .append(glassbox_events::store::AppendRequest::new(
            "acme",
            actor,
            vec![glassbox_events::store::NewEvent::new(
                "job-forged",
                "policy.evaluated",
                data,
            )],
        ))
        .await
        .expect("append");
    let r = app
        .get(&admin, "/v1/audit/replay/job-forged?reevaluate=true")
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["all_reproduce"], false);
    assert_eq!(r.body["reevaluated"][0]["reproduces"], false);
    assert_eq!(r.body["reevaluated"][0]["now"]["decision"], "deny");
    app.stop().await;
}
