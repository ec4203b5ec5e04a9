//! `/v1/audit`: search and integrity endpoints over HTTP. Like every handler,
//! these only parse into a [`Command`] and render the reply; the logic lives in
//! `glassbox-audit-query` and the dispatcher.
//!
//! Scope: a caller searches their own tenant; `tenant=<other>` or `tenant=*`
//! needs a role with cross-tenant audit rights (auditor), and every such read is
//! recorded as `audit.cross_tenant_queried` before the answer is sent.

use crate::AppState;
use crate::api::{ApiQuery, OptionalJson};
use crate::command::{Bundle, Command, FilterText, Scope};
use crate::core::Caller;
use crate::error::ApiError;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse as _, Response};
use glassbox_audit_query::bundle::Filters;
use glassbox_audit_query::search::{Order, SearchError};
use glassbox_domain::Cursor;
use glassbox_domain::request::MAX_INTEGER;
use schemars::JsonSchema;
use serde::Deserialize;

pub(crate) fn search_error(e: SearchError) -> ApiError {
    match e {
        SearchError::Invalid(m) => ApiError::Invalid(m),
        other => ApiError::Internal(other.to_string()),
    }
}

/// A position-like integer: 1 to 2^53 - 1 (what the ledger stores exactly).
fn position(name: &str, v: u64) -> Result<u64, ApiError> {
    if (1..=MAX_INTEGER).contains(&v) {
        Ok(v)
    } else {
        Err(ApiError::Invalid(format!(
            "{name}: between 1 and {MAX_INTEGER}"
        )))
    }
}

fn position_opt(name: &str, v: Option<u64>) -> Result<Option<u64>, ApiError> {
    v.map(|v| position(name, v)).transpose()
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
    #[schemars(with = "Option<FilterText>")]
    pub tenant: Option<String>,
    #[serde(default)]
    #[schemars(with = "Option<FilterText>")]
    pub stream: Option<String>,
    #[serde(default)]
    #[schemars(with = "Option<FilterText>")]
    pub event_type: Option<String>,
    /// The actor's ID (a token's subject).
    #[serde(default)]
    #[schemars(with = "Option<FilterText>")]
    pub actor: Option<String>,
    /// The records' correlation ID (every record of one request, job or
    /// workflow run; a request's `X-Request-Id`).
    #[serde(default)]
    #[schemars(with = "Option<FilterText>")]
    pub correlation_id: Option<String>,
    /// Inclusive.
    #[serde(default)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Exclusive.
    #[serde(default)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    #[schemars(range(max = MAX_INTEGER))]
    pub from_position: Option<u64>,
    #[serde(default)]
    #[schemars(range(max = MAX_INTEGER))]
    pub to_position: Option<u64>,
    #[serde(default)]
    pub order: Option<Order>,
    /// Records per page (default 100).
    #[serde(default)]
    #[schemars(range(min = 1, max = 500))]
    pub limit: Option<u64>,
    #[serde(default)]
    #[schemars(with = "Option<Cursor>")]
    pub cursor: Option<String>,
}

/// `POST /v1/audit/exports` body: which records (all optional; AND).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportBody {
    /// Another tenant, or `*` for every tenant (needs a cross-tenant role).
    #[serde(default)]
    #[schemars(with = "Option<FilterText>")]
    pub tenant: Option<String>,
    #[serde(default)]
    #[schemars(with = "Option<FilterText>")]
    pub stream: Option<String>,
    #[serde(default)]
    #[schemars(with = "Option<FilterText>")]
    pub event_type: Option<String>,
    /// The actor's ID (a token's subject).
    #[serde(default)]
    #[schemars(with = "Option<FilterText>")]
    pub actor: Option<String>,
    /// The records' correlation ID (every record of one request, job or
    /// workflow run; a request's `X-Request-Id`).
    #[serde(default)]
    #[schemars(with = "Option<FilterText>")]
    pub correlation_id: Option<String>,
    #[serde(default)]
    #[schemars(range(max = MAX_INTEGER))]
    pub from_position: Option<u64>,
    #[serde(default)]
    #[schemars(range(max = MAX_INTEGER))]
    pub to_position: Option<u64>,
    /// Inclusive.
    #[serde(default)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Exclusive.
    #[serde(default)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

impl ExportBody {
    /// The tenant asked for (`*`: all) and the filters, each member checked by
    /// name (one parse for searches and exports).
    fn parse(self) -> Result<(Option<String>, Filters), ApiError> {
        let tenant = FilterText::parse_opt("tenant", self.tenant)?;
        let filters = Filters {
            tenant: tenant.clone(),
            stream: FilterText::parse_opt("stream", self.stream)?,
            event_type: FilterText::parse_opt("event_type", self.event_type)?,
            actor: FilterText::parse_opt("actor", self.actor)?,
            correlation_id: FilterText::parse_opt("correlation_id", self.correlation_id)?,
            from_position: max_integer("from_position", self.from_position)?,
            to_position: max_integer("to_position", self.to_position)?,
            since: self.since,
            until: self.until,
        };
        Ok((tenant, filters))
    }
}

fn max_integer(name: &str, v: Option<u64>) -> Result<Option<u64>, ApiError> {
    match v {
        Some(p) if p > MAX_INTEGER => {
            Err(ApiError::Invalid(format!("{name}: at most {MAX_INTEGER}")))
        }
        v => Ok(v),
    }
}

/// `GET /v1/audit/events`.
pub async fn events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(p): ApiQuery<SearchParams>,
) -> Result<Response, ApiError> {
    let limit = p.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::Invalid("limit: between 1 and 500".into()));
    }
    let cursor = match &p.cursor {
        None => None,
        Some(c) => Some(Cursor::parse(c).map_err(|e| ApiError::Invalid(format!("cursor: {e}")))?),
    };
    let order = p.order.unwrap_or_default();
    let (tenant, filters) = ExportBody {
        tenant: p.tenant,
        stream: p.stream,
        event_type: p.event_type,
        actor: p.actor,
        correlation_id: p.correlation_id,
        from_position: p.from_position,
        to_position: p.to_position,
        since: p.since,
        until: p.until,
    }
    .parse()?;
    let command = Command::SearchAudit {
        scope: Scope::parse(tenant.as_deref(), &caller),
        filters,
        order,
        limit,
        cursor,
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
    /// The record, 1 to the tree size.
    #[schemars(range(min = 1, max = MAX_INTEGER))]
    pub position: u64,
    /// Tree size (default: the latest signed checkpoint's; 409 beyond the ledger).
    #[serde(default)]
    #[schemars(range(min = 1, max = MAX_INTEGER))]
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
            position: position("position", p.position)?,
            size: position_opt("size", p.size)?,
        },
    )
    .await
}

/// `GET /v1/audit/proofs/consistency` query.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyParams {
    /// The older tree size, 1 to `to`.
    #[schemars(range(min = 1, max = MAX_INTEGER))]
    pub from: u64,
    /// The newer tree size (409 beyond the ledger).
    #[schemars(range(min = 1, max = MAX_INTEGER))]
    pub to: u64,
}

/// `GET /v1/audit/proofs/consistency?from=&to=`.
pub async fn consistency(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(p): ApiQuery<ConsistencyParams>,
) -> Result<Response, ApiError> {
    let (from, to) = (position("from", p.from)?, position("to", p.to)?);
    if from > to {
        return Err(ApiError::Invalid("need from <= to".into()));
    }
    run(&state, &caller, Command::ConsistencyProof { from, to }).await
}

/// `POST /v1/audit/verify` body (optional).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    /// First position to verify (default 1).
    #[serde(default)]
    #[schemars(range(min = 1, max = MAX_INTEGER))]
    pub from: Option<u64>,
    /// Last position to verify (default: the head; 409 beyond it).
    #[serde(default)]
    #[schemars(range(min = 1, max = MAX_INTEGER))]
    pub to: Option<u64>,
}

/// `POST /v1/audit/verify {from?, to?}`: the ledger (or a range) against its
/// signed checkpoints; answers with the first failure, if any.
pub async fn verify(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    OptionalJson(b): OptionalJson<VerifyBody>,
) -> Result<Response, ApiError> {
    let (from, to) = (position_opt("from", b.from)?, position_opt("to", b.to)?);
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        return Err(ApiError::Invalid("need from <= to".into()));
    }
    run(&state, &caller, Command::VerifyLedger { from, to }).await
}

/// `GET /v1/audit/replay/{stream}` query.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayParams {
    /// A ledger position or an RFC 3339 time (default: now).
    #[serde(default)]
    #[schemars(schema_with = "at_schema")]
    pub at: Option<String>,
    /// Re-run each recorded policy decision against the recorded bundle.
    #[serde(default)]
    pub reevaluate: Option<bool>,
}

fn at_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "anyOf": [
            {"type": "integer", "minimum": 0, "maximum": MAX_INTEGER},
            {"type": "string", "format": "date-time"},
        ]
    })
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
    let stream = FilterText::parse("stream", &stream)?.into_inner();
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
    crate::api::ApiJson(b): crate::api::ApiJson<ExportBody>,
) -> Result<Response, ApiError> {
    let (tenant, filters) = b.parse()?;
    let scope = Scope::parse(tenant.as_deref(), &caller);
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
