//! HTTP handlers of sessions: parse into a [`Command`], dispatch, render.
//! An exec answers JSON when it ends, or — with `Accept: text/event-stream`
//! — its output as server-sent events while it runs.

use crate::AppState;
use crate::api::{ApiJson, ApiQuery, OptionalJson, idempotency_key, run};
use crate::command::{Command, SessionId};
use crate::core::Caller;
use crate::error::ApiError;
use crate::sessions::MAX_FILE_BYTES;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use glassbox_domain::request::{ExecRequest, MAX_INTEGER, SessionRequest, pattern};
use glassbox_domain::{Cursor, SessionStatus};
use schemars::JsonSchema;
use serde::Deserialize;

pub async fn open_session(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SessionRequest>,
) -> Result<Response, ApiError> {
    let idempotency_key = idempotency_key(&headers)?;
    run(
        &state,
        &caller,
        Command::OpenSession {
            request: body,
            idempotency_key,
        },
    )
    .await
}

/// `GET /v1/sessions/{id}` query.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetSessionParams {
    /// Do not answer from read models older than this ledger position (409 if
    /// the ledger has not reached it).
    #[serde(default)]
    #[schemars(range(max = MAX_INTEGER))]
    pub min_position: Option<u64>,
}

pub async fn get_session(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<GetSessionParams>,
) -> Result<Response, ApiError> {
    run(
        &state,
        &caller,
        Command::GetSession {
            session: SessionId::parse(&id)?,
            min_position: p.min_position,
        },
    )
    .await
}

/// `GET /v1/sessions` query.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListSessionsParams {
    #[serde(default)]
    pub status: Option<SessionStatus>,
    /// Sessions per page (default 50).
    #[serde(default)]
    #[schemars(range(min = 1, max = 200))]
    pub limit: Option<u64>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    #[schemars(with = "Option<Cursor>")]
    pub cursor: Option<String>,
    #[serde(default)]
    #[schemars(range(max = MAX_INTEGER))]
    pub min_position: Option<u64>,
}

pub async fn list_sessions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(p): ApiQuery<ListSessionsParams>,
) -> Result<Response, ApiError> {
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
        Command::ListSessions {
            status: p.status,
            limit,
            cursor,
            min_position: p.min_position,
        },
    )
    .await
}

pub async fn session_events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    run(
        &state,
        &caller,
        Command::SessionEvents {
            session: SessionId::parse(&id)?,
        },
    )
    .await
}

/// Does the client ask for server-sent events?
fn wants_events(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().starts_with("text/event-stream"))
}

pub async fn exec(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ExecRequest>,
) -> Result<Response, ApiError> {
    run(
        &state,
        &caller,
        Command::Exec {
            session: SessionId::parse(&id)?,
            request: body,
            stream: wants_events(&headers),
        },
    )
    .await
}

pub async fn exec_output(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, exec)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let session = SessionId::parse(&id)?;
    let exec = exec
        .parse::<u64>()
        .ok()
        .filter(|n| (1..=MAX_INTEGER).contains(n))
        .ok_or_else(|| ApiError::NotFound(format!("exec of session {}", session.as_str())))?;
    run(&state, &caller, Command::ExecOutput { session, exec }).await
}

/// A workspace path as it came in the URL (the runner's agent confines it to
/// the workspace; here only its size and characters are checked).
fn file_path(path: &str) -> Result<String, ApiError> {
    if path.is_empty() || path.len() > 4096 || path.contains('\0') {
        return Err(ApiError::Invalid(
            "path: 1-4096 bytes, no NUL, relative to /workspace".into(),
        ));
    }
    Ok(path.to_owned())
}

pub async fn write_file(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, path)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    if body.len() as u64 > MAX_FILE_BYTES {
        return Err(ApiError::TooLarge(format!(
            "a file is at most {MAX_FILE_BYTES} bytes"
        )));
    }
    run(
        &state,
        &caller,
        Command::WriteFile {
            session: SessionId::parse(&id)?,
            path: file_path(&path)?,
            data: body.to_vec(),
        },
    )
    .await
}

pub async fn read_file(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    run(
        &state,
        &caller,
        Command::ReadFile {
            session: SessionId::parse(&id)?,
            path: file_path(&path)?,
        },
    )
    .await
}

pub async fn delete_file(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    run(
        &state,
        &caller,
        Command::DeleteFile {
            session: SessionId::parse(&id)?,
            path: file_path(&path)?,
        },
    )
    .await
}

/// `GET /v1/sessions/{id}/files` query.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListFilesParams {
    /// A directory relative to `/workspace` (default: the workspace itself).
    #[serde(default)]
    #[schemars(length(max = 4096), regex(pattern = pattern::NO_NUL))]
    pub path: Option<String>,
}

pub async fn list_files(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<ListFilesParams>,
) -> Result<Response, ApiError> {
    let path = match p.path.as_deref() {
        None | Some("") | Some(".") => String::new(),
        Some(d) => file_path(d)?,
    };
    run(
        &state,
        &caller,
        Command::ListFiles {
            session: SessionId::parse(&id)?,
            path,
        },
    )
    .await
}

/// `DELETE /v1/sessions/{id}` body (optional).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseBody {
    /// Why (recorded with the closing).
    #[serde(default)]
    #[schemars(length(max = 1024), regex(pattern = pattern::NO_NUL))]
    pub reason: Option<String>,
}

pub async fn close_session(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<CloseBody>,
) -> Result<Response, ApiError> {
    crate::api::check_reason(body.reason.as_deref())?;
    run(
        &state,
        &caller,
        Command::CloseSession {
            session: SessionId::parse(&id)?,
            reason: body.reason,
        },
    )
    .await
}

/// `PATCH /v1/sessions/{id}/egress` body: the session's whole new allowlist.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressBody {
    /// Destinations (`host:port`, `*.domain:port`); each is decided by
    /// `glassbox.egress`, and one refusal refuses the change. `[]`: none.
    #[schemars(length(max = glassbox_domain::request::MAX_EGRESS), inner(length(min = 1, max = glassbox_domain::request::MAX_EGRESS_TARGET), regex(pattern = pattern::EGRESS_TARGET)))]
    pub egress: Vec<String>,
}

pub async fn set_egress(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<EgressBody>,
) -> Result<Response, ApiError> {
    let egress = glassbox_domain::request::parse_egress(&body.egress)
        .map_err(|e| ApiError::Invalid(e.to_string()))?;
    run(
        &state,
        &caller,
        Command::SetSessionEgress {
            session: SessionId::parse(&id)?,
            egress,
        },
    )
    .await
}

pub async fn expose_port(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<glassbox_domain::request::ExposeRequest>,
) -> Result<Response, ApiError> {
    run(
        &state,
        &caller,
        Command::ExposePort {
            session: SessionId::parse(&id)?,
            request,
        },
    )
    .await
}

/// `ANY /v1/sessions/{id}/ports/{port}/{*path}`: a request to an exposed port.
pub async fn service(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, port, _)): Path<(String, String, String)>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    service_to(state, caller, id, port, method, uri, headers, body).await
}

/// `ANY /v1/sessions/{id}/ports/{port}/`.
pub async fn service_root(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, port)): Path<(String, String)>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    service_to(state, caller, id, port, method, uri, headers, body).await
}

#[allow(clippy::too_many_arguments)]
async fn service_to(
    state: AppState,
    caller: Caller,
    id: String,
    port: String,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ApiError::Invalid("port: must be 1 to 65535".into()))?;
    // The path below `/v1/sessions/{id}/ports/{port}` as the caller encoded
    // it (passed on as it came; a URI holds no space or line break).
    let rest = uri.path().splitn(7, '/').nth(6).unwrap_or("");
    let path = match uri.query() {
        Some(q) => format!("/{rest}?{q}"),
        None => format!("/{rest}"),
    };
    if path.contains(['\r', '\n', ' ']) {
        return Err(ApiError::Invalid(
            "path: not a path that can be sent".into(),
        ));
    }
    let headers = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    run(
        &state,
        &caller,
        Command::ServiceCall {
            session: SessionId::parse(&id)?,
            call: crate::sessions::ServiceCall {
                port,
                method: method.as_str().to_owned(),
                path,
                headers,
                body: body.to_vec(),
            },
        },
    )
    .await
}

pub async fn delete_session_data(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    run(
        &state,
        &caller,
        Command::DeleteSessionData {
            session: SessionId::parse(&id)?,
        },
    )
    .await
}
