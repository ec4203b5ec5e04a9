//! Regressions of the hardening issue, each reproducing the attack: bad input
//! refused at the door, unconfigured tenants, MCP session hijacking, Redis
//! going away, the metrics endpoint, and token guessing.

use crate::helpers::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[tokio::test]
async fn submissions_the_runner_would_reject_are_400_naming_the_member() {
    let app = spawn_app().await;
    let before = app.records().await.len();
    let file = |p: &str| json!({"path": p, "content": "x"});
    for (files, limits, member) in [
        (
            json!([file(".secrets/API_KEY")]),
            json!({}),
            "files[0].path",
        ),
        (json!([file("out/result.txt")]), json!({}), "files[0].path"),
        (json!([file("main.py")]), json!({}), "files[0].path"),
        (json!([file(".deps/six.py")]), json!({}), "files[0].path"),
        (
            json!([file(".glassbox/requirements.txt")]),
            json!({}),
            "files[0].path",
        ),
        (
            json!([file("data"), file("data/in.csv")]),
            json!({}),
            "files[1].path",
        ),
        (
            json!([file("a/b/c"), file("a/b")]),
            json!({}),
            "files[0].path",
        ),
        (
            json!([]),
            json!({"memory_bytes": 1024}),
            "limits.memory_bytes",
        ),
        (
            json!([]),
            json!({"cpu_millicores": 5}),
            "limits.cpu_millicores",
        ),
        (json!([]), json!({"processes": 5000}), "limits.processes"),
        (
            json!([]),
            json!({"workspace_bytes": 4096}),
            "limits.workspace_bytes",
        ),
        (json!([]), json!({"tmp_bytes": 1}), "limits.tmp_bytes"),
    ] {
        let body =
            json!({"language": "python", "code": "print(1)", "files": files, "limits": limits});
        let r = app.submit(&token("acme"), &body, None).await;
        assert_problem(&r, 400, "invalid_request");
        let detail = r.body["detail"].as_str().unwrap_or_default();
        assert!(detail.starts_with(member), "{member}: {detail}");
    }
    // Nothing was accepted, so nothing reached the ledger.
    assert_eq!(app.records().await.len(), before);
    // A file under a directory of its own name is fine.
    let ok = json!({"language": "python", "code": "print(1)",
                    "files": [file("data/a.csv"), file("data/b.csv"), file("mainly.txt")]});
    assert_eq!(app.submit(&token("acme"), &ok, None).await.status, 201);
    app.stop().await;
}

#[tokio::test]
async fn a_token_naming_a_tenant_that_is_not_configured_is_refused_and_recorded() {
    let app = spawn_app().await;
    let newco = sign(&claims("newco", "nick@newco", &["submitter", "admin"]));
    let r = app.submit(&newco, &hello("python"), None).await;
    assert_problem(&r, 403, "forbidden");
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("tenant newco is not configured"),
        "{:?}",
        r.body
    );
    assert_problem(&app.get(&newco, "/v1/jobs").await, 403, "forbidden");
    let records = app.records().await;
    assert!(
        records
            .iter()
            .all(|r| r.record.event_type != "job.accepted")
    );
    let denials: Vec<&serde_json::Map<String, Value>> = records
        .iter()
        .filter(|r| r.record.event_type == "policy.evaluated" && r.record.tenant == "newco")
        .map(|r| &r.record.data)
        .collect();
    assert_eq!(denials.len(), 2, "both refusals are recorded");
    for d in denials {
        assert_eq!(d["decision"], "deny");
        assert_eq!(d["reasons"], json!(["tenant newco is not configured"]));
    }
    app.stop().await;
}

/// An MCP request on a session: its status and body text.
async fn mcp(
    app: &TestApp,
    token: &str,
    session: Option<&str>,
    body: Value,
) -> (u16, Option<String>, String) {
    let mut req = app
        .client
        .post(format!("{}/mcp", app.addr))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&body);
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    let resp = req.send().await.expect("mcp");
    let status = resp.status().as_u16();
    let sid = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, sid, resp.text().await.unwrap_or_default())
}

#[tokio::test]
async fn an_mcp_session_is_usable_and_closable_only_by_the_identity_that_opened_it() {
    let app = spawn_app().await;
    let owner = token("acme");
    let (status, sid, body) = mcp(
        &app,
        &owner,
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "hijack-test", "version": "1"}}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sid = sid.expect("a session id");
    let (status, _, _) = mcp(
        &app,
        &owner,
        Some(&sid),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert!(status == 202 || status == 200);
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    // Another tenant, and another subject of the same tenant: as if the
    // session did not exist.
    for intruder in [
        token("globex"),
        sign(&claims("acme", "mallory@acme", &["submitter"])),
    ] {
        let (status, _, body) = mcp(&app, &intruder, Some(&sid), list.clone()).await;
        assert_eq!(status, 404, "{body}");
        let r = app
            .client
            .delete(format!("{}/mcp", app.addr))
            .bearer_auth(&intruder)
            .header("mcp-session-id", &sid)
            .header("mcp-protocol-version", "2025-06-18")
            .send()
            .await
            .expect("delete");
        assert_eq!(r.status().as_u16(), 404);
    }
    let refused = app.records_of_type("access.refused").await;
    assert_eq!(refused.len(), 4, "every refusal is recorded");
    assert_eq!(refused[0].record.tenant, "globex");
    assert_eq!(refused[0].record.data["action"], "mcp.session.use");
    assert_eq!(refused[1].record.data["action"], "mcp.session.close");
    assert_eq!(refused[2].record.actor.id, "mallory@acme");
    // The owner's session is untouched.
    let (status, _, body) = mcp(&app, &owner, Some(&sid), list).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("run_code"), "{body}");
    app.stop().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A Redis server of this test's own (so stopping it disturbs no other test).
fn own_redis(port: u16) -> std::process::Child {
    let child = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

#[tokio::test]
async fn with_redis_gone_requests_fail_within_a_second_and_readyz_says_not_ready() {
    let port = free_port();
    let mut redis = own_redis(port);
    let url = format!("redis://127.0.0.1:{port}");
    let app = spawn_app_with(&[("GLASSBOX_REDIS_URL", &url)]).await;
    assert_eq!(app.get(&token("acme"), "/v1/jobs").await.status, 200);
    let ready = app
        .send(app.client.get(format!("{}/readyz", app.addr)))
        .await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["redis"], "ok");
    redis.kill().expect("stop redis");
    let _ = redis.wait();
    for _ in 0..3 {
        let t = Instant::now();
        let r = app.get(&token("acme"), "/v1/jobs").await;
        let took = t.elapsed();
        assert_problem(&r, 503, "unavailable");
        assert!(took < Duration::from_millis(1100), "waited {took:?}");
        let t = Instant::now();
        let ready = app
            .send(app.client.get(format!("{}/readyz", app.addr)))
            .await;
        assert_problem(&ready, 503, "unavailable");
        assert!(
            ready.body["detail"]
                .as_str()
                .unwrap_or("")
                .contains("redis"),
            "{:?}",
            ready.body
        );
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "readyz waited {:?}",
            t.elapsed()
        );
    }
    // Redis back: so is the service.
    let mut redis = own_redis(port);
    let started = Instant::now();
    loop {
        if app.get(&token("acme"), "/v1/jobs").await.status == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no recovery");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = redis.kill();
    let _ = redis.wait();
    app.stop().await;
}

#[tokio::test]
async fn metrics_can_require_a_token() {
    let app = spawn_app_with(&[("GLASSBOX_METRICS_TOKEN", "metrics-token-0123456789")]).await;
    let url = format!("{}/metrics", app.addr);
    assert_problem(
        &app.send(app.client.get(&url)).await,
        401,
        "unauthenticated",
    );
    assert_problem(
        &app.send(app.client.get(&url).bearer_auth("metrics-token-wrong"))
            .await,
        401,
        "unauthenticated",
    );
    let ok = app
        .client
        .get(&url)
        .bearer_auth("metrics-token-0123456789")
        .send()
        .await
        .expect("metrics");
    assert_eq!(ok.status().as_u16(), 200);
    assert!(
        ok.text()
            .await
            .unwrap_or_default()
            .contains("glassbox_ledger_head")
    );
    app.stop().await;
}

#[tokio::test]
async fn metrics_can_live_on_their_own_address() {
    glassbox_platform::install_crypto_provider();
    let db = glassbox_events::testing::TestDb::new().await.expect("db");
    let dir = std::env::temp_dir().join(format!("glassbox-api-test-{}", db.name));
    let mut vars = glassbox_command_api::testing::vars(&db.url, &dir).expect("vars");
    vars.push(("GLASSBOX_METRICS_ADDR".into(), "127.0.0.1:0".into()));
    let app = glassbox_command_api::Application::build(
        glassbox_platform::Config::from_vars(vars).expect("config"),
    )
    .await
    .expect("build");
    let (port, metrics) = (app.port(), app.metrics_port().expect("metrics port"));
    let stop = app.shutdown_token();
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    let api = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("api");
    assert_eq!(api.status().as_u16(), 404, "not on the API's address");
    let m = client
        .get(format!("http://127.0.0.1:{metrics}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(m.status().as_u16(), 200);
    assert!(
        m.text()
            .await
            .unwrap_or_default()
            .contains("glassbox_ledger_head")
    );
    let other = client
        .get(format!("http://127.0.0.1:{metrics}/v1/jobs"))
        .send()
        .await
        .expect("other");
    assert_eq!(other.status().as_u16(), 404, "only metrics there");
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
    db.drop_db().await;
}

#[tokio::test]
async fn bad_tokens_are_rate_limited_per_client_address() {
    let app = spawn_app_with(&[("GLASSBOX_AUTH_FAILURES_PER_SEC", "3")]).await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let r = app.get("not-a-token", "/v1/jobs").await;
        statuses.push(r.status);
    }
    let unauthenticated = statuses.iter().filter(|s| **s == 401).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(unauthenticated + limited, 12, "{statuses:?}");
    // 3 per second: the 12 requests span at most two windows here.
    assert!(unauthenticated <= 6 && limited >= 6, "{statuses:?}");
    // A valid token is not refused for the bad ones.
    assert_eq!(app.get(&token("acme"), "/v1/jobs").await.status, 200);
    app.stop().await;
}
