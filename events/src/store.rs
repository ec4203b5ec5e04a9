//! The PostgreSQL store: the only code that touches the `ledger` schema.
//!
//! **Append** runs through one writer task per [`EventStore`] that *group-commits*:
//! every request queued while the previous transaction was committing goes into
//! the next one. Each transaction locks the single head row (`SELECT … FOR UPDATE`),
//! so transactions from all processes commit in position order; inside a group
//! each request is checked on its own (expected versions, idempotency) and
//! succeeds or fails on its own — a request never lands partly.
//!
//! **Subscriptions** deliver every record exactly once, in position order: they
//! LISTEN for the head position, always re-read by position from the last one
//! delivered (catch-up), poll as a safety net, and reconnect after losing the
//! connection. Because commit order equals position order, reading by position
//! can never skip a late commit.

use crate::checkpoint::{Checkpoint, CheckpointError, SigningKey, VerifierKey};
use crate::hash::Digest;
use crate::merkle::{self, Frontier, NodeId, ProofError, ProofPlan};
use crate::record::{self, Actor, Record, RecordError};
use crate::verify::{ChainVerifier, Failure, Problem, RawRow, Report, StartState};
use chrono::Utc;
use futures::StreamExt as _;
use serde_json::{Map, Value};
use sqlx::postgres::{PgListener, PgPool};
use sqlx::{Postgres, Row, Transaction};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;
use uuid::Uuid;

/// NOTIFY channel carrying the new head position after each commit.
pub const NOTIFY_CHANNEL: &str = "glassbox_ledger";
/// Advisory lock key held by the one checkpoint publisher at a time.
const CHECKPOINT_LOCK: i64 = 0x676c_6173_7362_6f78; // "glassbox"
/// Most requests committed together in one group.
const MAX_GROUP: usize = 256;

/// Runs the embedded migrations (all schemas, not only the ledger's).
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    // The service role is cluster-wide: on a fresh cluster, databases migrated
    // at the same moment would race to create it (each migration run locks
    // only its own database). Created here first, tolerating the race; the
    // migration then finds it.
    sqlx::query(
        "DO $$ BEGIN \
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'glassbox_service') THEN \
             CREATE ROLE glassbox_service NOLOGIN; \
           END IF; \
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; \
         END $$",
    )
    .execute(pool)
    .await
    .map_err(|e| StoreError::Migrate(format!("create the service role: {e}")))?;
    sqlx::migrate!("../migrations")
        .run(pool)
        .await
        .map_err(|e| StoreError::Migrate(e.to_string()))
}

/// The expected version of a stream before an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must be at exactly this version.
    Exactly(u64),
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => write!(f, "any version"),
            ExpectedVersion::NoStream => write!(f, "no stream"),
            ExpectedVersion::Exactly(n) => write!(f, "version {n}"),
        }
    }
}

/// An optimistic-concurrency conflict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("append to stream {stream}: expected {expected}, found {}", actual.map_or("no stream".to_owned(), |v| format!("version {v}")))]
pub struct Conflict {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub actual: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Conflict(#[from] Conflict),
    #[error(
        "append: idempotency key {key:?} of tenant {tenant} was already used for a different request"
    )]
    IdempotencyConflict { tenant: String, key: String },
    #[error("append: event {index} ({event_type}) on stream {stream:?} is invalid: {source}")]
    InvalidEvent {
        index: usize,
        event_type: String,
        stream: String,
        #[source]
        source: RecordError,
    },
    #[error("append: {0}")]
    InvalidRequest(String),
    #[error("{step}: database error: {source}")]
    Database {
        step: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("append: the store's writer task has stopped")]
    WriterGone,
    #[error("migrate: {0}")]
    Migrate(String),
    #[error("proof: {0}")]
    Proof(#[from] ProofError),
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("checkpoint: refusing to sign: {0}")]
    Inconsistent(String),
    #[error("read: record at position {position} is corrupt: {reason}")]
    Corrupt { position: u64, reason: String },
    #[error("subscription: position {expected} is missing from the ledger (found {found})")]
    Gap { expected: u64, found: u64 },
}

fn db(step: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { step, source }
}

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub stream: String,
    pub event_type: String,
    pub data: Map<String, Value>,
    /// Generated when `None`.
    pub event_id: Option<Uuid>,
}

impl NewEvent {
    pub fn new(
        stream: impl Into<String>,
        event_type: impl Into<String>,
        data: Map<String, Value>,
    ) -> NewEvent {
        NewEvent {
            stream: stream.into(),
            event_type: event_type.into(),
            data,
            event_id: None,
        }
    }

    /// From any catalogue event.
    pub fn known(
        stream: impl Into<String>,
        event: &crate::catalogue::KnownEvent,
    ) -> Result<NewEvent, crate::catalogue::EventError> {
        Ok(NewEvent::new(stream, event.event_type(), event.to_data()?))
    }

    /// From a typed catalogue event.
    pub fn typed<E: crate::catalogue::Event>(
        stream: impl Into<String>,
        event: &E,
    ) -> Result<NewEvent, crate::catalogue::EventError> {
        Ok(NewEvent::new(stream, E::TYPE, event.to_data()?))
    }
}

/// (tenant, key, digest of the request) — see [`AppendRequest::idempotency`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    pub request_digest: Digest,
}

/// One atomic append: all its events land, in order, or none do.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    pub tenant: String,
    pub actor: Actor,
    pub correlation_id: String,
    pub causation_id: Option<String>,
    pub request_id: Option<String>,
    pub events: Vec<NewEvent>,
    /// Checked before anything is written; streams not listed are unchecked.
    pub expected: Vec<(String, ExpectedVersion)>,
    pub idempotency: Option<Idempotency>,
}

impl AppendRequest {
    pub fn new(tenant: impl Into<String>, actor: Actor, events: Vec<NewEvent>) -> AppendRequest {
        AppendRequest {
            tenant: tenant.into(),
            actor,
            correlation_id: Uuid::new_v4().to_string(),
            causation_id: None,
            request_id: None,
            events,
            expected: Vec::new(),
            idempotency: None,
        }
    }

    pub fn expect(mut self, stream: impl Into<String>, v: ExpectedVersion) -> AppendRequest {
        self.expected.push((stream.into(), v));
        self
    }

    pub fn idempotent(mut self, key: impl Into<String>, request_digest: Digest) -> AppendRequest {
        self.idempotency = Some(Idempotency {
            key: key.into(),
            request_digest,
        });
        self
    }

    fn validate(&self) -> Result<(), StoreError> {
        if self.events.is_empty() {
            return Err(StoreError::InvalidRequest("no events to append".into()));
        }
        if self.tenant.is_empty() {
            return Err(StoreError::InvalidRequest("tenant is empty".into()));
        }
        for (index, e) in self.events.iter().enumerate() {
            let invalid = |source| StoreError::InvalidEvent {
                index,
                event_type: e.event_type.clone(),
                stream: e.stream.clone(),
                source,
            };
            if e.stream.is_empty() {
                return Err(invalid(RecordError::Invalid {
                    field: "stream",
                    reason: "empty".into(),
                }));
            }
            if e.event_type.is_empty() {
                return Err(invalid(RecordError::Invalid {
                    field: "type",
                    reason: "empty".into(),
                }));
            }
            record::check_data(&e.data).map_err(invalid)?;
        }
        Ok(())
    }
}

/// Where one appended event landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub position: u64,
    pub stream: String,
    pub stream_version: u64,
    pub event_id: Uuid,
}

/// The result of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    pub events: Vec<Appended>,
    /// True when an idempotency key matched and nothing new was appended.
    pub replayed: bool,
    /// The records appended (empty for a replay), so a writer can fold them
    /// into the state it carries without reading them back.
    pub records: Vec<Record>,
}

impl AppendOutcome {
    pub fn first_position(&self) -> u64 {
        self.events.first().map_or(0, |e| e.position)
    }
    pub fn last_position(&self) -> u64 {
        self.events.last().map_or(0, |e| e.position)
    }
}

/// A record as stored: its exact bytes, its entry hash and the parsed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub record: Record,
    pub canonical: Vec<u8>,
    pub entry_hash: Digest,
}

impl StoredRecord {
    fn from_row(row: &sqlx::postgres::PgRow) -> Result<StoredRecord, StoreError> {
        let position: i64 = row.try_get("position").map_err(db("read record"))?;
        let canonical: Vec<u8> = row.try_get("canonical").map_err(db("read record"))?;
        let hash: Vec<u8> = row.try_get("entry_hash").map_err(db("read record"))?;
        let corrupt = |reason: String| StoreError::Corrupt {
            position: position as u64,
            reason,
        };
        let record = Record::from_canonical(&canonical).map_err(|e| corrupt(e.to_string()))?;
        let entry_hash = Digest::from_slice(&hash)
            .ok_or_else(|| corrupt("entry hash is not 32 bytes".into()))?;
        Ok(StoredRecord {
            record,
            canonical,
            entry_hash,
        })
    }
}

/// A signed checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub checkpoint: Checkpoint,
    pub note: String,
    pub key_name: String,
}

type Reply = oneshot::Sender<Result<AppendOutcome, StoreError>>;

struct Job {
    request: AppendRequest,
    reply: Reply,
    /// The caller's `ledger.append` span: the commit that carries the request
    /// links to it, and it records which commit that was.
    span: tracing::Span,
}

/// The ledger's instruments (see `glassbox_platform::telemetry::metrics`).
struct LedgerMetrics {
    append: opentelemetry::metrics::Histogram<f64>,
    group: opentelemetry::metrics::Histogram<u64>,
    verification_failures: opentelemetry::metrics::Counter<u64>,
}

fn ledger_metrics() -> &'static LedgerMetrics {
    static M: std::sync::OnceLock<LedgerMetrics> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let m = opentelemetry::global::meter("glassbox");
        LedgerMetrics {
            append: m
                .f64_histogram("glassbox.ledger.append.duration")
                .with_unit("s")
                .with_description("Time from an append request to its commit (or refusal)")
                .with_boundaries(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ])
                .build(),
            group: m
                .u64_histogram("glassbox.ledger.commit.requests")
                .with_description("Append requests committed together in one group commit")
                .with_boundaries(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0])
                .build(),
            verification_failures: m
                .u64_counter("glassbox.ledger.verification.failures")
                .with_description(
                    "Ledger verifications that found the chain, the tree or a checkpoint inconsistent",
                )
                .build(),
        }
    })
}

/// Creates the verification-failure counter at zero for each stage.
pub fn count_verification_failures_init() {
    for stage in ["checkpoint", "audit"] {
        ledger_metrics()
            .verification_failures
            .add(0, &[opentelemetry::KeyValue::new("stage", stage)]);
    }
}

/// Counts a verification that found the ledger inconsistent (the checkpoint
/// signer's own check and the audit API's `verify`).
pub fn count_verification_failure(stage: &'static str) {
    ledger_metrics()
        .verification_failures
        .add(1, &[opentelemetry::KeyValue::new("stage", stage)]);
}

/// Handle to the ledger. Cheap to clone; all clones share one writer task.
#[derive(Clone)]
pub struct EventStore {
    pool: PgPool,
    writer: mpsc::Sender<Job>,
    /// Records this handle (and its clones) read by stream or position — what
    /// the benchmarks report as reads per job.
    records_read: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl fmt::Debug for EventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStore").finish_non_exhaustive()
    }
}

impl EventStore {
    /// Connects a pool; does not migrate.
    pub async fn connect(url: &str) -> Result<EventStore, StoreError> {
        let pool = crate::pg::pool_options(url)
            .max_connections(16)
            .connect(url)
            .await
            .map_err(db("connect"))?;
        Ok(EventStore::new(pool))
    }

    /// Wraps a pool and starts the group-commit writer (needs a tokio runtime).
    pub fn new(pool: PgPool) -> EventStore {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(writer_loop(pool.clone(), rx));
        EventStore {
            pool,
            writer: tx,
            records_read: Default::default(),
        }
    }

    /// Records read through this handle and its clones so far.
    pub fn records_read(&self) -> u64 {
        self.records_read.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count_read(&self, n: usize) {
        self.records_read
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Appends one request atomically (see the module docs for group commit).
    pub async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        request.validate()?;
        let span = tracing::info_span!(
            "ledger.append",
            events = request.events.len(),
            ledger.commit = tracing::field::Empty,
            ledger.group_size = tracing::field::Empty,
            ledger.first_position = tracing::field::Empty,
            ledger.last_position = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let (reply, rx) = oneshot::channel();
        let out = async {
            self.writer
                .send(Job {
                    request,
                    reply,
                    span: tracing::Span::current(),
                })
                .await
                .map_err(|_| StoreError::WriterGone)?;
            rx.await.map_err(|_| StoreError::WriterGone)?
        }
        .instrument(span.clone())
        .await;
        if let Ok(o) = &out {
            span.record("ledger.first_position", o.first_position());
            span.record("ledger.last_position", o.last_position());
        }
        ledger_metrics().append.record(
            started.elapsed().as_secs_f64(),
            &[opentelemetry::KeyValue::new(
                "outcome",
                if out.is_ok() { "committed" } else { "refused" },
            )],
        );
        out
    }

    /// The head: (number of records, entry hash of the last one).
    pub async fn head(&self) -> Result<(u64, Digest), StoreError> {
        let row = sqlx::query("SELECT position, entry_hash FROM ledger.head WHERE id")
            .fetch_one(&self.pool)
            .await
            .map_err(db("read head"))?;
        let pos: i64 = row.try_get("position").map_err(db("read head"))?;
        let hash: Vec<u8> = row.try_get("entry_hash").map_err(db("read head"))?;
        Ok((
            pos as u64,
            Digest::from_slice(&hash).unwrap_or(Digest::ZERO),
        ))
    }

    /// The current version of a stream (`None` if it has no events).
    pub async fn stream_version(&self, stream: &str) -> Result<Option<u64>, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT version FROM ledger.streams WHERE stream = $1")
                .bind(stream)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("read stream version"))?;
        Ok(v.map(|v| v as u64))
    }

    /// The tree size of the largest signed checkpoint (0: none yet).
    pub async fn latest_checkpoint_size(&self) -> Result<u64, StoreError> {
        let n: Option<i64> = sqlx::query_scalar("SELECT max(tree_size) FROM ledger.checkpoints")
            .fetch_one(&self.pool)
            .await
            .map_err(db("read checkpoints"))?;
        Ok(n.unwrap_or(0) as u64)
    }

    /// Seconds since the latest checkpoint was signed (`None`: none yet).
    pub async fn latest_checkpoint_age(&self) -> Result<Option<f64>, StoreError> {
        let age: Option<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM now() - max(created_at))::float8 FROM ledger.checkpoints",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db("read checkpoints"))?;
        Ok(age.map(|a| a.max(0.0)))
    }

    /// One record by position.
    pub async fn record(&self, position: u64) -> Result<Option<StoredRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT position, canonical, entry_hash FROM ledger.records WHERE position = $1",
        )
        .bind(position as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read record"))?;
        row.as_ref().map(StoredRecord::from_row).transpose()
    }

    /// Records of one stream from a version on, in order.
    pub async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: u64,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT position, canonical, entry_hash FROM ledger.records \
             WHERE stream = $1 AND stream_version >= $2 ORDER BY stream_version LIMIT $3",
        )
        .bind(stream)
        .bind(from_version as i64)
        .bind(limit.min(i64::MAX as u64) as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read stream"))?;
        self.count_read(rows.len());
        rows.iter().map(StoredRecord::from_row).collect()
    }

    /// All records from a position on, in position order.
    pub async fn read_all(
        &self,
        from_position: u64,
        limit: u64,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT position, canonical, entry_hash FROM ledger.records \
             WHERE position >= $1 ORDER BY position LIMIT $2",
        )
        .bind(from_position as i64)
        .bind(limit.min(i64::MAX as u64) as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read all"))?;
        self.count_read(rows.len());
        rows.iter().map(StoredRecord::from_row).collect()
    }

    /// The records at `positions` (those that exist), in position order.
    pub async fn records_at(&self, positions: &[u64]) -> Result<Vec<StoredRecord>, StoreError> {
        let p: Vec<i64> = positions.iter().map(|p| *p as i64).collect();
        let rows = sqlx::query(
            "SELECT position, canonical, entry_hash FROM ledger.records \
             WHERE position = ANY($1) ORDER BY position",
        )
        .bind(&p)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read records"))?;
        self.count_read(rows.len());
        rows.iter().map(StoredRecord::from_row).collect()
    }

    /// What an idempotency key of `tenant` was used for: the request digest and
    /// the positions it produced. Lets a caller answer a retry without redoing work;
    /// the append itself still decides races.
    pub async fn idempotency_lookup(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<(Digest, u64, u64)>, StoreError> {
        let step = "idempotency lookup";
        let row = sqlx::query(
            "SELECT request_digest, first_position, last_position FROM ledger.idempotency \
             WHERE tenant = $1 AND key = $2",
        )
        .bind(tenant)
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(db(step))?;
        let Some(r) = row else { return Ok(None) };
        let digest: Vec<u8> = r.try_get("request_digest").map_err(db(step))?;
        Ok(Some((
            Digest::from_slice(&digest).unwrap_or(Digest::ZERO),
            r.try_get::<i64, _>("first_position").map_err(db(step))? as u64,
            r.try_get::<i64, _>("last_position").map_err(db(step))? as u64,
        )))
    }

    /// Delivers every record after `after`, exactly once, in position order,
    /// forever (until the [`Subscription`] is dropped).
    pub fn subscribe(&self, after: u64) -> Subscription {
        let (tx, rx) = mpsc::channel(1024);
        let pool = self.pool.clone();
        let task = tokio::spawn(subscription_loop(
            pool,
            after,
            tx,
            Duration::from_millis(500),
        ));
        Subscription { rx, task }
    }

    /// Delivers the records of the given types appended after position
    /// `after`, in order — without reading any other record (the filter runs in
    /// the database). Woken by the ledger's NOTIFY, with a poll every second as
    /// a safety net; a record is delivered only once the head has passed it, so
    /// a late commit is never skipped (commit order is position order).
    pub fn watch_types(&self, after: u64, types: &[&str]) -> Subscription {
        let (tx, rx) = mpsc::channel(256);
        let pool = self.pool.clone();
        let types: Vec<String> = types.iter().map(|t| (*t).to_owned()).collect();
        let counter = self.records_read.clone();
        let task = tokio::spawn(async move {
            let mut last = after;
            let mut listener = None;
            loop {
                if listener.is_none()
                    && let Ok(mut l) = PgListener::connect_with(&pool).await
                    && l.listen(NOTIFY_CHANNEL).await.is_ok()
                {
                    listener = Some(l);
                }
                let head: Result<i64, sqlx::Error> =
                    sqlx::query_scalar("SELECT position FROM ledger.head WHERE id")
                        .fetch_one(&pool)
                        .await;
                if let Err(e) = &head {
                    tracing::warn!(error = %e, "ledger type watch: head read failed, retrying");
                }
                if let Ok(head) = head {
                    let head = head as u64;
                    if head > last {
                        let rows = sqlx::query(
                            "SELECT position, canonical, entry_hash FROM ledger.records \
                             WHERE position > $1 AND position <= $2 AND event_type = ANY($3) \
                             ORDER BY position",
                        )
                        .bind(last as i64)
                        .bind(head as i64)
                        .bind(&types)
                        .fetch_all(&pool)
                        .await;
                        match rows {
                            Err(e) => {
                                tracing::warn!(error = %e, "ledger type watch: read failed, retrying")
                            }
                            Ok(rows) => {
                                counter.fetch_add(
                                    rows.len() as u64,
                                    std::sync::atomic::Ordering::Relaxed,
                                );
                                for row in &rows {
                                    let item = StoredRecord::from_row(row);
                                    if tx.send(item).await.is_err() {
                                        return;
                                    }
                                }
                                last = head;
                            }
                        }
                    }
                }
                let wait = async {
                    match listener.as_mut() {
                        Some(l) => {
                            if l.recv().await.is_err() {
                                listener = None;
                            }
                        }
                        None => tokio::time::sleep(Duration::from_secs(1)).await,
                    }
                };
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::timeout(Duration::from_secs(1), wait) => {}
                }
            }
        });
        Subscription { rx, task }
    }

    async fn fetch_nodes(&self, ids: &[NodeId]) -> Result<HashMap<NodeId, Digest>, StoreError> {
        let levels: Vec<i16> = ids.iter().map(|n| n.level as i16).collect();
        let idxs: Vec<i64> = ids.iter().map(|n| n.index as i64).collect();
        let rows = sqlx::query(
            "SELECT level, idx, hash FROM ledger.merkle_nodes \
             WHERE (level, idx) IN (SELECT * FROM unnest($1::smallint[], $2::bigint[]))",
        )
        .bind(&levels)
        .bind(&idxs)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read merkle nodes"))?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            let level: i16 = r.try_get("level").map_err(db("read merkle nodes"))?;
            let idx: i64 = r.try_get("idx").map_err(db("read merkle nodes"))?;
            let hash: Vec<u8> = r.try_get("hash").map_err(db("read merkle nodes"))?;
            if let Some(h) = Digest::from_slice(&hash) {
                out.insert(
                    NodeId {
                        level: level as u32,
                        index: idx as u64,
                    },
                    h,
                );
            }
        }
        Ok(out)
    }

    async fn check_size(&self, size: u64) -> Result<(), StoreError> {
        let (available, _) = self.head().await?;
        if size > available {
            return Err(ProofError::SizeBeyondLedger { size, available }.into());
        }
        Ok(())
    }

    async fn run_plan(&self, plan: &ProofPlan) -> Result<Vec<Digest>, StoreError> {
        let nodes = self.fetch_nodes(&plan.nodes()).await?;
        Ok(plan.assemble(&nodes)?)
    }

    /// The Merkle root of the first `size` records (one query).
    pub async fn root_at(&self, size: u64) -> Result<Digest, StoreError> {
        if size == 0 {
            return Ok(merkle::empty_root());
        }
        self.check_size(size).await?;
        let plan = ProofPlan {
            ranges: vec![(0, size)],
        };
        Ok(self.run_plan(&plan).await?[0])
    }

    /// Inclusion proof of the record at `position` in the tree of `size` records.
    pub async fn inclusion_proof(
        &self,
        position: u64,
        size: u64,
    ) -> Result<Vec<Digest>, StoreError> {
        if position == 0 {
            return Err(ProofError::LeafOutOfRange { index: 0, size }.into());
        }
        self.check_size(size).await?;
        self.run_plan(&merkle::inclusion_plan(position - 1, size)?)
            .await
    }

    /// Inclusion proofs of many records in the tree of `size` records, with one
    /// query for all the nodes they need (exports prove thousands at a time).
    pub async fn inclusion_proofs(
        &self,
        positions: &[u64],
        size: u64,
    ) -> Result<Vec<Vec<Digest>>, StoreError> {
        self.check_size(size).await?;
        let mut plans = Vec::with_capacity(positions.len());
        for p in positions {
            if *p == 0 {
                return Err(ProofError::LeafOutOfRange { index: 0, size }.into());
            }
            plans.push(merkle::inclusion_plan(p - 1, size)?);
        }
        let mut ids: Vec<NodeId> = plans.iter().flat_map(ProofPlan::nodes).collect();
        ids.sort();
        ids.dedup();
        let nodes = self.fetch_nodes(&ids).await?;
        plans
            .iter()
            .map(|plan| plan.assemble(&nodes).map_err(StoreError::from))
            .collect()
    }

    /// Consistency proof between the trees of `first` and `second` records.
    pub async fn consistency_proof(
        &self,
        first: u64,
        second: u64,
    ) -> Result<Vec<Digest>, StoreError> {
        self.check_size(second).await?;
        self.run_plan(&merkle::consistency_plan(first, second)?)
            .await
    }

    /// Every stored checkpoint, ascending by size.
    pub async fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StoreError> {
        let rows = sqlx::query(
            "SELECT tree_size, note, key_name FROM ledger.checkpoints ORDER BY tree_size",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("read checkpoints"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let note: String = r.try_get("note").map_err(db("read checkpoints"))?;
            let key_name: String = r.try_get("key_name").map_err(db("read checkpoints"))?;
            let size: i64 = r.try_get("tree_size").map_err(db("read checkpoints"))?;
            let body = note.split("\n\n").next().unwrap_or_default();
            let checkpoint =
                Checkpoint::parse_body(&format!("{body}\n")).map_err(|e| StoreError::Corrupt {
                    position: size as u64,
                    reason: format!("checkpoint note: {e}"),
                })?;
            out.push(StoredCheckpoint {
                checkpoint,
                note,
                key_name,
            });
        }
        Ok(out)
    }

    /// Signs and stores a checkpoint for the current size. Returns `None` when
    /// another publisher holds the lock or nothing was appended since the last one.
    /// Refuses (and signs nothing) if the stored tree is not consistent with the
    /// latest checkpoint — the log never signs two inconsistent checkpoints.
    pub async fn publish_checkpoint(
        &self,
        key: &SigningKey,
        origin: &str,
    ) -> Result<Option<StoredCheckpoint>, StoreError> {
        self.publish_checkpoint_every(key, origin, Duration::ZERO)
            .await
    }

    /// Like [`EventStore::publish_checkpoint`], but also returns `None` when the
    /// latest checkpoint (by anyone) is younger than `min_interval` — so several
    /// publishers together still sign at most once per interval.
    pub async fn publish_checkpoint_every(
        &self,
        key: &SigningKey,
        origin: &str,
        min_interval: Duration,
    ) -> Result<Option<StoredCheckpoint>, StoreError> {
        let span = tracing::info_span!(
            "ledger.checkpoint.sign",
            ledger.checkpoint.size = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let out = self
            .sign_checkpoint(key, origin, min_interval)
            .instrument(span.clone())
            .await;
        match &out {
            Ok(Some(c)) => {
                span.record("ledger.checkpoint.size", c.checkpoint.size);
                span.record("outcome", "signed");
            }
            Ok(None) => {
                span.record("outcome", "skipped");
            }
            Err(e) => {
                if matches!(e, StoreError::Inconsistent(_)) {
                    count_verification_failure("checkpoint");
                }
                span.record("outcome", "failed");
            }
        }
        out
    }

    async fn sign_checkpoint(
        &self,
        key: &SigningKey,
        origin: &str,
        min_interval: Duration,
    ) -> Result<Option<StoredCheckpoint>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db("checkpoint: begin"))?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(CHECKPOINT_LOCK)
            .fetch_one(&mut *tx)
            .await
            .map_err(db("checkpoint: lock"))?;
        if !locked {
            return Ok(None);
        }
        if !min_interval.is_zero() {
            let recent: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM ledger.checkpoints \
                 WHERE created_at > now() - make_interval(secs => $1))",
            )
            .bind(min_interval.as_secs_f64())
            .fetch_one(&mut *tx)
            .await
            .map_err(db("checkpoint: read latest"))?;
            if recent {
                return Ok(None);
            }
        }
        let latest: Option<i64> =
            sqlx::query_scalar("SELECT max(tree_size) FROM ledger.checkpoints")
                .fetch_one(&mut *tx)
                .await
                .map_err(db("checkpoint: read latest"))?;
        let latest = latest.unwrap_or(0) as u64;
        let (head, _) = self.head().await?;
        if head == 0 || head <= latest {
            return Ok(None);
        }
        // Extend the last signed tree with the records themselves (verifying them
        // on the way) rather than trusting stored state: whatever is signed is
        // consistent with every earlier checkpoint by construction.
        let verifier = key.verifier();
        let report = match self
            .verify(Some(&verifier), &[], Some(latest + 1), Some(head))
            .await?
        {
            Ok(r) => r,
            Err(failure) => return Err(StoreError::Inconsistent(failure.to_string())),
        };
        if report.from != latest + 1 && latest > 0 {
            return Err(StoreError::Inconsistent(format!(
                "the latest checkpoint (size {latest}) could not be used as a starting point"
            )));
        }
        let size = report.to;
        if self.root_at(size).await? != report.root {
            return Err(StoreError::Inconsistent(format!(
                "stored Merkle nodes disagree with the records at size {size}"
            )));
        }
        let checkpoint = Checkpoint {
            origin: origin.to_owned(),
            size,
            root: report.root,
        };
        let note = key.sign(&checkpoint);
        sqlx::query("INSERT INTO ledger.checkpoints (tree_size, root_hash, note, key_name) VALUES ($1, $2, $3, $4)")
            .bind(size as i64)
            .bind(checkpoint.root.as_bytes().as_slice())
            .bind(&note)
            .bind(key.name())
            .execute(&mut *tx)
            .await
            .map_err(db("checkpoint: insert"))?;
        tx.commit().await.map_err(db("checkpoint: commit"))?;
        Ok(Some(StoredCheckpoint {
            checkpoint,
            note,
            key_name: key.name().to_owned(),
        }))
    }

    /// Verifies records `from..=to` (defaults: everything).
    ///
    /// Signed checkpoints from the store and `extra_notes` (an auditor's own copies)
    /// are opened with `key`; with no key, only the chain is checked. When `from`
    /// is above 1, verification starts at the largest checkpoint below `from`,
    /// whose frontier and last record are authenticated against its signed root
    /// (incremental verification); without such a checkpoint it starts at 1.
    pub async fn verify(
        &self,
        key: Option<&VerifierKey>,
        extra_notes: &[String],
        from: Option<u64>,
        to: Option<u64>,
    ) -> Result<Result<Report, Failure>, StoreError> {
        let mut checkpoints = Vec::new();
        if let Some(key) = key {
            let mut notes: Vec<(Option<u64>, String)> = self
                .checkpoints()
                .await?
                .into_iter()
                .map(|c| (Some(c.checkpoint.size), c.note))
                .collect();
            notes.extend(extra_notes.iter().map(|n| (None, n.clone())));
            for (size, note) in notes {
                match key.open(&note) {
                    Ok(cp) => checkpoints.push(cp),
                    Err(e) => {
                        return Ok(Err(Failure {
                            position: size.unwrap_or(0),
                            problem: Problem::BadCheckpoint {
                                size: size.unwrap_or(0),
                                reason: e.to_string(),
                            },
                        }));
                    }
                }
            }
        }
        let (head_size, head_hash) = self.head().await?;
        let start = match from.filter(|f| *f > 1) {
            None => StartState::genesis(),
            Some(f) => match checkpoints
                .iter()
                .filter(|c| c.size < f)
                .max_by_key(|c| c.size)
            {
                None => StartState::genesis(),
                Some(cp) => match self.authenticated_start(cp).await? {
                    Ok(s) => s,
                    Err(failure) => return Ok(Err(failure)),
                },
            },
        };
        let mut verifier = ChainVerifier::new(start.clone(), checkpoints);
        // A run "to the end" stops at the head read above, so appends that land
        // meanwhile do not look like records beyond the head.
        // Never past the head: a larger `to` names records that do not exist
        // (and must not make this plan billions of empty batches).
        let end = to.unwrap_or(head_size).min(head_size);
        // Fetch and pre-check (hash, strict parse) several batches at once — on
        // separate connections and blocking threads — while this task follows the
        // chain through them in order.
        const BATCH: u64 = 5000;
        let ranges: Vec<(u64, u64)> = (start.size + 1..=end)
            .step_by(BATCH as usize)
            .map(|lo| (lo, (lo + BATCH - 1).min(end)))
            .collect();
        let pool = self.pool.clone();
        let mut batches = futures::stream::iter(ranges)
            .map(move |(lo, hi)| {
                let pool = pool.clone();
                async move {
                    let rows = sqlx::query(
                        "SELECT position, event_id, stream, stream_version, event_type, tenant, canonical, entry_hash \
                         FROM ledger.records WHERE position BETWEEN $1 AND $2 ORDER BY position",
                    )
                    .bind(lo as i64)
                    .bind(hi as i64)
                    .fetch_all(&pool)
                    .await
                    .map_err(db("verify: read records"))?;
                    let rows = rows.iter().map(raw_row).collect::<Result<Vec<_>, _>>()?;
                    tokio::task::spawn_blocking(move || {
                        let pre: Vec<_> = rows.iter().map(crate::verify::precheck).collect();
                        (rows, pre)
                    })
                    .await
                    .map_err(|e| StoreError::InvalidRequest(format!("verify: worker failed: {e}")))
                }
            })
            .buffered(4);
        while let Some(batch) = batches.next().await {
            let (rows, pre) = batch?;
            for (row, pre) in rows.iter().zip(pre) {
                if let Err(f) = verifier.push_prechecked(row, pre) {
                    return Ok(Err(f));
                }
            }
        }
        let full = to.is_none_or(|t| t >= head_size);
        let report = match verifier.finish(full.then_some((head_size, head_hash))) {
            Ok(r) => r,
            Err(f) => return Ok(Err(f)),
        };
        if full {
            // Rows slipped in beyond the head are not part of the ledger. Head and
            // last row are read in one statement (one snapshot): appends commit
            // both together, so concurrent appends never look like this.
            let (now_head, max): (i64, Option<i64>) = sqlx::query_as(
                "SELECT h.position, (SELECT max(position) FROM ledger.records) \
                 FROM ledger.head h WHERE id",
            )
            .fetch_one(&self.pool)
            .await
            .map_err(db("verify: read last position"))?;
            let now_head = now_head as u64;
            if let Some(max) = max.filter(|m| *m as u64 > now_head) {
                let head_size = now_head;
                return Ok(Err(Failure {
                    position: head_size + 1,
                    problem: Problem::HeadMismatch(format!(
                        "records exist up to {max} beyond the head at {head_size}"
                    )),
                }));
            }
        }
        // Streams continuing from before an incremental start must have their
        // previous version stored before the start.
        for (stream, version, position) in &report.streams_continued {
            let prev: Option<i64> = sqlx::query_scalar(
                "SELECT position FROM ledger.records WHERE stream = $1 AND stream_version = $2",
            )
            .bind(stream)
            .bind((*version - 1) as i64)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("verify: read stream history"))?;
            if prev.is_none_or(|p| p as u64 >= report.from) {
                return Ok(Err(Failure {
                    position: *position,
                    problem: Problem::StreamVersion {
                        stream: stream.clone(),
                        found: *version,
                        expected: 1,
                    },
                }));
            }
        }
        Ok(Ok(report))
    }

    /// The state after a checkpoint's records, authenticated against its root.
    async fn authenticated_start(
        &self,
        cp: &Checkpoint,
    ) -> Result<Result<StartState, Failure>, StoreError> {
        // The stored nodes are what an insider would rewrite along with the tail.
        let bad = || Failure {
            position: 1,
            problem: Problem::CheckpointMismatch { size: cp.size },
        };
        let ids = merkle::range_nodes(0, cp.size);
        let nodes = self.fetch_nodes(&ids).await?;
        let hashes: Option<Vec<Digest>> = ids.iter().map(|id| nodes.get(id).copied()).collect();
        let Some(frontier) = hashes.and_then(|h| Frontier::from_nodes(cp.size, &h)) else {
            return Ok(Err(bad()));
        };
        if frontier.root() != cp.root {
            return Ok(Err(bad()));
        }
        let Some(last) = self.record(cp.size).await.ok().flatten() else {
            return Ok(Err(Failure {
                position: cp.size,
                problem: Problem::Missing,
            }));
        };
        let proof = self.inclusion_proof(cp.size, cp.size).await?;
        if merkle::verify_inclusion(
            cp.size - 1,
            cp.size,
            &merkle::leaf_hash(&last.canonical),
            &proof,
            &cp.root,
        )
        .is_err()
            || Digest::of(&last.canonical) != last.entry_hash
        {
            return Ok(Err(Failure {
                position: cp.size,
                problem: Problem::CheckpointMismatch { size: cp.size },
            }));
        }
        Ok(Ok(StartState {
            size: cp.size,
            last_entry_hash: last.entry_hash,
            frontier,
        }))
    }
}

fn raw_row(r: &sqlx::postgres::PgRow) -> Result<RawRow, StoreError> {
    let step = "verify: decode row";
    Ok(RawRow {
        position: r.try_get::<i64, _>("position").map_err(db(step))? as u64,
        event_id: r.try_get("event_id").map_err(db(step))?,
        stream: r.try_get("stream").map_err(db(step))?,
        stream_version: r.try_get::<i64, _>("stream_version").map_err(db(step))? as u64,
        event_type: r.try_get("event_type").map_err(db(step))?,
        tenant: r.try_get("tenant").map_err(db(step))?,
        canonical: r.try_get("canonical").map_err(db(step))?,
        entry_hash: r.try_get("entry_hash").map_err(db(step))?,
    })
}

/// A live feed of records; see [`EventStore::subscribe`].
pub struct Subscription {
    rx: mpsc::Receiver<Result<StoredRecord, StoreError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscription {
    /// The next record (waits for one to be appended).
    pub async fn next(&mut self) -> Option<Result<StoredRecord, StoreError>> {
        self.rx.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn subscription_loop(
    pool: PgPool,
    mut last: u64,
    tx: mpsc::Sender<Result<StoredRecord, StoreError>>,
    poll: Duration,
) {
    let mut backoff = Duration::from_millis(50);
    let mut gap_retries = 0u32;
    'connect: loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "ledger subscription: connect failed, retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(e) = listener.listen(NOTIFY_CHANNEL).await {
            tracing::warn!(error = %e, "ledger subscription: LISTEN failed, retrying");
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(50);
        loop {
            // Catch up by position: this, not the notification, is what delivers.
            loop {
                let rows = sqlx::query(
                    "SELECT position, canonical, entry_hash FROM ledger.records \
                     WHERE position > $1 ORDER BY position LIMIT 1000",
                )
                .bind(last as i64)
                .fetch_all(&pool)
                .await;
                let rows = match rows {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "ledger subscription: read failed, reconnecting");
                        tokio::time::sleep(backoff).await;
                        continue 'connect;
                    }
                };
                let n = rows.len();
                for row in &rows {
                    let rec = match StoredRecord::from_row(row) {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    };
                    if rec.record.position != last + 1 {
                        // Cannot happen while commit order equals position order;
                        // re-read a few times, then report the hole.
                        gap_retries += 1;
                        if gap_retries > 20 {
                            let _ = tx
                                .send(Err(StoreError::Gap {
                                    expected: last + 1,
                                    found: rec.record.position,
                                }))
                                .await;
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        break;
                    }
                    gap_retries = 0;
                    last = rec.record.position;
                    if tx.send(Ok(rec)).await.is_err() {
                        return;
                    }
                }
                if n < 1000 {
                    break;
                }
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(poll) => {}
                msg = listener.try_recv() => match msg {
                    Ok(Some(_)) => {}
                    Ok(None) => tracing::info!("ledger subscription: connection lost, catching up"),
                    Err(e) => {
                        tracing::warn!(error = %e, "ledger subscription: listener failed, reconnecting");
                        continue 'connect;
                    }
                },
            }
        }
    }
}

// ----------------------------------------------------------------------------
// The group-commit writer.

async fn writer_loop(pool: PgPool, mut rx: mpsc::Receiver<Job>) {
    let mut commits: u64 = 0;
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        commits += 1;
        // One span per commit, linked to every request it carried; each
        // request's span names the commit — which requests shared a commit
        // is visible from both sides.
        let commit = tracing::info_span!(parent: None, "ledger.commit", ledger.commit = commits, ledger.group_size = group.len());
        for j in &group {
            commit.follows_from(&j.span);
            j.span.record("ledger.commit", commits);
            j.span.record("ledger.group_size", group.len());
        }
        ledger_metrics().group.record(group.len() as u64, &[]);
        let requests: Vec<&AppendRequest> = group.iter().map(|j| &j.request).collect();
        match commit_group(&pool, &requests).instrument(commit).await {
            Ok(results) => {
                for (job, result) in group.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(e) => {
                // The whole transaction failed: nothing of any request landed.
                let msg = e.to_string();
                for job in group {
                    let _ = job.reply.send(Err(match &e {
                        StoreError::Database { step, .. } => StoreError::Database {
                            step,
                            source: sqlx::Error::Protocol(msg.clone()),
                        },
                        _ => StoreError::InvalidRequest(msg.clone()),
                    }));
                }
            }
        }
    }
}

/// Rows to insert, column by column (for `unnest`).
#[derive(Default)]
struct Columns {
    position: Vec<i64>,
    event_id: Vec<Uuid>,
    stream: Vec<String>,
    stream_version: Vec<i64>,
    event_type: Vec<String>,
    tenant: Vec<String>,
    occurred_at: Vec<chrono::DateTime<Utc>>,
    canonical: Vec<Vec<u8>>,
    entry_hash: Vec<Vec<u8>>,
}

enum Planned {
    Done(Result<AppendOutcome, StoreError>),
    /// Same key and digest as an earlier request in this group.
    SameAs(usize),
    /// Same key and digest as a stored request: replay its positions.
    Replay(u64, u64),
}

/// Commits one group in one transaction and returns each request's own result.
async fn commit_group(
    pool: &PgPool,
    requests: &[&AppendRequest],
) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
    let mut tx: Transaction<'_, Postgres> = pool.begin().await.map_err(db("append: begin"))?;
    let head =
        sqlx::query("SELECT position, entry_hash, frontier FROM ledger.head WHERE id FOR UPDATE")
            .fetch_one(&mut *tx)
            .await
            .map_err(db("append: lock head"))?;
    let mut position = head
        .try_get::<i64, _>("position")
        .map_err(db("append: lock head"))? as u64;
    let mut prev = Digest::from_slice(
        &head
            .try_get::<Vec<u8>, _>("entry_hash")
            .map_err(db("append: lock head"))?,
    )
    .unwrap_or(Digest::ZERO);
    let frontier_bytes: Vec<u8> = head.try_get("frontier").map_err(db("append: lock head"))?;
    let hashes: Vec<Digest> = frontier_bytes
        .chunks(32)
        .filter_map(Digest::from_slice)
        .collect();
    let mut frontier =
        Frontier::from_nodes(position, &hashes).ok_or_else(|| StoreError::Corrupt {
            position,
            reason: "head frontier does not match the head position".into(),
        })?;

    // Current versions of every stream the group touches or checks.
    let mut names: HashSet<&str> = HashSet::new();
    for r in requests {
        names.extend(r.events.iter().map(|e| e.stream.as_str()));
        names.extend(r.expected.iter().map(|(s, _)| s.as_str()));
    }
    let names: Vec<&str> = names.into_iter().collect();
    let rows = sqlx::query("SELECT stream, version FROM ledger.streams WHERE stream = ANY($1)")
        .bind(&names)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("append: read stream versions"))?;
    let mut versions: HashMap<String, u64> = HashMap::new();
    for r in rows {
        let s: String = r
            .try_get("stream")
            .map_err(db("append: read stream versions"))?;
        let v: i64 = r
            .try_get("version")
            .map_err(db("append: read stream versions"))?;
        versions.insert(s, v as u64);
    }

    // Idempotency keys already stored.
    let (kt, kk): (Vec<&str>, Vec<&str>) = requests
        .iter()
        .filter_map(|r| {
            r.idempotency
                .as_ref()
                .map(|i| (r.tenant.as_str(), i.key.as_str()))
        })
        .unzip();
    let mut stored_keys: HashMap<(String, String), (Digest, u64, u64)> = HashMap::new();
    if !kt.is_empty() {
        let rows = sqlx::query(
            "SELECT tenant, key, request_digest, first_position, last_position FROM ledger.idempotency \
             WHERE (tenant, key) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        )
        .bind(&kt)
        .bind(&kk)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("append: read idempotency keys"))?;
        for r in rows {
            let step = "append: read idempotency keys";
            let digest: Vec<u8> = r.try_get("request_digest").map_err(db(step))?;
            stored_keys.insert(
                (
                    r.try_get("tenant").map_err(db(step))?,
                    r.try_get("key").map_err(db(step))?,
                ),
                (
                    Digest::from_slice(&digest).unwrap_or(Digest::ZERO),
                    r.try_get::<i64, _>("first_position").map_err(db(step))? as u64,
                    r.try_get::<i64, _>("last_position").map_err(db(step))? as u64,
                ),
            );
        }
    }

    let now = record::truncate_to_micros(Utc::now());
    let mut cols = Columns::default();
    let mut nodes: Vec<(NodeId, Digest)> = Vec::new();
    let mut batch_keys: HashMap<(String, String), (Digest, usize)> = HashMap::new();
    let mut new_keys: Vec<(String, String, Digest, u64, u64)> = Vec::new();
    let mut planned: Vec<Planned> = Vec::with_capacity(requests.len());

    'requests: for (i, req) in requests.iter().enumerate() {
        if let Some(idem) = &req.idempotency {
            let k = (req.tenant.clone(), idem.key.clone());
            if let Some((digest, first, last)) = stored_keys.get(&k) {
                planned.push(if *digest == idem.request_digest {
                    Planned::Replay(*first, *last)
                } else {
                    Planned::Done(Err(StoreError::IdempotencyConflict {
                        tenant: k.0,
                        key: k.1,
                    }))
                });
                continue;
            }
            if let Some((digest, j)) = batch_keys.get(&k) {
                planned.push(if *digest == idem.request_digest {
                    Planned::SameAs(*j)
                } else {
                    Planned::Done(Err(StoreError::IdempotencyConflict {
                        tenant: k.0,
                        key: k.1,
                    }))
                });
                continue;
            }
        }
        for (stream, expected) in &req.expected {
            let actual = versions.get(stream).copied();
            let ok = match expected {
                ExpectedVersion::Any => true,
                ExpectedVersion::NoStream => actual.is_none(),
                ExpectedVersion::Exactly(n) => actual == Some(*n),
            };
            if !ok {
                planned.push(Planned::Done(Err(StoreError::Conflict(Conflict {
                    stream: stream.clone(),
                    expected: *expected,
                    actual,
                }))));
                continue 'requests;
            }
        }
        // Build this request's records against scratch state, keep it only if all succeed.
        let mut local_versions: HashMap<&str, u64> = HashMap::new();
        let mut local_frontier = frontier.clone();
        let (mut local_pos, mut local_prev) = (position, prev);
        let mut built: Vec<(Record, Vec<u8>, Digest)> = Vec::with_capacity(req.events.len());
        let mut local_nodes = Vec::new();
        for (index, e) in req.events.iter().enumerate() {
            let v = local_versions
                .get(e.stream.as_str())
                .copied()
                .or_else(|| versions.get(&e.stream).copied())
                .unwrap_or(0)
                + 1;
            local_versions.insert(&e.stream, v);
            local_pos += 1;
            let rec = Record {
                position: local_pos,
                event_id: e.event_id.unwrap_or_else(Uuid::new_v4),
                stream: e.stream.clone(),
                stream_version: v,
                event_type: e.event_type.clone(),
                occurred_at: now,
                tenant: req.tenant.clone(),
                actor: req.actor.clone(),
                correlation_id: req.correlation_id.clone(),
                causation_id: req.causation_id.clone(),
                request_id: req.request_id.clone(),
                data: e.data.clone(),
                prev_hash: local_prev,
            };
            let bytes = match rec.canonical_bytes() {
                Ok(b) => b,
                Err(source) => {
                    planned.push(Planned::Done(Err(StoreError::InvalidEvent {
                        index,
                        event_type: e.event_type.clone(),
                        stream: e.stream.clone(),
                        source,
                    })));
                    continue 'requests;
                }
            };
            let hash = Digest::of(&bytes);
            local_nodes.extend(local_frontier.push(merkle::leaf_hash(&bytes)));
            local_prev = hash;
            built.push((rec, bytes, hash));
        }
        // Commit the request to the group.
        let first_pos = position + 1;
        position = local_pos;
        prev = local_prev;
        frontier = local_frontier;
        nodes.extend(local_nodes);
        for (s, v) in local_versions {
            versions.insert(s.to_owned(), v);
        }
        let mut appended = Vec::with_capacity(built.len());
        let mut records = Vec::with_capacity(built.len());
        for (rec, bytes, hash) in built {
            records.push(rec.clone());
            appended.push(Appended {
                position: rec.position,
                stream: rec.stream.clone(),
                stream_version: rec.stream_version,
                event_id: rec.event_id,
            });
            cols.position.push(rec.position as i64);
            cols.event_id.push(rec.event_id);
            cols.stream.push(rec.stream);
            cols.stream_version.push(rec.stream_version as i64);
            cols.event_type.push(rec.event_type);
            cols.tenant.push(rec.tenant);
            cols.occurred_at.push(rec.occurred_at);
            cols.canonical.push(bytes);
            cols.entry_hash.push(hash.as_bytes().to_vec());
        }
        if let Some(idem) = &req.idempotency {
            batch_keys.insert(
                (req.tenant.clone(), idem.key.clone()),
                (idem.request_digest, i),
            );
            new_keys.push((
                req.tenant.clone(),
                idem.key.clone(),
                idem.request_digest,
                first_pos,
                position,
            ));
        }
        planned.push(Planned::Done(Ok(AppendOutcome {
            events: appended,
            replayed: false,
            records,
        })));
    }

    if !cols.position.is_empty() {
        let touched: Vec<(&String, &u64)> = versions
            .iter()
            .filter(|(s, _)| cols.stream.contains(s))
            .collect();
        let s_names: Vec<&str> = touched.iter().map(|(s, _)| s.as_str()).collect();
        let s_versions: Vec<i64> = touched.iter().map(|(_, v)| **v as i64).collect();
        let n_level: Vec<i16> = nodes.iter().map(|(n, _)| n.level as i16).collect();
        let n_idx: Vec<i64> = nodes.iter().map(|(n, _)| n.index as i64).collect();
        let n_hash: Vec<Vec<u8>> = nodes.iter().map(|(_, h)| h.as_bytes().to_vec()).collect();
        let k_tenant: Vec<&str> = new_keys.iter().map(|k| k.0.as_str()).collect();
        let k_key: Vec<&str> = new_keys.iter().map(|k| k.1.as_str()).collect();
        let k_digest: Vec<Vec<u8>> = new_keys.iter().map(|k| k.2.as_bytes().to_vec()).collect();
        let k_first: Vec<i64> = new_keys.iter().map(|k| k.3 as i64).collect();
        let k_last: Vec<i64> = new_keys.iter().map(|k| k.4 as i64).collect();
        let frontier_bytes: Vec<u8> = frontier.hashes().iter().flat_map(|h| h.0).collect();
        sqlx::query(
            "WITH r AS (
                INSERT INTO ledger.records
                    (position, event_id, stream, stream_version, event_type, tenant, occurred_at, canonical, entry_hash)
                SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                                     $7::timestamptz[], $8::bytea[], $9::bytea[])
            ), n AS (
                INSERT INTO ledger.merkle_nodes (level, idx, hash)
                SELECT * FROM unnest($10::smallint[], $11::bigint[], $12::bytea[])
            ), s AS (
                INSERT INTO ledger.streams (stream, version)
                SELECT * FROM unnest($13::text[], $14::bigint[])
                ON CONFLICT (stream) DO UPDATE SET version = EXCLUDED.version
            ), k AS (
                INSERT INTO ledger.idempotency (tenant, key, request_digest, first_position, last_position)
                SELECT * FROM unnest($15::text[], $16::text[], $17::bytea[], $18::bigint[], $19::bigint[])
            ), h AS (
                UPDATE ledger.head SET position = $20, entry_hash = $21, frontier = $22 WHERE id
            )
            SELECT pg_notify($23, $20::text)",
        )
        .bind(&cols.position)
        .bind(&cols.event_id)
        .bind(&cols.stream)
        .bind(&cols.stream_version)
        .bind(&cols.event_type)
        .bind(&cols.tenant)
        .bind(&cols.occurred_at)
        .bind(&cols.canonical)
        .bind(&cols.entry_hash)
        .bind(&n_level)
        .bind(&n_idx)
        .bind(&n_hash)
        .bind(&s_names)
        .bind(&s_versions)
        .bind(&k_tenant)
        .bind(&k_key)
        .bind(&k_digest)
        .bind(&k_first)
        .bind(&k_last)
        .bind(position as i64)
        .bind(prev.as_bytes().as_slice())
        .bind(&frontier_bytes)
        .bind(NOTIFY_CHANNEL)
        .execute(&mut *tx)
        .await
        .map_err(db("append: write records"))?;
    }

    // Replays read the original records inside the same transaction.
    let mut results: Vec<Result<AppendOutcome, StoreError>> = Vec::with_capacity(planned.len());
    for p in planned {
        let r = match p {
            Planned::Done(r) => r,
            Planned::SameAs(j) => match &results[j] {
                Ok(o) => Ok(AppendOutcome {
                    events: o.events.clone(),
                    replayed: true,
                    records: Vec::new(),
                }),
                Err(_) => Err(StoreError::InvalidRequest(
                    "the original request with this idempotency key failed".into(),
                )),
            },
            Planned::Replay(first, last) => {
                let rows = sqlx::query(
                    "SELECT position, stream, stream_version, event_id FROM ledger.records \
                     WHERE position BETWEEN $1 AND $2 ORDER BY position",
                )
                .bind(first as i64)
                .bind(last as i64)
                .fetch_all(&mut *tx)
                .await
                .map_err(db("append: read replayed records"))?;
                let mut events = Vec::with_capacity(rows.len());
                for r in rows {
                    let step = "append: read replayed records";
                    events.push(Appended {
                        position: r.try_get::<i64, _>("position").map_err(db(step))? as u64,
                        stream: r.try_get("stream").map_err(db(step))?,
                        stream_version: r.try_get::<i64, _>("stream_version").map_err(db(step))?
                            as u64,
                        event_id: r.try_get("event_id").map_err(db(step))?,
                    });
                }
                Ok(AppendOutcome {
                    events,
                    replayed: true,
                    records: Vec::new(),
                })
            }
        };
        results.push(r);
    }
    tx.commit().await.map_err(db("append: commit"))?;
    Ok(results)
}
