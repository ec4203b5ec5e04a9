//! `/healthz` (the process answers) and `/readyz` (its dependencies answer:
//! the database and whatever else a service names, each with a short timeout).
//! Not ready is a 503 naming the dependency that does not answer, so a load
//! balancer stops sending work that would only wait for it.

use crate::problem::{Problem, codes};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

/// A readiness check of one dependency: `Ok` when it answers.
pub type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// How long one check may take before the dependency counts as down.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Routes for liveness and readiness (the database only).
pub fn router(pool: PgPool) -> Router {
    router_with(pool, Vec::new())
}

/// Routes for liveness and readiness: the database and `checks`.
pub fn router_with(pool: PgPool, checks: Vec<(&'static str, Check)>) -> Router {
    let checks = Arc::new(checks);
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route(
            "/readyz",
            get(move || {
                let (pool, checks) = (pool.clone(), checks.clone());
                async move { ready(&pool, &checks).await }
            }),
        )
}

async fn ready(pool: &PgPool, checks: &[(&'static str, Check)]) -> Result<Json<Value>, Problem> {
    let mut out = Map::new();
    out.insert("status".into(), "ready".into());
    let db = tokio::time::timeout(CHECK_TIMEOUT * 2, sqlx::query("SELECT 1").execute(pool)).await;
    let mut down = Vec::new();
    match db {
        Ok(Ok(_)) => {
            out.insert("database".into(), "ok".into());
        }
        _ => down.push("the database does not answer".to_owned()),
    }
    for (name, check) in checks {
        match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
            Ok(Ok(())) => {
                out.insert((*name).into(), "ok".into());
            }
            Ok(Err(e)) => down.push(format!("{name} does not answer: {e}")),
            Err(_) => down.push(format!("{name} does not answer within {CHECK_TIMEOUT:?}")),
        }
    }
    if down.is_empty() {
        Ok(Json(Value::Object(out)))
    } else {
        Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::UNAVAILABLE,
            "Not ready",
        )
        .detail(down.join("; ")))
    }
}
