//! HTTP handlers: parse into a [`Command`], let the core dispatch it, render
//! the [`Reply`]. Nothing here decides or authorizes anything.

use crate::AppState;
use crate::command::{Command, IdempotencyKey, JobId, Reply};
use crate::core::{Caller, JobRequest};
use crate::error::ApiError;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use glassbox_domain::request::object::Object;
use glassbox_domain::request::{MAX_INTEGER, pattern};
use glassbox_domain::{Cursor, JobStatus};
use glassbox_platform::problem::{Problem, codes};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::time::Duration;
use tokio_stream::StreamExt as _;

/// A JSON object body whose rejections are problem+json (413, 415, 400
/// naming the member). Only an object is a body (never an array of fields).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<Value>::from_request(req, state).await {
            Ok(Json(v)) => typed(v).map(ApiJson),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// The typed body: integral numbers written as floats (`5.0`) are the
/// integers they are (as JSON Schema counts them), and only an object is a body.
fn typed<T: DeserializeOwned>(mut v: Value) -> Result<T, ApiError> {
    integral(&mut v);
    // The refusal names the member (`limits.memory_bytes: …`).
    serde_path_to_error::deserialize::<_, Object<T>>(v)
        .map(|Object(t)| t)
        .map_err(|e| ApiError::Invalid(e.to_string()))
}

fn integral(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() < 9.0e18
            {
                *v = if f < 0.0 {
                    Value::from(f as i64)
                } else {
                    Value::from(f as u64)
                };
            }
        }
        Value::Array(a) => a.iter_mut().for_each(integral),
        Value::Object(m) => m.values_mut().for_each(integral),
        _ => {}
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

/// An optional JSON body: empty (or whitespace) is the default value.
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|_| {
                ApiError::TooLarge("the request body exceeds the configured limit".into())
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|e| ApiError::Invalid(e.to_string()))?;
        typed(v).map(OptionalJson)
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

pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let s = v.to_str().unwrap_or("\u{0}");
    Ok(Some(
        IdempotencyKey::parse("Idempotency-Key", s)?.into_inner(),
    ))
}

/// Runs a command for the caller and renders its reply.
pub(crate) async fn run(
    state: &AppState,
    caller: &Caller,
    command: Command,
) -> Result<Response, ApiError> {
    let reply = state.core.dispatch(caller, command).await?;
    Ok(render(reply))
}

/// The HTTP rendering of every reply.
pub fn render(reply: Reply) -> Response {
    match reply {
        Reply::Submitted(reply) => {
            let r = reply.receipt;
            let mut resp = if r.status == JobStatus::Accepted {
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
            resp
        }
        Reply::Job(v) => Json(v).into_response(),
        Reply::Jobs(v) => Json(v).into_response(),
        Reply::Events(v) => Json(v).into_response(),
        Reply::Cancelled(v) => (StatusCode::ACCEPTED, Json(v)).into_response(),
        Reply::Output(v) => Json(v).into_response(),
        Reply::Artifacts(v) => Json(v).into_response(),
        Reply::ArtifactBytes(b) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], b).into_response()
        }
        Reply::Deleted(v) => Json(v).into_response(),
        Reply::Audit(v) => Json(v).into_response(),
        Reply::Checkpoint(v) => Json(v).into_response(),
        Reply::VerifierKey(v) => Json(v).into_response(),
        Reply::Inclusion(v) => Json(v).into_response(),
        Reply::Consistency(v) => Json(v).into_response(),
        Reply::Verified(v) => Json(v).into_response(),
        Reply::Replayed(v) => Json(v).into_response(),
        Reply::Status(v) => Json(v).into_response(),
        Reply::Exported(b) => crate::audit::stream_bundle(b),
        Reply::WorkflowDefined(v) => {
            let status = if v.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let mut resp = (status, Json(&v)).into_response();
            if let Ok(l) = format!("/v1/workflows/{}", v.name).parse() {
                resp.headers_mut().insert(header::LOCATION, l);
            }
            resp
        }
        Reply::WorkflowVersions(v) => Json(v).into_response(),
        Reply::RunStarted(r) => {
            let mut resp = (StatusCode::CREATED, Json(&r.receipt)).into_response();
            if let Ok(l) = format!("/v1/workflow-runs/{}", r.receipt.run_id).parse() {
                resp.headers_mut().insert(header::LOCATION, l);
            }
            if r.replayed {
                resp.headers_mut().insert(
                    "idempotent-replayed",
                    axum::http::HeaderValue::from_static("true"),
                );
            }
            resp
        }
        Reply::Run(v) => Json(v).into_response(),
        Reply::Approval(v) => Json(v).into_response(),
        Reply::RunCancelled(v) => (StatusCode::ACCEPTED, Json(v)).into_response(),
        Reply::SessionOpened(r) => {
            if r.session.status.is_terminal() {
                let (code, title) = if r.unauthorized {
                    (codes::FORBIDDEN, "Forbidden")
                } else {
                    (codes::POLICY_DENIED, "Session refused")
                };
                let mut resp = Problem::new(StatusCode::FORBIDDEN, code, title)
                    .detail(if r.reasons.is_empty() {
                        format!("the session is {}", r.session.status)
                    } else {
                        r.reasons.join("; ")
                    })
                    .with("session_id", r.session.session_id.clone())
                    .with("session_status", r.session.status.as_str())
                    .with("position", r.position)
                    .with("reasons", r.reasons.clone())
                    .with(
                        "decisions",
                        serde_json::to_value(&r.decisions).unwrap_or(Value::Null),
                    )
                    .into_response();
                if r.replayed {
                    resp.headers_mut().insert(
                        "idempotent-replayed",
                        axum::http::HeaderValue::from_static("true"),
                    );
                }
                return resp;
            }
            let mut resp = (StatusCode::CREATED, Json(&r)).into_response();
            if let Ok(v) = format!("/v1/sessions/{}", r.session.session_id).parse() {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            if r.replayed {
                resp.headers_mut().insert(
                    "idempotent-replayed",
                    axum::http::HeaderValue::from_static("true"),
                );
            }
            resp
        }
        Reply::Session(v) => Json(v).into_response(),
        Reply::Sessions(v) => Json(v).into_response(),
        Reply::SessionEvents(v) => Json(v).into_response(),
        Reply::ExecResult(v) => Json(v).into_response(),
        Reply::ExecStream(rx) => {
            use axum::response::sse::{Event, KeepAlive, Sse};
            let events = tokio_stream::wrappers::ReceiverStream::new(rx).map(|e| {
                let name = match &e {
                    crate::sessions::ExecEvent::Started { .. } => "started",
                    crate::sessions::ExecEvent::Stdout { .. } => "stdout",
                    crate::sessions::ExecEvent::Stderr { .. } => "stderr",
                    crate::sessions::ExecEvent::Finished(_) => "finished",
                    crate::sessions::ExecEvent::Error { .. } => "error",
                };
                Event::default().event(name).json_data(&e)
            });
            Sse::new(events)
                .keep_alive(KeepAlive::default())
                .into_response()
        }
        Reply::ExecOutput(v) => Json(v).into_response(),
        Reply::FileWritten(v) => (StatusCode::CREATED, Json(v)).into_response(),
        Reply::FileBytes(f) => {
            let mut resp =
                ([(header::CONTENT_TYPE, "application/octet-stream")], f.data).into_response();
            if f.truncated {
                resp.headers_mut().insert(
                    "x-glassbox-truncated",
                    axum::http::HeaderValue::from_static("true"),
                );
            }
            if let Ok(v) = f.size.to_string().parse() {
                resp.headers_mut().insert("x-glassbox-file-size", v);
            }
            resp
        }
        Reply::Files(v) => Json(v).into_response(),
        Reply::FileDeleted(v) => Json(v).into_response(),
        Reply::SessionClosed(v) => Json(v).into_response(),
        Reply::SessionDataDeleted(v) => Json(v).into_response(),
        Reply::EgressChanged(v) => Json(v).into_response(),
        Reply::Exposed(v) => (StatusCode::CREATED, Json(v)).into_response(),
        Reply::ServiceAnswer(a) => {
            let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut resp = (status, a.body).into_response();
            for (k, v) in a.headers {
                if let (Ok(k), Ok(v)) = (
                    axum::http::HeaderName::from_bytes(k.as_bytes()),
                    axum::http::HeaderValue::from_str(&v),
                ) {
                    resp.headers_mut().append(k, v);
                }
            }
            resp
        }
    }
}

// ---------------------------------------------------------------- jobs

pub async fn submit_job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<JobRequest>,
) -> Result<Response, ApiError> {
    let idempotency_key = idempotency_key(&headers)?;
    run(
        &state,
        &caller,
        Command::SubmitJob {
            request: body,
            idempotency_key,
        },
    )
    .await
}

/// `GET /v1/jobs/{id}` query.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetJobParams {
    /// Seconds to wait for a terminal state (at most `GLASSBOX_MAX_WAIT_SECS`).
    #[serde(default)]
    pub wait: Option<u64>,
    /// Do not answer from read models older than this ledger position (409 if
    /// the ledger has not reached it).
    #[serde(default)]
    #[schemars(range(max = MAX_INTEGER))]
    pub min_position: Option<u64>,
}

pub async fn get_job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<GetJobParams>,
) -> Result<Response, ApiError> {
    let max_wait = state.config.max_wait_secs;
    let wait = match p.wait {
        Some(w) if w > max_wait => {
            return Err(ApiError::Invalid(format!(
                "wait: at most {max_wait} seconds"
            )));
        }
        w => Duration::from_secs(w.unwrap_or(0)),
    };
    run(
        &state,
        &caller,
        Command::GetJob {
            job: JobId::parse(&id)?,
            wait,
            min_position: p.min_position,
        },
    )
    .await
}

/// `GET /v1/jobs` query.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    #[serde(default)]
    pub status: Option<JobStatus>,
    /// A runtime name.
    #[serde(default)]
    #[schemars(length(min = 1, max = 32), regex(pattern = pattern::NAME))]
    pub language: Option<String>,
    /// Jobs per page (default 50).
    #[serde(default)]
    #[schemars(range(min = 1, max = 200))]
    pub limit: Option<u64>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    #[schemars(with = "Option<Cursor>")]
    pub cursor: Option<String>,
    /// Do not answer from read models older than this ledger position (409 if
    /// the ledger has not reached it).
    #[serde(default)]
    #[schemars(range(max = MAX_INTEGER))]
    pub min_position: Option<u64>,
}

pub async fn list_jobs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Response, ApiError> {
    if let Some(l) = &p.language
        && glassbox_domain::request::Language::parse(l).is_err()
    {
        return Err(ApiError::Invalid("language: not a language name".into()));
    }
    let limit = p.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::Invalid("limit: between 1 and 200".into()));
    }
    let cursor = match &p.cursor {
        None => None,
        Some(c) => Some(Cursor::parse(c).map_err(|e| ApiError::Invalid(format!("cursor: {e}")))?),
    };
    run(
        &state,
        &caller,
        Command::ListJobs {
            status: p.status,
            language: p.language,
            limit,
            cursor,
            min_position: p.min_position,
        },
    )
    .await
}

pub async fn job_events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    run(
        &state,
        &caller,
        Command::JobEvents {
            job: JobId::parse(&id)?,
        },
    )
    .await
}

/// `POST /v1/jobs/{id}/cancel` body (optional).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Why (recorded with the cancellation).
    #[serde(default)]
    #[schemars(length(max = 1024), regex(pattern = pattern::NO_NUL))]
    pub reason: Option<String>,
}

pub async fn cancel_job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<CancelBody>,
) -> Result<Response, ApiError> {
    check_reason(body.reason.as_deref())?;
    run(
        &state,
        &caller,
        Command::CancelJob {
            job: JobId::parse(&id)?,
            reason: body.reason,
        },
    )
    .await
}

/// A recorded reason (cancel, close): at most 1024 characters, no NUL.
pub(crate) fn check_reason(reason: Option<&str>) -> Result<(), ApiError> {
    match reason {
        Some(r) if r.chars().count() > 1024 || r.contains('\0') => Err(ApiError::Invalid(
            "reason: at most 1024 characters, no NUL".into(),
        )),
        _ => Ok(()),
    }
}

/// `DELETE /v1/jobs/{id}/data`: crypto-shred a finished job's data.
pub async fn delete_job_data(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    run(
        &state,
        &caller,
        Command::DeleteJobData {
            job: JobId::parse(&id)?,
        },
    )
    .await
}

/// `GET /v1/jobs/{id}/output`: stdout and stderr (decrypted), exit status.
pub async fn job_output(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    run(
        &state,
        &caller,
        Command::JobOutput {
            job: JobId::parse(&id)?,
        },
    )
    .await
}

/// `GET /v1/jobs/{id}/artifacts`: files the job left in `/workspace/out`.
pub async fn job_artifacts(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    run(
        &state,
        &caller,
        Command::ListArtifacts {
            job: JobId::parse(&id)?,
        },
    )
    .await
}

/// `GET /v1/jobs/{id}/artifacts/{path}`: one artifact's bytes, decrypted.
pub async fn job_artifact(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    run(
        &state,
        &caller,
        Command::ReadArtifact {
            job: JobId::parse(&id)?,
            path,
        },
    )
    .await
}

// ---------------------------------------------------------------- status

pub async fn status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    run(&state, &caller, Command::Status).await
}

/// Every instrument of this process in Prometheus text format (see
/// docs/operations.md), with the status gauges read afresh. With
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
    crate::telemetry::refresh_status(&state).await?;
    let body = glassbox_platform::telemetry::metrics::render();
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(uri.path().chars().take(200).collect::<String>())
}

pub async fn method_not_allowed() -> Response {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        codes::METHOD_NOT_ALLOWED,
        "Method not allowed",
    )
    .into_response()
}
