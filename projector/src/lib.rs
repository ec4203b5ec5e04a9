//! # glassbox-projector — read models folded from the ledger
//!
//! The ledger is the only source of truth; the tables in schema `projections`
//! (jobs, policy decisions, an audit index) are a cache of it that the API reads.
//! This crate is the only writer of those tables.
//!
//! **Delivery guarantee: exactly-once effects.** Each batch is folded inside one
//! transaction that first locks this projector's checkpoint row (`FOR UPDATE`),
//! reads the records after it, writes the read models and moves the checkpoint
//! to the batch's last position, then commits. A crash before the commit leaves
//! neither; several projector instances serialize on the row lock, and the one
//! that comes second sees the moved checkpoint — so every record's effects are
//! applied exactly once however many instances run or how often they restart.
//!
//! **Deterministic.** Nothing written depends on when the projection ran: times
//! come from the records, so [`Projector::rebuild`] (fold from position 1) yields
//! tables identical to the live ones; [`snapshot`] is how tests and
//! `glassbox projector rebuild --check` compare them.
//!
//! **Signed checkpoints.** While new events arrive, [`Projector::run`] asks the
//! store to publish a signed checkpoint at most once per interval (default one
//! second). The store serializes publishers with an advisory lock and refuses to
//! sign if one was signed less than an interval ago by anyone, so a fleet of
//! projectors still signs at most once per interval.

pub mod queries;

use chrono::{DateTime, Utc};
use glassbox_domain::stream::{job_of, session_of};
use glassbox_domain::{Aggregate, Job, Session};
use glassbox_events::catalogue::KnownEvent;
use glassbox_events::store::{EventStore, StoreError, StoredRecord};
use glassbox_events::{Digest, SigningKey};
use serde_json::Value;
use sqlx::postgres::{PgListener, PgPool};
use sqlx::{Postgres, Row as _, Transaction};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// Reports the checkpoint interval (`glassbox.ledger.checkpoint.interval`),
/// so an alert can say "no checkpoint for N intervals" without knowing the
/// configuration.
fn checkpoint_interval_gauge(interval: std::time::Duration) {
    static G: std::sync::OnceLock<opentelemetry::metrics::ObservableGauge<f64>> =
        std::sync::OnceLock::new();
    static SECS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    SECS.store(
        interval.as_secs_f64().to_bits(),
        std::sync::atomic::Ordering::Relaxed,
    );
    G.get_or_init(|| {
        opentelemetry::global::meter(glassbox_platform::telemetry::metrics::METER)
            .f64_observable_gauge("glassbox.ledger.checkpoint.interval")
            .with_unit("s")
            .with_description("How often checkpoints are signed while records arrive")
            .with_callback(|o| {
                o.observe(
                    f64::from_bits(SECS.load(std::sync::atomic::Ordering::Relaxed)),
                    &[],
                )
            })
            .build()
    });
}

/// The projector's name in `projections.checkpoints`.
pub const NAME: &str = "read_models";
/// NOTIFY channel carrying this projector's new position after each commit.
pub const NOTIFY_CHANNEL: &str = "glassbox_projection";
/// Records folded per transaction.
pub const DEFAULT_BATCH: u64 = 500;

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error("projector: {step}: database error: {source}")]
    Database {
        step: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("projector: {0}")]
    Store(#[from] StoreError),
    #[error("projector: ledger position {expected} is missing (found {found})")]
    Gap { expected: u64, found: u64 },
}

fn db(step: &'static str) -> impl FnOnce(sqlx::Error) -> ProjectorError {
    move |source| ProjectorError::Database { step, source }
}

/// How far the read models are behind the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    pub head: u64,
    pub position: u64,
    /// `head - position`.
    pub events: u64,
    /// Milliseconds from the first record not yet folded to now (0 when caught up).
    pub millis: u64,
}

/// Signing configuration for [`Projector::run`].
#[derive(Clone)]
pub struct Publisher {
    pub key: std::sync::Arc<SigningKey>,
    pub origin: String,
    pub interval: Duration,
}

#[derive(Debug, Clone)]
pub struct Projector {
    store: EventStore,
    batch: u64,
}

impl Projector {
    pub fn new(store: EventStore) -> Projector {
        Projector {
            store,
            batch: DEFAULT_BATCH,
        }
    }

    pub fn with_batch(mut self, batch: u64) -> Projector {
        self.batch = batch.max(1);
        self
    }

    fn pool(&self) -> &PgPool {
        self.store.pool()
    }

    /// The last position folded into the read models.
    pub async fn position(&self) -> Result<u64, ProjectorError> {
        position(self.pool()).await
    }

    /// Folds one batch in one transaction; returns how many records it folded.
    ///
    /// Traced as a `projector.batch` span; after the commit, each request whose
    /// records were in the batch gets a `projector.projected` span in its own
    /// trace (parented by its correlation ID, linked to the batch), marking
    /// when its records became readable.
    pub async fn step(&self) -> Result<usize, ProjectorError> {
        let batch = tracing::info_span!(
            "projector.batch",
            from = tracing::field::Empty,
            records = tracing::field::Empty,
        );
        // Which requests the batch makes readable: only looked for when spans
        // are exported.
        let traced = glassbox_platform::telemetry::tracing_enabled();
        let mut correlations: Vec<(String, u64, u64)> = Vec::new();
        let n = async {
            let mut tx = self.pool().begin().await.map_err(db("begin"))?;
            let at = lock_checkpoint(&mut tx).await?;
            tracing::Span::current().record("from", at + 1);
            let n = self
                .fold_batch(&mut tx, at, traced.then_some(&mut correlations))
                .await?;
            if n > 0 {
                tx.commit().await.map_err(db("commit"))?;
            }
            tracing::Span::current().record("records", n);
            Ok::<usize, ProjectorError>(n)
        }
        .instrument(batch.clone())
        .await?;
        for (correlation, first, last) in correlations {
            let s = tracing::info_span!(
                "projector.projected",
                correlation_id = %correlation,
                ledger.first_position = first,
                ledger.last_position = last,
            );
            glassbox_platform::telemetry::continue_trace(&s, &correlation);
            s.follows_from(&batch);
            s.in_scope(|| {});
        }
        Ok(n)
    }

    async fn fold_batch(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        at: u64,
        correlations: Option<&mut Vec<(String, u64, u64)>>,
    ) -> Result<usize, ProjectorError> {
        let records = self.store.read_all(at + 1, self.batch).await?;
        let Some(last) = records.last() else {
            return Ok(0);
        };
        // The requests this batch makes readable (at most 64 per batch).
        if let Some(correlations) = correlations {
            for r in &records {
                let p = r.record.position;
                let seen = correlations.len();
                match correlations
                    .iter_mut()
                    .find(|(c, _, _)| *c == r.record.correlation_id)
                {
                    Some(entry) => entry.2 = p,
                    None if seen < 64 => {
                        correlations.push((r.record.correlation_id.clone(), p, p));
                    }
                    None => {}
                }
            }
        }
        for (i, r) in records.iter().enumerate() {
            let expected = at + 1 + i as u64;
            if r.record.position != expected {
                return Err(ProjectorError::Gap {
                    expected,
                    found: r.record.position,
                });
            }
        }
        index(tx, &records).await?;
        for r in &records {
            fold_decision(tx, r).await?;
        }
        fold_jobs(&self.store, tx, &records).await?;
        fold_sessions(&self.store, tx, &records).await?;
        let last_pos = last.record.position;
        sqlx::query(
            "UPDATE projections.checkpoints SET position = $2, occurred_at = $3 WHERE projector = $1",
        )
        .bind(NAME)
        .bind(last_pos as i64)
        .bind(last.record.occurred_at)
        .execute(&mut **tx)
        .await
        .map_err(db("move checkpoint"))?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(last_pos.to_string())
            .execute(&mut **tx)
            .await
            .map_err(db("notify"))?;
        Ok(records.len())
    }

    /// Folds until the read models reach the head seen at the start; returns the position.
    pub async fn catch_up(&self) -> Result<u64, ProjectorError> {
        let (head, _) = self.store.head().await?;
        loop {
            let p = self.position().await?;
            if p >= head || self.step().await? == 0 {
                return self.position().await;
            }
        }
    }

    /// Empties the read models and folds the whole ledger again from position 1,
    /// in one transaction: readers see the old tables until the new ones commit
    /// (rows are deleted, not truncated, so nobody blocks on the rebuild), and
    /// live projectors wait on the checkpoint row meanwhile.
    pub async fn rebuild(&self) -> Result<u64, ProjectorError> {
        let mut tx = self.pool().begin().await.map_err(db("rebuild: begin"))?;
        lock_checkpoint(&mut tx).await?;
        for table in [
            "projections.jobs",
            "projections.sessions",
            "projections.policy_decisions",
            "projections.audit_index",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
                .execute(&mut *tx)
                .await
                .map_err(db("rebuild: clear"))?;
        }
        let mut at = 0;
        loop {
            let n = self.fold_batch(&mut tx, at, None).await?;
            if n == 0 {
                break;
            }
            at += n as u64;
        }
        if at == 0 {
            sqlx::query(
                "UPDATE projections.checkpoints SET position = 0, occurred_at = NULL WHERE projector = $1",
            )
            .bind(NAME)
            .execute(&mut *tx)
            .await
            .map_err(db("rebuild: reset checkpoint"))?;
        }
        tx.commit().await.map_err(db("rebuild: commit"))?;
        Ok(at)
    }

    /// How far behind the ledger the read models are.
    pub async fn lag(&self) -> Result<Lag, ProjectorError> {
        let (head, _) = self.store.head().await?;
        let position = self.position().await?;
        let mut millis = 0;
        if head > position
            && let Some(r) = self.store.record(position + 1).await?
        {
            millis = (Utc::now() - r.record.occurred_at)
                .num_milliseconds()
                .max(0) as u64;
        }
        Ok(Lag {
            head,
            position,
            events: head.saturating_sub(position),
            millis,
        })
    }

    /// Folds new records as they arrive until `shutdown`, publishing signed
    /// checkpoints while new events arrive when `publisher` is set. Errors are
    /// logged and retried; the loop only ends on shutdown.
    pub async fn run(self, publisher: Option<Publisher>, shutdown: CancellationToken) {
        if let Some(p) = &publisher {
            checkpoint_interval_gauge(p.interval);
        }
        let mut listener = match PgListener::connect_with(self.pool()).await {
            Ok(mut l) => match l.listen(glassbox_events::store::NOTIFY_CHANNEL).await {
                Ok(()) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "projector: LISTEN failed; polling");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "projector: cannot open a listener; polling");
                None
            }
        };
        let mut last_publish = Instant::now() - Duration::from_secs(3600);
        let mut unsigned = true;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let progressed = match self.step().await {
                Ok(n) => n > 0,
                Err(e) => {
                    tracing::error!(error = %e, "projector: batch failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    false
                }
            };
            unsigned |= progressed;
            if let Some(p) = &publisher
                && unsigned
                && last_publish.elapsed() >= p.interval
            {
                last_publish = Instant::now();
                match self
                    .store
                    .publish_checkpoint_every(&p.key, &p.origin, p.interval)
                    .await
                {
                    Ok(Some(c)) => {
                        unsigned = false;
                        tracing::info!(size = c.checkpoint.size, "projector: signed checkpoint");
                    }
                    Ok(None) => {
                        // Someone else signed recently, or nothing new: check again later.
                        let (head, _) = self.store.head().await.unwrap_or((0, Digest::ZERO));
                        let signed = self.latest_signed().await.unwrap_or(0);
                        unsigned = head > signed;
                    }
                    Err(e) => tracing::error!(error = %e, "projector: signing a checkpoint failed"),
                }
            }
            if progressed {
                continue;
            }
            let wait = if unsigned && publisher.is_some() {
                Duration::from_millis(250)
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = async {
                    match listener.as_mut() {
                        Some(l) => { let _ = tokio::time::timeout(wait, l.recv()).await; }
                        None => tokio::time::sleep(wait.min(Duration::from_millis(250))).await,
                    }
                } => {}
            }
        }
    }

    async fn latest_signed(&self) -> Result<u64, ProjectorError> {
        Ok(self.store.latest_checkpoint_size().await?)
    }
}

/// A job's read-model view as it stood once the ledger reached position `at`:
/// its stream's records up to `at`, folded by the domain's `Job::apply` — the
/// same fold the live projection runs — so replay at `at` equals the read model
/// as it was then, by construction, without touching the live tables.
pub async fn job_as_of(
    store: &EventStore,
    job_id: &str,
    at: u64,
) -> Result<Option<Value>, ProjectorError> {
    let stream = glassbox_domain::Stream::job(job_id);
    let records: Vec<StoredRecord> = store
        .read_stream(stream.as_str(), 1, 1_000_000)
        .await?
        .into_iter()
        .filter(|r| r.record.position <= at)
        .collect();
    let job = Job::fold(records.iter().map(|r| &r.record));
    Ok(job.view().and_then(|v| serde_json::to_value(v).ok()))
}

/// The last position folded, read without locking.
pub async fn position(pool: &PgPool) -> Result<u64, ProjectorError> {
    let p: Option<i64> =
        sqlx::query_scalar("SELECT position FROM projections.checkpoints WHERE projector = $1")
            .bind(NAME)
            .fetch_optional(pool)
            .await
            .map_err(db("read checkpoint"))?;
    Ok(p.unwrap_or(0) as u64)
}

async fn lock_checkpoint(tx: &mut Transaction<'static, Postgres>) -> Result<u64, ProjectorError> {
    sqlx::query(
        "INSERT INTO projections.checkpoints (projector, position) VALUES ($1, 0) \
         ON CONFLICT (projector) DO NOTHING",
    )
    .bind(NAME)
    .execute(&mut **tx)
    .await
    .map_err(db("create checkpoint"))?;
    let p: i64 = sqlx::query_scalar(
        "SELECT position FROM projections.checkpoints WHERE projector = $1 FOR UPDATE",
    )
    .bind(NAME)
    .fetch_one(&mut **tx)
    .await
    .map_err(db("lock checkpoint"))?;
    Ok(p as u64)
}

/// The audit index: one row per record, inserted for the whole batch at once.
async fn index(
    tx: &mut Transaction<'static, Postgres>,
    records: &[StoredRecord],
) -> Result<(), ProjectorError> {
    let mut position = Vec::with_capacity(records.len());
    let mut tenant = Vec::with_capacity(records.len());
    let mut stream = Vec::with_capacity(records.len());
    let mut event_type = Vec::with_capacity(records.len());
    let mut actor_kind = Vec::with_capacity(records.len());
    let mut actor_id = Vec::with_capacity(records.len());
    let mut actor_app = Vec::with_capacity(records.len());
    let mut actor_agent = Vec::with_capacity(records.len());
    let mut via = Vec::with_capacity(records.len());
    let mut occurred = Vec::with_capacity(records.len());
    let mut correlation = Vec::with_capacity(records.len());
    let mut hash = Vec::with_capacity(records.len());
    for s in records {
        let r = &s.record;
        position.push(r.position as i64);
        tenant.push(r.tenant.as_str());
        stream.push(r.stream.as_str());
        event_type.push(r.event_type.as_str());
        actor_kind.push(enum_name(&r.actor.kind));
        actor_id.push(r.actor.id.as_str());
        actor_app.push(r.actor.app.as_deref());
        actor_agent.push(r.actor.agent.as_deref());
        via.push(enum_name(&r.actor.via));
        occurred.push(r.occurred_at);
        correlation.push(r.correlation_id.as_str());
        hash.push(s.entry_hash.as_bytes().to_vec());
    }
    sqlx::query(
        "INSERT INTO projections.audit_index (position, tenant, stream, event_type, actor_kind, \
         actor_id, actor_app, actor_agent, auth_via, occurred_at, correlation_id, entry_hash) \
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], \
         $6::text[], $7::text[], $8::text[], $9::text[], $10::timestamptz[], $11::text[], $12::bytea[])",
    )
    .bind(&position)
    .bind(&tenant)
    .bind(&stream)
    .bind(&event_type)
    .bind(&actor_kind)
    .bind(&actor_id)
    .bind(&actor_app)
    .bind(&actor_agent)
    .bind(&via)
    .bind(&occurred)
    .bind(&correlation)
    .bind(&hash)
    .execute(&mut **tx)
    .await
    .map_err(db("insert audit index"))?;
    Ok(())
}

fn enum_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

/// The job a stream belongs to (`job-<id>`).
pub fn job_id_of(stream: &str) -> Option<&str> {
    job_of(stream)
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// `projections.policy_decisions`: one row per `policy.evaluated`.
async fn fold_decision(
    tx: &mut Transaction<'static, Postgres>,
    s: &StoredRecord,
) -> Result<(), ProjectorError> {
    let r = &s.record;
    let Ok(Some(KnownEvent::PolicyEvaluated(e))) = KnownEvent::decode(&r.event_type, &r.data)
    else {
        return Ok(());
    };
    let at: DateTime<Utc> = r.occurred_at;
    sqlx::query(
        "INSERT INTO projections.policy_decisions (position, tenant, stream, job_id, policy, \
         decision, reasons, bundle_digest, input_digest, error, occurred_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(r.position as i64)
    .bind(&r.tenant)
    .bind(&r.stream)
    .bind(job_id_of(&r.stream))
    .bind(&e.policy)
    .bind(enum_name(&e.decision))
    .bind(to_json(&e.reasons))
    .bind(e.bundle_digest.to_hex())
    .bind(e.input_digest.to_hex())
    .bind(&e.error)
    .bind(at)
    .execute(&mut **tx)
    .await
    .map_err(db("fold a policy decision"))?;
    Ok(())
}

/// The projector's fold of one job for one batch: the state as its row holds
/// it (JSON; `None` when there is no row yet), then the batch's records of that
/// job applied with `Job::apply`; records already folded into the stored state
/// are skipped. `Err` when the stored state cannot be read (the caller refolds
/// the whole stream). Pure, so "the read model equals the fold of the stream"
/// is tested without a database.
pub fn refold<A: Aggregate + serde::de::DeserializeOwned>(
    stored: Option<&Value>,
    records: &[&glassbox_events::Record],
) -> Result<A, serde_json::Error> {
    let mut state: A = match stored {
        Some(v) => serde_json::from_value(v.clone())?,
        None => A::default(),
    };
    for r in records {
        if r.stream_version > state.version() {
            state.apply(r);
        }
    }
    Ok(state)
}

/// Folds the batch's records of each touched stream of one kind onto the
/// state its row holds (`read`: the stored states by id), refolding a stream
/// from the start when its stored state cannot be read.
async fn fold_touched<'r, A: Aggregate + serde::de::DeserializeOwned>(
    store: &EventStore,
    touched: BTreeMap<&'r str, Vec<&'r StoredRecord>>,
    mut stored: BTreeMap<String, Value>,
    stream_of: impl Fn(&str) -> String,
) -> Result<Vec<(&'r str, A)>, ProjectorError> {
    let mut out = Vec::with_capacity(touched.len());
    for (id, recs) in touched {
        let recs: Vec<&glassbox_events::Record> = recs.iter().map(|s| &s.record).collect();
        let state = match refold::<A>(stored.remove(id).as_ref(), &recs) {
            Ok(a) => a,
            Err(e) => {
                // A state this build cannot read: fold the stream from the start.
                tracing::warn!(id, error = %e, "projector: refolding a stream");
                let upto = recs.last().map_or(0, |r| r.position);
                let all = store.read_stream(&stream_of(id), 1, 1_000_000).await?;
                let mut a = A::default();
                for r in all.iter().map(|s| &s.record).filter(|r| r.position <= upto) {
                    a.apply(r);
                }
                a
            }
        };
        out.push((id, state));
    }
    Ok(out)
}

/// The stored states of `ids` in `table` (its key column is `key`).
async fn stored_states(
    tx: &mut Transaction<'static, Postgres>,
    sql: &'static str,
    ids: &[&str],
) -> Result<BTreeMap<String, Value>, ProjectorError> {
    let rows = sqlx::query(sql)
        .bind(ids)
        .fetch_all(&mut **tx)
        .await
        .map_err(db("read stored states"))?;
    let mut stored = BTreeMap::new();
    for r in rows {
        let id: String = r.try_get(0).map_err(db("read stored states"))?;
        let v: Value = r.try_get(1).map_err(db("read stored states"))?;
        stored.insert(id, v);
    }
    Ok(stored)
}

/// `projections.jobs`: each job's state is the domain's [`Job`], folded by
/// `Job::apply` from the state stored with the row; the row's columns are
/// what queries filter on. One read and one write per job per batch.
async fn fold_jobs(
    store: &EventStore,
    tx: &mut Transaction<'static, Postgres>,
    records: &[StoredRecord],
) -> Result<(), ProjectorError> {
    let mut touched: BTreeMap<&str, Vec<&StoredRecord>> = BTreeMap::new();
    for s in records {
        if let Some(id) = job_id_of(&s.record.stream) {
            touched.entry(id).or_default().push(s);
        }
    }
    if touched.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = touched.keys().copied().collect();
    let stored = stored_states(
        tx,
        "SELECT job_id, state FROM projections.jobs WHERE job_id = ANY($1)",
        &ids,
    )
    .await?;
    let folded: Vec<(&str, Job)> = fold_touched(store, touched, stored, |id| {
        glassbox_domain::Stream::job(id).as_str().to_owned()
    })
    .await?;
    for (id, job) in folded {
        let job = &job;
        let Some(view) = job.view() else {
            // No `job.submitted` (a refusal before anything was stored): no row.
            continue;
        };
        sqlx::query(
            "INSERT INTO projections.jobs (job_id, tenant, status, language, submitted_position, \
             last_position, updated_at, data_destroyed, state) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (job_id) DO UPDATE SET tenant = $2, status = $3, language = $4, \
             submitted_position = $5, last_position = $6, updated_at = $7, data_destroyed = $8, state = $9",
        )
        .bind(id)
        .bind(&view.tenant)
        .bind(view.status.as_str())
        .bind(&view.language)
        .bind(view.submitted_position as i64)
        .bind(view.last_position as i64)
        .bind(job.updated_at)
        .bind(view.data_destroyed)
        .bind(to_json(job))
        .execute(&mut **tx)
        .await
        .map_err(db("write a job"))?;
    }
    Ok(())
}

/// `projections.sessions`: each session's state is the domain's [`Session`],
/// folded by `Session::apply` like jobs are.
async fn fold_sessions(
    store: &EventStore,
    tx: &mut Transaction<'static, Postgres>,
    records: &[StoredRecord],
) -> Result<(), ProjectorError> {
    let mut touched: BTreeMap<&str, Vec<&StoredRecord>> = BTreeMap::new();
    for s in records {
        if let Some(id) = session_of(&s.record.stream) {
            touched.entry(id).or_default().push(s);
        }
    }
    if touched.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = touched.keys().copied().collect();
    let stored = stored_states(
        tx,
        "SELECT session_id, state FROM projections.sessions WHERE session_id = ANY($1)",
        &ids,
    )
    .await?;
    let folded: Vec<(&str, Session)> = fold_touched(store, touched, stored, |id| {
        glassbox_domain::Stream::session(id).as_str().to_owned()
    })
    .await?;
    for (id, session) in folded {
        let Some(view) = session.view() else {
            continue;
        };
        sqlx::query(
            "INSERT INTO projections.sessions (session_id, tenant, status, language, runner, \
             opened_position, last_position, updated_at, next_deadline, data_destroyed, state) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (session_id) DO UPDATE SET tenant = $2, status = $3, language = $4, \
             runner = $5, opened_position = $6, last_position = $7, updated_at = $8, \
             next_deadline = $9, data_destroyed = $10, state = $11",
        )
        .bind(id)
        .bind(&view.tenant)
        .bind(view.status.as_str())
        .bind(&view.language)
        .bind(&session.runner)
        .bind(view.opened_position as i64)
        .bind(view.last_position as i64)
        .bind(session.updated_at.unwrap_or_default())
        .bind(session.deadline().map(|(t, _)| t))
        .bind(view.data_destroyed)
        .bind(to_json(&session))
        .execute(&mut **tx)
        .await
        .map_err(db("write a session"))?;
    }
    Ok(())
}

/// A session as the read model held it right after `at` (replay).
pub async fn session_as_of(
    store: &EventStore,
    session_id: &str,
    at: u64,
) -> Result<Option<Value>, ProjectorError> {
    let stream = glassbox_domain::Stream::session(session_id);
    let records = store.read_stream(stream.as_str(), 1, 1_000_000).await?;
    let session = Session::fold(
        records
            .iter()
            .map(|r| &r.record)
            .filter(|r| r.position <= at),
    );
    Ok(session.view().and_then(|v| serde_json::to_value(v).ok()))
}

/// The read models as one deterministic JSON value (every table, every column,
/// rows in key order) — equal for equal projections.
pub async fn snapshot(pool: &PgPool) -> Result<Value, ProjectorError> {
    let mut out = serde_json::Map::new();
    for (table, key) in [
        ("projections.jobs", "job_id"),
        ("projections.sessions", "session_id"),
        ("projections.policy_decisions", "position"),
        ("projections.audit_index", "position"),
        ("projections.checkpoints", "projector"),
    ] {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY t.{key}), '[]'::jsonb) AS rows FROM {table} t"
        )))
        .fetch_one(pool)
        .await
        .map_err(db("snapshot"))?;
        let v: Value = rows.try_get("rows").map_err(db("snapshot"))?;
        out.insert(table.to_owned(), v);
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests;
