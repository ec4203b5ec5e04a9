//! Workflows over HTTP without a runner: definitions refused before anything
//! runs, versions, idempotent starts, what is recorded, and tenant isolation
//! on every workflow endpoint.

use crate::helpers::*;
use glassbox_command_api::testing::{claims, sign, token};
use serde_json::{Value, json};

fn bash(code: &str) -> Value {
    json!({"language": "bash", "code": code})
}

fn chain() -> Value {
    json!({"name": "report", "steps": [
        {"name": "fetch", "job": bash("mkdir -p out; echo 1 > out/data.csv")},
        {"name": "render", "needs": ["fetch"],
         "inputs": [{"from": "fetch:out/data.csv", "path": "in/data.csv"}],
         "job": bash("cat in/data.csv")},
    ]})
}

#[tokio::test]
async fn invalid_definitions_are_refused_with_the_reason_and_nothing_is_recorded() {
    let app = spawn_app().await;
    let t = token("acme");
    let before = app.records().await.len();
    let cases = [
        (
            json!({"name": "loop", "steps": [
                {"name": "a", "needs": ["c"], "job": bash("true")},
                {"name": "b", "needs": ["a"], "job": bash("true")},
                {"name": "c", "needs": ["b"], "job": bash("true")},
            ]}),
            "cycle through a, b, c",
        ),
        (
            json!({"name": "unknown", "steps": [
                {"name": "a", "needs": ["ghost"], "job": bash("true")},
            ]}),
            "no step is named ghost",
        ),
        (
            json!({"name": "missing", "steps": [
                {"name": "a", "job": bash("true")},
                {"name": "b", "inputs": [{"from": "a:out/x.txt", "path": "in/x.txt"}], "job": bash("true")},
            ]}),
            "a does not run before b",
        ),
        (
            json!({"name": "outside", "steps": [
                {"name": "a", "job": bash("true")},
                {"name": "b", "needs": ["a"], "inputs": [{"from": "a:etc/passwd", "path": "in/x"}], "job": bash("true")},
            ]}),
            "under out/",
        ),
        (
            json!({"name": "badjob", "steps": [
                {"name": "a", "job": {"language": "bash", "code": "x",
                                       "files": [{"path": "../etc/passwd", "content": "x"}]}},
            ]}),
            "steps[0].job.files[0].path",
        ),
        (
            json!({"name": "Bad Name", "steps": [{"name": "a", "job": bash("true")}]}),
            "name",
        ),
        (
            json!({"name": "twice", "steps": [
                {"name": "a", "job": bash("true")},
                {"name": "a", "job": bash("true")},
            ]}),
            "named twice",
        ),
    ];
    for (body, reason) in cases {
        let r = app.post(&t, "/v1/workflows", Some(&body)).await;
        assert_problem(&r, 400, "invalid_request");
        let detail = r.body["detail"].as_str().unwrap_or("");
        assert!(detail.contains(reason), "{reason:?} not in {detail:?}");
    }
    assert_eq!(app.records().await.len(), before, "nothing was recorded");
    app.stop().await;
}

#[tokio::test]
async fn definitions_are_versioned_by_digest_and_runs_start_once_per_key() {
    let app = spawn_app().await;
    let t = token("acme");
    let r = app.post(&t, "/v1/workflows", Some(&chain())).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["version"], 1);
    let digest = r.body["digest"].as_str().expect("digest").to_owned();
    assert!(digest.starts_with("sha256:"));
    // The same document: the same version, nothing new recorded.
    let again = app.post(&t, "/v1/workflows", Some(&chain())).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["version"], 1);
    assert_eq!(app.records_of_type("workflow.defined").await.len(), 1);
    // The record names the definition by digest; the code is not in it.
    let defined = &app.records_of_type("workflow.defined").await[0];
    assert_eq!(defined.record.data["digest"], digest.as_str());
    assert!(!String::from_utf8_lossy(&defined.canonical).contains("data.csv"));
    let mut changed = chain();
    changed["steps"][1]["retries"] = 2.into();
    let v2 = app.post(&t, "/v1/workflows", Some(&changed)).await;
    assert_eq!(v2.status, 201);
    assert_eq!(v2.body["version"], 2);
    assert_ne!(v2.body["digest"], digest.as_str());
    let versions = app.get(&t, "/v1/workflows/report").await;
    assert_eq!(versions.status, 200);
    let list = versions.body["versions"].as_array().expect("versions");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["digest"], digest.as_str());
    assert_eq!(list[0]["defined_by"], "user@acme");

    // A run of version 1, started twice with one key: one run.
    let start = |key: &'static str| {
        app.send(
            app.client
                .post(format!("{}/v1/workflows/report/runs", app.addr))
                .bearer_auth(&t)
                .header("Idempotency-Key", key)
                .json(&json!({"version": 1})),
        )
    };
    let first = start("run-1").await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    assert_eq!(first.body["digest"], digest.as_str());
    assert_eq!(first.body["version"], 1);
    let run = first.body["run_id"].as_str().expect("run").to_owned();
    assert_eq!(first.body["correlation_id"], run.as_str());
    let second = start("run-1").await;
    assert_eq!(second.status, 201);
    assert_eq!(second.body, first.body);
    assert_eq!(
        second
            .headers
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    assert_eq!(app.records_of_type("workflow.run_started").await.len(), 1);
    // The same key for another body is refused.
    let other = app
        .send(
            app.client
                .post(format!("{}/v1/workflows/report/runs", app.addr))
                .bearer_auth(&t)
                .header("Idempotency-Key", "run-1")
                .json(&json!({"version": 2})),
        )
        .await;
    assert_problem(&other, 409, "idempotency_key_reused");
    // The first step was scheduled as a job with the run's correlation ID;
    // its job was accepted (no runner here: it waits).
    let mut view = Value::Null;
    for _ in 0..50 {
        view = app.get(&t, &format!("/v1/workflow-runs/{run}")).await.body;
        if view["steps"][0]["status"] == "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(view["steps"][0]["name"], "fetch", "{view}");
    assert_eq!(view["steps"][0]["status"], "running", "{view}");
    assert_eq!(view["steps"][1]["status"], "waiting", "{view}");
    let job = view["steps"][0]["jobs"][0]
        .as_str()
        .expect("job")
        .to_owned();
    let j = app.get(&t, &format!("/v1/jobs/{job}/events")).await;
    assert_eq!(j.status, 200, "{:?}", j.body);
    let events = j.body["events"].as_array().expect("events");
    assert!(
        events
            .iter()
            .all(|e| e["record"]["correlation_id"] == run.as_str())
    );
    assert!(events.iter().any(|e| e["record"]["type"] == "job.accepted"));
    // Its submission carries the run's submitter.
    assert_eq!(events[0]["record"]["actor"]["id"], "user@acme");
    // Unknown version, unknown workflow, inputs that clash with a step's files.
    let r = app
        .post(
            &t,
            "/v1/workflows/report/runs",
            Some(&json!({"version": 9})),
        )
        .await;
    assert_problem(&r, 404, "not_found");
    let r = app.post(&t, "/v1/workflows/nothing/runs", None).await;
    assert_problem(&r, 404, "not_found");
    let r = app
        .post(
            &t,
            "/v1/workflows/report/runs",
            Some(&json!({"inputs": [{"path": "in/data.csv", "content": "x"}]})),
        )
        .await;
    assert_problem(&r, 409, "conflict");
    assert!(
        r.body["detail"].as_str().unwrap_or("").contains("render"),
        "{:?}",
        r.body
    );
    let r = app
        .post(
            &t,
            "/v1/workflows/report/runs",
            Some(&json!({"inputs": [{"path": "in/a", "content": "x"}, {"path": "in/a", "content": "y"}]})),
        )
        .await;
    assert_problem(&r, 400, "invalid_request");
    app.stop().await;
}

#[tokio::test]
async fn another_tenant_sees_no_workflow_or_run_on_any_endpoint() {
    let app = spawn_app().await;
    let acme = token("acme");
    let globex = token("globex");
    let globex_approver = sign(&claims("globex", "boss@globex", &["approver", "submitter"]));
    let r = app.post(&acme, "/v1/workflows", Some(&chain())).await;
    assert_eq!(r.status, 201);
    let run = app.post(&acme, "/v1/workflows/report/runs", None).await;
    assert_eq!(run.status, 201, "{:?}", run.body);
    let id = run.body["run_id"].as_str().expect("run").to_owned();

    assert_problem(
        &app.get(&globex, "/v1/workflows/report").await,
        404,
        "not_found",
    );
    assert_problem(
        &app.post(&globex, "/v1/workflows/report/runs", None).await,
        404,
        "not_found",
    );
    assert_problem(
        &app.get(&globex, &format!("/v1/workflow-runs/{id}")).await,
        404,
        "not_found",
    );
    assert_problem(
        &app.post(&globex, &format!("/v1/workflow-runs/{id}/cancel"), None)
            .await,
        404,
        "not_found",
    );
    for verb in ["approve", "deny"] {
        assert_problem(
            &app.post(
                &globex_approver,
                &format!("/v1/workflow-runs/{id}/steps/render/{verb}"),
                None,
            )
            .await,
            404,
            "not_found",
        );
    }
    // globex may define its own workflow of the same name: another stream.
    let mine = app.post(&globex, "/v1/workflows", Some(&chain())).await;
    assert_eq!(mine.status, 201);
    assert_eq!(mine.body["version"], 1);
    // acme's run is untouched: not cancelled.
    let v = app.get(&acme, &format!("/v1/workflow-runs/{id}")).await;
    assert_eq!(v.body["cancel_requested"], false);
    // A reader may read but not define, start or approve (recorded denials).
    let reader = sign(&claims("acme", "r@acme", &["reader"]));
    assert_eq!(
        app.get(&reader, &format!("/v1/workflow-runs/{id}"))
            .await
            .status,
        200
    );
    assert_problem(
        &app.post(&reader, "/v1/workflows", Some(&chain())).await,
        403,
        "forbidden",
    );
    assert_problem(
        &app.post(&reader, "/v1/workflows/report/runs", None).await,
        403,
        "forbidden",
    );
    let denials = app.records_of_type("policy.evaluated").await;
    assert!(
        denials.iter().any(|d| d.record.stream == "access-acme"
            && d.record.data["input"]["action"] == "workflow.define"),
        "the denial is recorded"
    );
    // Malformed IDs and names are 404s, not 400s or 500s.
    assert_problem(
        &app.get(&acme, "/v1/workflow-runs/not-a-uuid").await,
        404,
        "not_found",
    );
    assert_problem(
        &app.get(&acme, "/v1/workflows/UPPER").await,
        404,
        "not_found",
    );
    app.stop().await;
}

#[tokio::test]
async fn an_approval_nobody_gives_in_time_is_denied_and_the_run_fails() {
    let app = spawn_app_with(&[("GLASSBOX_WORKFLOW_APPROVAL_TIMEOUT_SECS", "1")]).await;
    let projector = app.run_projector();
    let t = token("acme");
    let def = json!({"name": "waits", "steps": [
        {"name": "gate", "approval": true, "job": bash("echo never")},
        {"name": "after", "needs": ["gate"], "job": bash("echo never")},
    ]});
    assert_eq!(app.post(&t, "/v1/workflows", Some(&def)).await.status, 201);
    let run = app.post(&t, "/v1/workflows/waits/runs", None).await;
    assert_eq!(run.status, 201, "{:?}", run.body);
    let id = run.body["run_id"].as_str().expect("run").to_owned();
    let mut v = Value::Null;
    // The orchestrator's sweep (every 5 s) finds the expired request.
    for _ in 0..150 {
        v = app.get(&t, &format!("/v1/workflow-runs/{id}")).await.body;
        if v["status"] != "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["steps"][0]["status"], "denied", "{v}");
    assert_eq!(v["steps"][0]["answered_by"], "glassbox-orchestrator");
    assert_eq!(v["steps"][1]["status"], "skipped", "{v}");
    let denied = app.records_of_type("workflow.approval_denied").await;
    assert_eq!(denied.len(), 1);
    assert!(
        denied[0].record.data["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no answer within 1 s"))
    );
    assert!(
        app.records_of_type("job.submitted").await.is_empty(),
        "nothing ran"
    );
    projector.cancel();
    app.stop().await;
}

#[tokio::test]
async fn a_step_using_a_production_secret_is_gated_by_policy_and_the_decision_is_recorded() {
    let app = spawn_app().await;
    let t = token("acme");
    let def = json!({"name": "deploy", "steps": [
        {"name": "build", "job": bash("echo build")},
        {"name": "ship", "needs": ["build"],
         "job": {"language": "bash", "code": "echo ship", "secrets": ["PROD_DEPLOY_TOKEN"]}},
    ]});
    assert_eq!(app.post(&t, "/v1/workflows", Some(&def)).await.status, 201);
    let run = app.post(&t, "/v1/workflows/deploy/runs", None).await;
    assert_eq!(run.status, 201, "{:?}", run.body);
    // Not asked for by the step: the policy gates it for the secret's name.
    assert_eq!(run.body["gated"], json!(["ship"]));
    let decisions = run.body["decisions"].as_array().expect("decisions");
    let gates: Vec<&Value> = decisions
        .iter()
        .filter(|d| d["policy"] == "glassbox.workflows")
        .collect();
    assert_eq!(gates.len(), 2);
    assert_eq!(gates[0]["decision"], "allow");
    assert_eq!(gates[1]["decision"], "deny");
    assert!(
        gates[1]["reasons"][0]
            .as_str()
            .is_some_and(|r| r.contains("PROD_DEPLOY_TOKEN") && r.contains("approver")),
        "{:?}",
        gates[1]
    );
    // The recorded decisions carry their input and the bundle digest (replayable).
    let recorded: Vec<_> = app
        .records_of_type("policy.evaluated")
        .await
        .into_iter()
        .filter(|r| r.record.data["policy"] == "glassbox.workflows")
        .collect();
    assert_eq!(recorded.len(), 2);
    assert_eq!(
        recorded[1].record.data["input"]["secrets"],
        json!(["PROD_DEPLOY_TOKEN"])
    );
    assert!(recorded[1].record.data["bundle_digest"].is_string());
    app.stop().await;
}
