//! Authentication, the audited bypass, rate limits, tenant isolation and hostile bodies.

use crate::helpers::*;
use base64::Engine as _;
use glassbox_platform::Config;
use serde_json::{Value, json};

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[tokio::test]
async fn every_bad_token_is_a_401_problem_and_a_good_one_passes() {
    // Many refusals in a row from one address: lift the per-address limit
    // (tested on its own in hardening.rs) so each gets its own 401.
    let app = spawn_app_with(&[("GLASSBOX_AUTH_FAILURES_PER_SEC", "10000")]).await;
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims("acme", "alice", &["submitter"]);
        f(&mut c);
        c
    };
    let pubkey = std::fs::read(fixture("rsa1.pub.pem")).expect("pub");
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some("rsa1".into());
    let confused = jsonwebtoken::encode(
        &h,
        &claims("acme", "alice", &["submitter"]),
        &jsonwebtoken::EncodingKey::from_secret(&pubkey),
    )
    .expect("hs256");
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims("acme", "alice", &["submitter"])
            .to_string()
            .as_bytes())
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            sign(&with(&|c| c["exp"] = json!(now() - 3600))),
            "expired",
        ),
        (
            "not yet valid",
            sign(&with(&|c| c["nbf"] = json!(now() + 3600))),
            "not valid yet",
        ),
        (
            "wrong issuer",
            sign(&with(&|c| c["iss"] = json!("evil"))),
            "issuer",
        ),
        (
            "wrong audience",
            sign(&with(&|c| c["aud"] = json!("other"))),
            "audience",
        ),
        (
            "unknown key",
            sign_with(
                "rsa_unknown",
                "rsa_unknown.pem",
                &claims("acme", "alice", &["submitter"]),
            ),
            "unknown",
        ),
        ("alg none", none, "algorithm"),
        ("RS256/HS256 confusion", confused, "algorithm"),
        (
            "missing tenant",
            sign(&with(&|c| {
                c.as_object_mut().expect("obj").remove("tenant");
            })),
            "tenant",
        ),
        (
            "tenant with a NUL",
            sign(&with(&|c| c["tenant"] = json!("ac\u{0}me"))),
            "tenant",
        ),
        ("garbage", "not.a.token".into(), "malformed"),
    ];
    for (name, token, detail) in cases {
        let r = app.submit(&token, &hello("python"), None).await;
        assert_problem(&r, 401, "unauthenticated");
        let d = r.body["detail"].as_str().unwrap_or("").to_lowercase();
        assert!(d.contains(detail), "{name}: detail {d:?} lacks {detail:?}");
        assert!(
            r.headers.get("www-authenticate").is_some(),
            "{name}: WWW-Authenticate"
        );
        // Reads are guarded the same way.
        let r = app.get(&token, "/v1/jobs").await;
        assert_problem(&r, 401, "unauthenticated");
    }
    // No token at all (bypass off): 401 even with an asserted identity.
    let r = app
        .send(app.client.get(format!("{}/v1/jobs", app.addr)).header(
            "X-Glassbox-Identity",
            r#"{"tenant":"acme","subject":"x","app":null,"agent":null,"roles":["submitter"]}"#,
        ))
        .await;
    assert_problem(&r, 401, "unauthenticated");
    // Nothing was recorded for any refused request, and the good token works.
    assert!(app.records_of_type("job.submitted").await.is_empty());
    let r = app.submit(&token("acme"), &hello("python"), None).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    app.stop().await;
}

#[tokio::test]
async fn bypass_is_refused_in_production_and_every_bypassed_request_is_audited() {
    // Production (the default environment) refuses to start with the bypass.
    let err = Config::from_vars(vec![("GLASSBOX_AUTH_BYPASS".to_owned(), "true".to_owned())])
        .expect_err("production must refuse the bypass");
    assert_eq!(err.var, "GLASSBOX_AUTH_BYPASS");
    let err = Config::from_vars(vec![
        ("GLASSBOX_ENV".to_owned(), "production".to_owned()),
        ("GLASSBOX_AUTH_BYPASS".to_owned(), "true".to_owned()),
    ])
    .expect_err("production must refuse the bypass");
    assert_eq!(err.var, "GLASSBOX_AUTH_BYPASS");

    let app = spawn_app_with(&[("GLASSBOX_AUTH_BYPASS", "true")]).await;
    let enabled = app.records_of_type("auth.bypass_enabled").await;
    assert_eq!(enabled.len(), 1);
    assert_eq!(enabled[0].record.data["environment"], "test");

    let identity = json!({"tenant": "acme", "subject": "ci-bot", "app": "ci", "agent": null, "roles": ["submitter"]});
    let r = app
        .send(
            app.client
                .post(format!("{}/v1/jobs", app.addr))
                .header("X-Glassbox-Identity", identity.to_string())
                .json(&hello("python")),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let bypassed = app.records_of_type("auth.bypassed").await;
    assert_eq!(bypassed.len(), 1);
    let b = &bypassed[0].record;
    assert_eq!(b.data["asserted"]["subject"], "ci-bot");
    assert_eq!(b.data["asserted"]["tenant"], "acme");
    assert_eq!(b.data["method"], "POST");
    assert_eq!(b.data["path"], "/v1/jobs");
    assert_eq!(b.tenant, "acme");
    assert_eq!(serde_json::to_value(b.actor.via).expect("via"), "bypass");
    // The job's own records say how the caller was authenticated, too.
    let submitted = app.records_of_type("job.submitted").await;
    assert_eq!(
        serde_json::to_value(submitted[0].record.actor.via).expect("via"),
        "bypass"
    );
    assert!(
        b.position < submitted[0].record.position,
        "audited before it is handled"
    );

    // Without a token or an identity: 401. A malformed identity: 401.
    let r = app
        .send(app.client.get(format!("{}/v1/jobs", app.addr)))
        .await;
    assert_problem(&r, 401, "unauthenticated");
    let r = app
        .send(
            app.client
                .get(format!("{}/v1/jobs", app.addr))
                .header("X-Glassbox-Identity", "{not json"),
        )
        .await;
    assert_problem(&r, 401, "unauthenticated");
    // A real token still wins over the bypass and is not recorded as bypassed.
    let r = app.get(&token("acme"), "/v1/jobs").await;
    assert_eq!(r.status, 200);
    assert_eq!(app.records_of_type("auth.bypassed").await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn rate_limits_are_counted_in_redis_and_the_first_refusal_is_recorded() {
    let app = spawn_app_with(&[("GLASSBOX_RATE_LIMIT_PER_SEC", "5")]).await;
    let t = token("acme");
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let r = app.get(&t, "/v1/jobs").await;
        if r.status == 429 {
            assert_problem(&r, 429, "rate_limited");
            assert!(r.headers.get("retry-after").is_some());
        }
        statuses.push(r.status);
    }
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(limited >= 15, "30 quick requests at 5/s: {statuses:?}");
    // One event per tenant and one-second window, however many were refused.
    let recorded = app.records_of_type("rate_limit.exceeded").await;
    assert!(
        !recorded.is_empty() && recorded.len() <= 3,
        "{} events",
        recorded.len()
    );
    assert!(recorded.len() < limited);
    assert_eq!(recorded[0].record.data["limit"], 5);
    // Another tenant has its own budget.
    let r = app.get(&token("globex"), "/v1/jobs").await;
    assert_eq!(r.status, 200);
    // And the window passes.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(app.get(&t, "/v1/jobs").await.status, 200);
    app.stop().await;
}

#[tokio::test]
async fn start_up_fails_closed_when_redis_is_unreachable() {
    glassbox_platform::install_crypto_provider();
    let db = glassbox_events::testing::TestDb::new().await.expect("db");
    let dir = std::env::temp_dir().join(format!("glassbox-api-test-{}", db.name));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut vars = base_vars(&db.url, &dir);
    vars.push(("GLASSBOX_REDIS_URL".into(), "redis://127.0.0.1:1".into()));
    vars.push((
        "GLASSBOX_AUTH_JWKS_FILE".into(),
        jwks_file(&dir)
            .expect("jwks")
            .to_str()
            .expect("path")
            .into(),
    ));
    let config = Config::from_vars(vars).expect("config");
    let err = match glassbox_command_api::Application::build(config).await {
        Ok(_) => panic!("started without Redis"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("Redis"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
    db.drop_db().await;
}

#[tokio::test]
async fn a_tenant_never_sees_another_tenants_job() {
    let app = spawn_app().await;
    let projector = app.run_projector();
    let acme = token("acme");
    let globex = token("globex");
    let r = app.submit(&acme, &hello("python"), Some("k1")).await;
    assert_eq!(r.status, 201);
    let id = r.body["job_id"].as_str().expect("id").to_owned();
    let pos = r.body["position"].as_u64().expect("position");
    // The owner sees it everywhere.
    assert_eq!(
        app.get(&acme, &format!("/v1/jobs/{id}?min_position={pos}"))
            .await
            .status,
        200
    );
    assert_eq!(
        app.get(&acme, &format!("/v1/jobs/{id}/events"))
            .await
            .status,
        200
    );
    let list = app
        .get(&acme, &format!("/v1/jobs?min_position={pos}"))
        .await;
    assert_eq!(list.body["jobs"].as_array().expect("jobs").len(), 1);
    // The other tenant: 404 (not 403) on every path, and an empty list.
    for path in [format!("/v1/jobs/{id}"), format!("/v1/jobs/{id}/events")] {
        let r = app.get(&globex, &path).await;
        assert_problem(&r, 404, "not_found");
    }
    let r = app
        .post(&globex, &format!("/v1/jobs/{id}/cancel"), None)
        .await;
    assert_problem(&r, 404, "not_found");
    let list = app
        .get(&globex, &format!("/v1/jobs?min_position={pos}"))
        .await;
    assert_eq!(list.status, 200);
    assert_eq!(list.body["jobs"], json!([]));
    // The same idempotency key in another tenant is another tenant's key.
    let r = app.submit(&globex, &hello("python"), Some("k1")).await;
    assert_eq!(r.status, 201);
    assert_ne!(r.body["job_id"].as_str(), Some(id.as_str()));
    // A reader of acme can read but not submit or cancel; the refusals are recorded.
    let reader = sign(&claims("acme", "rita", &["reader"]));
    assert_eq!(
        app.get(&reader, &format!("/v1/jobs/{id}")).await.status,
        200
    );
    let r = app.submit(&reader, &hello("python"), None).await;
    assert_problem(&r, 403, "forbidden");
    let r = app
        .post(&reader, &format!("/v1/jobs/{id}/cancel"), None)
        .await;
    assert_problem(&r, 403, "forbidden");
    let denials: Vec<_> = app
        .records_of_type("policy.evaluated")
        .await
        .into_iter()
        .filter(|r| r.record.data["decision"] == "deny")
        .collect();
    assert_eq!(denials.len(), 2, "both refusals are in the ledger");
    assert!(
        denials
            .iter()
            .all(|d| d.record.data["policy"] == "glassbox.authz")
    );
    // An auditor (cross-tenant for audit only) gets no jobs of another tenant either.
    let auditor = sign(&claims("globex", "audrey", &["auditor"]));
    let r = app.get(&auditor, &format!("/v1/jobs/{id}")).await;
    assert!(r.status == 403 || r.status == 404, "{}", r.status);
    projector.cancel();
    app.stop().await;
}

#[tokio::test]
async fn hostile_bodies_get_their_own_problem() {
    let app = spawn_app_with(&[("GLASSBOX_MAX_BODY_BYTES", "65536")]).await;
    let t = token("acme");
    // Oversized.
    let big = json!({"language": "python", "code": "x".repeat(70_000)});
    assert_problem(&app.submit(&t, &big, None).await, 413, "payload_too_large");
    // Not JSON / wrong media type.
    let r = app
        .send(
            app.client
                .post(format!("{}/v1/jobs", app.addr))
                .bearer_auth(&t)
                .header("content-type", "text/plain")
                .body("print(1)"),
        )
        .await;
    assert_problem(&r, 415, "unsupported_media_type");
    let r = app
        .send(
            app.client
                .post(format!("{}/v1/jobs", app.addr))
                .bearer_auth(&t)
                .header("content-type", "application/json")
                .body("{\"language\": "),
        )
        .await;
    assert_problem(&r, 400, "invalid_request");
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"language": "python", "code": "1", "colour": "red"}),
            "colour",
        ),
        (json!({"language": "python"}), "code"),
        (json!({"language": "python", "code": ""}), "code"),
        (json!({"language": "py thon", "code": "1"}), "language"),
        (
            json!({"language": "python", "code": "1", "args": ["a\u{0}b"]}),
            "args",
        ),
        (
            json!({"language": "python", "code": "1", "env": {"1X": "y"}}),
            "env",
        ),
        (
            json!({"language": "python", "code": "1", "env": {"GLASSBOX_X": "y"}}),
            "reserved",
        ),
        (
            json!({"language": "python", "code": "1", "files": [{"path": "../etc/passwd", "content": "x"}]}),
            "files[0].path",
        ),
        (
            json!({"language": "python", "code": "1", "files": [{"path": "/abs", "content": "x"}]}),
            "files[0].path",
        ),
        (
            json!({"language": "python", "code": "1", "files": [{"path": "a", "content": "***", "encoding": "base64"}]}),
            "base64",
        ),
        (
            json!({"language": "python", "code": "1", "limits": {"memory_bytes": 9_007_199_254_740_993_u64}}),
            "limits.memory_bytes",
        ),
        (
            json!({"language": "python", "code": "1", "limits": {"memory_bytes": -1}}),
            "memory_bytes",
        ),
        (
            json!({"language": "python", "code": "1", "limits": {"memory_bytes": 1.5}}),
            "memory_bytes",
        ),
        (
            json!({"language": "python", "code": "1", "limits": {"gpu": 1}}),
            "gpu",
        ),
        (
            json!({"language": "python", "code": "1", "secrets": ["A", "A"]}),
            "twice",
        ),
        (
            json!({"language": "python", "code": "1", "dependencies": [{"name": "x y"}]}),
            "dependencies[0].name",
        ),
    ];
    for (body, needle) in cases {
        let r = app.submit(&t, &body, None).await;
        assert_problem(&r, 400, "invalid_request");
        let d = r.body["detail"].as_str().unwrap_or("");
        assert!(d.contains(needle), "{body}: detail {d:?} lacks {needle:?}");
    }
    // Bad headers and parameters.
    let r = app
        .submit(&t, &hello("python"), Some(&"k".repeat(300)))
        .await;
    assert_problem(&r, 400, "invalid_request");
    for path in [
        "/v1/jobs?limit=0",
        "/v1/jobs?limit=abc",
        "/v1/jobs?status=exploded",
        "/v1/jobs?cursor=%00%01",
        "/v1/jobs?language=%00",
        "/v1/jobs?unknown=1",
    ] {
        assert_problem(&app.get(&t, path).await, 400, "invalid_request");
    }
    for path in ["/v1/jobs/not-a-uuid", "/v1/jobs/%00", "/v1/nothing-here"] {
        assert_problem(&app.get(&t, path).await, 404, "not_found");
    }
    let r = app
        .send(
            app.client
                .delete(format!("{}/v1/jobs", app.addr))
                .bearer_auth(&t),
        )
        .await;
    assert_eq!(r.status, 405);
    // None of it reached the ledger as a job.
    assert!(app.records_of_type("job.submitted").await.is_empty());
    app.stop().await;
}
