//! Every read of the read models. Only this crate names `projections.*` in SQL
//! (an architecture test checks it): the API, MCP, the runner and audit-query
//! call these functions, so a change of the read models' shape is a change here.

use glassbox_domain::{Job, JobStatus, Session, SessionStatus};
use glassbox_verify::bundle::Filters;
use sqlx::{PgPool, Row as _};

#[derive(Debug, thiserror::Error)]
#[error("read models: {step}: {source}")]
pub struct QueryError {
    pub step: &'static str,
    #[source]
    pub source: sqlx::Error,
}

fn q(step: &'static str) -> impl FnOnce(sqlx::Error) -> QueryError {
    move |source| QueryError { step, source }
}

fn state<A: serde::de::DeserializeOwned>(
    step: &'static str,
    v: serde_json::Value,
) -> Result<A, QueryError> {
    serde_json::from_value(v).map_err(|e| QueryError {
        step,
        source: sqlx::Error::Decode(Box::new(e)),
    })
}

/// Jobs that may need a runner (accepted, claimed or running), oldest first.
pub async fn runnable_jobs(pool: &PgPool, limit: i64) -> Result<Vec<String>, QueryError> {
    let statuses: Vec<&str> = JobStatus::ALL
        .iter()
        .filter(|s| s.needs_runner())
        .map(|s| s.as_str())
        .collect();
    sqlx::query_scalar(
        "SELECT job_id FROM projections.jobs WHERE status = ANY($1) \
         ORDER BY submitted_position LIMIT $2",
    )
    .bind(&statuses)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(q("list runnable jobs"))
}

/// One job of `tenant` (another tenant's job is `None`, like a missing one).
pub async fn job(pool: &PgPool, tenant: &str, job_id: &str) -> Result<Option<Job>, QueryError> {
    let v: Option<serde_json::Value> =
        sqlx::query_scalar("SELECT state FROM projections.jobs WHERE job_id = $1 AND tenant = $2")
            .bind(job_id)
            .bind(tenant)
            .fetch_optional(pool)
            .await
            .map_err(q("read a job"))?;
    v.map(|v| state("read a job", v)).transpose()
}

/// A page of `tenant`'s jobs, newest first (by submission position), with
/// the position each was submitted at (the cursor).
pub async fn list_jobs(
    pool: &PgPool,
    tenant: &str,
    status: Option<JobStatus>,
    language: Option<&str>,
    before_position: Option<i64>,
    limit: i64,
) -> Result<Vec<(Job, i64)>, QueryError> {
    let rows = sqlx::query(
        "SELECT state, submitted_position FROM projections.jobs \
         WHERE tenant = $1 AND ($2::text IS NULL OR status = $2) \
         AND ($3::text IS NULL OR language = $3) AND ($4::bigint IS NULL OR submitted_position < $4) \
         ORDER BY submitted_position DESC LIMIT $5",
    )
    .bind(tenant)
    .bind(status.map(JobStatus::as_str))
    .bind(language)
    .bind(before_position)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(q("list jobs"))?;
    rows.into_iter()
        .map(|r| {
            let v: serde_json::Value = r.try_get("state").map_err(q("list jobs"))?;
            let p: i64 = r.try_get("submitted_position").map_err(q("list jobs"))?;
            Ok((state("list jobs", v)?, p))
        })
        .collect()
}

fn live_statuses() -> Vec<&'static str> {
    SessionStatus::ALL
        .iter()
        .filter(|s| !s.is_terminal())
        .map(|s| s.as_str())
        .collect()
}

/// One session of `tenant` (another tenant's session is `None`, like a
/// missing one).
pub async fn session(
    pool: &PgPool,
    tenant: &str,
    session_id: &str,
) -> Result<Option<Session>, QueryError> {
    let v: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT state FROM projections.sessions WHERE session_id = $1 AND tenant = $2",
    )
    .bind(session_id)
    .bind(tenant)
    .fetch_optional(pool)
    .await
    .map_err(q("read a session"))?;
    v.map(|v| state("read a session", v)).transpose()
}

/// A page of `tenant`'s sessions, newest first, with the position each was
/// opened at (the cursor).
pub async fn list_sessions(
    pool: &PgPool,
    tenant: &str,
    status: Option<SessionStatus>,
    before_position: Option<i64>,
    limit: i64,
) -> Result<Vec<(Session, i64)>, QueryError> {
    let rows = sqlx::query(
        "SELECT state, opened_position FROM projections.sessions \
         WHERE tenant = $1 AND ($2::text IS NULL OR status = $2) \
         AND ($3::bigint IS NULL OR opened_position < $3) \
         ORDER BY opened_position DESC LIMIT $4",
    )
    .bind(tenant)
    .bind(status.map(SessionStatus::as_str))
    .bind(before_position)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(q("list sessions"))?;
    rows.into_iter()
        .map(|r| {
            let v: serde_json::Value = r.try_get("state").map_err(q("list sessions"))?;
            let p: i64 = r.try_get("opened_position").map_err(q("list sessions"))?;
            Ok((state("list sessions", v)?, p))
        })
        .collect()
}

/// How many of `tenant`'s sessions are opening or active (the quota).
pub async fn open_sessions(pool: &PgPool, tenant: &str) -> Result<i64, QueryError> {
    sqlx::query_scalar(
        "SELECT count(*) FROM projections.sessions WHERE tenant = $1 AND status = ANY($2)",
    )
    .bind(tenant)
    .bind(live_statuses())
    .fetch_one(pool)
    .await
    .map_err(q("count open sessions"))
}

/// Every session that is opening or active (all tenants), oldest first: what
/// the hot state is rebuilt from, and what the reaper watches.
/// Sessions open across all tenants (for the `glassbox.sessions.active` gauge).
pub async fn open_sessions_total(pool: &PgPool) -> Result<i64, QueryError> {
    sqlx::query_scalar("SELECT count(*) FROM projections.sessions WHERE status = ANY($1)")
        .bind(live_statuses())
        .fetch_one(pool)
        .await
        .map_err(q("count open sessions"))
}

pub async fn live_sessions(pool: &PgPool, limit: i64) -> Result<Vec<Session>, QueryError> {
    let rows: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT state FROM projections.sessions WHERE status = ANY($1) \
         ORDER BY opened_position LIMIT $2",
    )
    .bind(live_statuses())
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(q("list live sessions"))?;
    rows.into_iter()
        .map(|v| state("list live sessions", v))
        .collect()
}

/// The live sessions placed on `runner`: (session, tenant).
pub async fn sessions_on_runner(
    pool: &PgPool,
    runner: &str,
) -> Result<Vec<(String, String)>, QueryError> {
    sqlx::query_as(
        "SELECT session_id, tenant FROM projections.sessions \
         WHERE runner = $1 AND status = ANY($2) ORDER BY opened_position",
    )
    .bind(runner)
    .bind(live_statuses())
    .fetch_all(pool)
    .await
    .map_err(q("list a runner's sessions"))
}

/// Ended sessions whose data is still there and whose last record is older
/// than `secs` seconds: (session, tenant), oldest first.
pub async fn sessions_past_retention(
    pool: &PgPool,
    secs: u64,
    limit: i64,
) -> Result<Vec<(String, String)>, QueryError> {
    let live = live_statuses();
    sqlx::query_as(
        "SELECT session_id, tenant FROM projections.sessions \
         WHERE NOT (status = ANY($1)) AND NOT data_destroyed \
         AND updated_at < now() - make_interval(secs => $2) ORDER BY updated_at LIMIT $3",
    )
    .bind(&live)
    .bind(secs as f64)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(q("find sessions past retention"))
}

/// Finished jobs whose data is still there and whose last record is older
/// than `secs` seconds: (job, tenant), oldest first.
pub async fn jobs_past_retention(
    pool: &PgPool,
    secs: u64,
    limit: i64,
) -> Result<Vec<(String, String)>, QueryError> {
    let terminal: Vec<&str> = JobStatus::ALL
        .iter()
        .filter(|s| s.is_terminal())
        .map(|s| s.as_str())
        .collect();
    sqlx::query_as(
        "SELECT job_id, tenant FROM projections.jobs \
         WHERE status = ANY($1) AND NOT data_destroyed \
         AND updated_at < now() - make_interval(secs => $2) ORDER BY updated_at LIMIT $3",
    )
    .bind(&terminal)
    .bind(secs as f64)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(q("find jobs past retention"))
}

/// Jobs accepted and not yet claimed (the queue).
pub async fn queued_jobs(pool: &PgPool) -> Result<i64, QueryError> {
    sqlx::query_scalar("SELECT count(*) FROM projections.jobs WHERE status = $1")
        .bind(JobStatus::Accepted.as_str())
        .fetch_one(pool)
        .await
        .map_err(q("count queued jobs"))
}

/// Positions of indexed records matching `filters` (tenant `None` = every
/// tenant), after the keyset `after` in `ascending` order, at most `limit`.
pub async fn audit_positions(
    pool: &PgPool,
    filters: &Filters,
    ascending: bool,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<i64>, QueryError> {
    let from = filters.from_position.map(|p| p.min(i64::MAX as u64) as i64);
    let to = filters.to_position.map(|p| p.min(i64::MAX as u64) as i64);
    let sql = format!(
        "SELECT position FROM projections.audit_index WHERE \
         ($1::text IS NULL OR tenant = $1) AND ($2::text IS NULL OR stream = $2) \
         AND ($3::text IS NULL OR event_type = $3) AND ($4::text IS NULL OR actor_id = $4) \
         AND ($5::text IS NULL OR correlation_id = $5) \
         AND ($6::timestamptz IS NULL OR occurred_at >= $6) AND ($7::timestamptz IS NULL OR occurred_at < $7) \
         AND ($8::bigint IS NULL OR position >= $8) AND ($9::bigint IS NULL OR position <= $9) \
         AND ($10::bigint IS NULL OR position {cmp} $10) \
         ORDER BY position {dir} LIMIT $11",
        cmp = if ascending { ">" } else { "<" },
        dir = if ascending { "ASC" } else { "DESC" },
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(&filters.tenant)
        .bind(&filters.stream)
        .bind(&filters.event_type)
        .bind(&filters.actor)
        .bind(&filters.correlation_id)
        .bind(filters.since)
        .bind(filters.until)
        .bind(from)
        .bind(to)
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(q("search the audit index"))
}

/// Workflow runs started and not finished (their IDs), oldest first: what an
/// orchestrator sweeps. `started`/`finished` are the two event types and
/// `prefix` the run streams' prefix (items of the domain, passed in).
pub async fn unfinished_workflow_runs(
    pool: &PgPool,
    started: &str,
    finished: &str,
    prefix: &str,
    limit: i64,
) -> Result<Vec<String>, QueryError> {
    sqlx::query_scalar(
        "SELECT substr(s.stream, length($3) + 1) FROM projections.audit_index s \
         WHERE s.event_type = $1 AND NOT EXISTS (SELECT 1 FROM projections.audit_index f \
         WHERE f.stream = s.stream AND f.event_type = $2) ORDER BY s.position LIMIT $4",
    )
    .bind(started)
    .bind(finished)
    .bind(prefix)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(q("find unfinished workflow runs"))
}
