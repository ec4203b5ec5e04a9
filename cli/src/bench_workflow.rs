//! `glassbox bench workflow`: a chain of N hello-world steps run as a workflow
//! (define once, start, wait for the run to finish) against the same N jobs
//! submitted one after another by a client that waits for each — measured in
//! the same run, alternating, on one runner slot. The difference is the
//! orchestrator's overhead per step. Needs root and runsc.

use crate::bench::{percentile, round};
use crate::bench_e2e::{CODE, Client};
use anyhow::Context as _;
use clap::Args;
use glassbox_domain::status::RunStatus;
use glassbox_sandbox_runner::service::{Runner, RunnerConfig, SecretProvider};
use glassbox_sandbox_runner::{LocalConfig, LocalRunsc};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct WorkflowBench {
    #[command(flatten)]
    pub service: crate::bench::ServiceArgs,
    /// Steps in the chain (and jobs in the baseline).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Rounds of each (alternating).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[arg(long, default_value = "/run/glassbox-bench")]
    pub base_dir: PathBuf,
}

pub async fn run(args: WorkflowBench) -> anyhow::Result<ExitCode> {
    let args = &args;
    crate::bench::on_fresh_db(&args.service.database_url, "data", |url, dir| async move {
        inner(args, &url, &dir).await
    })
    .await
}

/// POSTs `body`; the answer, or an error naming the status.
async fn post(c: &Client, path: &str, body: &Value) -> anyhow::Result<Value> {
    let r = c
        .http
        .post(format!("{}{path}", c.api))
        .bearer_auth(&c.token)
        .json(body)
        .send()
        .await?;
    let status = r.status();
    let v: Value = r.json().await?;
    anyhow::ensure!(status.is_success(), "{path}: {status} {v}");
    Ok(v)
}

/// Starts a run of `name` and waits for it to finish (polling, as a client would).
async fn run_workflow(c: &Client, name: &str) -> anyhow::Result<Value> {
    let r = post(c, &format!("/v1/workflows/{name}/runs"), &json!({})).await?;
    let id = r["run_id"].as_str().context("no run id")?.to_owned();
    loop {
        let v: Value = c
            .http
            .get(format!("{}/v1/workflow-runs/{id}", c.api))
            .bearer_auth(&c.token)
            .send()
            .await?
            .json()
            .await?;
        if v["status"] != RunStatus::Running.as_str() {
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn inner(args: &WorkflowBench, url: &str, dir: &std::path::Path) -> anyhow::Result<Value> {
    anyhow::ensure!(
        args.steps >= 1 && args.rounds >= 1,
        "--steps and --rounds: at least 1"
    );
    let app = crate::bench::bench_api(url, &args.service.redis_url, dir).await?;
    let api = format!("http://127.0.0.1:{}", app.port());
    let stop = app.shutdown_token();
    let core = app.state().core.clone();
    tokio::spawn(app.run_until_stopped());
    tokio::spawn(glassbox_projector::Projector::new(core.store.clone()).run(None, stop.clone()));
    let (backend, _) = LocalRunsc::start(LocalConfig {
        runner_id: "benchwf".into(),
        base_dir: args.base_dir.clone(),
        ..LocalConfig::default()
    })
    .await?;
    let runner = Runner::new(
        core.store.clone(),
        core.blobs.clone(),
        core.engine.clone(),
        backend,
        RunnerConfig {
            runner_id: "benchwf".into(),
            slots: 1,
            lease_grace: Duration::from_secs(30),
            secrets: SecretProvider::None,
            wheel_mirror: None,
            max_attempts: glassbox_sandbox_runner::service::DEFAULT_MAX_ATTEMPTS,
            egress: Default::default(),
        },
    );
    tokio::spawn(runner.run(stop.clone()));
    let client = Client {
        http: reqwest::Client::new(),
        api,
        token: crate::bench::bench_token()?,
    };
    let steps: Vec<Value> = (0..args.steps)
        .map(|i| {
            let mut s =
                json!({"name": format!("s{i}"), "job": {"language": "python", "code": CODE}});
            if i > 0 {
                s["needs"] = json!([format!("s{}", i - 1)]);
            }
            s
        })
        .collect();
    post(
        &client,
        "/v1/workflows",
        &json!({"name": "chain", "steps": steps}),
    )
    .await?;
    // Warm-up: one of each.
    client.run_job().await?;
    let v = run_workflow(&client, "chain").await?;
    anyhow::ensure!(
        v["status"] == RunStatus::Succeeded.as_str(),
        "warm-up run: {v}"
    );

    let (mut chain, mut sequential) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        let t = Instant::now();
        let v = run_workflow(&client, "chain").await?;
        chain.push(t.elapsed());
        anyhow::ensure!(v["status"] == RunStatus::Succeeded.as_str(), "run: {v}");
        let t = Instant::now();
        for _ in 0..args.steps {
            let job = client.run_job().await?;
            anyhow::ensure!(job["outcome"] == "succeeded", "job: {job}");
        }
        sequential.push(t.elapsed());
    }
    stop.cancel();
    chain.sort();
    sequential.sort();
    let (c, s) = (percentile(&chain, 0.5), percentile(&sequential, 0.5));
    Ok(json!({
        "bench": "workflow",
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "steps": args.steps,
        "rounds": args.rounds,
        "chain_ms": {"p50": round(c)},
        "baseline_sequential_jobs_ms": {"p50": round(s)},
        "overhead_per_step_ms": round((c - s) / args.steps as f64),
        "ratio_p50": round(c / s),
        "target_ratio": 1.1,
    }))
}
