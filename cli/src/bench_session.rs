//! `glassbox bench session`: opening a session (POST to an active sandbox)
//! next to raw `runsc run` of hello-world measured in the same run
//! (interleaved); an exec in a warm session next to a one-shot job through
//! the same API (both measured here); the memory an idle session costs; and
//! how many idle sessions one runner holds. Needs root and runsc.

use crate::bench::{percentile, round};
use crate::bench_sandbox::{raw_bundle, raw_run};
use anyhow::Context as _;
use clap::Args;
use glassbox_domain::JobStatus;
use glassbox_sandbox_runner::service::{Runner, RunnerConfig, SecretProvider};
use glassbox_sandbox_runner::sessions::{HostConfig, SessionHost};
use glassbox_sandbox_runner::{LocalConfig, LocalRunsc};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct SessionBench {
    #[command(flatten)]
    pub service: crate::bench::ServiceArgs,
    /// Sessions opened one after another for the open latency.
    #[arg(long, default_value_t = 10)]
    pub opens: usize,
    /// Execs in one warm session (and one-shot jobs for the baseline: a fifth as many).
    #[arg(long, default_value_t = 50)]
    pub execs: usize,
    /// Idle sessions held at once (memory per session, sessions one runner holds).
    #[arg(long, default_value_t = 20)]
    pub idle: usize,
    #[arg(long, default_value = "/run/glassbox-bench")]
    pub base_dir: PathBuf,
}

const CODE: &str = "print('hello')";

pub async fn run(args: SessionBench) -> anyhow::Result<ExitCode> {
    let args = &args;
    crate::bench::on_fresh_db(&args.service.database_url, "data", |url, dir| async move {
        inner(args, &url, &dir).await
    })
    .await
}

struct Client {
    http: reqwest::Client,
    api: String,
    token: String,
}

impl Client {
    async fn post(&self, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        let r = self
            .http
            .post(format!("{}{path}", self.api))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await?))
    }

    async fn open(&self) -> anyhow::Result<String> {
        let (status, r) = self
            .post(
                "/v1/sessions",
                json!({"language": "python", "limits": {"memory_bytes": 134217728}}),
            )
            .await?;
        anyhow::ensure!(status == 201, "open: {status} {r}");
        Ok(r["session"]["session_id"]
            .as_str()
            .context("no session id")?
            .to_owned())
    }

    async fn close(&self, id: &str) -> anyhow::Result<()> {
        self.http
            .delete(format!("{}/v1/sessions/{id}", self.api))
            .bearer_auth(&self.token)
            .send()
            .await?;
        Ok(())
    }

    async fn job(&self) -> anyhow::Result<()> {
        let (status, receipt) = self
            .post("/v1/jobs", json!({"language": "python", "code": CODE}))
            .await?;
        anyhow::ensure!(status == 201, "job: {receipt}");
        let id = receipt["job_id"].as_str().context("job id")?;
        let pos = receipt["position"].as_u64().unwrap_or(0);
        loop {
            let job: Value = self
                .http
                .get(format!(
                    "{}/v1/jobs/{id}?min_position={pos}&wait=30",
                    self.api
                ))
                .bearer_auth(&self.token)
                .send()
                .await?
                .json()
                .await?;
            match serde_json::from_value::<JobStatus>(job["status"].clone()) {
                Ok(JobStatus::Completed) => return Ok(()),
                Ok(s) if s.is_terminal() => anyhow::bail!("job: {job}"),
                Ok(_) => {}
                Err(_) => anyhow::bail!("job {id}: {job}"),
            }
        }
    }
}

/// Memory the machine has available (kB), from /proc/meminfo.
fn available_kb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

async fn inner(args: &SessionBench, url: &str, dir: &std::path::Path) -> anyhow::Result<Value> {
    let app = crate::bench::bench_api(url, &args.service.redis_url, dir).await?;
    let api = format!("http://127.0.0.1:{}", app.port());
    let stop = app.shutdown_token();
    let core = app.state().core.clone();
    tokio::spawn(app.run_until_stopped());
    tokio::spawn(glassbox_projector::Projector::new(core.store.clone()).run(None, stop.clone()));
    let (backend, _) = LocalRunsc::start(LocalConfig {
        runner_id: "benchses".into(),
        base_dir: args.base_dir.clone(),
        ..LocalConfig::default()
    })
    .await?;
    let key = glassbox_platform::runner_token::RunnerTokenKey::load(&dir.join("runner-token.key"))?;
    let hot = glassbox_platform::hot::HotState::connect(
        &args.service.redis_url,
        &glassbox_platform::hot::namespace(url),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", listener.local_addr()?);
    let host = SessionHost::new(
        core.store.clone(),
        core.blobs.clone(),
        backend.clone(),
        Some(hot),
        HostConfig {
            runner_id: "benchses".into(),
            capacity: (args.idle + args.opens + 10) as u32,
            advertise: addr,
            verifier: Some(key.verifier()),
            bypass: false,
            agent: glassbox_sandbox_runner::local::session::find_agent()?,
            secrets: SecretProvider::None,
            wheel_mirror: None,
            egress: None,
        },
    );
    tokio::spawn(host.serve(listener, stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = Client {
        http: reqwest::Client::new(),
        api,
        token: crate::bench::bench_token()?,
    };

    // Open latency, interleaved with raw runsc of hello-world.
    let warm = client.open().await?;
    client.close(&warm).await?;
    let bundle = raw_bundle(&backend, &args.base_dir, "python", CODE)?;
    let state = args.base_dir.join("raw-state");
    let (mut opens, mut raw) = (Vec::new(), Vec::new());
    for i in 0..args.opens {
        let t = Instant::now();
        let id = client.open().await?;
        opens.push(t.elapsed());
        client.close(&id).await?;
        let t = Instant::now();
        let out = raw_run(
            &state,
            &bundle,
            &format!("bench-session-raw-{i}-{}", std::process::id()),
        )
        .await?;
        raw.push(t.elapsed());
        anyhow::ensure!(out.stdout == b"hello\n", "raw runsc failed");
    }
    opens.sort();
    raw.sort();

    // Exec latency in one warm session, against one-shot jobs through the same API.
    let id = client.open().await?;
    let (_, r) = client
        .post(&format!("/v1/sessions/{id}/exec"), json!({"code": "n = 0"}))
        .await?;
    anyhow::ensure!(r["outcome"] == "succeeded", "exec: {r}");
    let mut execs = Vec::new();
    for _ in 0..args.execs {
        let t = Instant::now();
        let (status, r) = client
            .post(
                &format!("/v1/sessions/{id}/exec"),
                json!({"code": "n += 1\nprint('hello', n)"}),
            )
            .await?;
        execs.push(t.elapsed());
        anyhow::ensure!(status == 200 && r["outcome"] == "succeeded", "exec: {r}");
    }
    execs.sort();
    client.close(&id).await?;
    let runner_stop = stop.child_token();
    let runner = Runner::new(
        core.store.clone(),
        core.blobs.clone(),
        core.engine.clone(),
        backend.clone(),
        RunnerConfig {
            runner_id: "benchses".into(),
            slots: 1,
            lease_grace: Duration::from_secs(30),
            secrets: SecretProvider::None,
            wheel_mirror: None,
            max_attempts: glassbox_sandbox_runner::service::DEFAULT_MAX_ATTEMPTS,
            egress: Default::default(),
        },
    );
    tokio::spawn(runner.run(runner_stop.clone()));
    client.job().await?; // warm-up
    let mut jobs = Vec::new();
    for _ in 0..(args.execs / 5).max(3) {
        let t = Instant::now();
        client.job().await?;
        jobs.push(t.elapsed());
    }
    jobs.sort();
    runner_stop.cancel();

    // Idle sessions: how many one runner holds, and what each costs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = available_kb();
    let t = Instant::now();
    let mut idle = Vec::new();
    let mut refused = None;
    for _ in 0..args.idle {
        match client.open().await {
            Ok(id) => idle.push(id),
            Err(e) => {
                refused = Some(e.to_string());
                break;
            }
        }
    }
    let open_all = t.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = available_kb();
    let per_session_mib = if idle.is_empty() {
        0.0
    } else {
        before.saturating_sub(after) as f64 / idle.len() as f64 / 1024.0
    };
    // Each idle session still answers.
    let probe = idle.last().cloned();
    let probe_ok = match &probe {
        Some(id) => {
            let (_, r) = client
                .post(&format!("/v1/sessions/{id}/exec"), json!({"code": "1 + 1"}))
                .await?;
            r["stdout"]["content"] == "2\n"
        }
        None => false,
    };
    for id in &idle {
        client.close(id).await?;
    }
    stop.cancel();
    let _ = std::fs::remove_dir_all(args.base_dir.join("raw-bundle"));
    let p = |v: &[Duration], q: f64| round(percentile(v, q));
    Ok(json!({
        "bench": "session",
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "open_ms": {"p50": p(&opens, 0.5), "p95": p(&opens, 0.95), "runs": opens.len()},
        "raw_runsc_hello_ms": {"p50": p(&raw, 0.5), "p95": p(&raw, 0.95)},
        "open_ratio_p50": round(percentile(&opens, 0.5) / percentile(&raw, 0.5)),
        "exec_ms": {"p50": p(&execs, 0.5), "p99": p(&execs, 0.99), "runs": execs.len()},
        "job_post_to_completed_ms": {"p50": p(&jobs, 0.5), "runs": jobs.len()},
        "exec_ratio_p50": round(percentile(&execs, 0.5) / percentile(&jobs, 0.5)),
        "idle": {
            "asked": args.idle,
            "held": idle.len(),
            "refused": refused,
            "open_all_secs": round(open_all.as_secs_f64()),
            "mib_per_idle_session": round(per_session_mib),
            "last_still_answers": probe_ok,
        },
    }))
}
