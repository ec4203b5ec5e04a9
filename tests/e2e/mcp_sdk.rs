//! An agent on the official MCP Python SDK (PyPI `mcp`, installed by
//! `scripts/test.sh`) uses Glassbox over streamable HTTP and over stdio
//! (`glassbox mcp`), with the SDK's default negotiation and its legacy
//! initialize mode; `tests/mcp/agent.py` drives the session and checks what a
//! client sees, this test checks the negotiated versions and that the ledger
//! holds the same events as for the same requests made over REST.

use super::*;
use std::process::Command;

const AGENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/mcp/agent.py");
const GLASSBOX: &str = env!("CARGO_BIN_EXE_glassbox-e2e-cli");

/// The Python with the SDK (`scripts/test.sh` exports it).
fn python() -> String {
    std::env::var("GLASSBOX_MCP_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs the agent; returns its report (the last stdout line) and whether it succeeded.
async fn agent(what: &str, transport: &str, url: &str, token: &str, mode: &str) -> (bool, Value) {
    agent_with(what, transport, url, token, mode, &[]).await
}

async fn agent_with(
    what: &str,
    transport: &str,
    url: &str,
    token: &str,
    mode: &str,
    extra: &[&str],
) -> (bool, Value) {
    let mut cmd = Command::new(python());
    cmd.args([AGENT, what, "--transport", transport, "--url", url])
        .args(["--token", token, "--mode", mode, "--command", GLASSBOX])
        .args(extra);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("python3 with the MCP SDK (scripts/test.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "agent {what} {transport} {mode} printed no report; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), report)
}

/// The event types of a job's stream and its policy decisions (policy, decision).
async fn trail(s: &Stack, id: &str) -> (Vec<String>, Vec<(Value, Value)>) {
    // The trail ends with the job's terminal event; wait for the last steps.
    for _ in 0..50 {
        let t = types(&s.stream(id).await);
        if t.iter()
            .any(|e| e == "job.completed" || e == "job.failed" || e == "job.rejected")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records = s.stream(id).await;
    let decisions = records
        .iter()
        .filter(|r| r.record.event_type == "policy.evaluated")
        .map(|r| {
            (
                r.record.data["policy"].clone(),
                r.record.data["decision"].clone(),
            )
        })
        .collect();
    (types(&records), decisions)
}

#[tokio::test]
async fn an_agent_on_the_official_python_sdk_uses_glassbox_over_http_and_stdio() {
    let s = stack(SecretProvider::None).await;
    let tok = token("acme");
    let mcp_url = format!("{}/mcp", s.addr);

    // The same requests over REST, for comparison.
    let program = Command::new(python())
        .args([AGENT, "program"])
        .output()
        .expect("python3");
    let python_code = String::from_utf8(program.stdout).expect("utf-8");
    assert!(python_code.contains("py-ok"), "{python_code}");
    let (status, receipt) = s
        .submit(
            "acme",
            json!({"language": "python", "code": python_code, "stdin": "hello"}),
        )
        .await;
    assert_eq!(status, 201, "{receipt}");
    let rest_job = s.wait("acme", &receipt).await;
    assert_eq!(rest_job["status"], "completed", "{rest_job}");
    let rest_python = trail(&s, receipt["job_id"].as_str().expect("id")).await;
    let (status, refused) = s
        .submit(
            "acme",
            json!({"language": "python", "code": "print('never')", "limits": {"wall_time_ms": 3600000}}),
        )
        .await;
    assert_eq!(status, 403, "{refused}");
    let rest_denied = trail(&s, refused["job_id"].as_str().expect("id")).await;
    assert_eq!(
        rest_denied.0.last().map(String::as_str),
        Some("job.rejected")
    );

    for (transport, url) in [("http", &mcp_url), ("stdio", &s.addr)] {
        for (mode, expected) in [("auto", "2026-07-28"), ("legacy", "2025-11-25")] {
            let (ok, report) = agent("scenario", transport, url, &tok, mode).await;
            assert!(ok, "{transport} {mode}: {report}");
            // The version each negotiation mode settles on with this server:
            // discover's newest for the default, the handshake's for legacy.
            assert_eq!(report["protocol_version"], expected, "{report}");
            assert_eq!(report["server"], "glassbox", "{report}");

            // The ledger holds what the same REST request leaves: the same
            // steps and the same policy decisions.
            let mcp_python = trail(&s, report["python_job"].as_str().expect("job")).await;
            assert_eq!(mcp_python, rest_python, "{transport} {mode}");
            let denial = report["denial"].as_str().expect("denial");
            let denied_id = denial
                .split("job ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .expect("the denied job's ID in the message");
            let mcp_denied = trail(&s, denied_id).await;
            assert_eq!(mcp_denied, rest_denied, "{transport} {mode}: {denial}");
            // The actor is the token's, as over REST.
            let submitted = s
                .stream(report["python_job"].as_str().expect("job"))
                .await
                .into_iter()
                .next()
                .expect("job.submitted");
            assert_eq!(submitted.record.actor.id, "user@acme");
            assert_eq!(submitted.record.tenant, "acme");
        }
    }

    // No valid token, no session: over HTTP (none at all) and stdio (a bad one).
    for (transport, url, bad) in [("http", &mcp_url, ""), ("stdio", &s.addr, "not-a-token")] {
        for mode in ["auto", "legacy"] {
            let (_, report) = agent("refused", transport, url, bad, mode).await;
            assert_eq!(report["refused"], true, "{transport} {mode}: {report}");
            let message = report["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("unauthenticated"),
                "{transport} {mode}: {message}"
            );
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn an_agent_on_the_official_python_sdk_drives_a_session() {
    let s = stack(SecretProvider::None).await;
    let h = super::sessions::host(&s, false).await;
    let (ok, report) = agent(
        "session",
        "http",
        &format!("{}/mcp", s.addr),
        &token("acme"),
        "auto",
    )
    .await;
    assert!(ok, "{report}");
    let id = report["session"].as_str().expect("session");
    let t = types(
        &s.store
            .read_stream(&format!("session-{id}"), 1, 1000)
            .await
            .expect("stream"),
    );
    for e in [
        "session.opened",
        "session.started",
        "session.exec_finished",
        "session.file_written",
        "session.file_read",
        "session.files_listed",
        "session.closed",
    ] {
        assert!(t.iter().any(|x| x == e), "{e} missing from {t:?}");
    }
    h.stop.cancel();
    let _ = h.task.await;
    s.stop().await;
}

#[tokio::test]
async fn an_agent_on_the_official_python_sdk_runs_a_workflow_with_an_approval_in_between() {
    let s = stack(SecretProvider::None).await;
    let approver = glassbox_command_api::testing::sign(&glassbox_command_api::testing::claims(
        "acme",
        "reviewer@acme",
        &["approver"],
    ));
    // The submitter is an approver too: four eyes still refuse them.
    let submitter = glassbox_command_api::testing::sign(&glassbox_command_api::testing::claims(
        "acme",
        "user@acme",
        &["submitter", "approver"],
    ));
    let (ok, report) = agent_with(
        "workflow",
        "http",
        &format!("{}/mcp", s.addr),
        &submitter,
        "auto",
        &["--approver-token", &approver],
    )
    .await;
    assert!(ok, "{report}");
    assert_eq!(report["status"], "succeeded", "{report}");
    let run = report["run_id"].as_str().expect("run id");
    let t = types(
        &s.store
            .read_stream(&format!("workflow-run-{run}"), 1, 1000)
            .await
            .expect("stream"),
    );
    for e in [
        "workflow.run_started",
        "workflow.step_scheduled",
        "workflow.approval_requested",
        "workflow.approval_refused",
        "workflow.approval_granted",
        "workflow.step_finished",
        "workflow.run_finished",
    ] {
        assert!(t.iter().any(|x| x == e), "{e} missing from {t:?}");
    }
    // The refusal names the submitter; the grant the reviewer.
    let records = s
        .store
        .read_stream(&format!("workflow-run-{run}"), 1, 1000)
        .await
        .expect("stream");
    let refused = records
        .iter()
        .find(|r| r.record.event_type == "workflow.approval_refused")
        .expect("refusal");
    assert_eq!(refused.record.data["approver"], "user@acme");
    let granted = records
        .iter()
        .find(|r| r.record.event_type == "workflow.approval_granted")
        .expect("grant");
    assert_eq!(granted.record.data["approver"], "reviewer@acme");
    assert_eq!(granted.record.correlation_id, run);
    s.stop().await;
}
