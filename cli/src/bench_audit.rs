//! `glassbox bench audit`: evidence bundle export throughput and peak memory for
//! a ledger of `--size` records, and offline verification throughput next to
//! plain SHA-256 over the same bytes, measured in the same run.

use crate::bench::{fill_to, round};
use anyhow::Context as _;
use clap::Args;
use glassbox_audit_query::bundle::{self, Filters};
use glassbox_events::{EventStore, SigningKey};
use serde_json::{Value, json};
use std::io::Read as _;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Debug, Args)]
pub struct AuditBench {
    /// A PostgreSQL server URL; the benchmark creates its own database there.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Records in the ledger (all exported).
    #[arg(long, default_value_t = 1_000_000)]
    pub size: u64,
}

/// Peak resident memory of this process (VmHWM), in bytes.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

/// Resets the peak (Linux: writing 5 to clear_refs).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

pub async fn run(args: AuditBench) -> anyhow::Result<ExitCode> {
    let args = &args;
    crate::bench::on_fresh_db(&args.database_url, "bundle", |url, dir| async move {
        std::fs::create_dir_all(&dir)?;
        inner(args, &url, &dir).await
    })
    .await
}

async fn inner(args: &AuditBench, url: &str, dir: &std::path::Path) -> anyhow::Result<Value> {
    let pool = glassbox_command_api::connect(url).await?;
    let store = EventStore::new(pool);
    let t = Instant::now();
    let head = fill_to(&store, args.size).await?;
    let fill_secs = t.elapsed().as_secs_f64();
    let key = SigningKey::generate("glassbox.bench/ledger")?;
    store
        .publish_checkpoint(&key, key.name())
        .await?
        .context("no checkpoint signed")?;
    let t = Instant::now();
    glassbox_projector::Projector::new(store.clone())
        .rebuild()
        .await?;
    let index_secs = t.elapsed().as_secs_f64();

    let out = dir.join("all.tar");
    let reset = reset_peak();
    let before = peak_rss();
    let t = Instant::now();
    let report = bundle::export(&store, &key, &Filters::default(), "bench", &out).await?;
    let export_secs = t.elapsed().as_secs_f64();
    let export_peak = peak_rss();
    let bundle_bytes = std::fs::metadata(&out)?.len();

    let t = Instant::now();
    let verified = bundle::verify_bundle(&out, &key.verifier())
        .map_err(|f| anyhow::anyhow!("the benchmark bundle does not verify: {f}"))?;
    let verify_secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        verified.records == report.records,
        "verified a different count"
    );

    // Baseline: plain SHA-256 over the same file, read the same way.
    let t = Instant::now();
    let mut f = std::io::BufReader::new(std::fs::File::open(&out)?);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    let _ = ctx.finish();
    let sha_secs = t.elapsed().as_secs_f64();

    Ok(json!({
        "bench": "audit",
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "records": head,
        "fill_secs": round(fill_secs),
        "audit_index_rebuild_secs": round(index_secs),
        "export": {
            "records": report.records,
            "secs": round(export_secs),
            "records_per_s": round(report.records as f64 / export_secs),
            "bundle_bytes": bundle_bytes,
            "peak_rss_bytes": export_peak,
            "rss_before_bytes": before,
            "peak_reset": reset,
        },
        "verify_offline": {
            "secs": round(verify_secs),
            "records_per_s": round(verified.records as f64 / verify_secs),
            "mb_per_s": round(bundle_bytes as f64 / verify_secs / 1e6),
        },
        "baseline_sha256": {
            "secs": round(sha_secs),
            "mb_per_s": round(bundle_bytes as f64 / sha_secs / 1e6),
        },
        "verify_to_sha256_ratio": round(sha_secs / verify_secs),
    }))
}
