//! Errors of the control plane and their problem+json rendering.
//!
//! Each variant maps to one HTTP status and one stable `code`. Internal details
//! (database errors, blob store errors) are logged with the request ID and never
//! shown: the client gets `internal` and the request ID to quote.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use glassbox_events::store::StoreError;
use glassbox_platform::AuthError;
use glassbox_platform::problem::{Problem, codes};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("unauthenticated: {0}")]
    Unauthenticated(#[from] AuthError),
    #[error("forbidden: {0:?}")]
    Forbidden(Vec<String>),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("gone: {0}")]
    Gone(String),
    #[error("the idempotency key was used for a different request")]
    IdempotencyConflict,
    #[error("payload too large: {0}")]
    TooLarge(String),
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("rate limited")]
    RateLimited { retry_after_secs: u64 },
    #[error("too many refused credentials from this address")]
    TooManyAuthFailures { retry_after_secs: u64 },
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl ApiError {
    /// Wraps a store error from `step` (conflicts stay conflicts).
    pub fn store(step: &'static str) -> impl FnOnce(StoreError) -> ApiError {
        move |e| match e {
            StoreError::Conflict(c) => ApiError::Conflict(c.to_string()),
            StoreError::IdempotencyConflict { .. } => ApiError::IdempotencyConflict,
            other => ApiError::Internal(format!("{step}: {other}")),
        }
    }

    pub fn to_problem(&self) -> Problem {
        match self {
            ApiError::Invalid(d) => Problem::invalid(d.clone()),
            ApiError::Unauthenticated(e) => Problem::unauthenticated(e.to_string()),
            ApiError::Forbidden(reasons) => {
                Problem::new(StatusCode::FORBIDDEN, codes::FORBIDDEN, "Forbidden")
                    .detail(reasons.join("; "))
                    .with("reasons", reasons.clone())
            }
            ApiError::NotFound(what) => Problem::not_found(format!("{what} does not exist")),
            ApiError::Conflict(d) => {
                Problem::new(StatusCode::CONFLICT, codes::CONFLICT, "Conflict").detail(d.clone())
            }
            ApiError::Gone(d) => {
                Problem::new(StatusCode::GONE, codes::GONE, "Gone").detail(d.clone())
            }
            ApiError::IdempotencyConflict => Problem::new(
                StatusCode::CONFLICT,
                codes::IDEMPOTENCY_CONFLICT,
                "Idempotency key reused",
            )
            .detail("this Idempotency-Key was already used for a different request"),
            ApiError::TooLarge(d) => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::PAYLOAD_TOO_LARGE,
                "Payload too large",
            )
            .detail(d.clone()),
            ApiError::UnsupportedMediaType(d) => Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                codes::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported media type",
            )
            .detail(d.clone()),
            ApiError::TooManyAuthFailures { retry_after_secs } => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                codes::RATE_LIMITED,
                "Too many requests",
            )
            .detail(format!(
                "too many requests with missing or bad credentials from this address; retry after {retry_after_secs} s"
            )),
            ApiError::RateLimited { retry_after_secs } => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                codes::RATE_LIMITED,
                "Too many requests",
            )
            .detail(format!(
                "the tenant's request rate limit is exhausted; retry after {retry_after_secs} s"
            )),
            ApiError::Unavailable(d) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::UNAVAILABLE,
                "Service unavailable",
            )
            .detail(d.clone()),
            ApiError::Internal(_) => Problem::internal(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(error = %detail, "request failed");
        }
        let mut resp = self.to_problem().into_response();
        let retry = match &self {
            ApiError::RateLimited { retry_after_secs }
            | ApiError::TooManyAuthFailures { retry_after_secs } => Some(*retry_after_secs),
            ApiError::Unavailable(_) => Some(1),
            _ => None,
        };
        if let Some(s) = retry
            && let Ok(v) = axum::http::HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
        resp
    }
}
