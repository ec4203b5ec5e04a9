//! `glassbox bench e2e`: from `POST /v1/jobs` to a completed result for
//! hello-world python, next to raw `runsc run` of the same program measured in
//! the same run (interleaved), and completed jobs per minute with 1, 4 and 8
//! runner slots. Needs root and runsc.

use crate::bench::{percentile, round};
use crate::bench_sandbox::{raw_bundle, raw_run};
use anyhow::Context as _;
use clap::Args;
use glassbox_domain::JobStatus;
use glassbox_sandbox_runner::service::{Runner, RunnerConfig, SecretProvider};
use glassbox_sandbox_runner::{LocalConfig, LocalRunsc};
use serde_json::{Map, Value, json};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct E2eBench {
    #[command(flatten)]
    pub service: crate::bench::ServiceArgs,
    /// Sequential jobs for the latency measurement.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Jobs per throughput measurement.
    #[arg(long, default_value_t = 24)]
    pub jobs: usize,
    #[arg(long, default_value = "/run/glassbox-bench")]
    pub base_dir: PathBuf,
    /// Run twice as child processes — telemetry off, and spans and metrics
    /// exported over OTLP to a receiver in this process — and compare.
    #[arg(long)]
    pub otlp: bool,
    /// With --otlp: runs per side (alternating off/on).
    #[arg(long, default_value_t = 2)]
    pub otlp_rounds: usize,
}

pub(crate) const CODE: &str = "print('hello')";

pub async fn run(args: E2eBench) -> anyhow::Result<ExitCode> {
    if args.otlp {
        return crate::bench_otlp::compare(
            "e2e",
            args.otlp_rounds,
            &[
                crate::bench_otlp::Measure {
                    name: "post_to_completed_p50_ms",
                    pointer: "/post_to_completed_ms/p50",
                    higher_is_better: false,
                },
                crate::bench_otlp::Measure {
                    name: "jobs_per_min_8_slots",
                    pointer: "/throughput/8/jobs_per_min",
                    higher_is_better: true,
                },
            ],
        )
        .await;
    }
    let args = &args;
    crate::bench::on_fresh_db(&args.service.database_url, "data", |url, dir| async move {
        inner(args, &url, &dir).await
    })
    .await
}

/// A benchmark's API client (also `bench workflow`'s).
pub(crate) struct Client {
    pub(crate) http: reqwest::Client,
    pub(crate) api: String,
    pub(crate) token: String,
}

impl Client {
    /// Submits hello-world and waits for the job to be terminal.
    pub(crate) async fn run_job(&self) -> anyhow::Result<Value> {
        let receipt: Value = self
            .http
            .post(format!("{}/v1/jobs", self.api))
            .bearer_auth(&self.token)
            .json(&json!({"language": "python", "code": CODE}))
            .send()
            .await?
            .json()
            .await?;
        let id = receipt["job_id"].as_str().context("no job id")?.to_owned();
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
                Ok(s) if s.is_terminal() => return Ok(job),
                Ok(_) => {}
                Err(_) => anyhow::bail!("job {id}: {job}"),
            }
        }
    }
}

/// A runner on its own ledger handle, so its reads can be counted.
fn start_runner(
    core: &glassbox_command_api::Core,
    backend: &LocalRunsc,
    slots: usize,
    stop: &CancellationToken,
) -> (CancellationToken, glassbox_events::EventStore) {
    let t = stop.child_token();
    let store = glassbox_events::EventStore::new(core.pool.clone());
    let runner = Runner::new(
        store.clone(),
        core.blobs.clone(),
        core.engine.clone(),
        backend.clone(),
        RunnerConfig {
            runner_id: "benche2e".into(),
            slots,
            lease_grace: Duration::from_secs(30),
            secrets: SecretProvider::None,
            wheel_mirror: None,
            max_attempts: glassbox_sandbox_runner::service::DEFAULT_MAX_ATTEMPTS,
            egress: Default::default(),
        },
    );
    tokio::spawn(runner.run(t.clone()));
    (t, store)
}

async fn inner(args: &E2eBench, url: &str, dir: &std::path::Path) -> anyhow::Result<Value> {
    let app = crate::bench::bench_api(url, &args.service.redis_url, dir).await?;
    let api = format!("http://127.0.0.1:{}", app.port());
    let stop = app.shutdown_token();
    let core = app.state().core.clone();
    tokio::spawn(app.run_until_stopped());
    tokio::spawn(glassbox_projector::Projector::new(core.store.clone()).run(None, stop.clone()));
    let (backend, _) = LocalRunsc::start(LocalConfig {
        runner_id: "benche2e".into(),
        base_dir: args.base_dir.clone(),
        ..LocalConfig::default()
    })
    .await?;
    let client = Arc::new(Client {
        http: reqwest::Client::new(),
        api,
        token: crate::bench::bench_token()?,
    });

    // Latency: one job at a time, interleaved with raw runsc of the same program.
    let (runner, runner_store) = start_runner(&core, &backend, 1, &stop);
    let job = client.run_job().await?; // warm-up
    anyhow::ensure!(
        job["status"] == JobStatus::Completed.as_str(),
        "warm-up job: {job}"
    );
    let reads_before = runner_store.records_read();
    let bundle = raw_bundle(&backend, &args.base_dir, "python", CODE)?;
    let state = args.base_dir.join("raw-state");
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for i in 0..args.runs {
        let t = Instant::now();
        let job = client.run_job().await?;
        ours.push(t.elapsed());
        anyhow::ensure!(job["outcome"] == "succeeded", "job: {job}");
        let t = Instant::now();
        let out = raw_run(
            &state,
            &bundle,
            &format!("bench-e2e-raw-{i}-{}", std::process::id()),
        )
        .await?;
        raw.push(t.elapsed());
        anyhow::ensure!(
            out.stdout == b"hello\n",
            "raw runsc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    runner.cancel();
    let reads_per_job = (runner_store.records_read() - reads_before) as f64 / args.runs as f64;
    ours.sort();
    raw.sort();

    // Throughput with 1, 4 and 8 slots.
    let mut per_min = Map::new();
    for slots in [1usize, 4, 8] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (runner, _) = start_runner(&core, &backend, slots, &stop);
        let t = Instant::now();
        let tasks: Vec<_> = (0..args.jobs)
            .map(|_| {
                let c = client.clone();
                tokio::spawn(async move { c.run_job().await })
            })
            .collect();
        let mut ok = 0;
        for task in tasks {
            if task.await??["outcome"] == "succeeded" {
                ok += 1;
            }
        }
        let secs = t.elapsed().as_secs_f64();
        runner.cancel();
        per_min.insert(
            slots.to_string(),
            json!({"jobs": args.jobs, "succeeded": ok, "secs": round(secs), "jobs_per_min": round(args.jobs as f64 / secs * 60.0)}),
        );
    }
    stop.cancel();
    let _ = std::fs::remove_dir_all(args.base_dir.join("raw-bundle"));
    Ok(json!({
        "bench": "e2e",
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "runs": args.runs,
        "post_to_completed_ms": {"p50": round(percentile(&ours, 0.5)), "p95": round(percentile(&ours, 0.95))},
        "raw_runsc_ms": {"p50": round(percentile(&raw, 0.5)), "p95": round(percentile(&raw, 0.95))},
        "ratio_p50": round(percentile(&ours, 0.5) / percentile(&raw, 0.5)),
        "runner_records_read_per_job": round(reads_per_job),
        "throughput": per_min,
    }))
}
