//! `glassbox bench …`: benchmarks that measure their own baseline in the same run
//! and print one JSON line. Nothing here asserts a target; the numbers are for
//! people (and issue notes) to read. Build with `--release` for real numbers.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use glassbox_events::store::NewEvent;
use glassbox_events::{Actor, AppendRequest, EventStore, SigningKey};
use serde_json::{Map, Value, json};
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Connection as _, Executor as _};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Ledger append, verification and proof performance against plain INSERTs.
    Ledger(LedgerBench),
    /// Sandbox start-to-result latency against raw `runsc run` and a native process.
    Sandbox(crate::bench_sandbox::SandboxBench),
    /// Job submissions over HTTP against ledger appends of the same events.
    Submit(crate::bench_submit::SubmitBench),
    /// POST to completed result through API, runner and runsc, against raw runsc (root).
    E2e(crate::bench_e2e::E2eBench),
    /// Session open and exec latency against raw `runsc run` and one-shot
    /// jobs; memory per idle session; idle sessions one runner holds.
    Session(crate::bench_session::SessionBench),
    /// Evidence bundle export throughput and peak memory; offline verification
    /// against plain SHA-256 of the same bytes.
    Audit(crate::bench_audit::AuditBench),
    /// MCP `submit_job` against `POST /v1/jobs` with the same program.
    Mcp(crate::bench_mcp::McpBench),
    /// A chain of hello-world workflow steps against the same jobs submitted
    /// one after another by a waiting client (the orchestrator's overhead).
    Workflow(crate::bench_workflow::WorkflowBench),
    /// The egress proxy core on loopback against direct connections (host
    /// only: the sandbox path is not wired yet).
    Egress(crate::bench_egress::EgressBench),
}

#[derive(Debug, Args)]
pub struct LedgerBench {
    /// A PostgreSQL server URL; the benchmark creates its own database there.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Keep the benchmark database (and print its URL) instead of dropping it.
    #[arg(long)]
    pub keep: bool,
    /// Single-event appends per concurrency level.
    #[arg(long, default_value_t = 2000)]
    pub appends: u64,
    /// Batches of 100 events in the batch measurement.
    #[arg(long, default_value_t = 50)]
    pub batches: u64,
    /// Ledger size at which verification and inclusion proofs are measured.
    #[arg(long, default_value_t = 1_000_000)]
    pub size: u64,
    /// Sign the benchmark's checkpoint with this key file (default: a throw-away key).
    #[arg(long)]
    pub key_file: Option<std::path::PathBuf>,
}

pub async fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Ledger(args) => ledger(args).await,
        BenchCommand::Sandbox(args) => crate::bench_sandbox::run(args).await,
        BenchCommand::Submit(args) => crate::bench_submit::run(args).await,
        BenchCommand::E2e(args) => crate::bench_e2e::run(args).await,
        BenchCommand::Session(args) => crate::bench_session::run(args).await,
        BenchCommand::Audit(args) => crate::bench_audit::run(args).await,
        BenchCommand::Mcp(args) => crate::bench_mcp::run(args).await,
        BenchCommand::Workflow(args) => crate::bench_workflow::run(args).await,
        BenchCommand::Egress(args) => crate::bench_egress::run(args).await,
    }
}

/// The database server and Redis a benchmark of the running service uses.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// A PostgreSQL server URL; the benchmark creates its own database there.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Redis for the rate limiter (set very high in benchmarks so it never limits).
    #[arg(
        long,
        env = "GLASSBOX_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
}

/// Runs `body` on a fresh database on `server_url` and a fresh data directory
/// (`<db>-<suffix>`), removes both whatever happens, and prints its JSON line.
pub(crate) async fn on_fresh_db<F, Fut>(
    server_url: &str,
    suffix: &str,
    body: F,
) -> anyhow::Result<ExitCode>
where
    F: FnOnce(String, std::path::PathBuf) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Value>>,
{
    let db = BenchDb::create(server_url).await?;
    let dir = std::env::temp_dir().join(format!("{}-{suffix}", db.name));
    let result = body(db.url.clone(), dir.clone()).await;
    let _ = std::fs::remove_dir_all(&dir);
    db.drop().await;
    println!("{}", result?);
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

pub(crate) fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn payload(i: u64) -> Map<String, Value> {
    let v = json!({
        "job_id": format!("{i:016x}"),
        "language": "python",
        "code": {"sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "size_bytes": 1234, "key": format!("blobs/{i}")},
        "limits": {"wall_time_ms": 5000, "memory_bytes": 268435456},
    });
    v.as_object().cloned().unwrap_or_default()
}

pub(crate) struct Sample {
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
    pub events: u64,
}

impl Sample {
    pub(crate) fn json(&mut self) -> Value {
        self.latencies.sort();
        json!({
            "events_per_s": round(self.events as f64 / self.elapsed.as_secs_f64()),
            "p50_ms": round(percentile(&self.latencies, 0.5)),
            "p99_ms": round(percentile(&self.latencies, 0.99)),
        })
    }
    pub(crate) fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `per` timed operations on each of `writers` concurrent tasks.
pub(crate) async fn measure<F, Fut>(
    writers: u64,
    total: u64,
    batch: u64,
    op: F,
) -> anyhow::Result<Sample>
where
    F: Fn(u64, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let per = total / writers;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per as usize);
            for i in 0..per {
                let t = Instant::now();
                op(w, i).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    Ok(Sample {
        elapsed: started.elapsed(),
        latencies,
        events: per * writers * batch,
    })
}

async fn ledger_appends(
    store: &EventStore,
    writers: u64,
    total: u64,
    batch: u64,
) -> anyhow::Result<Sample> {
    let store = store.clone();
    measure(writers, total, batch, move |w, i| {
        let store = store.clone();
        async move {
            let events = (0..batch)
                .map(|j| {
                    NewEvent::new(
                        format!("bench-{w}-{}", i % 16),
                        "bench.appended",
                        payload(i * batch + j),
                    )
                })
                .collect();
            store
                .append(AppendRequest::new("bench", Actor::system("bench"), events))
                .await?;
            Ok(())
        }
    })
    .await
}

/// The baseline: the same canonical bytes as plain INSERTs, no chain, no lock.
async fn baseline_inserts(
    pool: &PgPool,
    bytes: Arc<Vec<u8>>,
    writers: u64,
    total: u64,
    batch: u64,
) -> anyhow::Result<Sample> {
    let pool = pool.clone();
    let hash = glassbox_events::Digest::of(&bytes).as_bytes().to_vec();
    measure(writers, total, batch, move |w, i| {
        let (pool, bytes, hash) = (pool.clone(), bytes.clone(), hash.clone());
        async move {
            let streams: Vec<String> = (0..batch)
                .map(|_| format!("bench-{w}-{}", i % 16))
                .collect();
            let payloads: Vec<Vec<u8>> = (0..batch).map(|_| bytes.to_vec()).collect();
            let hashes: Vec<Vec<u8>> = (0..batch).map(|_| hash.clone()).collect();
            sqlx::query(
                "INSERT INTO bench_baseline (stream, canonical, entry_hash) \
                 SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[])",
            )
            .bind(&streams)
            .bind(&payloads)
            .bind(&hashes)
            .execute(&pool)
            .await?;
            Ok(())
        }
    })
    .await
}

const BENCH_SECRET: &str = "bench-only-hs256-secret-0123456789abcdef";

/// A submitter token of tenant `acme` for the benchmark API (HS256, test environment).
pub(crate) fn bench_token() -> anyhow::Result<String> {
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"iss": "glassbox", "aud": "glassbox", "sub": "bench", "tenant": "acme",
                        "roles": ["submitter"], "exp": now + 3600, "iat": now});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(BENCH_SECRET.as_bytes()),
    )?)
}

/// The command API on a free port for a benchmark: test environment, HS256
/// tokens from [`bench_token`], no effective rate limit.
pub(crate) async fn bench_api(
    db_url: &str,
    redis_url: &str,
    data_dir: &std::path::Path,
) -> anyhow::Result<glassbox_command_api::Application> {
    let vars: Vec<(String, String)> = [
        ("GLASSBOX_ENV", "test"),
        ("GLASSBOX_HTTP_ADDR", "127.0.0.1:0"),
        ("GLASSBOX_DATABASE_URL", db_url),
        ("GLASSBOX_REDIS_URL", redis_url),
        ("GLASSBOX_DATA_DIR", data_dir.to_str().context("data dir")?),
        ("GLASSBOX_AUTH_HS256_SECRET", BENCH_SECRET),
        ("GLASSBOX_RATE_LIMIT_PER_SEC", "1000000000"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let config = glassbox_platform::Config::from_vars(vars)?;
    Ok(glassbox_command_api::Application::build(config).await?)
}

/// A throw-away database on the server at `server_url`, dropped by [`BenchDb::drop`].
pub(crate) struct BenchDb {
    admin: sqlx::PgConnection,
    pub name: String,
    pub url: String,
}

impl BenchDb {
    pub(crate) async fn create(server_url: &str) -> anyhow::Result<BenchDb> {
        let name = format!("glassbox_bench_{}", uuid::Uuid::new_v4().simple());
        let (prefix, _) = server_url
            .rsplit_once('/')
            .context("--database-url must end in /<database>")?;
        let url = format!("{prefix}/{name}");
        let mut admin = sqlx::PgConnection::connect(server_url)
            .await
            .context("connecting to the PostgreSQL server")?;
        admin
            .execute(sqlx::raw_sql(AssertSqlSafe(format!(
                "CREATE DATABASE {name}"
            ))))
            .await
            .context("creating the benchmark database")?;
        Ok(BenchDb { admin, name, url })
    }

    pub(crate) async fn drop(mut self) {
        let _ = self
            .admin
            .execute(sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))))
            .await;
    }
}

async fn ledger(args: LedgerBench) -> anyhow::Result<ExitCode> {
    let db = BenchDb::create(&args.database_url).await?;
    let url = db.url.clone();
    let result = ledger_inner(&args, &url).await;
    if !args.keep {
        db.drop().await;
    }
    let mut out = result?;
    if args.keep {
        out["database_url"] = json!(url);
    }
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// Appends `bench.appended` events in batches of 1,000 until the ledger holds `size`.
pub(crate) async fn fill_to(store: &EventStore, size: u64) -> anyhow::Result<u64> {
    let mut head = store.head().await?.0;
    let mut i = head;
    while head < size {
        let n = (size - head).min(1000);
        let events = (0..n)
            .map(|j| {
                NewEvent::new(
                    format!("fill-{}", (i + j) % 1024),
                    "bench.appended",
                    payload(i + j),
                )
            })
            .collect();
        head = store
            .append(AppendRequest::new("bench", Actor::system("bench"), events))
            .await?
            .last_position();
        i += n;
    }
    Ok(head)
}

async fn ledger_inner(args: &LedgerBench, url: &str) -> anyhow::Result<Value> {
    let pool = glassbox_events::pg::pool_options(url)
        .max_connections(16)
        .connect(url)
        .await?;
    glassbox_events::migrate(&pool).await?;
    sqlx::query(
        "CREATE TABLE bench_baseline (id bigserial PRIMARY KEY, stream text NOT NULL, \
         canonical bytea NOT NULL, entry_hash bytea NOT NULL)",
    )
    .execute(&pool)
    .await?;
    let store = EventStore::new(pool.clone());
    // The baseline inserts exactly the bytes of a real record.
    store
        .append(AppendRequest::new(
            "bench",
            Actor::system("bench"),
            vec![NewEvent::new("warmup", "bench.appended", payload(0))],
        ))
        .await?;
    let sample_bytes = Arc::new(store.record(1).await?.context("warm-up record")?.canonical);

    let mut results = Map::new();
    let mut ratios = Map::new();
    for (label, writers, total, batch) in [
        ("single_1_writer", 1u64, args.appends, 1u64),
        ("single_8_writers", 8, args.appends, 1),
        ("batch_100_1_writer", 1, args.batches, 100),
    ] {
        let mut base = baseline_inserts(&pool, sample_bytes.clone(), writers, total, batch).await?;
        let mut led = ledger_appends(&store, writers, total, batch).await?;
        ratios.insert(label.into(), json!(round(led.rate() / base.rate())));
        results.insert(
            label.into(),
            json!({"writers": writers, "events_per_append": batch, "ledger": led.json(), "baseline": base.json()}),
        );
    }

    // Fill up to the proof size with large batches.
    let fill_started = Instant::now();
    let head = fill_to(&store, args.size).await?;
    let fill_secs = fill_started.elapsed().as_secs_f64();

    let key = match &args.key_file {
        Some(path) => SigningKey::load_file(path)?,
        None => SigningKey::generate("glassbox.bench/ledger")?,
    };
    let cp_started = Instant::now();
    store.publish_checkpoint(&key, key.name()).await?;
    let checkpoint_secs = cp_started.elapsed().as_secs_f64();

    let verify_started = Instant::now();
    let report = store
        .verify(Some(&key.verifier()), &[], None, None)
        .await?
        .map_err(|f| anyhow::anyhow!("benchmark ledger does not verify: {f}"))?;
    let verify_secs = verify_started.elapsed().as_secs_f64();

    let mut proof_lat = Vec::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let position = 1 + x % head;
        let t = Instant::now();
        let proof = store.inclusion_proof(position, head).await?;
        proof_lat.push(t.elapsed());
        anyhow::ensure!(!proof.is_empty() || head == 1, "empty proof");
    }
    proof_lat.sort();

    Ok(json!({
        "bench": "ledger",
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "appends": results,
        "ratio_to_baseline": ratios,
        "fill": {"events": head, "secs": round(fill_secs), "events_per_s": round((head as f64) / fill_secs)},
        "checkpoint_first_secs": round(checkpoint_secs),
        "verify": {"records": report.records, "secs": round(verify_secs), "events_per_s": round(report.records as f64 / verify_secs)},
        "inclusion_proof_at_size": head,
        "inclusion_proof_ms": {"p50": round(percentile(&proof_lat, 0.5)), "p99": round(percentile(&proof_lat, 0.99))},
    }))
}
