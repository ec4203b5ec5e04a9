//! RFC 9457 problem details. Every HTTP error leaves a Glassbox service as
//! `application/problem+json` with a stable machine-readable `code`; details meant
//! for the client only — never internal error text.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};

pub const CONTENT_TYPE: &str = "application/problem+json";

/// Stable error codes (the `code` member).
pub mod codes {
    pub const UNAUTHENTICATED: &str = "unauthenticated";
    pub const FORBIDDEN: &str = "forbidden";
    pub const POLICY_DENIED: &str = "policy_denied";
    pub const NOT_FOUND: &str = "not_found";
    pub const GONE: &str = "gone";
    pub const CONFLICT: &str = "conflict";
    pub const IDEMPOTENCY_CONFLICT: &str = "idempotency_key_reused";
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    pub const INVALID_REQUEST: &str = "invalid_request";
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const UNAVAILABLE: &str = "unavailable";
    pub const INTERNAL: &str = "internal";
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";

    /// Every code a client may see.
    pub const ALL: [&str; 14] = [
        UNAUTHENTICATED,
        FORBIDDEN,
        POLICY_DENIED,
        NOT_FOUND,
        GONE,
        CONFLICT,
        IDEMPOTENCY_CONFLICT,
        PAYLOAD_TOO_LARGE,
        INVALID_REQUEST,
        UNSUPPORTED_MEDIA_TYPE,
        RATE_LIMITED,
        UNAVAILABLE,
        INTERNAL,
        METHOD_NOT_ALLOWED,
    ];
}

fn code_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "enum": codes::ALL})
}

/// An RFC 9457 problem (its schema is the API document's `Problem`).
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    /// Stable and machine-readable.
    #[schemars(schema_with = "code_schema")]
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Extension members (e.g. `reasons` of a policy denial).
    #[serde(flatten)]
    pub extensions: Map<String, Value>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, title: impl Into<String>) -> Problem {
        Problem {
            type_uri: format!("https://glassbox.dev/problems/{}", code.replace('_', "-")),
            title: title.into(),
            status: status.as_u16(),
            code,
            detail: None,
            instance: None,
            extensions: Map::new(),
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Problem {
        self.detail = Some(detail.into());
        self
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Problem {
        self.extensions.insert(key.to_owned(), value.into());
        self
    }

    pub fn unauthenticated(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            codes::UNAUTHENTICATED,
            "Authentication required",
        )
        .detail(detail)
    }

    pub fn not_found(what: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, "Not found").detail(what)
    }

    pub fn invalid(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::BAD_REQUEST,
            codes::INVALID_REQUEST,
            "Invalid request",
        )
        .detail(detail)
    }

    /// A server-side failure: the client learns only that it happened.
    pub fn internal() -> Problem {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            codes::INTERNAL,
            "Internal error",
        )
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        let mut resp = (status, body).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
