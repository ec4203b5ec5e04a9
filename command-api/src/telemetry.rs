//! The control plane's request spans, HTTP metrics and status gauges.
//!
//! Every request is the root span of its trace, and that trace's ID is its
//! correlation ID's ([`glassbox_platform::telemetry::ids`]): everything the
//! request appends carries that correlation ID, so the runner (which only sees
//! the ledger) continues the same trace. A caller that sends a W3C
//! `traceparent` and no `X-Request-Id` gets its trace continued and its trace
//! ID as the correlation ID; with both, `X-Request-Id` wins (the ledger link
//! matters more than the caller's trace).

use crate::AppState;
use crate::auth;
use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use glassbox_platform::telemetry;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};
use tracing::Instrument as _;

struct ApiMetrics {
    http: Histogram<f64>,
    rate_limited: Counter<u64>,
}

fn metrics() -> &'static ApiMetrics {
    static M: OnceLock<ApiMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let m = opentelemetry::global::meter(telemetry::metrics::METER);
        ApiMetrics {
            http: m
                .f64_histogram("http.server.request.duration")
                .with_unit("s")
                .with_description("Duration of HTTP server requests")
                .with_boundaries(telemetry::metrics::SECONDS_BUCKETS.to_vec())
                .build(),
            rate_limited: m
                .u64_counter("glassbox.rate_limit.refusals")
                .with_description(
                    "Requests refused by a rate limit (tenant: the tenant's request rate; auth_failures: a client's refused credentials)",
                )
                .build(),
        }
    })
}

/// Creates the control plane's counters at zero, so their series exist (and
/// alert rules over them evaluate) before the first increment.
pub fn init_metrics() {
    for limit in ["tenant", "auth_failures"] {
        metrics()
            .rate_limited
            .add(0, &[KeyValue::new("limit", limit)]);
    }
    glassbox_events::store::count_verification_failures_init();
    glassbox_policies::init_metrics();
}

/// Counts a refusal by a rate limit.
pub fn count_rate_limited(limit: &'static str) {
    metrics()
        .rate_limited
        .add(1, &[KeyValue::new("limit", limit)]);
}

/// The route template the router matched, handed from [`record_route`] (inside
/// the router) to [`request`] (outside it) through the response.
#[derive(Clone)]
struct MatchedRoute(String);

/// Inside the router: names the request span after its route template
/// (`POST /v1/jobs/{id}/cancel`), never after the concrete path.
pub async fn record_route(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    if let Some(r) = &route {
        let span = tracing::Span::current();
        span.record("http.route", r.as_str());
        telemetry::rename(&span, format!("{} {r}", req.method()));
    }
    let mut resp = next.run(req).await;
    if let Some(r) = route {
        resp.extensions_mut().insert(MatchedRoute(r));
    }
    resp
}

/// Outermost: the correlation ID (the caller's sane `X-Request-Id`, else the
/// trace ID of its `traceparent`, else a new UUID), the request's root span,
/// the HTTP metrics, and the `X-Request-Id` / `traceparent` answer headers.
pub async fn request(mut req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned);
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let from_trace = traceparent
        .as_deref()
        .and_then(telemetry::correlation_from_traceparent);
    let continue_caller = given.is_none() && from_trace.is_some();
    let id = given
        .or(from_trace)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(auth::RequestId(id.clone()));
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        otel.name = %method,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        url.path = %auth::loggable_path(req.uri().path()),
        request_id = %id,
        correlation_id = %id,
        tenant = tracing::field::Empty,
    );
    if continue_caller {
        let tp = traceparent.clone();
        telemetry::continue_from_headers(&span, |k| {
            (k == "traceparent").then_some(tp.as_deref()).flatten()
        });
    }
    telemetry::start_root(&span, &id);
    let started = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    span.record("http.response.status_code", status);
    if resp.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    let elapsed = started.elapsed();
    let route = resp
        .extensions()
        .get::<MatchedRoute>()
        .map_or_else(|| "unmatched".to_owned(), |r| r.0.clone());
    metrics().http.record(
        elapsed.as_secs_f64(),
        &[
            KeyValue::new("http.request.method", method.as_str().to_owned()),
            KeyValue::new("http.route", route),
            KeyValue::new("http.response.status_code", i64::from(status)),
        ],
    );
    span.in_scope(|| {
        tracing::info!(status, ms = elapsed.as_millis() as u64, "request finished");
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    for (k, v) in span.in_scope(telemetry::current_trace_headers) {
        if let Ok(v) = HeaderValue::from_str(&v) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

// ---------------------------------------------------------------- status gauges

/// The last status read, for the observable gauges (-1: not read yet).
struct Snapshot {
    head: AtomicI64,
    checkpoint_size: AtomicI64,
    checkpoint_age_ms: AtomicI64,
    lag_events: AtomicI64,
    lag_ms: AtomicI64,
    queued: AtomicI64,
    sessions: AtomicI64,
}

static SNAPSHOT: Snapshot = Snapshot {
    head: AtomicI64::new(-1),
    checkpoint_size: AtomicI64::new(-1),
    checkpoint_age_ms: AtomicI64::new(-1),
    lag_events: AtomicI64::new(-1),
    lag_ms: AtomicI64::new(-1),
    queued: AtomicI64::new(-1),
    sessions: AtomicI64::new(-1),
};

/// How often the gauges are refreshed in the background (for OTLP push; a
/// Prometheus scrape refreshes them itself).
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Registers the status gauges (once per process).
fn register_gauges() {
    static GAUGES: OnceLock<Vec<opentelemetry::metrics::ObservableGauge<u64>>> = OnceLock::new();
    static AGE: OnceLock<Vec<opentelemetry::metrics::ObservableGauge<f64>>> = OnceLock::new();
    let m = opentelemetry::global::meter(telemetry::metrics::METER);
    GAUGES.get_or_init(|| {
        let gauge = |name: &'static str, desc: &'static str, cell: &'static AtomicI64| {
            m.u64_observable_gauge(name)
                .with_description(desc)
                .with_callback(move |o| {
                    let v = cell.load(Ordering::Relaxed);
                    if v >= 0 {
                        o.observe(v as u64, &[]);
                    }
                })
                .build()
        };
        vec![
            gauge(
                "glassbox.ledger.head",
                "Records in the ledger",
                &SNAPSHOT.head,
            ),
            gauge(
                "glassbox.ledger.checkpoint.size",
                "Tree size of the latest signed checkpoint",
                &SNAPSHOT.checkpoint_size,
            ),
            gauge(
                "glassbox.projection.lag",
                "Records appended but not yet in the read models",
                &SNAPSHOT.lag_events,
            ),
            gauge(
                "glassbox.jobs.queued",
                "Jobs accepted and not yet claimed by a runner (queue depth)",
                &SNAPSHOT.queued,
            ),
            gauge(
                "glassbox.sessions.active",
                "Sessions open on all runners",
                &SNAPSHOT.sessions,
            ),
        ]
    });
    AGE.get_or_init(|| {
        let seconds = |name: &'static str, desc: &'static str, cell: &'static AtomicI64| {
            m.f64_observable_gauge(name)
                .with_unit("s")
                .with_description(desc)
                .with_callback(move |o| {
                    let v = cell.load(Ordering::Relaxed);
                    if v >= 0 {
                        o.observe(v as f64 / 1000.0, &[]);
                    }
                })
                .build()
        };
        vec![
            seconds(
                "glassbox.ledger.checkpoint.age",
                "Time since the latest checkpoint was signed",
                &SNAPSHOT.checkpoint_age_ms,
            ),
            seconds(
                "glassbox.projection.delay",
                "Age of the oldest record not yet in the read models",
                &SNAPSHOT.lag_ms,
            ),
        ]
    });
}

/// Reads the status into the gauges.
pub async fn refresh_status(state: &AppState) -> Result<(), crate::ApiError> {
    register_gauges();
    let s = state.core.status().await?;
    let age = state
        .core
        .store
        .latest_checkpoint_age()
        .await
        .map_err(crate::ApiError::store("read checkpoints"))?;
    let sessions = glassbox_projector::queries::open_sessions_total(&state.core.pool)
        .await
        .map_err(|e| crate::ApiError::Internal(e.to_string()))?;
    let set = |c: &AtomicI64, v: u64| c.store(v.min(i64::MAX as u64) as i64, Ordering::Relaxed);
    set(&SNAPSHOT.head, s.ledger.head);
    set(&SNAPSHOT.checkpoint_size, s.ledger.latest_checkpoint_size);
    SNAPSHOT
        .checkpoint_age_ms
        .store(age.map_or(-1, |a| (a * 1000.0) as i64), Ordering::Relaxed);
    set(&SNAPSHOT.lag_events, s.projection.lag_events);
    set(&SNAPSHOT.lag_ms, s.projection.lag_ms);
    set(&SNAPSHOT.queued, s.queue.accepted_not_claimed);
    set(&SNAPSHOT.sessions, sessions.max(0) as u64);
    Ok(())
}
