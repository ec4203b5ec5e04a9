//! `/healthz` (the process answers) and `/readyz` (its dependencies answer: here
//! the database, with a short timeout).

use crate::problem::{Problem, codes};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;

/// Routes for liveness and readiness.
pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route(
            "/readyz",
            get(move || {
                let pool = pool.clone();
                async move { ready(&pool).await }
            }),
        )
}

async fn ready(pool: &PgPool) -> Result<Json<serde_json::Value>, Problem> {
    let check = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(pool),
    )
    .await;
    match check {
        Ok(Ok(_)) => Ok(Json(json!({"status": "ready", "database": "ok"}))),
        _ => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::UNAVAILABLE,
            "Not ready",
        )
        .detail("the database does not answer")),
    }
}
