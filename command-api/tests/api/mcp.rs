//! MCP over streamable HTTP at /mcp, spoken as raw JSON-RPC: the same token,
//! policies and ledger as REST; unauthenticated connections are refused.

use crate::helpers::*;
use serde_json::{Value, json};

struct Session {
    id: Option<String>,
    token: String,
    next: u64,
}

async fn rpc(app: &TestApp, s: &mut Session, method: &str, params: Value) -> (u16, Value) {
    s.next += 1;
    let mut req = app
        .client
        .post(format!("{}/mcp", app.addr))
        .bearer_auth(&s.token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&json!({"jsonrpc": "2.0", "id": s.next, "method": method, "params": params}));
    if let Some(id) = &s.id {
        req = req.header("mcp-session-id", id);
    }
    let resp = req.send().await.expect("mcp request");
    let status = resp.status().as_u16();
    if let Some(id) = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
    {
        s.id = Some(id.to_owned());
    }
    let text = resp.text().await.expect("body");
    // JSON, or server-sent events whose data lines carry the JSON-RPC response.
    let body = serde_json::from_str::<Value>(&text).ok().or_else(|| {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|v| v.get("id").is_some())
    });
    (status, body.unwrap_or(Value::Null))
}

async fn notify(app: &TestApp, s: &Session, method: &str) {
    let mut req = app
        .client
        .post(format!("{}/mcp", app.addr))
        .bearer_auth(&s.token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&json!({"jsonrpc": "2.0", "method": method}));
    if let Some(id) = &s.id {
        req = req.header("mcp-session-id", id);
    }
    let status = req.send().await.expect("notify").status().as_u16();
    assert!(status == 202 || status == 200, "{method}: {status}");
}

/// The JSON a tool call answered with (its first text content).
fn tool_json(reply: &Value) -> Value {
    let text = reply["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text content: {reply}"));
    serde_json::from_str(text).expect("tool output is JSON")
}

/// A refusal before MCP: the HTTP status, and a JSON-RPC error whose message
/// and data carry the problem.
fn assert_refusal(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.body["jsonrpc"], "2.0", "{}", r.body);
    assert_eq!(r.body["error"]["code"], -32001, "{}", r.body);
    assert_eq!(r.body["error"]["data"]["code"], code, "{}", r.body);
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(code), "{message}");
}

async fn open(app: &TestApp, token: String) -> Session {
    let mut s = Session {
        id: None,
        token,
        next: 0,
    };
    let (status, init) = rpc(
        app,
        &mut s,
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "glassbox-test", "version": "1"}}),
    )
    .await;
    assert_eq!(status, 200, "{init}");
    notify(app, &s, "notifications/initialized").await;
    s
}

#[tokio::test]
async fn agents_use_the_same_identity_policies_and_ledger_through_mcp() {
    // With a checkpoint key: verify_ledger checks against it, as REST does.
    let (app, _) = crate::audit::audited_app().await;
    let projector = app.run_projector();
    // No token: the 401 problem, before any MCP message is read.
    let r = app
        .send(
            app.client
                .post(format!("{}/mcp", app.addr))
                .header("accept", "application/json, text/event-stream")
                .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}})),
        )
        .await;
    assert_refusal(&r, 401, "unauthenticated");
    assert!(
        r.headers.contains_key("www-authenticate"),
        "{:?}",
        r.headers
    );

    let mut s = Session {
        id: None,
        token: token("acme"),
        next: 0,
    };
    let (status, init) = rpc(
        &app,
        &mut s,
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "glassbox-test", "version": "1"}}),
    )
    .await;
    assert_eq!(status, 200, "{init}");
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18", "{init}");
    assert_eq!(init["result"]["serverInfo"]["name"], "glassbox");
    notify(&app, &s, "notifications/initialized").await;

    let (_, tools) = rpc(&app, &mut s, "tools/list", json!({})).await;
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| t["name"].as_str().unwrap_or(""))
        .collect();
    for n in [
        "run_code",
        "submit_job",
        "get_job",
        "cancel_job",
        "list_artifacts",
        "read_artifact",
        "search_audit",
        "verify_ledger",
        "replay",
    ] {
        assert!(names.contains(&n), "{names:?}");
    }
    let run = tools["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .find(|t| t["name"] == "run_code")
        .expect("run_code");
    assert!(
        run["inputSchema"]["properties"]["language"].is_object(),
        "{run}"
    );
    assert!(run["description"].as_str().unwrap_or("").contains("ledger"));

    // run_code goes through the same submission path (no runner here: it stays queued).
    let (_, call) = rpc(
        &app,
        &mut s,
        "tools/call",
        json!({"name": "run_code", "arguments": {"language": "python", "code": "print(1)",
               "wait_seconds": 1, "idempotency_key": "mcp-1"}}),
    )
    .await;
    assert_eq!(call["result"]["isError"], false, "{call}");
    let out: Value = tool_json(&call);
    let job = out["job_id"].as_str().expect("job id").to_owned();
    assert_eq!(out["status"], "running");
    // Retried with the same key: the same job, not a second one.
    let (_, again) = rpc(
        &app,
        &mut s,
        "tools/call",
        json!({"name": "run_code", "arguments": {"language": "python", "code": "print(1)",
               "wait_seconds": 0, "idempotency_key": "mcp-1"}}),
    )
    .await;
    let again: Value = tool_json(&again);
    assert_eq!(again["job_id"], job.as_str());
    let submitted = app.records_of_type("job.submitted").await;
    assert_eq!(submitted.len(), 1);
    assert_eq!(submitted[0].record.actor.id, "user@acme");
    assert_eq!(
        serde_json::to_value(submitted[0].record.actor.via).expect("via"),
        "jwt"
    );

    // A policy denial is a tool error with the reasons, recorded like REST's.
    let mut r = open(&app, token("restricted")).await;
    let (_, denied) = rpc(
        &app,
        &mut r,
        "tools/call",
        json!({"name": "run_code", "arguments": {"language": "node", "code": "1"}}),
    )
    .await;
    assert_eq!(denied["result"]["isError"], true, "{denied}");
    let text = denied["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or("");
    assert!(text.contains("language node is not allowed"), "{text}");
    assert_eq!(app.records_of_type("job.rejected").await.len(), 1);
    // Bad arguments are an error answer, and the session keeps working.
    let (_, bad) = rpc(
        &app,
        &mut s,
        "tools/call",
        json!({"name": "run_code", "arguments": {"code": 1}}),
    )
    .await;
    assert!(
        bad.get("error").is_some() || bad["result"]["isError"] == true,
        "{bad}"
    );
    let (_, got) = rpc(
        &app,
        &mut s,
        "tools/call",
        json!({"name": "get_job", "arguments": {"job_id": job}}),
    )
    .await;
    assert_eq!(got["result"]["isError"], false, "{got}");
    // Audit search needs an audit role, as over REST.
    let (_, refused) = rpc(
        &app,
        &mut s,
        "tools/call",
        json!({"name": "search_audit", "arguments": {}}),
    )
    .await;
    assert_eq!(refused["result"]["isError"], true, "{refused}");
    // Cancel through MCP: the same cancellation as REST, recorded.
    let (_, c) = rpc(
        &app,
        &mut s,
        "tools/call",
        json!({"name": "cancel_job", "arguments": {"job_id": job}}),
    )
    .await;
    assert_eq!(c["result"]["isError"], false, "{c}");
    assert!(
        c["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or("")
            .contains("cancelled"),
        "{c}"
    );
    assert_eq!(app.records_of_type("job.cancelled").await.len(), 1);
    // An admin (audit rights) can search, replay and verify through MCP.
    let mut a = open(&app, sign(&claims("acme", "ada", &["admin"]))).await;
    let (_, found) = rpc(
        &app,
        &mut a,
        "tools/call",
        json!({"name": "search_audit", "arguments": {"event_type": "job.cancelled"}}),
    )
    .await;
    assert_eq!(found["result"]["isError"], false, "{found}");
    assert!(
        found["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or("")
            .contains(&job)
    );
    let (_, rep) = rpc(
        &app,
        &mut a,
        "tools/call",
        json!({"name": "replay", "arguments": {"stream": format!("job-{job}")}}),
    )
    .await;
    let rep: Value = tool_json(&rep);
    assert_eq!(rep["state"]["status"], "cancelled");
    let (_, ver) = rpc(
        &app,
        &mut a,
        "tools/call",
        json!({"name": "verify_ledger", "arguments": {}}),
    )
    .await;
    assert!(
        ver["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or("")
            .contains("\"verifies\":true"),
        "{ver}"
    );
    projector.cancel();
    app.stop().await;
}

#[tokio::test]
async fn jobs_are_resources_read_by_uri_within_the_callers_tenant() {
    let app = spawn_app().await;
    let projector = app.run_projector();
    let mut s = open(&app, token("acme")).await;
    let (_, templates) = rpc(&app, &mut s, "resources/templates/list", json!({})).await;
    let mut uris: Vec<&str> = templates["result"]["resourceTemplates"]
        .as_array()
        .expect("templates")
        .iter()
        .filter_map(|t| t["uriTemplate"].as_str())
        .collect();
    uris.sort_unstable();
    assert_eq!(
        uris,
        [
            "glassbox://jobs/{job_id}",
            "glassbox://jobs/{job_id}/artifacts/{+path}",
            "glassbox://sessions/{session_id}",
            "glassbox://sessions/{session_id}/files/{+path}"
        ]
    );

    let (_, sub) = rpc(
        &app,
        &mut s,
        "tools/call",
        json!({"name": "submit_job", "arguments": {"language": "python", "code": "print(1)"}}),
    )
    .await;
    assert_eq!(sub["result"]["isError"], false, "{sub}");
    let receipt: Value = tool_json(&sub);
    let job = receipt["job_id"].as_str().expect("job id").to_owned();
    let uri = format!("glassbox://jobs/{job}");
    assert_eq!(receipt["uri"], uri.as_str());
    let pos = receipt["position"].as_u64().expect("position");
    let seen = app
        .send(
            app.client
                .get(format!("{}/v1/jobs/{job}?min_position={pos}", app.addr))
                .bearer_auth(token("acme")),
        )
        .await;
    assert_eq!(seen.status, 200, "{}", seen.body);

    let (_, listed) = rpc(&app, &mut s, "resources/list", json!({})).await;
    let resources = listed["result"]["resources"].as_array().expect("resources");
    assert!(
        resources.iter().any(|r| r["uri"] == uri.as_str()),
        "{listed}"
    );
    let (_, read) = rpc(&app, &mut s, "resources/read", json!({"uri": uri})).await;
    let contents = &read["result"]["contents"][0];
    assert_eq!(contents["mimeType"], "application/json", "{read}");
    let body: Value = serde_json::from_str(contents["text"].as_str().expect("text")).expect("json");
    assert_eq!(body["job_id"], job.as_str());
    assert_eq!(body["status"], "accepted", "{body}");

    // Another tenant cannot read it, and does not learn it exists.
    let mut other = open(&app, token("restricted")).await;
    let (_, theirs) = rpc(&app, &mut other, "resources/read", json!({"uri": uri})).await;
    assert_eq!(theirs["error"]["code"], -32002, "{theirs}");
    let (_, their_list) = rpc(&app, &mut other, "resources/list", json!({})).await;
    assert!(!their_list.to_string().contains(&job), "{their_list}");
    // Unknown URIs and artifacts of unfinished jobs are errors, not crashes.
    for bad in [
        "glassbox://nothing/here".to_owned(),
        "file:///etc/passwd".to_owned(),
        format!("glassbox://jobs/{job}/artifacts/x.bin"),
    ] {
        let (_, r) = rpc(&app, &mut s, "resources/read", json!({"uri": bad})).await;
        assert!(r.get("error").is_some(), "{bad}: {r}");
        assert!(
            !r.to_string().contains("/var/") && !r.to_string().contains("sqlx"),
            "{r}"
        );
    }
    let (_, again) = rpc(&app, &mut s, "resources/read", json!({"uri": uri})).await;
    assert!(again.get("result").is_some(), "{again}");
    projector.cancel();
    app.stop().await;
}

#[tokio::test]
async fn oversized_mcp_messages_are_refused_with_a_message_and_the_session_goes_on() {
    let app = spawn_app().await;
    let mut s = open(&app, token("acme")).await;
    let max = app.app_state.config.max_body_bytes;
    let huge = "#".repeat(max + 1024);
    let r = app
        .send(
            app.client
                .post(format!("{}/mcp", app.addr))
                .bearer_auth(&s.token)
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2025-06-18")
                .header("mcp-session-id", s.id.clone().expect("session"))
                .json(&json!({"jsonrpc": "2.0", "id": 99, "method": "tools/call",
                    "params": {"name": "run_code", "arguments": {"language": "python", "code": huge}}})),
        )
        .await;
    assert_refusal(&r, 413, "payload_too_large");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&max.to_string()),
        "{}",
        r.body
    );
    assert!(app.records_of_type("job.submitted").await.is_empty());
    // Without a Content-Length (chunked), the limit is found while reading.
    let body = json!({"jsonrpc": "2.0", "id": 98, "method": "tools/call",
        "params": {"name": "run_code", "arguments": {"language": "python", "code": huge}}})
    .to_string()
    .into_bytes();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let r = app
        .send(
            app.client
                .post(format!("{}/mcp", app.addr))
                .bearer_auth(&s.token)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2025-06-18")
                .header("mcp-session-id", s.id.clone().expect("session"))
                .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks))),
        )
        .await;
    assert_refusal(&r, 413, "payload_too_large");
    assert!(app.records_of_type("job.submitted").await.is_empty());
    // The same session still answers.
    let (status, tools) = rpc(&app, &mut s, "tools/list", json!({})).await;
    assert_eq!(status, 200, "{tools}");
    assert!(tools["result"]["tools"].is_array(), "{tools}");
    app.stop().await;
}

#[tokio::test]
async fn concurrent_retries_with_one_idempotency_key_submit_one_job() {
    let app = spawn_app().await;
    let s = open(&app, token("acme")).await;
    let calls = (0..6).map(|i| {
        let (app, mut s) = (
            &app,
            Session {
                id: s.id.clone(),
                token: s.token.clone(),
                next: 100 * (i + 1),
            },
        );
        async move {
            let (_, r) = rpc(
                app,
                &mut s,
                "tools/call",
                json!({"name": "submit_job", "arguments": {"language": "python",
                       "code": "print('once')", "idempotency_key": "agent-retry-1"}}),
            )
            .await;
            assert_eq!(r["result"]["isError"], false, "{r}");
            let receipt: Value = tool_json(&r);
            receipt["job_id"].as_str().expect("job id").to_owned()
        }
    });
    let ids = futures::future::join_all(calls).await;
    assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
    let submitted = app.records_of_type("job.submitted").await;
    assert_eq!(submitted.len(), 1, "one job, not {}", submitted.len());
    assert_eq!(app.records_of_type("job.accepted").await.len(), 1);
    // The same key with a different program is refused, not a second job.
    let mut s = s;
    let (_, other) = rpc(
        &app,
        &mut s,
        "tools/call",
        json!({"name": "submit_job", "arguments": {"language": "python",
               "code": "print('twice')", "idempotency_key": "agent-retry-1"}}),
    )
    .await;
    assert_eq!(other["result"]["isError"], true, "{other}");
    assert!(other.to_string().contains("idempotency"), "{other}");
    assert_eq!(app.records_of_type("job.submitted").await.len(), 1);
    app.stop().await;
}
