//! `--otlp` for `glassbox bench submit` and `glassbox bench e2e`: the cost of
//! exporting traces. The benchmark runs as child processes of this one,
//! alternately with telemetry off (`OTEL_SDK_DISABLED=true`) and with spans
//! and metrics exported over OTLP/gRPC to a receiver in this process (which
//! decodes and counts them, as a collector would). Telemetry is configured per
//! process at start-up, hence the children. Prints one JSON line with both
//! sides' medians and their ratio.

use crate::bench::round;
use crate::otlp_sink::OtlpSink;
use anyhow::Context as _;
use serde_json::{Value, json};
use std::process::ExitCode;

/// What one side of the comparison reads from a child's JSON line.
pub struct Measure {
    pub name: &'static str,
    pub pointer: &'static str,
    /// Throughput-like (higher is better) or latency-like.
    pub higher_is_better: bool,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs this very command without `--otlp` as children, `rounds` times per
/// side, alternating; reports `measures` for both sides.
pub async fn compare(bench: &str, rounds: usize, measures: &[Measure]) -> anyhow::Result<ExitCode> {
    let sink = OtlpSink::counting();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the OTLP receiver")?;
    let port = listener.local_addr()?.port();
    let _receiver = sink.serve_grpc(listener);
    let exe = std::env::current_exe().context("finding this executable")?;
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--otlp").collect();
    let mut sides: [Vec<Value>; 2] = [Vec::new(), Vec::new()];
    for round_no in 0..rounds.max(1) {
        for (i, on) in [false, true].into_iter().enumerate() {
            eprintln!(
                "bench {bench} --otlp: round {}/{}, tracing {}",
                round_no + 1,
                rounds.max(1),
                if on { "exported" } else { "off" }
            );
            let mut cmd = tokio::process::Command::new(&exe);
            cmd.args(&args);
            for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("OTEL_")) {
                cmd.env_remove(k);
            }
            if on {
                cmd.env(
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    format!("http://127.0.0.1:{port}"),
                )
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
                .env("OTEL_METRIC_EXPORT_INTERVAL", "5000");
            } else {
                cmd.env("OTEL_SDK_DISABLED", "true");
            }
            let out = cmd
                .stderr(std::process::Stdio::inherit())
                .output()
                .await
                .context("running the benchmark")?;
            anyhow::ensure!(
                out.status.success(),
                "the benchmark child failed ({})",
                out.status
            );
            let line = String::from_utf8_lossy(&out.stdout)
                .lines()
                .rev()
                .find(|l| l.starts_with('{'))
                .map(str::to_owned)
                .context("the benchmark child printed no JSON line")?;
            sides[i].push(serde_json::from_str(&line).context("the child's JSON line")?);
        }
    }
    let mut report = serde_json::Map::new();
    for m in measures {
        let mut values: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for (i, side) in sides.iter().enumerate() {
            values[i] = side
                .iter()
                .filter_map(|v| v.pointer(m.pointer).and_then(Value::as_f64))
                .collect();
        }
        let raw = values.clone();
        let (off, on) = (median(&mut values[0]), median(&mut values[1]));
        // Ratio > 1 is faster with tracing; the target is >= 0.95.
        let ratio = if m.higher_is_better {
            on / off
        } else {
            off / on
        };
        report.insert(
            m.name.to_owned(),
            json!({"off": raw[0], "on": raw[1], "median_off": round(off),
                   "median_on": round(on), "ratio": round(ratio)}),
        );
    }
    println!(
        "{}",
        json!({
            "bench": format!("{bench}-otlp"),
            "build": if cfg!(debug_assertions) { "debug" } else { "release" },
            "rounds": rounds.max(1),
            "spans_received": sink.spans(),
            "metric_exports_received": sink.metric_exports(),
            "measures": report,
            "target_ratio": 0.95,
        })
    );
    Ok(ExitCode::SUCCESS)
}
