//! `/v1/audit`: search and integrity endpoints over HTTP. Like every handler,
//! these only parse into a [`Command`] and render the reply; the logic lives in
//! `glassbox-audit-query` and the dispatcher.
//!
//! Scope: a caller searches their own tenant; `tenant=<other>` or `tenant=*`
//! needs a role with cross-tenant audit rights (auditor), and every such read is
//! recorded as `audit.cross_tenant_queried` before the answer is sent.

use crate::AppState;
use crate::api::{ApiQuery, OptionalJson};
use crate::command::{Bundle, Command, Scope};
use crate::core::Caller;
use crate::error::ApiError;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse as _, Response};
use glassbox_audit_query::bundle::Filters;
use glassbox_audit_query::search::{Order, SearchError};
use schemars::JsonSchema;
use serde::Deserialize;

pub(crate) fn search_error(e: SearchError) -> ApiError {
    match e {
        SearchError::Invalid(m) => ApiError::Invalid(m),
        other => ApiError::Internal(other.to_string()),
    }
}

fn plain(name: &str, v: &Option<String>) -> Result<(), ApiError> {
    match v {
        Some(s) if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) => Err(
            ApiError::Invalid(format!("{name}: 1-256 characters, no control characters")),
        ),
        _ => Ok(()),
    }
}

async fn run(state: &AppState, caller: &Caller, command: Command) -> Result<Response, ApiError> {
    let reply = state.core.dispatch(caller, command).await?;
    Ok(crate::api::render(reply))
}

/// `GET /v1/audit/events` query.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    /// Another tenant, or `*` for every tenant (needs a cross-tenant role).
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub stream: Option<String>,
    #[serde(default)]
    pub event_type: Option<String>,
    /// The actor's ID (a token's subject).
    #[serde(default)]
    pub actor: Option<String>,
    /// Inclusive.
    #[serde(default)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Exclusive.
    #[serde(default)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    pub from_position: Option<u64>,
    #[serde(default)]
    pub to_position: Option<u64>,
    #[serde(default)]
    pub order: Option<Order>,
    /// 1 to 500 (default 100).
    #[serde(default)]
    pub limit: Option<u64>,
    #[serde(default)]
    pub cursor: Option<String>,
}

/// `GET /v1/audit/events`.
pub async fn events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(p): ApiQuery<SearchParams>,
) -> Result<Response, ApiError> {
    for (n, v) in [
        ("tenant", &p.tenant),
        ("stream", &p.stream),
        ("event_type", &p.event_type),
        ("actor", &p.actor),
        ("cursor", &p.cursor),
    ] {
        plain(n, v)?;
    }
    let command = Command::SearchAudit {
        scope: Scope::parse(p.tenant.as_deref(), &caller),
        filters: Filters {
            tenant: None,
            stream: p.stream,
            event_type: p.event_type,
            actor: p.actor,
            from_position: p.from_position,
            to_position: p.to_position,
            since: p.since,
            until: p.until,
        },
        order: p.order.unwrap_or_default(),
        limit: p.limit.unwrap_or(100),
        cursor: p.cursor,
    };
    run(&state, &caller, command).await
}

/// `GET /v1/audit/checkpoints/latest`.
pub async fn latest_checkpoint(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    run(&state, &caller, Command::LatestCheckpoint).await
}

/// `GET /v1/audit/verifier-key`.
pub async fn verifier_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    run(&state, &caller, Command::VerifierKey).await
}

/// `GET /v1/audit/proofs/inclusion` query.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InclusionParams {
    /// 1 to the tree size.
    pub position: u64,
    /// Tree size (default: the latest signed checkpoint's).
    #[serde(default)]
    pub size: Option<u64>,
}

/// `GET /v1/audit/proofs/inclusion?position=&size=`. Another tenant's record
/// is 404 unless the caller may read across tenants.
pub async fn inclusion(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(p): ApiQuery<InclusionParams>,
) -> Result<Response, ApiError> {
    run(
        &state,
        &caller,
        Command::InclusionProof {
            position: p.position,
            size: p.size,
        },
    )
    .await
}

/// `GET /v1/audit/proofs/consistency` query.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyParams {
    /// 1 to `to`.
    pub from: u64,
    pub to: u64,
}

/// `GET /v1/audit/proofs/consistency?from=&to=`.
pub async fn consistency(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(p): ApiQuery<ConsistencyParams>,
) -> Result<Response, ApiError> {
    if p.from == 0 || p.from > p.to {
        return Err(ApiError::Invalid("need 0 < from <= to".into()));
    }
    run(
        &state,
        &caller,
        Command::ConsistencyProof {
            from: p.from,
            to: p.to,
        },
    )
    .await
}

/// `POST /v1/audit/verify` body (optional).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    #[serde(default)]
    pub from: Option<u64>,
    #[serde(default)]
    pub to: Option<u64>,
}

/// `POST /v1/audit/verify {from?, to?}`: the ledger (or a range) against its
/// signed checkpoints; answers with the first failure, if any.
pub async fn verify(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    OptionalJson(b): OptionalJson<VerifyBody>,
) -> Result<Response, ApiError> {
    if let (Some(f), Some(t)) = (b.from, b.to)
        && (f == 0 || f > t)
    {
        return Err(ApiError::Invalid("need 0 < from <= to".into()));
    }
    run(
        &state,
        &caller,
        Command::VerifyLedger {
            from: b.from,
            to: b.to,
        },
    )
    .await
}

/// `GET /v1/audit/replay/{stream}` query.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayParams {
    /// A ledger position or an RFC 3339 time (default: now).
    #[serde(default)]
    pub at: Option<String>,
    /// Re-run each recorded policy decision against the recorded bundle.
    #[serde(default)]
    pub reevaluate: Option<bool>,
}

/// `GET /v1/audit/replay/{stream}?at=&reevaluate=`: the stream's state and
/// timeline at a point in the past. Another tenant's stream is 404 unless the
/// caller may read across tenants (and then the read is recorded).
pub async fn replay(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    axum::extract::Path(stream): axum::extract::Path<String>,
    ApiQuery(p): ApiQuery<ReplayParams>,
) -> Result<Response, ApiError> {
    plain("stream", &Some(stream.clone()))?;
    let at = match &p.at {
        None => None,
        Some(a) => Some(a.parse().map_err(ApiError::Invalid)?),
    };
    run(
        &state,
        &caller,
        Command::Replay {
            stream,
            at,
            reevaluate: p.reevaluate.unwrap_or(false),
        },
    )
    .await
}

/// `POST /v1/audit/exports` with the search filters: an evidence bundle (tar),
/// streamed from a temporary file; the export is recorded (`audit.exported`).
pub async fn export(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    crate::api::ApiJson(filters): crate::api::ApiJson<Filters>,
) -> Result<Response, ApiError> {
    for (n, v) in [
        ("tenant", &filters.tenant),
        ("stream", &filters.stream),
        ("event_type", &filters.event_type),
        ("actor", &filters.actor),
    ] {
        plain(n, v)?;
    }
    let scope = Scope::parse(filters.tenant.as_deref(), &caller);
    run(&state, &caller, Command::ExportAudit { scope, filters }).await
}

/// Streams an exported bundle from its temporary file (unlinked at once; the
/// open handle keeps it readable until it is sent).
pub(crate) fn stream_bundle(b: Bundle) -> Response {
    let file = match std::fs::File::open(&b.path) {
        Ok(f) => tokio::fs::File::from_std(f),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&b.dir);
            return ApiError::Internal(format!("open bundle: {e}")).into_response();
        }
    };
    let _ = std::fs::remove_dir_all(&b.dir);
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let mut resp = (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/x-tar".to_owned(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                "attachment; filename=\"evidence.tar\"".to_owned(),
            ),
        ],
        body,
    )
        .into_response();
    for (k, v) in [
        ("x-glassbox-bundle-sha256", b.sha256),
        ("x-glassbox-bundle-records", b.records.to_string()),
        ("x-glassbox-bundle-tree-size", b.tree_size.to_string()),
    ] {
        if let Ok(v) = axum::http::HeaderValue::from_str(&v) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}
