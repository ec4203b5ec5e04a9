//! Workflows end to end: definitions over HTTP, runs whose steps are real jobs
//! under runsc, artifacts passed between steps, failures, retries, approvals,
//! an orchestrator that dies mid-run, and the run's evidence bundle.

use super::*;
use glassbox_command_api::testing::{claims, sign};

async fn post(s: &Stack, bearer: &str, path: &str, body: Value) -> (u16, Value) {
    let r = s
        .client
        .post(format!("{}{path}", s.addr))
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .expect("post");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn define(s: &Stack, tenant: &str, def: Value) -> Value {
    let (status, body) = post(s, &token(tenant), "/v1/workflows", def).await;
    assert!(status == 201 || status == 200, "{status} {body}");
    body
}

async fn start(s: &Stack, tenant: &str, name: &str, body: Value) -> Value {
    let (status, r) = post(
        s,
        &token(tenant),
        &format!("/v1/workflows/{name}/runs"),
        body,
    )
    .await;
    assert_eq!(status, 201, "{r}");
    r
}

/// Polls the run until it is no longer running (or `until` holds); returns it.
async fn wait_run(s: &Stack, tenant: &str, run: &str, until: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..600 {
        let (status, v) = s.get(tenant, &format!("/v1/workflow-runs/{run}")).await;
        assert_eq!(status, 200, "{v}");
        if v["status"] != "running" || until(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("run {run} did not settle in 2 minutes");
}

fn step<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {run}"))
}

async fn stdout_of(s: &Stack, tenant: &str, job: &str) -> String {
    let (status, out) = s.get(tenant, &format!("/v1/jobs/{job}/output")).await;
    assert_eq!(status, 200, "{out}");
    out["stdout"]["content"].as_str().unwrap_or("").to_owned()
}

async fn run_types(s: &Stack, run: &str) -> Vec<StoredRecord> {
    stream(&s.store, &format!("workflow-run-{run}")).await
}

async fn stream(store: &EventStore, name: &str) -> Vec<StoredRecord> {
    store.read_stream(name, 1, 1000).await.expect("stream")
}

fn py(code: &str) -> Value {
    json!({"language": "python", "code": code})
}

/// Python that writes `out/NAME` and records when it ran (epoch ms).
fn timed(name: &str, body: &str) -> String {
    format!(
        "import os, time\nt0 = time.time()\n{body}\ntime.sleep(1.5)\nos.makedirs('/workspace/out', exist_ok=True)\nopen('/workspace/out/{name}', 'w').write(data)\nprint(int(t0 * 1000), int(time.time() * 1000))"
    )
}

fn interval(stdout: &str) -> (u64, u64) {
    let mut it = stdout
        .split_whitespace()
        .map(|x| x.parse::<u64>().expect("ms"));
    (it.next().expect("start"), it.next().expect("end"))
}

#[tokio::test]
async fn a_diamond_passes_artifacts_and_runs_its_middle_steps_at_once() {
    let s = stack(SecretProvider::None).await;
    let def = define(
        &s,
        "acme",
        json!({
            "name": "diamond",
            "steps": [
                {"name": "d", "needs": ["b", "c"],
                 "inputs": [{"from": "b:out/b.txt", "path": "in/b.txt"},
                            {"from": "c:out/c.txt", "path": "in/c.txt"}],
                 "job": py("print(open('in/b.txt').read() + '+' + open('in/c.txt').read())")},
                {"name": "a", "job": py("import os\nos.makedirs('/workspace/out', exist_ok=True)\nopen('/workspace/out/seed.txt', 'w').write('seed')")},
                {"name": "b", "needs": ["a"], "inputs": [{"from": "a:out/seed.txt", "path": "in/seed.txt"}],
                 "job": py(&timed("b.txt", "data = 'b:' + open('in/seed.txt').read()"))},
                {"name": "c", "needs": ["a"], "inputs": [{"from": "a:out/seed.txt", "path": "in/seed.txt"}],
                 "job": py(&timed("c.txt", "data = 'c:' + open('in/seed.txt').read()"))},
            ]
        }),
    )
    .await;
    assert_eq!(def["steps"], json!(["a", "b", "c", "d"]), "{def}");
    assert_eq!(def["version"], 1);
    // The same document again is the same version; a changed one is version 2.
    let again = define(
        &s,
        "acme",
        json!({"name": "diamond", "steps": [{"name": "x", "job": py("print(1)")}]}),
    )
    .await;
    assert_eq!(again["version"], 2);
    let (status, versions) = s.get("acme", "/v1/workflows/diamond").await;
    assert_eq!(status, 200);
    assert_eq!(versions["versions"].as_array().map(Vec::len), Some(2));

    let r = start(&s, "acme", "diamond", json!({"version": 1})).await;
    let run = r["run_id"].as_str().expect("run id").to_owned();
    assert_eq!(r["correlation_id"], run.as_str());
    assert_eq!(r["digest"], def["digest"]);
    let v = wait_run(&s, "acme", &run, |_| false).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    for n in ["a", "b", "c", "d"] {
        assert_eq!(step(&v, n)["status"], "succeeded", "{v}");
        assert_eq!(step(&v, n)["jobs"].as_array().map(Vec::len), Some(1), "{v}");
    }
    let job = |n: &str| step(&v, n)["jobs"][0].as_str().expect("job").to_owned();
    assert_eq!(stdout_of(&s, "acme", &job("d")).await, "b:seed+c:seed\n");
    // b and c ran at the same time.
    let (b0, b1) = interval(&stdout_of(&s, "acme", &job("b")).await);
    let (c0, c1) = interval(&stdout_of(&s, "acme", &job("c")).await);
    assert!(
        b0 < c1 && c0 < b1,
        "b {b0}..{b1} and c {c0}..{c1} did not overlap"
    );
    // Every step's job carries the run's correlation ID.
    for n in ["a", "b", "c", "d"] {
        for r in s.stream(&job(n)).await {
            assert_eq!(r.record.correlation_id, run, "{}", r.record.event_type);
        }
    }
    let records = run_types(&s, &run).await;
    let t = types(&records);
    assert_eq!(
        t.iter().filter(|e| *e == "workflow.step_scheduled").count(),
        4,
        "{t:?}"
    );
    assert_eq!(t.last().map(String::as_str), Some("workflow.run_finished"));
    s.stop().await;
}

#[tokio::test]
async fn a_failing_step_skips_its_dependants_and_retries_rerun_only_it() {
    let s = stack(SecretProvider::None).await;
    define(
        &s,
        "acme",
        json!({
            "name": "fails",
            "steps": [
                {"name": "flaky", "retries": 2, "job": {"language": "bash", "code": "echo trying; exit 3"}},
                {"name": "after", "needs": ["flaky"], "job": {"language": "bash", "code": "echo never"}},
                {"name": "later", "needs": ["after"], "job": {"language": "bash", "code": "echo never"}},
                {"name": "solo", "job": {"language": "bash", "code": "echo solo"}},
            ]
        }),
    )
    .await;
    let r = start(&s, "acme", "fails", json!({})).await;
    let run = r["run_id"].as_str().expect("run").to_owned();
    let v = wait_run(&s, "acme", &run, |_| false).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(step(&v, "flaky")["status"], "failed");
    assert_eq!(step(&v, "flaky")["attempt"], 3);
    let jobs = step(&v, "flaky")["jobs"].as_array().expect("jobs").clone();
    assert_eq!(jobs.len(), 3, "three attempts, three jobs: {v}");
    assert_ne!(jobs[0], jobs[1]);
    assert_eq!(step(&v, "after")["status"], "skipped");
    assert_eq!(step(&v, "later")["status"], "skipped");
    assert_eq!(step(&v, "after")["jobs"], json!([]));
    assert_eq!(step(&v, "solo")["status"], "succeeded");
    assert_eq!(step(&v, "solo")["jobs"].as_array().map(Vec::len), Some(1));
    let records = run_types(&s, &run).await;
    let finished: Vec<&StoredRecord> = records
        .iter()
        .filter(|r| {
            r.record.event_type == "workflow.step_finished" && r.record.data["step"] == "flaky"
        })
        .collect();
    assert_eq!(finished.len(), 3);
    assert!(
        finished[0].record.data["reason"]
            .as_str()
            .is_some_and(|r| r.contains("exit code 3")),
        "{:?}",
        finished[0].record.data
    );
    let skipped: Vec<_> = records
        .iter()
        .filter(|r| r.record.event_type == "workflow.step_skipped")
        .map(|r| &r.record.data)
        .collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    let finish = records.last().expect("last");
    assert_eq!(finish.record.event_type, "workflow.run_finished");
    assert_eq!(finish.record.data["succeeded"], false);
    s.stop().await;
}

#[tokio::test]
async fn an_approval_gate_waits_for_someone_else_and_a_denial_fails_the_run() {
    let s = stack(SecretProvider::None).await;
    let reviewer = sign(&claims("acme", "reviewer@acme", &["approver"]));
    let outsider = sign(&claims("acme", "intern@acme", &["reader"]));
    define(
        &s,
        "acme",
        json!({
            "name": "gated",
            "steps": [
                {"name": "prepare", "job": {"language": "bash", "code": "echo ready"}},
                {"name": "deploy", "needs": ["prepare"], "approval": true,
                 "job": {"language": "bash", "code": "echo deployed"}},
            ]
        }),
    )
    .await;
    // The submitter is an approver too: four eyes still refuse them.
    let lead = sign(&claims("acme", "lead@acme", &["submitter", "approver"]));
    let (status, r) = post(&s, &lead, "/v1/workflows/gated/runs", json!({})).await;
    assert_eq!(status, 201, "{r}");
    assert_eq!(r["gated"], json!(["deploy"]), "{r}");
    let run = r["run_id"].as_str().expect("run").to_owned();
    let waiting = |v: &Value| step(v, "deploy")["status"] == "awaiting_approval";
    let v = wait_run(&s, "acme", &run, waiting).await;
    assert!(waiting(&v), "{v}");
    // It stays blocked: nothing runs while nobody answers.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, v) = s.get("acme", &format!("/v1/workflow-runs/{run}")).await;
    assert!(waiting(&v), "{v}");
    assert_eq!(step(&v, "deploy")["jobs"], json!([]));

    let approve = format!("/v1/workflow-runs/{run}/steps/deploy/approve");
    // The submitter's own approval is refused, and recorded.
    let (status, p) = post(&s, &lead, &approve, json!({})).await;
    assert_eq!(status, 403, "{p}");
    assert!(
        p["detail"]
            .as_str()
            .unwrap_or("")
            .contains("submitted the run"),
        "{p}"
    );
    // Someone without the approver role is refused by authz (recorded on access-acme).
    let (status, p) = post(&s, &outsider, &approve, json!({})).await;
    assert_eq!(status, 403, "{p}");
    // A step that does not wait for approval: 409.
    let (status, p) = post(
        &s,
        &reviewer,
        &format!("/v1/workflow-runs/{run}/steps/prepare/approve"),
        json!({}),
    )
    .await;
    assert_eq!(status, 409, "{p}");
    let (status, a) = post(
        &s,
        &reviewer,
        &approve,
        json!({"reason": "change ticket 7"}),
    )
    .await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["outcome"], "granted");
    let v = wait_run(&s, "acme", &run, |_| false).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(step(&v, "deploy")["answered_by"], "reviewer@acme");
    let deploy_job = step(&v, "deploy")["jobs"][0]
        .as_str()
        .expect("job")
        .to_owned();
    assert_eq!(stdout_of(&s, "acme", &deploy_job).await, "deployed\n");
    let records = run_types(&s, &run).await;
    let refused = records
        .iter()
        .find(|r| r.record.event_type == "workflow.approval_refused")
        .expect("refusal recorded");
    assert_eq!(refused.record.data["approver"], "lead@acme");
    // Every answer carries the policy decision it was made with.
    let decisions: Vec<&StoredRecord> = records
        .iter()
        .filter(|r| {
            r.record.event_type == "policy.evaluated"
                && r.record.data["policy"] == "glassbox.workflows"
        })
        .collect();
    assert_eq!(decisions.len(), 2 + 2, "two gates and two answers");
    assert!(
        decisions
            .iter()
            .all(|d| d.record.data["bundle_digest"].is_string())
    );

    // A denial: the step is denied, the run fails.
    let r = start(&s, "acme", "gated", json!({})).await;
    let run2 = r["run_id"].as_str().expect("run").to_owned();
    wait_run(&s, "acme", &run2, waiting).await;
    let (status, a) = post(
        &s,
        &reviewer,
        &format!("/v1/workflow-runs/{run2}/steps/deploy/deny"),
        json!({"reason": "not today"}),
    )
    .await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["outcome"], "denied");
    let v = wait_run(&s, "acme", &run2, |_| false).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(step(&v, "deploy")["status"], "denied");
    assert_eq!(step(&v, "deploy")["jobs"], json!([]));
    s.stop().await;
}

#[tokio::test]
async fn a_cancel_stops_the_running_step_and_skips_the_rest() {
    let s = stack(SecretProvider::None).await;
    define(
        &s,
        "acme",
        json!({
            "name": "slow",
            "steps": [
                {"name": "long", "job": {"language": "bash", "code": "sleep 8; echo done"}},
                {"name": "next", "needs": ["long"], "job": {"language": "bash", "code": "echo next"}},
            ]
        }),
    )
    .await;
    let r = start(&s, "acme", "slow", json!({})).await;
    let run = r["run_id"].as_str().expect("run").to_owned();
    let running = |v: &Value| step(v, "long")["status"] == "running";
    wait_run(&s, "acme", &run, running).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, c) = post(
        &s,
        &token("acme"),
        &format!("/v1/workflow-runs/{run}/cancel"),
        json!({}),
    )
    .await;
    assert_eq!(status, 202, "{c}");
    let v = wait_run(&s, "acme", &run, |_| false).await;
    assert_eq!(v["status"], "cancelled", "{v}");
    assert!(v["cancel_requested"].as_bool().unwrap_or(false));
    assert_eq!(step(&v, "long")["status"], "failed", "{v}");
    assert_eq!(step(&v, "next")["status"], "skipped", "{v}");
    let job = step(&v, "long")["jobs"][0]
        .as_str()
        .expect("job")
        .to_owned();
    let (_, j) = s.get("acme", &format!("/v1/jobs/{job}?wait=10")).await;
    assert_eq!(j["status"], "cancelled", "{j}");
    // Cancelling a finished run is a conflict.
    let (status, _) = post(
        &s,
        &token("acme"),
        &format!("/v1/workflow-runs/{run}/cancel"),
        json!({}),
    )
    .await;
    assert_eq!(status, 409);
    s.stop().await;
}

#[tokio::test]
async fn another_orchestrator_continues_a_run_whose_orchestrator_died_without_rerunning_steps() {
    glassbox_platform::install_crypto_provider();
    let db = TestDb::new().await.expect("database");
    let data_dir = std::env::temp_dir().join(format!("glassbox-e2e-{}", db.name));
    let config = || {
        glassbox_platform::Config::from_vars(vars(&db.url, &data_dir).expect("vars"))
            .expect("config")
    };
    // Instance A: the API and its orchestrator; the projector and runner apart.
    let a = Application::build(config()).await.expect("instance a");
    let a_addr = format!("http://127.0.0.1:{}", a.port());
    let a_stop = a.shutdown_token();
    let core = a.state().core.clone();
    tokio::spawn(a.run_until_stopped());
    let rest = CancellationToken::new();
    tokio::spawn(glassbox_projector::Projector::new(core.store.clone()).run(None, rest.clone()));
    spawn_runner(&core, SecretProvider::None, None, Default::default(), &rest).await;
    let client = reqwest::Client::new();
    let send = |addr: &str, path: &str, body: Value| {
        client
            .post(format!("{addr}{path}"))
            .bearer_auth(token("acme"))
            .json(&body)
            .send()
    };
    let r = send(
        &a_addr,
        "/v1/workflows",
        json!({"name": "chain", "steps": [
            {"name": "one", "job": {"language": "bash", "code": "sleep 3; echo one"}},
            {"name": "two", "needs": ["one"], "job": {"language": "bash", "code": "echo two"}},
            {"name": "three", "needs": ["two"], "job": {"language": "bash", "code": "echo three"}},
        ]}),
    )
    .await
    .expect("define");
    assert_eq!(r.status().as_u16(), 201);
    let r: Value = send(&a_addr, "/v1/workflows/chain/runs", json!({}))
        .await
        .expect("start")
        .json()
        .await
        .expect("json");
    let run = r["run_id"].as_str().expect("run").to_owned();
    // A dies while step one runs.
    for _ in 0..100 {
        let t = types(&stream(&core.store, &format!("workflow-run-{run}")).await);
        if t.iter().any(|e| e == "workflow.step_scheduled") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a_stop.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Nothing moves the run while no orchestrator lives: step one's job ends,
    // step two is not scheduled.
    let mut one_ended = false;
    for _ in 0..100 {
        let t = types(&stream(&core.store, &format!("workflow-run-{run}")).await);
        let jobs: Vec<String> = stream(&core.store, &format!("workflow-run-{run}"))
            .await
            .iter()
            .filter(|r| r.record.event_type == "workflow.step_scheduled")
            .filter_map(|r| r.record.data["job_id"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(jobs.len(), 1, "{t:?}");
        let job = types(&stream(&core.store, &format!("job-{}", jobs[0])).await);
        if job.iter().any(|e| e == "job.completed") {
            one_ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(one_ended, "step one's job finished");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = types(&stream(&core.store, &format!("workflow-run-{run}")).await);
    assert_eq!(
        t.iter().filter(|e| *e == "workflow.step_scheduled").count(),
        1,
        "{t:?}"
    );
    assert!(!t.iter().any(|e| e == "workflow.step_finished"), "{t:?}");
    // Instance B starts and continues the run.
    let b = Application::build(config()).await.expect("instance b");
    let b_addr = format!("http://127.0.0.1:{}", b.port());
    let b_stop = b.shutdown_token();
    tokio::spawn(b.run_until_stopped());
    let mut v = Value::Null;
    for _ in 0..300 {
        v = client
            .get(format!("{b_addr}/v1/workflow-runs/{run}"))
            .bearer_auth(token("acme"))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        if v["status"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(v["status"], "succeeded", "{v}");
    let records = stream(&core.store, &format!("workflow-run-{run}")).await;
    let scheduled: Vec<String> = records
        .iter()
        .filter(|r| r.record.event_type == "workflow.step_scheduled")
        .map(|r| r.record.data["step"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(scheduled, ["one", "two", "three"], "each step once");
    // Each step's job ran exactly once.
    for s in v["steps"].as_array().expect("steps") {
        let job = s["jobs"][0].as_str().expect("job");
        let t = types(&stream(&core.store, &format!("job-{job}")).await);
        assert_eq!(
            t.iter().filter(|e| *e == "execution.started").count(),
            1,
            "{t:?}"
        );
    }
    b_stop.cancel();
    rest.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = std::fs::remove_dir_all(&data_dir);
    db.drop_db().await;
}

#[tokio::test]
async fn the_runs_evidence_bundle_holds_its_records_and_no_other_runs() {
    let s = stack(SecretProvider::None).await;
    let reviewer = sign(&claims("acme", "reviewer@acme", &["approver"]));
    define(
        &s,
        "acme",
        json!({"name": "evidence", "steps": [
            {"name": "make", "job": {"language": "bash", "code": "mkdir -p out; echo 1 > out/x.txt"}},
            {"name": "ship", "needs": ["make"], "approval": true,
             "inputs": [{"from": "make:out/x.txt", "path": "in/x.txt"}],
             "job": {"language": "bash", "code": "cat in/x.txt"}},
        ]}),
    )
    .await;
    let mut runs = Vec::new();
    for _ in 0..2 {
        let r = start(&s, "acme", "evidence", json!({})).await;
        let run = r["run_id"].as_str().expect("run").to_owned();
        wait_run(&s, "acme", &run, |v| {
            step(v, "ship")["status"] == "awaiting_approval"
        })
        .await;
        let (status, a) = post(
            &s,
            &reviewer,
            &format!("/v1/workflow-runs/{run}/steps/ship/approve"),
            json!({}),
        )
        .await;
        assert_eq!(status, 200, "{a}");
        let v = wait_run(&s, "acme", &run, |_| false).await;
        assert_eq!(v["status"], "succeeded", "{v}");
        runs.push((run, v));
    }
    let (run, v) = &runs[0];
    let out = s.data_dir.join("run.tar");
    let key = s.data_dir.join("ledger.key");
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_glassbox-e2e-cli"))
            .args(args)
            .env("DATABASE_URL", &s.db.url)
            .env("GLASSBOX_LEDGER_KEY_FILE", &key)
            .output()
            .expect("glassbox")
    };
    let keygen = cli(&["keys", "generate"]);
    assert!(
        keygen.status.success(),
        "{}",
        String::from_utf8_lossy(&keygen.stderr)
    );
    let verifier = String::from_utf8_lossy(&keygen.stdout).trim().to_owned();
    let cp = cli(&["ledger", "checkpoint"]);
    assert!(
        cp.status.success(),
        "{}",
        String::from_utf8_lossy(&cp.stderr)
    );
    let out_s = out.to_str().expect("path");
    let mut report = Value::Null;
    for _ in 0..100 {
        let ex = cli(&[
            "audit",
            "export",
            "--out",
            out_s,
            "--tenant",
            "acme",
            "--correlation",
            run,
        ]);
        if ex.status.success() {
            report = serde_json::from_slice(&ex.stdout).expect("report");
            break;
        }
        // The audit index catches up with the checkpoint.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(report["records"].as_u64().unwrap_or(0) > 10, "{report}");
    let verified = cli(&["audit", "verify-bundle", out_s, "--key", &verifier]);
    assert!(
        verified.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    // The bundle's records: exactly the run's correlation — the run's stream,
    // both steps' job streams, the approval — and nothing of the other run.
    let tar = std::fs::read(&out).expect("bundle");
    let text = String::from_utf8_lossy(&tar);
    let other = &runs[1].0;
    assert!(
        !text.contains(other.as_str()),
        "the other run's ID is in the bundle"
    );
    for job in v["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["jobs"][0].as_str().expect("job"))
    {
        assert!(text.contains(&format!("job-{job}")), "job {job} missing");
    }
    for e in [
        "workflow.run_started",
        "workflow.approval_granted",
        "workflow.step_finished",
        "workflow.run_finished",
        "execution.finished",
    ] {
        assert!(text.contains(e), "{e} missing from the bundle");
    }
    assert!(text.contains(v["digest"].as_str().expect("digest")));
    s.stop().await;
}

// The CLI is a blocking child process talking to the server in this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_applies_a_yaml_definition_runs_it_and_answers_its_approval() {
    let s = stack(SecretProvider::None).await;
    let dir = s.data_dir.join("cli");
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("pipeline.yaml");
    std::fs::write(
        &file,
        "name: pipeline\nsteps:\n  - name: count\n    job:\n      language: bash\n      code: |\n        mkdir -p out\n        wc -c < in/data.txt > out/n.txt\n  - name: report\n    needs: [count]\n    approval: true\n    inputs:\n      - from: count:out/n.txt\n        path: in/n.txt\n    job:\n      language: bash\n      code: |\n        echo \"bytes: $(cat in/n.txt)\"\n",
    )
    .expect("write");
    let data = dir.join("data.txt");
    std::fs::write(&data, "hello world\n").expect("write");
    let author = sign(&claims("acme", "alice@acme", &["submitter", "approver"]));
    let reviewer = sign(&claims("acme", "bob@acme", &["approver"]));
    let cli = |bearer: &str, args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_glassbox-e2e-cli"))
            .arg("workflow")
            .args(args)
            .args(["--api", &s.addr, "--token", bearer])
            .output()
            .expect("glassbox workflow")
    };
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let applied = cli(&author, &["apply", file.to_str().expect("path")]);
    assert!(applied.status.success(), "{}", text(&applied));
    assert!(
        text(&applied).starts_with("pipeline v1 sha256:"),
        "{}",
        text(&applied)
    );
    // Applying the same file again is no new version.
    let again = cli(&author, &["apply", file.to_str().expect("path")]);
    assert!(text(&again).contains("(unchanged)"), "{}", text(&again));
    let input = format!("in/data.txt={}", data.display());
    let started = cli(&author, &["run", "pipeline", "--input", &input]);
    assert!(started.status.success(), "{}", text(&started));
    let run = String::from_utf8_lossy(&started.stdout).trim().to_owned();
    assert!(uuid::Uuid::parse_str(&run).is_ok(), "{run}");
    // Waits for the approval: exit code 3 while the run is not over.
    let waiting = cli(&author, &["status", &run, "--wait", "60"]);
    assert_eq!(waiting.status.code(), Some(3), "{}", text(&waiting));
    assert!(
        text(&waiting).contains("awaiting_approval"),
        "{}",
        text(&waiting)
    );
    // The author may not approve their own run.
    let own = cli(&author, &["approve", &run, "report"]);
    assert_eq!(own.status.code(), Some(2), "{}", text(&own));
    assert!(text(&own).contains("submitted the run"), "{}", text(&own));
    let approved = cli(&reviewer, &["approve", &run, "report", "--reason", "ok"]);
    assert!(approved.status.success(), "{}", text(&approved));
    assert!(text(&approved).contains("granted"), "{}", text(&approved));
    let done = cli(&author, &["status", &run, "--wait", "60", "--json"]);
    assert_eq!(done.status.code(), Some(0), "{}", text(&done));
    let v: Value = serde_json::from_slice(&done.stdout).expect("json");
    assert_eq!(v["status"], "succeeded");
    let job = step(&v, "report")["jobs"][0]
        .as_str()
        .expect("job")
        .to_owned();
    assert_eq!(stdout_of(&s, "acme", &job).await, "bytes: 12\n");
    s.stop().await;
}
