//! Submission, idempotency, policy denials, reads, cancellation and projections.

use crate::helpers::*;
use glassbox_events::Digest;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

#[tokio::test]
async fn an_accepted_job_is_one_atomic_append_with_its_code_encrypted_in_the_blob_store() {
    let app = spawn_app().await;
    let marker = "print('glassbox-code-marker-7f3a')";
    let body = json!({
        "language": "python",
        "code": marker,
        "stdin": "stdin-marker-91c2",
        "args": ["--arg-marker-3e8d", "3"],
        "env": {"ENV_NAME_MARKER_C4": "env-value-marker-55d1"},
        "files": [{"path": "data/path-marker-b71e.txt", "content": "aGVsbG8=", "encoding": "base64"}],
        "secrets": ["OPENAI_API_KEY", {"name": "DATABASE_PASSWORD", "mode": "file"}],
        "dependencies": [{"name": "requests", "version": "2.32.3"}],
        "limits": {"wall_time_ms": 2000, "memory_bytes": 134217728}
    });
    let r = app.submit(&token("acme"), &body, None).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["status"], "accepted");
    let id = r.body["job_id"].as_str().expect("id").to_owned();
    assert_eq!(
        r.headers.get("location").and_then(|v| v.to_str().ok()),
        Some(format!("/v1/jobs/{id}").as_str())
    );
    // Effective limits: requested values over the tenant's defaults.
    assert_eq!(r.body["effective_limits"]["wall_time_ms"], 2000);
    assert_eq!(r.body["effective_limits"]["memory_bytes"], 134217728);
    assert_eq!(r.body["effective_limits"]["cpu_millicores"], 1000);

    let records = app.records().await;
    let job: Vec<_> = records
        .iter()
        .filter(|s| s.record.stream == format!("job-{id}"))
        .collect();
    let types: Vec<&str> = job.iter().map(|s| s.record.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "job.submitted",
            "policy.evaluated",
            "policy.evaluated",
            "policy.evaluated",
            "secret.injection_approved",
            "policy.evaluated",
            "secret.injection_approved",
            "job.accepted"
        ]
    );
    // One append: consecutive positions, versions 1.., one correlation ID.
    let first = job[0].record.position;
    for (i, s) in job.iter().enumerate() {
        assert_eq!(s.record.position, first + i as u64);
        assert_eq!(s.record.stream_version, 1 + i as u64);
        assert_eq!(s.record.correlation_id, job[0].record.correlation_id);
        assert_eq!(s.record.actor.id, "user@acme");
    }
    assert_eq!(r.body["submitted_position"], first);
    assert_eq!(r.body["position"], first + 7);
    // Each policy.evaluated names its policy, input and the bundle digest.
    let policies: Vec<&Value> = job
        .iter()
        .filter(|s| s.record.event_type == "policy.evaluated")
        .map(|s| &s.record.data["policy"])
        .collect();
    assert_eq!(
        policies,
        [
            "glassbox.authz",
            "glassbox.admission",
            "glassbox.secrets",
            "glassbox.secrets"
        ]
    );
    let digest = app.app_state.core.engine.bundle_digest().to_hex();
    for s in job
        .iter()
        .filter(|s| s.record.event_type == "policy.evaluated")
    {
        assert_eq!(s.record.data["bundle_digest"], digest);
        let input = serde_json::to_vec(&s.record.data["input"]).expect("input");
        assert!(s.record.data["input"].is_object());
        assert!(!input.is_empty());
    }
    assert_eq!(job[6].record.data["mode"], "file");
    // Code, stdin, args, env names and values and file paths are not in the
    // ledger — only keyed digests, sizes and counts.
    for s in &records {
        let text = String::from_utf8_lossy(&s.canonical);
        for m in [
            "glassbox-code-marker-7f3a",
            "stdin-marker-91c2",
            "env-value-marker-55d1",
            "ENV_NAME_MARKER_C4",
            "arg-marker-3e8d",
            "path-marker-b71e",
        ] {
            assert!(
                !text.contains(m),
                "{m} leaked into record {}",
                s.record.position
            );
        }
    }
    let submitted = &job[0].record.data;
    assert_eq!(submitted["schema_version"], 2);
    assert_eq!(
        (
            submitted["arg_count"].clone(),
            submitted["env_count"].clone()
        ),
        (json!(2), json!(1))
    );
    // The digest is keyed: a plain SHA-256 of the code would confirm a guess.
    let blobs = &app.app_state.core.blobs;
    assert_ne!(
        submitted["code"]["hmac"],
        Digest::of(marker.as_bytes()).to_hex()
    );
    assert_eq!(
        submitted["code"]["hmac"],
        blobs
            .keyed_digest(&id, marker.as_bytes())
            .await
            .expect("digest")
            .to_hex()
    );
    // …and the blob store gives them back, decrypted, under the job's key.
    let code_key = submitted["code"]["key"].as_str().expect("key");
    assert_eq!(
        blobs.get(&id, code_key).await.expect("code"),
        marker.as_bytes()
    );
    let file_key = submitted["files"][0]["key"].as_str().expect("key");
    assert_eq!(blobs.get(&id, file_key).await.expect("file"), b"hello");
    let json_blob = async |member: &str| -> Value {
        let key = submitted[member]["key"].as_str().expect("key");
        serde_json::from_slice(&blobs.get(&id, key).await.expect("blob")).expect("json")
    };
    assert_eq!(json_blob("args").await, json!(["--arg-marker-3e8d", "3"]));
    assert_eq!(
        json_blob("env").await,
        json!({"ENV_NAME_MARKER_C4": "env-value-marker-55d1"})
    );
    assert_eq!(
        json_blob("file_paths").await,
        json!(["data/path-marker-b71e.txt"])
    );
    // At rest it is ciphertext.
    let on_disk = std::fs::read(app.data_dir.join("blobs").join(code_key)).expect("blob file");
    assert!(!String::from_utf8_lossy(&on_disk).contains("glassbox-code-marker"));
    app.stop().await;
}

#[tokio::test]
async fn a_policy_denial_is_a_403_with_reasons_and_is_in_the_ledger() {
    let app = spawn_app().await;
    // Tenant `restricted` allows python only, 10 s at most, no secrets.
    let body = json!({"language": "node", "code": "console.log(1)",
                      "limits": {"wall_time_ms": 50000}, "secrets": ["OPENAI_API_KEY"]});
    let r = app
        .submit(&token("restricted"), &body, Some("deny-1"))
        .await;
    assert_problem(&r, 403, "policy_denied");
    let reasons: Vec<String> = r.body["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .map(|v| v.as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|x| x.contains("language node is not allowed")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|x| x.contains("wall_time_ms 50000 exceeds")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|x| x.contains("secret OPENAI_API_KEY is not allowed")),
        "{reasons:?}"
    );
    let id = r.body["job_id"].as_str().expect("job id").to_owned();
    let events = app
        .get(&token("restricted"), &format!("/v1/jobs/{id}/events"))
        .await;
    assert_eq!(events.status, 200);
    let types: Vec<&str> = events.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["record"]["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        types,
        [
            "job.submitted",
            "policy.evaluated",
            "policy.evaluated",
            "policy.evaluated",
            "secret.injection_denied",
            "job.rejected"
        ]
    );
    let admission = &events.body["events"][2]["record"]["data"];
    assert_eq!(admission["policy"], "glassbox.admission");
    assert_eq!(admission["decision"], "deny");
    assert_eq!(admission["input"]["language"], "node");
    // Retrying the same request replays the same denial (nothing new appended).
    let before = app.records().await.len();
    let again = app
        .submit(&token("restricted"), &body, Some("deny-1"))
        .await;
    assert_eq!(again.status, 403);
    assert_eq!(again.body, r.body);
    assert_eq!(app.records().await.len(), before);
    app.stop().await;
}

#[tokio::test]
async fn fifty_concurrent_identical_submissions_make_one_job_and_a_changed_body_is_409() {
    let app = spawn_app().await;
    let t = token("acme");
    let body = json!({"language": "python", "code": "print(42)", "stdin": "x"});
    let mut handles = Vec::new();
    for _ in 0..50 {
        let client = app.client.clone();
        let url = format!("{}/v1/jobs", app.addr);
        let t = t.clone();
        let body = body.clone();
        handles.push(tokio::spawn(async move {
            let resp = client
                .post(url)
                .bearer_auth(t)
                .header("Idempotency-Key", "same-key-1")
                .json(&body)
                .send()
                .await
                .expect("send");
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await.expect("body");
            (status, bytes.to_vec())
        }));
    }
    let mut replies = Vec::new();
    for h in handles {
        replies.push(h.await.expect("task"));
    }
    let first = replies[0].clone();
    assert_eq!(first.0, 201);
    for r in &replies {
        assert_eq!(r, &first, "all 50 responses are identical");
    }
    let submitted = app.records_of_type("job.submitted").await;
    assert_eq!(submitted.len(), 1, "exactly one job");
    assert_eq!(app.records_of_type("job.accepted").await.len(), 1);
    // The losers' uploads were shredded: one live data key for this tenant's jobs.
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM blobs.data_keys WHERE tenant = 'acme' AND wrapped IS NOT NULL",
    )
    .fetch_one(&app.db.pool)
    .await
    .expect("count keys");
    assert_eq!(live, 1);
    // Same key, different body: 409, nothing appended.
    let before = app.records().await.len();
    let changed = json!({"language": "python", "code": "print(43)", "stdin": "x"});
    let r = app.submit(&t, &changed, Some("same-key-1")).await;
    assert_problem(&r, 409, "idempotency_key_reused");
    assert_eq!(app.records().await.len(), before);
    // Same key, same body, different user of the same tenant: also a different request.
    let other = sign(&claims("acme", "bob", &["submitter"]));
    let r = app.submit(&other, &body, Some("same-key-1")).await;
    assert_problem(&r, 409, "idempotency_key_reused");
    // A later retry of the original is still the original.
    let r = app.submit(&t, &body, Some("same-key-1")).await;
    assert_eq!(r.status, 201);
    assert_eq!(
        serde_json::to_vec(&r.body).expect("json"),
        serde_json::to_vec(&serde_json::from_slice::<Value>(&first.1).expect("json"))
            .expect("json")
    );
    assert_eq!(
        r.headers
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    app.stop().await;
}

#[tokio::test]
async fn reads_wait_for_positions_and_terminal_states_and_cancel_is_recorded() {
    let app = spawn_app().await;
    let projector = app.run_projector();
    let t = token("acme");
    let r = app.submit(&t, &hello("python"), None).await;
    let id = r.body["job_id"].as_str().expect("id").to_owned();
    let pos = r.body["position"].as_u64().expect("pos");
    // Read-your-writes.
    let job = app
        .get(&t, &format!("/v1/jobs/{id}?min_position={pos}"))
        .await;
    assert_eq!(job.status, 200, "{:?}", job.body);
    assert_eq!(job.body["status"], "accepted");
    assert_eq!(job.body["job_id"], id.as_str());
    assert_eq!(job.body["tenant"], "acme");
    assert_eq!(job.body["effective_limits"]["wall_time_ms"], 10000);
    assert!(job.body["last_position"].as_u64().expect("last") >= pos);
    // wait=N on a non-terminal job returns after about N seconds, still accepted.
    let started = std::time::Instant::now();
    let job = app.get(&t, &format!("/v1/jobs/{id}?wait=1")).await;
    assert_eq!(job.body["status"], "accepted");
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A waiting read wakes up when the job is cancelled.
    let waiter = {
        let client = app.client.clone();
        let url = format!("{}/v1/jobs/{id}?wait=30", app.addr);
        let t = t.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let v: Value = client
                .get(url)
                .bearer_auth(t)
                .send()
                .await
                .expect("send")
                .json()
                .await
                .expect("json");
            (v, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = app
        .post(
            &t,
            &format!("/v1/jobs/{id}/cancel"),
            Some(&json!({"reason": "changed my mind"})),
        )
        .await;
    assert_eq!(c.status, 202, "{:?}", c.body);
    assert_eq!(c.body["status"], "cancelled");
    let (v, took) = waiter.await.expect("waiter");
    assert_eq!(v["status"], "cancelled");
    assert!(
        took < Duration::from_secs(10),
        "woken by the projection, took {took:?}"
    );
    // Cancelling again answers with the first cancellation; nothing new is appended.
    let n = app.records().await.len();
    let again = app.post(&t, &format!("/v1/jobs/{id}/cancel"), None).await;
    assert_eq!(again.status, 202);
    assert_eq!(again.body["position"], c.body["position"]);
    assert_eq!(app.records().await.len(), n);
    let events = app.get(&t, &format!("/v1/jobs/{id}/events")).await;
    let types: Vec<&str> = events.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["record"]["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        &types[types.len() - 2..],
        ["job.cancel_requested", "job.cancelled"]
    );
    // A rejected job cannot be cancelled.
    let rejected = app
        .submit(&t, &json!({"language": "cobol", "code": "x"}), None)
        .await;
    assert_eq!(rejected.status, 403);
    let rid = rejected.body["job_id"].as_str().expect("id");
    let r = app.post(&t, &format!("/v1/jobs/{rid}/cancel"), None).await;
    assert_problem(&r, 409, "conflict");
    // Status reports the projection's lag.
    let s = app.get(&t, "/v1/status").await;
    assert_eq!(s.status, 200);
    assert!(s.body["ledger"]["head"].as_u64().expect("head") >= pos);
    let metrics = app
        .client
        .get(format!("{}/metrics", app.addr))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("glassbox_projection_lag ") && metrics.contains("glassbox_jobs_queued "),
        "{metrics}"
    );
    projector.cancel();
    app.stop().await;
}

#[tokio::test]
async fn listing_is_tenant_scoped_filtered_and_paginated_without_duplicates() {
    let app = spawn_app().await;
    let projector = app.run_projector();
    let t = token("acme");
    let mut ids = Vec::new();
    let mut last = 0;
    for i in 0..7 {
        let body = if i % 3 == 2 {
            json!({"language": "cobol", "code": format!("{i}")})
        } else {
            json!({"language": "python", "code": format!("print({i})")})
        };
        let r = app.submit(&t, &body, None).await;
        ids.push(r.body["job_id"].as_str().expect("id").to_owned());
        last = r.body["position"].as_u64().expect("pos");
    }
    app.submit(&token("globex"), &hello("python"), None).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = format!("/v1/jobs?limit=3&min_position={last}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let r = app.get(&t, &path).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        pages += 1;
        for j in r.body["jobs"].as_array().expect("jobs") {
            seen.push(j["job_id"].as_str().expect("id").to_owned());
            assert_eq!(j["tenant"], "acme");
        }
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first, "every job once, newest first");
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 7);
    let rejected = app.get(&t, "/v1/jobs?status=rejected").await;
    let rejected: Vec<&str> = rejected.body["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["job_id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(rejected, [ids[5].as_str(), ids[2].as_str()]);
    let python = app.get(&t, "/v1/jobs?language=python&limit=200").await;
    assert_eq!(python.body["jobs"].as_array().expect("jobs").len(), 5);
    projector.cancel();
    app.stop().await;
}

#[tokio::test]
async fn the_policy_bundle_is_kept_by_digest_and_recorded_once() {
    let app = spawn_app().await;
    let loaded = app.records_of_type("policy.bundle_loaded").await;
    assert_eq!(loaded.len(), 1);
    let digest = app.app_state.core.engine.bundle_digest();
    assert_eq!(loaded[0].record.data["bundle_digest"], digest.to_hex());
    let bundle = glassbox_command_api::load_bundle(&app.app_state.core.blobs, &digest)
        .await
        .expect("bundle read back by digest");
    assert_eq!(bundle.digest(), digest);
    assert_eq!(bundle.files(), glassbox_policies::Bundle::builtin().files());
    // A second instance on the same database records nothing new.
    let again = glassbox_command_api::Application::build(
        glassbox_platform::Config::from_vars({
            let mut v = base_vars(&app.db.url, &app.data_dir);
            v.push((
                "GLASSBOX_AUTH_JWKS_FILE".into(),
                app.data_dir.join("jwks.json").to_str().expect("p").into(),
            ));
            v
        })
        .expect("config"),
    )
    .await
    .expect("second instance");
    drop(again);
    assert_eq!(app.records_of_type("policy.bundle_loaded").await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn projections_rebuilt_from_the_ledger_equal_the_live_ones() {
    let app = spawn_app().await;
    // Two live projectors at once: exactly-once effects despite the race.
    let p1 = app.run_projector();
    let p2 = {
        let t = tokio_util::sync::CancellationToken::new();
        tokio::spawn(app.projector().with_batch(3).run(None, t.clone()));
        t
    };
    let t = token("acme");
    let mut last = 0;
    for i in 0..12 {
        let body = match i % 4 {
            0 => json!({"language": "cobol", "code": "x"}),
            1 => {
                json!({"language": "python", "code": format!("print({i})"), "secrets": ["OPENAI_API_KEY"]})
            }
            _ => json!({"language": "bash", "code": format!("echo {i}")}),
        };
        let r = app.submit(&t, &body, None).await;
        last = r.body["position"].as_u64().expect("pos");
        if i % 4 == 2 {
            let id = r.body["job_id"].as_str().expect("id");
            let c = app.post(&t, &format!("/v1/jobs/{id}/cancel"), None).await;
            last = last.max(c.body["position"].as_u64().expect("pos"));
        }
    }
    app.submit(&token("globex"), &hello("python"), None).await;
    let head = app.store.head().await.expect("head").0;
    let projector = app.projector();
    for _ in 0..100 {
        if projector.position().await.expect("pos") >= head {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p1.cancel();
    p2.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(last <= head);
    let live = glassbox_projector::snapshot(&app.db.pool)
        .await
        .expect("snapshot");
    let audit = live["projections.audit_index"]
        .as_array()
        .expect("rows")
        .len() as u64;
    assert_eq!(audit, head, "every record indexed exactly once");
    let decisions = live["projections.policy_decisions"]
        .as_array()
        .expect("rows")
        .len();
    assert_eq!(
        decisions,
        app.records_of_type("policy.evaluated").await.len()
    );
    let rebuilt_to = projector.rebuild().await.expect("rebuild");
    assert_eq!(rebuilt_to, head);
    let rebuilt = glassbox_projector::snapshot(&app.db.pool)
        .await
        .expect("snapshot");
    assert_eq!(live, rebuilt);
    let jobs = rebuilt["projections.jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 13);
    let statuses: BTreeSet<&str> = jobs
        .iter()
        .map(|j| j["status"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        statuses,
        BTreeSet::from(["accepted", "cancelled", "rejected"])
    );
    app.stop().await;
}
