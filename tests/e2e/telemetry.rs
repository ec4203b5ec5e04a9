//! Telemetry across the planes, with real receivers: the control plane
//! (`glassbox serve`) and a runner (`glassbox runner`) as separate processes,
//! exporting to an OTLP receiver in this test — the control plane over gRPC,
//! the runner over HTTP/protobuf — and scraped by a real Prometheus server.
//!
//! One job's trace must run from `POST /v1/jobs` through the command, its
//! policy evaluations and ledger appends, the projector, the runner's claim
//! and attempt and the sandbox's phases, with the trace ID derived from the
//! records' correlation ID; and markers planted in the code, stdin, a secret
//! and the token must be in no span, attribute or log line.

#[path = "../metric_names.rs"]
mod metric_names;

use glassbox_cli::otlp_sink::OtlpSink;
use glassbox_command_api::testing::{claims, jwks_file, sign};
use glassbox_events::testing::TestDb;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const GLASSBOX: &str = env!("CARGO_BIN_EXE_glassbox-e2e-cli");

// ---------------------------------------------------------------- the receiver

/// Starts the receiver: OTLP/gRPC on one port, OTLP/HTTP (protobuf bodies on
/// `/v1/traces` and `/v1/metrics`) on another, both into one keeping sink.
async fn receiver() -> (OtlpSink, u16, u16) {
    let got = OtlpSink::keeping();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let grpc_port = grpc.local_addr().expect("addr").port();
    got.serve_grpc(grpc);
    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let http_port = http.local_addr().expect("addr").port();
    let (t, m) = (got.clone(), got.clone());
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let t = t.clone();
                async move {
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(r) => {
                            t.record_traces(r);
                            axum::http::StatusCode::OK
                        }
                        Err(_) => axum::http::StatusCode::BAD_REQUEST,
                    }
                }
            }),
        )
        .route(
            "/v1/metrics",
            axum::routing::post(move |body: axum::body::Bytes| {
                let m = m.clone();
                async move {
                    match ExportMetricsServiceRequest::decode(body) {
                        Ok(r) => {
                            m.record_metrics(r);
                            axum::http::StatusCode::OK
                        }
                        Err(_) => axum::http::StatusCode::BAD_REQUEST,
                    }
                }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(http, app).await;
    });
    (got, grpc_port, http_port)
}

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: Vec<(String, String)>,
    links: Vec<(String, String)>,
}

impl Span {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn any_to_string(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// Every span the sink kept, flattened.
fn all_spans(got: &OtlpSink) -> Vec<Span> {
    let mut out = Vec::new();
    for req in got.traces() {
        for rs in &req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .map(|a| any_to_string(&a.value))
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    out.push(Span {
                        service: service.clone(),
                        name: s.name.clone(),
                        trace_id: hex::encode(&s.trace_id),
                        span_id: hex::encode(&s.span_id),
                        parent: hex::encode(&s.parent_span_id),
                        attributes: s
                            .attributes
                            .iter()
                            .map(|a| (a.key.clone(), any_to_string(&a.value)))
                            .collect(),
                        links: s
                            .links
                            .iter()
                            .map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id)))
                            .collect(),
                    });
                }
            }
        }
    }
    out
}

/// Everything the sink kept, as text (for the marker search).
fn dump(got: &OtlpSink) -> String {
    format!("{:?}\n{:?}", got.traces(), got.metrics())
}

/// The names of the metrics the sink kept.
fn exported_metric_names(got: &OtlpSink) -> std::collections::BTreeSet<String> {
    got.metrics()
        .iter()
        .flat_map(|req| &req.resource_metrics)
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .map(|m| m.name.clone())
        .collect()
}

// ---------------------------------------------------------------- the planes

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Planes {
    db: Option<TestDb>,
    /// Whether the processes export traces.
    traced: bool,
    dir: PathBuf,
    api: String,
    runner_metrics: u16,
    control: Child,
    runner: Child,
    client: reqwest::Client,
}

impl Drop for Planes {
    fn drop(&mut self) {
        for c in [&mut self.control, &mut self.runner] {
            // SIGTERM first: each process flushes its telemetry on the way out.
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for c in [&mut self.control, &mut self.runner] {
            for _ in 0..50 {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn base_env(cmd: &mut Command, db: &TestDb, dir: &Path) {
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GLASSBOX_ENV", "test")
        .env("GLASSBOX_DATABASE_URL", &db.url)
        .env("GLASSBOX_DATA_DIR", dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null());
}

/// Environment variables for one process.
type Settings = Vec<(&'static str, String)>;

/// Both planes as processes on a fresh database; `otel` adds the exporter
/// settings of (control plane, runner).
async fn planes(
    otel: Option<(Settings, Settings)>,
    secret_value: &str,
    with_sessions: bool,
) -> Planes {
    glassbox_platform::install_crypto_provider();
    let db = TestDb::new().await.expect("database");
    let dir = std::env::temp_dir().join(format!("glassbox-telemetry-{}", db.name));
    std::fs::create_dir_all(&dir).expect("dir");
    let jwks = jwks_file(&dir).expect("jwks");
    let secrets = dir.join("secrets.json");
    std::fs::write(
        &secrets,
        json!({"OPENAI_API_KEY": secret_value}).to_string(),
    )
    .expect("secrets");
    let traced = otel.is_some();
    let (control_otel, runner_otel) = otel.unwrap_or_default();
    // Migrations and keys first, so the two processes do not race for them.
    let pool = glassbox_command_api::connect(&db.url)
        .await
        .expect("migrate");
    drop(pool);

    let port = free_port();
    let mut cmd = Command::new(GLASSBOX);
    cmd.arg("serve");
    base_env(&mut cmd, &db, &dir);
    cmd.env("GLASSBOX_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("GLASSBOX_AUTH_JWKS_FILE", &jwks)
        .env("GLASSBOX_RATE_LIMIT_PER_SEC", "100000")
        .env("GLASSBOX_LEDGER_KEY_FILE", dir.join("ledger.key"))
        .env("GLASSBOX_CHECKPOINT_INTERVAL_MS", "200")
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("control.log")).expect("log"),
        ));
    for (k, v) in &control_otel {
        cmd.env(k, v);
    }
    let control = cmd.spawn().expect("glassbox serve");
    let client = reqwest::Client::new();
    let api = format!("http://127.0.0.1:{port}");
    let mut ready = false;
    for _ in 0..300 {
        if let Ok(r) = client.get(format!("{api}/readyz")).send().await
            && r.status().is_success()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ready,
        "the control plane never became ready: {}",
        std::fs::read_to_string(dir.join("control.log")).unwrap_or_default()
    );

    let runner_metrics = free_port();
    let mut cmd = Command::new(GLASSBOX);
    cmd.arg("runner");
    base_env(&mut cmd, &db, &dir);
    cmd.env(
        "GLASSBOX_RUNNER_ID",
        format!("otel{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
    )
    .env("GLASSBOX_RUNNER_SLOTS", "2")
    .env(
        "GLASSBOX_RUNNER_SESSIONS",
        if with_sessions { "true" } else { "false" },
    )
    .env("GLASSBOX_SANDBOX_DIR", "/run/glassbox-test")
    .env("GLASSBOX_SECRETS_FILE", &secrets)
    .env(
        "GLASSBOX_RUNNER_METRICS_ADDR",
        format!("127.0.0.1:{runner_metrics}"),
    )
    .stderr(Stdio::from(
        std::fs::File::create(dir.join("runner.log")).expect("log"),
    ));
    for (k, v) in &runner_otel {
        cmd.env(k, v);
    }
    let runner = cmd.spawn().expect("glassbox runner");
    Planes {
        db: Some(db),
        traced,
        dir,
        api,
        runner_metrics,
        control,
        runner,
        client,
    }
}

impl Planes {
    fn logs(&self) -> String {
        ["control.log", "runner.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Submits `body` with `token`; returns (correlation ID, job ID and the
    /// position to read it at).
    async fn submit(&self, token: &str, body: Value) -> (String, String) {
        let r = self
            .client
            .post(format!("{}/v1/jobs", self.api))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("submit");
        let correlation = r
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .expect("x-request-id")
            .to_owned();
        // With tracing on, the answer names the trace (the correlation ID's);
        // off, there is no trace to name.
        let tp = r.headers().get("traceparent").and_then(|v| v.to_str().ok());
        if self.traced {
            let trace = glassbox_platform::telemetry::trace_id_for(&correlation).to_string();
            let tp = tp.expect("a traceparent answer header");
            assert!(tp.starts_with(&format!("00-{trace}-")), "{tp}");
        } else {
            assert_eq!(tp, None);
        }
        let status = r.status().as_u16();
        let receipt: Value = r.json().await.expect("json");
        assert_eq!(status, 201, "{receipt}");
        let id = receipt["job_id"].as_str().expect("job id");
        let pos = receipt["position"].as_u64().expect("position");
        (correlation, format!("{id}?min_position={pos}"))
    }

    /// Waits until the job is terminal; returns it.
    async fn wait(&mut self, token: &str, id: &str) -> Value {
        for _ in 0..12 {
            if let Ok(Some(status)) = self.runner.try_wait() {
                panic!("the runner exited ({status}): {}", self.logs());
            }
            let job: Value = self
                .client
                .get(format!("{}/v1/jobs/{id}&wait=10", self.api))
                .bearer_auth(token)
                .send()
                .await
                .expect("get")
                .json()
                .await
                .expect("json");
            if ["completed", "failed", "cancelled", "rejected"]
                .contains(&job["status"].as_str().unwrap_or(""))
            {
                return job;
            }
        }
        panic!("job {id} did not finish: {}", self.logs());
    }

    async fn finish(mut self) {
        let (db, dir) = (self.db.take(), self.dir.clone());
        drop(self);
        let _ = std::fs::remove_dir_all(dir);
        if let Some(db) = db {
            db.drop_db().await;
        }
    }
}

fn marker() -> String {
    format!("mk{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn one_trace_follows_a_job_across_both_planes_and_nothing_secret_is_exported() {
    let (got, grpc, http) = receiver().await;
    let common = |endpoint: String, protocol: &str| {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500".to_owned()),
        ]
    };
    let (m_code, m_stdin, m_secret, m_token) = (marker(), marker(), marker(), marker());
    let mut p = planes(
        Some((
            common(format!("http://127.0.0.1:{grpc}"), "grpc"),
            common(format!("http://127.0.0.1:{http}"), "http/protobuf"),
        )),
        &m_secret,
        true,
    )
    .await;
    let mut c = claims("acme", "user@acme", &["submitter"]);
    c["note"] = json!(m_token);
    let token = sign(&c);
    let code = format!(
        "import os, sys\ndata = sys.stdin.read()\nprint('{m_code}', data, os.environ['OPENAI_API_KEY'])\n"
    );
    let (correlation, job) = p
        .submit(
            &token,
            json!({"language": "python", "code": code, "stdin": m_stdin,
                   "secrets": ["OPENAI_API_KEY"]}),
        )
        .await;
    let done = p.wait(&token, &job).await;
    assert_eq!(done["status"], "completed", "{done}");
    let job = done["job_id"].as_str().expect("job id").to_owned();
    let out: Value = p
        .client
        .get(format!("{}/v1/jobs/{job}/output", p.api))
        .bearer_auth(&token)
        .send()
        .await
        .expect("output")
        .json()
        .await
        .expect("json");
    let stdout = out["stdout"]["content"].as_str().unwrap_or_default();
    assert!(
        stdout.contains(&m_code) && stdout.contains(&m_stdin),
        "the job really ran with the markers: {out}"
    );

    let trace = glassbox_platform::telemetry::trace_id_for(&correlation).to_string();
    let root_id = glassbox_platform::telemetry::root_span_id_for(&correlation).to_string();
    // The correlation ID is the ledger's: the job's records carry it.
    let events: Value = p
        .client
        .get(format!("{}/v1/jobs/{job}/events", p.api))
        .bearer_auth(&token)
        .send()
        .await
        .expect("events")
        .json()
        .await
        .expect("json");
    let records = events["events"].as_array().cloned().unwrap_or_default();
    assert!(!records.is_empty(), "{events}");
    for r in &records {
        assert_eq!(
            r["record"]["correlation_id"].as_str(),
            Some(correlation.as_str()),
            "every record of the job, the runner's too, carries the submission's correlation: {r}"
        );
    }

    // Spans arrive in batches; wait until the runner's last phase is in.
    let wanted = [
        "POST /v1/jobs",
        "command",
        "policy.evaluate",
        "ledger.append",
        "projector.projected",
        "job.claim",
        "job.attempt",
        "blob.get",
        "sandbox.provision",
        "sandbox.execute",
        "sandbox.collect",
        "sandbox.teardown",
    ];
    let mut spans = Vec::new();
    for _ in 0..200 {
        spans = all_spans(&got)
            .into_iter()
            .filter(|s| s.trace_id == trace)
            .collect::<Vec<_>>();
        if wanted.iter().all(|w| spans.iter().any(|s| s.name == *w)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    for w in wanted {
        assert!(
            names.contains(&w),
            "no {w} span in the trace {trace}: {names:?}\nall spans: {:?}\nlogs: {}",
            all_spans(&got)
                .iter()
                .map(|s| format!("{}/{}/{}/{}", s.service, s.name, s.trace_id, s.parent))
                .collect::<Vec<_>>(),
            p.logs()
        );
    }
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    let by_id = |id: &str| spans.iter().find(|s| s.span_id == id);
    let descends = |s: &Span, ancestor: &str| {
        let mut cur = Some(s);
        for _ in 0..32 {
            match cur {
                Some(c) if c.parent == ancestor => return true,
                Some(c) => cur = by_id(&c.parent),
                None => return false,
            }
        }
        false
    };
    // The request is the root, with the derived span ID.
    let root = find("POST /v1/jobs");
    assert_eq!(root.span_id, root_id);
    assert_eq!(root.parent, "", "the request span is the trace's root");
    assert_eq!(root.service, "glassbox-control-plane");
    assert_eq!(root.attr("http.route"), Some("/v1/jobs"));
    assert_eq!(root.attr("http.response.status_code"), Some("201"));
    assert_eq!(root.attr("correlation_id"), Some(correlation.as_str()));
    assert_eq!(root.attr("tenant"), Some("acme"));
    // The command, its policies and its append happen inside the request.
    let command = find("command");
    assert_eq!(command.attr("command"), Some("submit_job"));
    assert_eq!(command.parent, root.span_id);
    let policies: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "policy.evaluate" && s.service == "glassbox-control-plane")
        .collect();
    assert!(
        policies
            .iter()
            .any(|s| s.attr("policy") == Some("glassbox.admission")),
        "{policies:?}"
    );
    assert!(
        policies
            .iter()
            .any(|s| s.attr("policy") == Some("glassbox.secrets")
                && s.attr("decision") == Some("allow")),
        "{policies:?}"
    );
    for s in &policies {
        assert!(descends(s, &root.span_id), "{s:?}");
    }
    let append = spans
        .iter()
        .find(|s| s.name == "ledger.append" && s.service == "glassbox-control-plane")
        .expect("the submission's append");
    assert!(descends(append, &root.span_id));
    assert!(append.attr("ledger.commit").is_some(), "{append:?}");
    // The group commit that carried it links to it (in its own trace).
    let all = all_spans(&got);
    assert!(
        all.iter().any(|s| s.name == "ledger.commit"
            && s.links
                .contains(&(append.trace_id.clone(), append.span_id.clone()))),
        "no ledger.commit links to the append"
    );
    // The projector's marker joins the request's trace.
    assert_eq!(find("projector.projected").parent, root.span_id);
    // The runner — another process, reached only through the ledger —
    // continues the same trace under the request's root.
    let claim = find("job.claim");
    let attempt = find("job.attempt");
    for s in [claim, attempt] {
        assert_eq!(s.service, "glassbox-runner", "{s:?}");
        assert_eq!(s.parent, root.span_id, "{s:?}");
        assert_eq!(s.attr("job_id"), Some(job.as_str()));
    }
    assert_eq!(attempt.attr("runtime"), Some("python"));
    for phase in [
        "sandbox.provision",
        "sandbox.execute",
        "sandbox.collect",
        "sandbox.teardown",
    ] {
        let s = find(phase);
        assert_eq!(s.service, "glassbox-runner");
        assert!(
            descends(s, &attempt.span_id),
            "{phase} not under the attempt"
        );
    }
    assert_eq!(find("sandbox.execute").attr("outcome"), Some("succeeded"));
    assert!(
        spans.iter().any(|s| s.name == "ledger.append"
            && s.service == "glassbox-runner"
            && descends(s, &attempt.span_id)),
        "the runner's appends are in the trace"
    );

    // Logs carry the correlation, trace and span IDs.
    let logs = p.logs();
    assert!(
        !logs.contains("\"otel."),
        "exporter-steering fields leak into log lines"
    );
    let line = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| {
            l["correlation_id"] == json!(correlation) && l["message"] == json!("request finished")
        })
        .unwrap_or_else(|| panic!("no log line of the request: {logs}"));
    assert_eq!(line["trace_id"], json!(trace), "{line}");
    assert_eq!(line["span_id"], json!(root_id), "{line}");
    assert_eq!(line["tenant"], json!("acme"), "{line}");

    // Metrics arrived over OTLP from both planes.
    let mut metric_names = Default::default();
    for _ in 0..100 {
        metric_names = exported_metric_names(&got);
        if metric_names.contains("glassbox.execution.duration")
            && metric_names.contains("http.server.request.duration")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for m in [
        "http.server.request.duration",
        "glassbox.policy.decisions",
        "glassbox.ledger.append.duration",
        "glassbox.execution.duration",
        "glassbox.sandbox.start.duration",
        "glassbox.runner.capacity",
    ] {
        assert!(
            metric_names.contains(m),
            "{m} not exported: {metric_names:?}"
        );
    }

    // A session's exec: the control plane calls the runner's gRPC API with
    // the request's traceparent, and the runner's span continues that trace.
    let m_exec = marker();
    let mut opened = None;
    for _ in 0..100 {
        let r = p
            .client
            .post(format!("{}/v1/sessions", p.api))
            .bearer_auth(&token)
            .json(&json!({"language": "python"}))
            .send()
            .await
            .expect("open");
        if r.status().as_u16() == 201 {
            opened = Some(r.json::<Value>().await.expect("json"));
            break;
        }
        // 503 until the runner's first heartbeat.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let opened = opened.unwrap_or_else(|| panic!("no session opened: {}", p.logs()));
    let sid = opened["session"]["session_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let r = p
        .client
        .post(format!("{}/v1/sessions/{sid}/exec", p.api))
        .bearer_auth(&token)
        .json(&json!({"code": format!("x = '{m_exec}'\nprint(len(x))")}))
        .send()
        .await
        .expect("exec");
    let exec_correlation = r
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_owned();
    let exec: Value = r.json().await.expect("json");
    assert_eq!(exec["outcome"], "succeeded", "{exec}");
    let exec_trace = glassbox_platform::telemetry::trace_id_for(&exec_correlation).to_string();
    let mut rpc = None;
    for _ in 0..100 {
        let spans = all_spans(&got);
        rpc = spans
            .iter()
            .find(|s| s.attr("rpc.method") == Some("exec") && s.service == "glassbox-runner")
            .cloned();
        if let Some(r) = &rpc
            && spans.iter().any(|s| s.span_id == r.parent)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rpc = rpc.expect("a runner.rpc exec span");
    assert_eq!(rpc.name, "glassbox.runner.v1.Runner/exec");
    assert_eq!(
        rpc.trace_id, exec_trace,
        "the exec continues the request's trace"
    );
    assert_eq!(rpc.attr("session_id"), Some(sid.as_str()));
    let all = all_spans(&got);
    let parent = all
        .iter()
        .find(|s| s.span_id == rpc.parent)
        .expect("the rpc's parent was exported");
    assert_eq!(parent.service, "glassbox-control-plane", "{parent:?}");
    assert_eq!(parent.trace_id, exec_trace);
    let _ = p
        .client
        .delete(format!("{}/v1/sessions/{sid}", p.api))
        .bearer_auth(&token)
        .send()
        .await;

    // Nothing secret anywhere: not the code, stdin, secret value or token.
    let logs = p.logs();
    let dump = dump(&got);
    for (what, m) in [
        ("code", &m_code),
        ("session code", &m_exec),
        ("stdin", &m_stdin),
        ("secret", &m_secret),
        ("token claim", &m_token),
        ("token", &token),
    ] {
        assert!(
            !dump.contains(m.as_str()),
            "the {what} is in an exported span or metric"
        );
        assert!(!logs.contains(m.as_str()), "the {what} is in a log line");
    }
    p.finish().await;
}

// ---------------------------------------------------------------- Prometheus

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn prometheus_scrapes_both_planes_and_the_expected_series_are_queryable() {
    let mut p = planes(None, "sk-prometheus-test", false).await;
    let token = sign(&claims("acme", "user@acme", &["submitter"]));
    // Prometheus from Debian, on loopback, scraping both planes every second.
    let prom_port = free_port();
    let prom_dir = p.dir.join("prometheus");
    std::fs::create_dir_all(&prom_dir).expect("dir");
    let api_target = p.api.trim_start_matches("http://").to_owned();
    std::fs::write(
        prom_dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n\
             - job_name: control-plane\n  static_configs:\n  - targets: ['{api_target}']\n\
             - job_name: runner\n  static_configs:\n  - targets: ['127.0.0.1:{}']\n",
            p.runner_metrics
        ),
    )
    .expect("config");
    let prom = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            prom_dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            prom_dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(prom_dir.join("prometheus.log")).expect("log"),
        ))
        .spawn()
        .expect("prometheus (Debian package prometheus; scripts/test.sh installs it)");
    let prom = KillOnDrop(prom);
    for _ in 0..3 {
        let (_, job) = p
            .submit(&token, json!({"language": "python", "code": "print(1)"}))
            .await;
        let done = p.wait(&token, &job).await;
        assert_eq!(done["status"], "completed", "{done}");
    }
    let query = |q: &str| {
        let encoded: String = q
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let url = format!("http://127.0.0.1:{prom_port}/api/v1/query?query={encoded}");
        let client = p.client.clone();
        async move {
            let r: Value = client.get(url).send().await.ok()?.json().await.ok()?;
            r["data"]["result"].as_array().cloned()
        }
    };
    let series = [
        "http_server_request_duration_seconds_count{http_route=\"/v1/jobs\",http_request_method=\"POST\"}",
        "glassbox_policy_decisions_total{policy=\"glassbox.admission\",decision=\"allow\"}",
        "glassbox_ledger_append_duration_seconds_count",
        "glassbox_ledger_commit_requests_count",
        "glassbox_ledger_head",
        "glassbox_ledger_checkpoint_age_seconds",
        "glassbox_projection_lag",
        "glassbox_jobs_queued",
        "glassbox_sessions_active",
        "glassbox_execution_duration_seconds_count{runtime=\"python\",outcome=\"succeeded\",job=\"runner\"}",
        "glassbox_sandbox_start_duration_seconds_count{job=\"runner\"}",
        "glassbox_runner_capacity{kind=\"job\",job=\"runner\"}",
        "glassbox_runner_in_flight{kind=\"job\",job=\"runner\"}",
    ];
    let mut missing = Vec::new();
    for _ in 0..60 {
        missing.clear();
        for s in series {
            if query(s).await.is_none_or(|r| r.is_empty()) {
                missing.push(s);
            }
        }
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let prom_log = std::fs::read_to_string(prom_dir.join("prometheus.log")).unwrap_or_default();
    assert!(
        missing.is_empty(),
        "not queryable in Prometheus: {missing:?}\n{}",
        prom_log
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Every series the alert rules and the dashboard use is exported.
    let names: Value = p
        .client
        .get(format!(
            "http://127.0.0.1:{prom_port}/api/v1/label/__name__/values"
        ))
        .send()
        .await
        .expect("names")
        .json()
        .await
        .expect("json");
    let have: std::collections::BTreeSet<&str> = names["data"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for name in metric_names::monitoring() {
        assert!(
            have.contains(name.as_str()),
            "{name} (used by deploy/monitoring) is not exported: {have:?}"
        );
    }
    // Three jobs ran: the counter says so.
    let ran = query(
        "sum(glassbox_execution_duration_seconds_count{outcome=\"succeeded\",job=\"runner\"})",
    )
    .await
    .unwrap_or_default();
    let n: f64 = ran
        .first()
        .and_then(|r| r["value"][1].as_str())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    drop(prom);
    assert!(n >= 3.0, "{ran:?}");
    p.finish().await;
}
