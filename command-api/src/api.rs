//! HTTP handlers: parse into the core's commands, render replies. Nothing here
//! decides anything the core does not.

use crate::AppState;
use crate::core::{Caller, JobRequest};
use crate::error::ApiError;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use glassbox_platform::problem::{Problem, codes};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sqlx::Row as _;
use std::time::{Duration, Instant};

/// `Json` whose rejections are problem+json (413, 415, 400 naming the member).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::TooLarge("the request body exceeds the configured limit".into())
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ApiError::UnsupportedMediaType("send Content-Type: application/json".into())
        }
        _ => ApiError::Invalid(r.body_text()),
    }
}

/// `Query` whose rejections are problem+json.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(ApiQuery(v)),
            Err(r) => Err(ApiError::Invalid(query_text(r))),
        }
    }
}

fn query_text(r: QueryRejection) -> String {
    r.body_text()
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| ApiError::Invalid("Idempotency-Key: 1-255 visible ASCII characters".into()))?;
    valid_idempotency_key("Idempotency-Key", s)?;
    Ok(Some(s.to_owned()))
}

/// The shape every idempotency key must have, whichever way it came (REST
/// header, MCP argument): it is stored in the ledger for good.
pub(crate) fn valid_idempotency_key(name: &str, s: &str) -> Result<(), ApiError> {
    if !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(ApiError::Invalid(format!(
            "{name}: 1-255 visible ASCII characters"
        )))
    }
}

// ---------------------------------------------------------------- jobs

pub async fn submit_job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<JobRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let reply = state.core.submit(&caller, body, key).await?;
    let r = reply.receipt;
    let mut resp = if r.status == "accepted" {
        let mut resp = (StatusCode::CREATED, Json(&r)).into_response();
        if let Ok(v) = format!("/v1/jobs/{}", r.job_id).parse() {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        resp
    } else {
        let (code, title) = if r.unauthorized {
            (codes::FORBIDDEN, "Forbidden")
        } else {
            (codes::POLICY_DENIED, "Job rejected by policy")
        };
        Problem::new(StatusCode::FORBIDDEN, code, title)
            .detail(r.reasons.join("; "))
            .with("job_id", r.job_id.clone())
            .with("position", r.position)
            .with("submitted_position", r.submitted_position)
            .with("reasons", r.reasons.clone())
            .with(
                "decisions",
                serde_json::to_value(&r.decisions).unwrap_or(Value::Null),
            )
            .into_response()
    };
    if reply.replayed {
        resp.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(resp)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetJobParams {
    /// Seconds to wait for a terminal state (at most `max_wait_secs`).
    #[serde(default)]
    pub wait: Option<u64>,
    /// Do not answer from read models older than this ledger position.
    #[serde(default)]
    pub min_position: Option<u64>,
}

/// A job as clients see it: every read-model column but the raw result event
/// (its blob keys are internal; `/output` serves the result).
const JOB_COLUMNS: &str = "to_jsonb(j) - 'result' AS v";

pub(crate) async fn fetch_job(
    state: &AppState,
    tenant: &str,
    id: &str,
) -> Result<Option<Value>, ApiError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM projections.jobs j WHERE job_id = $1 AND tenant = $2"
    )))
    .bind(id)
    .bind(tenant)
    .fetch_optional(&state.core.pool)
    .await
    .map_err(|e| ApiError::Internal(format!("read job: {e}")))?;
    row.map(|r| r.try_get::<Value, _>("v"))
        .transpose()
        .map_err(|e| ApiError::Internal(format!("read job: {e}")))
}

fn is_terminal(job: &Value) -> bool {
    job.get("status")
        .and_then(Value::as_str)
        .is_some_and(|s| glassbox_projector::TERMINAL.contains(&s))
}

pub async fn get_job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<GetJobParams>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.identity.tenant.clone();
    state.core.authorize(&caller, "job.read", &tenant).await?;
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(ApiError::NotFound(format!("job {id}")));
    }
    let max_wait = state.config.max_wait_secs;
    let wait = match p.wait {
        Some(w) if w > max_wait => {
            return Err(ApiError::Invalid(format!(
                "wait: at most {max_wait} seconds"
            )));
        }
        w => Duration::from_secs(w.unwrap_or(0)),
    };
    let deadline = Instant::now() + wait;
    if let Some(min) = p.min_position {
        let budget = wait.max(Duration::from_secs(10));
        state.core.await_projection(min, budget).await?;
    }
    let mut rx = state.core.projected.clone();
    loop {
        rx.borrow_and_update();
        let job = fetch_job(&state, &tenant, &id).await?;
        let Some(job) = job else {
            return Err(ApiError::NotFound(format!("job {id}")));
        };
        let now = Instant::now();
        if is_terminal(&job) || now >= deadline {
            return Ok(Json(job));
        }
        // Wake on the next projection (or re-check at least every second).
        let _ =
            tokio::time::timeout((deadline - now).min(Duration::from_secs(1)), rx.changed()).await;
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub language: Option<String>,
    #[serde(default)]
    pub limit: Option<u64>,
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub min_position: Option<u64>,
}

pub const STATUSES: &[&str] = &[
    "submitted",
    "accepted",
    "rejected",
    "claimed",
    "running",
    "completed",
    "failed",
    "cancelled",
];

fn encode_cursor(position: i64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("v1:{position}"))
}

fn decode_cursor(c: &str) -> Option<i64> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()?;
    let s = String::from_utf8(bytes).ok()?;
    s.strip_prefix("v1:")?
        .parse::<i64>()
        .ok()
        .filter(|p| *p > 0)
}

pub async fn list_jobs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.identity.tenant.clone();
    state.core.authorize(&caller, "job.read", &tenant).await?;
    if let Some(s) = &p.status
        && !STATUSES.contains(&s.as_str())
    {
        return Err(ApiError::Invalid(format!(
            "status: one of {}",
            STATUSES.join(", ")
        )));
    }
    if let Some(l) = &p.language
        && (l.is_empty()
            || l.len() > 32
            || !l
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')))
    {
        return Err(ApiError::Invalid("language: not a language name".into()));
    }
    let limit = p.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::Invalid("limit: between 1 and 200".into()));
    }
    let before = match &p.cursor {
        None => None,
        Some(c) => Some(
            decode_cursor(c)
                .ok_or_else(|| ApiError::Invalid("cursor: not a cursor from this API".into()))?,
        ),
    };
    if let Some(min) = p.min_position {
        state
            .core
            .await_projection(min, Duration::from_secs(10))
            .await?;
    }
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS}, j.submitted_position AS p FROM projections.jobs j \
         WHERE tenant = $1 AND ($2::text IS NULL OR status = $2) \
         AND ($3::text IS NULL OR language = $3) AND ($4::bigint IS NULL OR submitted_position < $4) \
         ORDER BY submitted_position DESC LIMIT $5"
    )))
    .bind(&tenant)
    .bind(&p.status)
    .bind(&p.language)
    .bind(before)
    .bind(limit as i64 + 1)
    .fetch_all(&state.core.pool)
    .await
    .map_err(|e| ApiError::Internal(format!("list jobs: {e}")))?;
    let mut jobs = Vec::with_capacity(rows.len());
    let mut last = None;
    for r in rows.iter().take(limit as usize) {
        jobs.push(
            r.try_get::<Value, _>("v")
                .map_err(|e| ApiError::Internal(format!("list jobs: {e}")))?,
        );
        last = Some(
            r.try_get::<i64, _>("p")
                .map_err(|e| ApiError::Internal(format!("list jobs: {e}")))?,
        );
    }
    let next = if rows.len() > limit as usize {
        last.map(encode_cursor)
    } else {
        None
    };
    Ok(Json(json!({ "jobs": jobs, "next_cursor": next })))
}

pub async fn job_events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.identity.tenant.clone();
    state.core.authorize(&caller, "job.read", &tenant).await?;
    let records = state.core.job_records(&tenant, &id).await?;
    let events: Vec<Value> = records
        .iter()
        .map(|s| {
            json!({
                "position": s.record.position,
                "entry_hash": s.entry_hash.to_hex(),
                "record": serde_json::from_slice::<Value>(&s.canonical).unwrap_or(Value::Null),
            })
        })
        .collect();
    Ok(Json(json!({ "job_id": id, "events": events })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    #[serde(default)]
    pub reason: Option<String>,
}

pub async fn cancel_job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let tenant = caller.identity.tenant.clone();
    state.core.authorize(&caller, "job.cancel", &tenant).await?;
    let body: CancelBody = if body.iter().all(u8::is_ascii_whitespace) {
        CancelBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::Invalid(e.to_string()))?
    };
    if let Some(r) = &body.reason
        && (r.len() > 1024 || r.contains('\0'))
    {
        return Err(ApiError::Invalid(
            "reason: at most 1024 characters, no NUL".into(),
        ));
    }
    let reply = state.core.cancel(&caller, &id, body.reason).await?;
    Ok((StatusCode::ACCEPTED, Json(reply)).into_response())
}

/// `DELETE /v1/jobs/{id}/data`: crypto-shred a finished job's data.
pub async fn delete_job_data(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<crate::core::DeleteReply>, ApiError> {
    let tenant = caller.identity.tenant.clone();
    state
        .core
        .authorize(&caller, "job.delete_data", &tenant)
        .await?;
    let reason = format!("deleted on request of {}", caller.identity.subject);
    Ok(Json(state.core.delete_data(&caller, &id, reason).await?))
}

// ---------------------------------------------------------------- results

fn text_or_base64(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(t) => json!({"encoding": "utf8", "content": t}),
        Err(_) => json!({"encoding": "base64",
                         "content": base64::engine::general_purpose::STANDARD.encode(bytes)}),
    }
}

/// `GET /v1/jobs/{id}/output`: stdout and stderr (decrypted), exit status.
pub async fn job_output(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.identity.tenant.clone();
    state
        .core
        .authorize(&caller, "artifact.read", &tenant)
        .await?;
    let r = state.core.result(&tenant, &id).await?;
    let f = &r.finished;
    let mut streams = serde_json::Map::new();
    for (name, out) in [("stdout", &f.stdout), ("stderr", &f.stderr)] {
        let mut v = match &out.blob {
            Some(b) => text_or_base64(&state.core.read_blob(&id, b).await?),
            None => json!({"encoding": "utf8", "content": ""}),
        };
        v["size_bytes"] = out.size_bytes.into();
        v["truncated"] = out.truncated.into();
        streams.insert(name.into(), v);
    }
    Ok(Json(json!({
        "job_id": id,
        "attempt": f.attempt,
        "outcome": f.outcome,
        "exit_code": f.exit_code,
        "signal": f.signal,
        "wall_ms": f.wall_ms,
        "stdout": streams.remove("stdout"),
        "stderr": streams.remove("stderr"),
    })))
}

/// `GET /v1/jobs/{id}/artifacts`: files the job left in `/workspace/out`.
pub async fn job_artifacts(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.identity.tenant.clone();
    state
        .core
        .authorize(&caller, "artifact.read", &tenant)
        .await?;
    let r = state.core.result(&tenant, &id).await?;
    let items = state.core.artifacts(&id, &r).await?;
    Ok(Json(json!({"job_id": id, "artifacts": items})))
}

/// `GET /v1/jobs/{id}/artifacts/{path}`: one artifact's bytes, decrypted.
pub async fn job_artifact(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let tenant = caller.identity.tenant.clone();
    state
        .core
        .authorize(&caller, "artifact.read", &tenant)
        .await?;
    let r = state.core.result(&tenant, &id).await?;
    let a = state
        .core
        .artifacts(&id, &r)
        .await?
        .into_iter()
        .find(|a| a.path == path)
        .ok_or_else(|| ApiError::NotFound(format!("artifact {path} of job {id}")))?;
    let bytes = state.core.read_blob(&id, &a.blob).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

// ---------------------------------------------------------------- status

async fn status_value(state: &AppState) -> Result<Value, ApiError> {
    let projector = glassbox_projector::Projector::new(state.core.store.clone());
    let lag = projector
        .lag()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let signed: Option<i64> = sqlx::query_scalar("SELECT max(tree_size) FROM ledger.checkpoints")
        .fetch_one(&state.core.pool)
        .await
        .map_err(|e| ApiError::Internal(format!("read checkpoints: {e}")))?;
    let queued: i64 =
        sqlx::query_scalar("SELECT count(*) FROM projections.jobs WHERE status = 'accepted'")
            .fetch_one(&state.core.pool)
            .await
            .map_err(|e| ApiError::Internal(format!("count queued jobs: {e}")))?;
    Ok(json!({
        "ledger": { "head": lag.head, "latest_checkpoint_size": signed.unwrap_or(0) },
        "queue": { "accepted_not_claimed": queued },
        "projection": { "position": lag.position, "lag_events": lag.events, "lag_ms": lag.millis },
        "policy_bundle_digest": state.core.engine.bundle_digest().to_hex(),
    }))
}

pub async fn status(
    State(state): State<AppState>,
    Extension(_caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(status_value(&state).await?))
}

/// Prometheus text format: ledger head, projection position and lag. With
/// `GLASSBOX_METRICS_TOKEN` set it needs `Authorization: Bearer <token>`.
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(token) = &state.config.metrics_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Digests compared, so the comparison's timing says nothing of the token.
        if glassbox_events::Digest::of(given.as_bytes())
            != glassbox_events::Digest::of(token.expose().as_bytes())
        {
            return Err(ApiError::Unauthenticated(
                glassbox_platform::AuthError::Malformed(
                    "the metrics token is missing or wrong".into(),
                ),
            ));
        }
    }
    let v = status_value(&state).await?;
    let n = |p: &[&str]| {
        p.iter()
            .try_fold(&v, |v, k| v.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let body = format!(
        "# TYPE glassbox_ledger_head gauge\nglassbox_ledger_head {}\n\
         # TYPE glassbox_ledger_checkpoint_size gauge\nglassbox_ledger_checkpoint_size {}\n\
         # TYPE glassbox_projection_position gauge\nglassbox_projection_position {}\n\
         # TYPE glassbox_projection_lag_events gauge\nglassbox_projection_lag_events {}\n\
         # TYPE glassbox_projection_lag_ms gauge\nglassbox_projection_lag_ms {}\n\
         # TYPE glassbox_jobs_queued gauge\nglassbox_jobs_queued {}\n",
        n(&["ledger", "head"]),
        n(&["ledger", "latest_checkpoint_size"]),
        n(&["projection", "position"]),
        n(&["projection", "lag_events"]),
        n(&["projection", "lag_ms"]),
        n(&["queue", "accepted_not_claimed"]),
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(uri.path().chars().take(200).collect::<String>())
}

pub async fn method_not_allowed() -> Response {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Method not allowed",
    )
    .into_response()
}
