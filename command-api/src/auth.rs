//! Who is calling: bearer tokens, the test-only bypass, and rate limits.
//!
//! Every `/v1` request passes [`authenticate`]: a bearer token is verified
//! (any failure is a 401 problem naming why); without one, and only when the
//! bypass is enabled (development/test; refused at start-up elsewhere), the
//! identity asserted in `X-Glassbox-Identity` is used and the request is
//! recorded as `auth.bypassed` before it is handled. Then the tenant's rate
//! limit is counted in Redis.

use crate::AppState;
use crate::core::Caller;
use crate::error::ApiError;
use crate::ratelimit::Verdict;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use glassbox_events::catalogue;
use glassbox_events::store::{AppendRequest, NewEvent};
use glassbox_events::{Actor, AuthVia};
use glassbox_platform::auth::check_identity;
use glassbox_platform::{AuthError, Identity};

/// Header carrying the asserted identity (JSON) when the bypass is on.
pub const BYPASS_HEADER: &str = "x-glassbox-identity";

/// The request's correlation ID (set by the request-ID middleware).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

pub async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let identified = identify(&state, &parts).await;
    let client = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string());
    let mut req = Request::from_parts(parts, body);
    match identified {
        Ok(caller) => {
            tracing::Span::current().record("tenant", caller.identity.tenant.as_str());
            match state.limiter.check(&caller.identity.tenant).await {
                Ok(Verdict::Allowed) => {}
                Ok(Verdict::Limited {
                    first,
                    window_start,
                }) => {
                    crate::telemetry::count_rate_limited("tenant");
                    if first {
                        record_rate_limit(&state, &caller, window_start).await;
                    }
                    return ApiError::RateLimited {
                        retry_after_secs: 1,
                    }
                    .into_response();
                }
                Err(e) => {
                    tracing::error!(error = %e, "rate limiter unavailable; refusing");
                    return ApiError::Unavailable("the rate limiter is unavailable".into())
                        .into_response();
                }
            }
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e @ ApiError::Unauthenticated(_)) => {
            // Refused credentials count against the client's address: past
            // the limit it gets 429, so guessing tokens is slow and cheap for us.
            match state
                .limiter
                .check_auth_failure(&client, state.config.auth_failures_per_sec)
                .await
            {
                Ok(Verdict::Allowed) => e.into_response(),
                Ok(Verdict::Limited { .. }) => {
                    crate::telemetry::count_rate_limited("auth_failures");
                    ApiError::TooManyAuthFailures {
                        retry_after_secs: 1,
                    }
                    .into_response()
                }
                Err(err) => {
                    tracing::error!(error = %err, "rate limiter unavailable; refusing");
                    ApiError::Unavailable("the rate limiter is unavailable".into()).into_response()
                }
            }
        }
        Err(e) => e.into_response(),
    }
}

/// The request path as it may be logged or recorded: what follows
/// `/artifacts/` or `/files/` is a name a program or a caller chose (their
/// data), so it is left out.
pub fn loggable_path(path: &str) -> String {
    let cut = ["/artifacts/", "/files/"]
        .iter()
        .filter_map(|m| path.find(m).map(|i| i + m.len()))
        .min();
    let p = match cut {
        Some(i) => format!("{}…", &path[..i]),
        None => path.to_owned(),
    };
    p.chars().take(512).collect()
}

async fn identify(state: &AppState, req: &axum::http::request::Parts) -> Result<Caller, ApiError> {
    let request_id = req
        .extensions
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    if let Some(h) = req.headers.get(AUTHORIZATION) {
        let h = h
            .to_str()
            .map_err(|_| AuthError::Malformed("Authorization header is not text".into()))?;
        let token = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
            .ok_or_else(|| AuthError::Malformed("Authorization is not a Bearer token".into()))?;
        let identity = state.verifier.verify(token.trim()).await?;
        return Ok(Caller {
            identity,
            via: AuthVia::Jwt,
            request_id,
        });
    }
    if !state.config.auth.bypass {
        return Err(AuthError::Missing.into());
    }
    let Some(asserted) = req.headers.get(BYPASS_HEADER) else {
        return Err(AuthError::Missing.into());
    };
    let identity: Identity = asserted
        .to_str()
        .ok()
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| {
            AuthError::Malformed(format!(
                "{BYPASS_HEADER} must be a JSON identity {{tenant, subject, app, agent, roles}}"
            ))
        })?;
    check_identity(&identity, &state.config.auth.claims)?;
    let caller = Caller {
        identity,
        via: AuthVia::Bypass,
        request_id,
    };
    // Recorded before the request is handled: no bypassed request goes unaudited.
    let asserted = match serde_json::to_value(&caller.identity) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let event = catalogue::AuthBypassed {
        plane: "control".into(),
        method: req.method.to_string(),
        path: loggable_path(req.uri.path()),
        asserted,
    };
    let stream = format!("auth-{}", caller.identity.tenant);
    let e = NewEvent::typed(stream, &event).map_err(|e| ApiError::Internal(e.to_string()))?;
    state
        .core
        .store
        .append(caller.append(vec![e]))
        .await
        .map_err(ApiError::store("record a bypassed request"))?;
    Ok(caller)
}

async fn record_rate_limit(state: &AppState, caller: &Caller, window_start: u64) {
    let window = chrono::DateTime::from_timestamp(window_start as i64, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    let event = catalogue::RateLimitExceeded {
        subject: caller.identity.subject.clone(),
        window_start: window,
        limit: state.limiter.per_second(),
    };
    let stream = format!("tenant-{}", caller.identity.tenant);
    let Ok(e) = NewEvent::typed(stream, &event) else {
        return;
    };
    if let Err(e) = state.core.store.append(caller.append(vec![e])).await {
        tracing::error!(error = %e, "could not record a rate-limit denial");
    }
}

/// Appends `auth.bypass_enabled` (once per start of a service with the bypass on).
pub async fn record_bypass_enabled(
    store: &glassbox_events::store::EventStore,
    environment: &str,
) -> Result<(), glassbox_events::store::StoreError> {
    let event = catalogue::AuthBypassEnabled {
        plane: "control".into(),
        environment: environment.to_owned(),
    };
    let e = NewEvent::typed("auth-system", &event)
        .map_err(|e| glassbox_events::store::StoreError::InvalidRequest(e.to_string()))?;
    store
        .append(AppendRequest::new(
            "system",
            Actor::system("command-api"),
            vec![e],
        ))
        .await
        .map(|_| ())
}
