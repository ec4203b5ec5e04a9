//! `glassbox bench mcp`: what the MCP path costs over the REST call it
//! mirrors. `submit_job` as an MCP `tools/call` over streamable HTTP (protocol
//! 2026-07-28: stateless, one POST per call) against `POST /v1/jobs` with the
//! same program, on the same service, at the same concurrency, in the same run
//! (rounds in alternating order, so neither side gets a warmer database). Both end in
//! the same `Core::submit`, so the ratio is MCP's own overhead: JSON-RPC
//! framing, rmcp's dispatch and argument schema, the SSE answer.

use crate::bench::{measure, percentile, round};
use clap::Args;
use serde_json::{Value, json};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct McpBench {
    #[command(flatten)]
    pub service: crate::bench::ServiceArgs,
    /// Timed submissions per path (after 50 warm-up ones each).
    #[arg(long, default_value_t = 1000)]
    pub submissions: u64,
    #[arg(long, default_value_t = 8)]
    pub concurrency: u64,
}

pub async fn run(args: McpBench) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.concurrency > 0 && args.submissions >= ROUNDS * args.concurrency,
        "--submissions must be >= {ROUNDS} x --concurrency > 0"
    );
    let args = &args;
    crate::bench::on_fresh_db(&args.service.database_url, "data", |url, dir| async move {
        inner(args, &url, &dir).await
    })
    .await
}

/// Measurement rounds per path.
const ROUNDS: u64 = 6;

/// The program both paths submit (a different one each time: no idempotent
/// shortcut, each is a new job with its own blobs).
fn program(w: u64, i: u64, round: u64) -> String {
    format!("print('job {round}-{w}-{i}')\n")
}

async fn inner(args: &McpBench, url: &str, dir: &std::path::Path) -> anyhow::Result<Value> {
    let app = crate::bench::bench_api(url, &args.service.redis_url, dir).await?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let stop = app.shutdown_token();
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency as usize)
        .build()?;
    let token = Arc::new(crate::bench::bench_token()?);

    let rest = |round: u64| {
        let (client, token, url) = (client.clone(), token.clone(), format!("{base}/v1/jobs"));
        move |w: u64, i: u64| {
            let (client, token, url) = (client.clone(), token.clone(), url.clone());
            async move {
                let body = json!({"language": "python", "code": program(w, i, round),
                                  "limits": {"wall_time_ms": 5000}});
                let resp = client
                    .post(&url)
                    .bearer_auth(token.as_str())
                    .json(&body)
                    .send()
                    .await?;
                let status = resp.status();
                // The whole answer, as on the MCP side.
                let text = resp.text().await?;
                anyhow::ensure!(status.as_u16() == 201, "REST answered {status}: {text}");
                Ok(())
            }
        }
    };
    let mcp = |round: u64| {
        let (client, token, url) = (client.clone(), token.clone(), format!("{base}/mcp"));
        move |w: u64, i: u64| {
            let (client, token, url) = (client.clone(), token.clone(), url.clone());
            async move {
                let body = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {
                    "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                              "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
                              "io.modelcontextprotocol/clientCapabilities": {}},
                    "name": "submit_job",
                    "arguments": {"language": "python", "code": program(w, i, round),
                                  "limits": {"wall_time_ms": 5000}}}});
                let resp = client
                    .post(&url)
                    .bearer_auth(token.as_str())
                    .header("accept", "application/json, text/event-stream")
                    .header("mcp-protocol-version", "2026-07-28")
                    .header("mcp-method", "tools/call")
                    .header("mcp-name", "submit_job")
                    .json(&body)
                    .send()
                    .await?;
                let status = resp.status();
                let text = resp.text().await?;
                anyhow::ensure!(
                    status.is_success() && text.contains("\"isError\":false"),
                    "MCP answered {status}: {}",
                    text.chars().take(300).collect::<String>()
                );
                Ok(())
            }
        }
    };

    // One caller (the paths' own latency), then `--concurrency` callers.
    let mut levels = serde_json::Map::new();
    for (level, writers) in [(1u64, 1u64), (2, args.concurrency)] {
        let warm = 50.max(writers);
        measure(writers, warm, 1, rest(level * 100)).await?;
        measure(writers, warm, 1, mcp(level * 100)).await?;
        // Rounds in alternating order (REST first, then MCP first, …), so
        // neither path always runs on the fuller database or after the other.
        let per_round = (args.submissions / ROUNDS).max(writers);
        let (mut rest_lat, mut mcp_lat) = (Vec::new(), Vec::new());
        let (mut rest_time, mut mcp_time) = (Duration::ZERO, Duration::ZERO);
        for round in 1..=ROUNDS {
            for mcp_turn in [round % 2 == 0, round % 2 == 1] {
                if mcp_turn {
                    let m = measure(writers, per_round, 1, mcp(level * 100 + round)).await?;
                    mcp_time += m.elapsed;
                    mcp_lat.extend(m.latencies);
                } else {
                    let r = measure(writers, per_round, 1, rest(level * 100 + round)).await?;
                    rest_time += r.elapsed;
                    rest_lat.extend(r.latencies);
                }
            }
        }
        rest_lat.sort();
        mcp_lat.sort();
        let rate = |n: usize, t: Duration| n as f64 / t.as_secs_f64().max(1e-9);
        let (rest_rate, mcp_rate) = (
            rate(rest_lat.len(), rest_time),
            rate(mcp_lat.len(), mcp_time),
        );
        levels.insert(
            format!("concurrency_{writers}"),
            json!({
                "submissions_per_path": mcp_lat.len(),
                "mcp_submit_job": {
                    "submissions_per_s": round(mcp_rate),
                    "p50_ms": round(percentile(&mcp_lat, 0.5)),
                    "p99_ms": round(percentile(&mcp_lat, 0.99)),
                },
                "rest_post_jobs": {
                    "submissions_per_s": round(rest_rate),
                    "p50_ms": round(percentile(&rest_lat, 0.5)),
                    "p99_ms": round(percentile(&rest_lat, 0.99)),
                },
                "ratio_mcp_to_rest_throughput": round(mcp_rate / rest_rate),
                "ratio_mcp_to_rest_p50": round(
                    percentile(&mcp_lat, 0.5) / percentile(&rest_lat, 0.5)
                ),
            }),
        );
    }
    stop.cancel();
    Ok(json!({
        "bench": "mcp",
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "levels": levels,
    }))
}
