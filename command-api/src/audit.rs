//! `/v1/audit`: search and integrity endpoints over HTTP. The logic lives in
//! `glassbox-audit-query`; this module only authorizes, validates and renders.
//!
//! Scope: a caller searches their own tenant; `tenant=<other>` or `tenant=*`
//! needs a role with cross-tenant audit rights (auditor), and every such read is
//! recorded as `audit.cross_tenant_queried` before the answer is sent.

use crate::AppState;
use crate::api::ApiQuery;
use crate::core::Caller;
use crate::error::ApiError;
use axum::Json;
use axum::extract::{Extension, State};
use glassbox_audit_query::bundle::Filters;
use glassbox_audit_query::search::{self, Order, SearchError};
use glassbox_events::catalogue;
use glassbox_events::store::NewEvent;
use serde::Deserialize;
use serde_json::{Value, json};

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub stream: Option<String>,
    #[serde(default)]
    pub event_type: Option<String>,
    #[serde(default)]
    pub actor: Option<String>,
    #[serde(default)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    pub from_position: Option<u64>,
    #[serde(default)]
    pub to_position: Option<u64>,
    #[serde(default)]
    pub order: Option<Order>,
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
) -> Result<Json<Value>, ApiError> {
    for (n, v) in [
        ("tenant", &p.tenant),
        ("stream", &p.stream),
        ("event_type", &p.event_type),
        ("actor", &p.actor),
        ("cursor", &p.cursor),
    ] {
        plain(n, v)?;
    }
    let own = caller.identity.tenant.clone();
    let scope = p.tenant.clone().unwrap_or_else(|| own.clone());
    state.core.authorize(&caller, "audit.read", &scope).await?;
    let filters = Filters {
        tenant: if scope == "*" {
            None
        } else {
            Some(scope.clone())
        },
        stream: p.stream,
        event_type: p.event_type,
        actor: p.actor,
        from_position: p.from_position,
        to_position: p.to_position,
        since: p.since,
        until: p.until,
    };
    let page = search::search(
        &state.core.store,
        &filters,
        p.order.unwrap_or_default(),
        p.limit.unwrap_or(100),
        p.cursor.as_deref(),
    )
    .await
    .map_err(search_error)?;
    if scope != own {
        let mut query = match serde_json::to_value(&filters) {
            Ok(Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        // `*` is recorded as asked: a read of every tenant, not an empty query.
        query.insert("tenant".into(), scope.clone().into());
        record_cross_tenant_read(&state, &caller, query, page.events.len() as u64).await?;
    }
    Ok(Json(
        json!({"events": page.events, "next_cursor": page.next_cursor}),
    ))
}

/// Records that `caller` read another tenant's records (before answering).
async fn record_cross_tenant_read(
    state: &AppState,
    caller: &Caller,
    query: serde_json::Map<String, Value>,
    result_count: u64,
) -> Result<(), ApiError> {
    let e = NewEvent::typed(
        format!("audit-{}", caller.identity.tenant),
        &catalogue::AuditCrossTenantQueried {
            query,
            result_count,
        },
    )
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    state
        .core
        .store
        .append(caller.append(vec![e]))
        .await
        .map_err(ApiError::store("record a cross-tenant read"))?;
    Ok(())
}

pub(crate) fn verifier(state: &AppState) -> Result<&glassbox_events::VerifierKey, ApiError> {
    state.verifier_key.as_deref().ok_or_else(|| {
        ApiError::NotFound("a verifier key (GLASSBOX_LEDGER_KEY_FILE is not set)".into())
    })
}

/// `GET /v1/audit/checkpoints/latest`.
pub async fn latest_checkpoint(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let own = caller.identity.tenant.clone();
    state.core.authorize(&caller, "audit.verify", &own).await?;
    let cps = state
        .core
        .store
        .checkpoints()
        .await
        .map_err(ApiError::store("read checkpoints"))?;
    let c = cps
        .iter()
        .max_by_key(|c| c.checkpoint.size)
        .ok_or_else(|| ApiError::NotFound("a signed checkpoint".into()))?;
    Ok(Json(json!({
        "origin": c.checkpoint.origin,
        "tree_size": c.checkpoint.size,
        "root": c.checkpoint.root.to_hex(),
        "key_name": c.key_name,
        "note": c.note,
    })))
}

/// `GET /v1/audit/verifier-key`.
pub async fn verifier_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let own = caller.identity.tenant.clone();
    state.core.authorize(&caller, "audit.verify", &own).await?;
    Ok(Json(json!({"verifier_key": verifier(&state)?.to_string()})))
}

fn proof_error(e: glassbox_events::store::StoreError) -> ApiError {
    match e {
        glassbox_events::store::StoreError::Proof(p) => ApiError::Invalid(p.to_string()),
        other => ApiError::Internal(other.to_string()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionParams {
    pub position: u64,
    #[serde(default)]
    pub size: Option<u64>,
}

/// `GET /v1/audit/proofs/inclusion?position=&size=` (size: the latest signed
/// checkpoint's by default). Another tenant's record is 404 unless the caller
/// may read across tenants.
pub async fn inclusion(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(p): ApiQuery<InclusionParams>,
) -> Result<Json<Value>, ApiError> {
    let own = caller.identity.tenant.clone();
    state.core.authorize(&caller, "audit.verify", &own).await?;
    let size = match p.size {
        Some(s) => s,
        None => state
            .core
            .store
            .checkpoints()
            .await
            .map_err(ApiError::store("read checkpoints"))?
            .iter()
            .map(|c| c.checkpoint.size)
            .max()
            .ok_or_else(|| ApiError::NotFound("a signed checkpoint".into()))?,
    };
    if p.position == 0 || p.position > size {
        return Err(ApiError::Invalid(format!(
            "position must be between 1 and the tree size {size}"
        )));
    }
    let rec = state
        .core
        .store
        .record(p.position)
        .await
        .map_err(ApiError::store("read the record"))?
        .ok_or_else(|| ApiError::NotFound(format!("record {}", p.position)))?;
    if rec.record.tenant != own {
        // Only cross-tenant roles see other tenants' records (404 otherwise),
        // and such a read is recorded like any other cross-tenant read.
        if state
            .core
            .authorize_quietly(&caller, "audit.read", &rec.record.tenant)
            .is_err()
        {
            return Err(ApiError::NotFound(format!("record {}", p.position)));
        }
        let mut query = serde_json::Map::new();
        query.insert("inclusion_proof".into(), p.position.into());
        query.insert("size".into(), size.into());
        query.insert("tenant".into(), rec.record.tenant.clone().into());
        record_cross_tenant_read(&state, &caller, query, 1).await?;
    }
    let proof = state
        .core
        .store
        .inclusion_proof(p.position, size)
        .await
        .map_err(proof_error)?;
    let root = state.core.store.root_at(size).await.map_err(proof_error)?;
    Ok(Json(json!({
        "position": p.position,
        "leaf_index": p.position - 1,
        "tree_size": size,
        "leaf_hash": glassbox_events::merkle::leaf_hash(&rec.canonical).to_hex(),
        "entry_hash": rec.entry_hash.to_hex(),
        "proof": proof.iter().map(|d| d.to_hex()).collect::<Vec<_>>(),
        "root": root.to_hex(),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyParams {
    pub from: u64,
    pub to: u64,
}

/// `GET /v1/audit/proofs/consistency?from=&to=`.
pub async fn consistency(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(p): ApiQuery<ConsistencyParams>,
) -> Result<Json<Value>, ApiError> {
    let own = caller.identity.tenant.clone();
    state.core.authorize(&caller, "audit.verify", &own).await?;
    if p.from == 0 || p.from > p.to {
        return Err(ApiError::Invalid("need 0 < from <= to".into()));
    }
    let proof = state
        .core
        .store
        .consistency_proof(p.from, p.to)
        .await
        .map_err(proof_error)?;
    let from_root = state
        .core
        .store
        .root_at(p.from)
        .await
        .map_err(proof_error)?;
    let to_root = state.core.store.root_at(p.to).await.map_err(proof_error)?;
    Ok(Json(json!({
        "from": p.from, "to": p.to,
        "from_root": from_root.to_hex(), "to_root": to_root.to_hex(),
        "proof": proof.iter().map(|d| d.to_hex()).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Default, Deserialize)]
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
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let own = caller.identity.tenant.clone();
    state.core.authorize(&caller, "audit.verify", &own).await?;
    let b: VerifyBody = if body.iter().all(u8::is_ascii_whitespace) {
        VerifyBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::Invalid(e.to_string()))?
    };
    if let (Some(f), Some(t)) = (b.from, b.to)
        && (f == 0 || f > t)
    {
        return Err(ApiError::Invalid("need 0 < from <= to".into()));
    }
    let key = verifier(&state)?;
    let result = state
        .core
        .store
        .verify(Some(key), &[], b.from.filter(|f| *f > 0), b.to)
        .await
        .map_err(proof_error)?;
    Ok(Json(match result {
        Ok(r) => json!({"verifies": true, "report": r}),
        Err(f) => {
            json!({"verifies": false, "failure": {"position": f.position, "reason": f.problem.to_string()}})
        }
    }))
}

#[derive(Debug, Deserialize)]
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
) -> Result<Json<Value>, ApiError> {
    use glassbox_audit_query::replay::{self, At, ReplayError};
    plain("stream", &Some(stream.clone()))?;
    let at: Option<At> = match &p.at {
        None => None,
        Some(a) => Some(a.parse().map_err(ApiError::Invalid)?),
    };
    let own = caller.identity.tenant.clone();
    state.core.authorize(&caller, "audit.replay", &own).await?;
    let not_found = || ApiError::NotFound(format!("stream {stream}"));
    let r = match replay::replay(&state.core.store, &stream, at).await {
        Ok(r) => r,
        Err(ReplayError::NoStream(_)) => return Err(not_found()),
        Err(e) => return Err(ApiError::Internal(e.to_string())),
    };
    if r.tenant != own {
        if state
            .core
            .authorize_quietly(&caller, "audit.replay", &r.tenant)
            .is_err()
        {
            return Err(not_found());
        }
        let mut query = serde_json::Map::new();
        query.insert("replay".into(), stream.clone().into());
        query.insert("tenant".into(), r.tenant.clone().into());
        record_cross_tenant_read(&state, &caller, query, r.timeline.len() as u64).await?;
    }
    let mut v = serde_json::to_value(&r).map_err(|e| ApiError::Internal(e.to_string()))?;
    if p.reevaluate.unwrap_or(false) {
        let records = replay::records_until(&state.core.store, &stream, at)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let re = replay::reevaluate(&state.core.blobs, &records).await;
        v["all_reproduce"] = re.iter().all(|x| x.reproduces).into();
        v["reevaluated"] =
            serde_json::to_value(&re).map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    Ok(Json(v))
}

/// `POST /v1/audit/exports` with the search filters: an evidence bundle (tar),
/// streamed from a temporary file; the export is recorded (`audit.exported`).
pub async fn export(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    crate::api::ApiJson(filters): crate::api::ApiJson<Filters>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    for (n, v) in [
        ("tenant", &filters.tenant),
        ("stream", &filters.stream),
        ("event_type", &filters.event_type),
        ("actor", &filters.actor),
    ] {
        plain(n, v)?;
    }
    let own = caller.identity.tenant.clone();
    let scope = filters.tenant.clone().unwrap_or_else(|| own.clone());
    state
        .core
        .authorize(&caller, "audit.export", &scope)
        .await?;
    let mut filters = filters;
    filters.tenant = if scope == "*" { None } else { Some(scope) };
    let key = state.signing_key.clone().ok_or_else(|| {
        ApiError::NotFound("a checkpoint key (GLASSBOX_LEDGER_KEY_FILE is not set)".into())
    })?;
    let dir =
        std::env::temp_dir().join(format!("glassbox-export-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).map_err(|e| ApiError::Internal(format!("export dir: {e}")))?;
    let path = dir.join("evidence.tar");
    let result = glassbox_audit_query::bundle::export_recorded(
        &state.core.store,
        &key,
        &filters,
        caller.actor(),
        &path,
    )
    .await;
    let (report, digest) = match result {
        Ok(r) => r,
        Err(glassbox_audit_query::bundle::BundleError::NotReady(m)) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(ApiError::Unavailable(m));
        }
        Err(glassbox_audit_query::bundle::BundleError::InvalidFilter(m)) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(ApiError::Invalid(m));
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(ApiError::Internal(e.to_string()));
        }
    };
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::Internal(format!("open bundle: {e}")))?;
    // Unlinked now; the open handle streams it and the space is freed after.
    let _ = std::fs::remove_dir_all(&dir);
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
        ("x-glassbox-bundle-sha256", digest.to_hex()),
        ("x-glassbox-bundle-records", report.records.to_string()),
        ("x-glassbox-bundle-tree-size", report.tree_size.to_string()),
    ] {
        if let Ok(v) = axum::http::HeaderValue::from_str(&v) {
            resp.headers_mut().insert(k, v);
        }
    }
    Ok(resp)
}
