//! `glassbox bench submit`: job submissions over loopback HTTP at a fixed
//! concurrency, next to the ledger's own append throughput for the very same
//! events measured in the same run (so the ratio is the API's overhead: auth,
//! JSON, policy evaluation, blob encryption, idempotency lookups), and the
//! projection lag observed meanwhile.

use crate::bench::{measure, percentile, round};
use clap::Args;
use glassbox_events::store::{AppendRequest, ExpectedVersion, NewEvent};
use glassbox_events::{Actor, SigningKey};
use glassbox_projector::{Projector, Publisher};
use serde_json::{Map, Value, json};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct SubmitBench {
    #[command(flatten)]
    pub service: crate::bench::ServiceArgs,
    /// Timed submissions (after 50 warm-up ones).
    #[arg(long, default_value_t = 2000)]
    pub submissions: u64,
    #[arg(long, default_value_t = 16)]
    pub concurrency: u64,
    /// Run without a projector (no lag figures): the API and ledger alone.
    #[arg(long)]
    pub without_projector: bool,
    /// Run twice as child processes — telemetry off, and spans and metrics
    /// exported over OTLP to a receiver in this process — and compare.
    #[arg(long)]
    pub otlp: bool,
    /// With --otlp: runs per side (alternating off/on).
    #[arg(long, default_value_t = 2)]
    pub otlp_rounds: usize,
}

pub async fn run(args: SubmitBench) -> anyhow::Result<ExitCode> {
    if args.otlp {
        return crate::bench_otlp::compare(
            "submit",
            args.otlp_rounds,
            &[
                crate::bench_otlp::Measure {
                    name: "submissions_per_s",
                    pointer: "/api/submissions_per_s",
                    higher_is_better: true,
                },
                crate::bench_otlp::Measure {
                    name: "submit_p50_ms",
                    pointer: "/api/p50_ms",
                    higher_is_better: false,
                },
            ],
        )
        .await;
    }
    anyhow::ensure!(
        args.concurrency > 0 && args.submissions >= args.concurrency,
        "--submissions must be >= --concurrency > 0"
    );
    let args = &args;
    crate::bench::on_fresh_db(&args.service.database_url, "data", |url, dir| async move {
        inner(args, &url, &dir).await
    })
    .await
}

async fn inner(args: &SubmitBench, url: &str, dir: &std::path::Path) -> anyhow::Result<Value> {
    let app = crate::bench::bench_api(url, &args.service.redis_url, dir).await?;
    let port = app.port();
    let stop = app.shutdown_token();
    let store = app.state().core.store.clone();
    let app_core = app.state().core.clone();
    tokio::spawn(app.run_until_stopped());
    let key = SigningKey::generate("glassbox.bench/ledger")?;
    let publisher = Publisher {
        origin: key.name().to_owned(),
        key: Arc::new(key),
        interval: Duration::from_secs(1),
    };
    if !args.without_projector {
        tokio::spawn(Projector::new(store.clone()).run(Some(publisher), stop.clone()));
    }

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency as usize)
        .build()?;
    let url = format!("http://127.0.0.1:{port}/v1/jobs");
    let token = Arc::new(crate::bench::bench_token()?);
    let submit = {
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        move |w: u64, i: u64| {
            let (client, url, token) = (client.clone(), url.clone(), token.clone());
            async move {
                let body = json!({"language": "python", "code": format!("print('job {w}-{i}')\n"),
                                  "limits": {"wall_time_ms": 5000}});
                let resp = client
                    .post(&url)
                    .bearer_auth(token.as_str())
                    .json(&body)
                    .send()
                    .await?;
                anyhow::ensure!(
                    resp.status().as_u16() == 201,
                    "submission answered {}",
                    resp.status()
                );
                Ok(())
            }
        }
    };
    // Warm up (connections, caches, the policy engine).
    measure(
        args.concurrency,
        50.max(args.concurrency),
        1,
        submit.clone(),
    )
    .await?;
    let (head_before, _) = store.head().await?;

    // Projection lag sampled while the load runs.
    let sampling = CancellationToken::new();
    let sampler = {
        let p = Projector::new(store.clone());
        let t = sampling.clone();
        tokio::spawn(async move {
            let mut lags = Vec::new();
            while !t.is_cancelled() {
                if let Ok(l) = p.lag().await {
                    lags.push(Duration::from_millis(l.millis));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            lags
        })
    };
    let mut api = measure(args.concurrency, args.submissions, 1, submit).await?;
    sampling.cancel();
    let mut lags = sampler.await?;
    lags.sort();
    let (head_after, _) = store.head().await?;
    let events = head_after - head_before;

    // The baseline: the same events, appended straight to the ledger, one
    // submission per append, at the same concurrency.
    let records = store.read_all(head_before + 1, events).await?;
    let mut groups: Vec<Vec<(String, Map<String, Value>)>> = Vec::new();
    let mut last_stream = String::new();
    for r in records {
        if r.record.stream != last_stream || groups.is_empty() {
            groups.push(Vec::new());
            last_stream.clone_from(&r.record.stream);
        }
        if let Some(g) = groups.last_mut() {
            g.push((r.record.event_type, r.record.data));
        }
    }
    let groups = Arc::new(groups);
    let per = args.submissions / args.concurrency;
    let mut ledger = {
        let (store, groups) = (store.clone(), groups.clone());
        measure(args.concurrency, args.submissions, 1, move |w, i| {
            let (store, groups) = (store.clone(), groups.clone());
            async move {
                let g = &groups[((w * per + i) as usize) % groups.len()];
                let stream = format!("baseline-{w}-{i}");
                let events = g
                    .iter()
                    .map(|(t, d)| NewEvent::new(stream.clone(), t.clone(), d.clone()))
                    .collect();
                store
                    .append(
                        AppendRequest::new("acme", Actor::system("bench"), events)
                            .expect(stream, ExpectedVersion::NoStream),
                    )
                    .await?;
                Ok(())
            }
        })
        .await?
    };
    // Where an API submission's time goes, measured on the same service.
    let core = app_core;
    let mut policy = Vec::new();
    let mut blobs = Vec::new();
    for i in 0..200u64 {
        let t = std::time::Instant::now();
        let authz = json!({"identity": {"tenant": "acme", "subject": "bench", "roles": ["submitter"], "app": null, "agent": null},
                           "action": "job.submit", "resource": {"tenant": "acme"}});
        let _ = core
            .engine
            .evaluate(glassbox_policies::Policy::Authz, &authz);
        let admission = json!({"tenant": "acme", "language": "python", "limits": {"wall_time_ms": 5000},
                               "dependencies": [], "secrets": []});
        let _ = core
            .engine
            .evaluate(glassbox_policies::Policy::Admission, &admission);
        policy.push(t.elapsed());
        let t = std::time::Instant::now();
        let id = format!("bench-blob-{i}");
        core.blobs.create_data_key(&id, "acme").await?;
        core.blobs
            .put(&id, &format!("bench/{id}/code"), b"print('x')\n")
            .await?;
        blobs.push(t.elapsed());
    }
    policy.sort();
    blobs.sort();
    stop.cancel();
    api.latencies.sort();
    ledger.latencies.sort();
    Ok(json!({
        "bench": "submit",
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "concurrency": args.concurrency,
        "projector_running": !args.without_projector,
        "submissions": api.latencies.len(),
        "events_per_submission": round(events as f64 / api.latencies.len() as f64),
        "api": {
            "submissions_per_s": round(api.rate()),
            "p50_ms": round(percentile(&api.latencies, 0.5)),
            "p99_ms": round(percentile(&api.latencies, 0.99)),
        },
        "ledger_same_events": {
            "submissions_per_s": round(ledger.rate()),
            "p50_ms": round(percentile(&ledger.latencies, 0.5)),
            "p99_ms": round(percentile(&ledger.latencies, 0.99)),
        },
        "ratio_api_to_ledger": round(api.rate() / ledger.rate()),
        "breakdown_p50_ms": {
            "policies_authz_and_admission": round(percentile(&policy, 0.5)),
            "blob_key_and_code_put": round(percentile(&blobs, 0.5)),
        },
        "projection_lag_ms": {
            "samples": lags.len(),
            "p50": round(percentile(&lags, 0.5)),
            "p99": round(percentile(&lags, 0.99)),
            "max": round(percentile(&lags, 1.0)),
        },
    }))
}
