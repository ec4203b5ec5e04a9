//! Logs, traces and metrics of every Glassbox process.
//!
//! - **Logs**: one JSON object per line on stderr, filtered by `RUST_LOG`. Each
//!   line carries the fields of the spans it happened in (`correlation_id`,
//!   `tenant`, `job_id`, `session_id`, …) and `trace_id` / `span_id`, so a log
//!   line leads to its trace and its ledger records.
//! - **Traces**: OpenTelemetry over OTLP (gRPC or HTTP/protobuf), configured by
//!   the standard `OTEL_*` variables and off unless an endpoint or
//!   `OTEL_TRACES_EXPORTER=otlp` is set. Trace IDs are derived from the
//!   ledger's correlation IDs ([`ids`]), which is how a job's trace continues in
//!   the runner although nothing but the ledger connects the two planes.
//! - **Metrics**: OpenTelemetry instruments, always readable in Prometheus text
//!   format ([`metrics::render`]), and pushed over OTLP when configured.
//!
//! Why Glassbox's spans ignore `RUST_LOG`: `RUST_LOG=warn` must not switch off
//! the request and job spans, or warnings would lose their correlation fields
//! and traces their spans. Spans of Glassbox's own crates at INFO and above
//! always exist; `RUST_LOG` filters events (and other crates' spans). Events
//! that pass it are also recorded as span events in the trace.
//!
//! What never goes into a span, attribute or log line: code, stdin, outputs,
//! secret values, tokens — span fields are IDs, names chosen by Glassbox, sizes
//! and outcomes (the end-to-end telemetry test plants markers in all of them).

pub mod ids;
mod logfmt;
pub mod metrics;

pub use ids::{correlation_from_traceparent, root_context, root_span_id_for, trace_id_for};

use opentelemetry::trace::{TraceContextExt as _, TraceId};
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// A telemetry setting that cannot be honoured.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry setting {name}: {reason}")]
    Setting { name: &'static str, reason: String },
    #[error("telemetry: building the OTLP {signal} exporter: {detail}")]
    Exporter {
        signal: &'static str,
        detail: String,
    },
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// What the `OTEL_*` variables ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    /// Spans exported over OTLP with this protocol; `None`: not exported.
    pub traces: Option<Protocol>,
    /// Metrics pushed over OTLP with this protocol (Prometheus text is always
    /// served where a service has `/metrics`).
    pub metrics: Option<Protocol>,
    /// Share of traces sampled, decided on the trace ID (so both planes agree).
    pub sample_ratio: f64,
    pub metric_interval: Duration,
    /// `OTEL_SERVICE_NAME` or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`.
    pub service_name_given: bool,
}

const SIGNALS: [(&str, &str, &str, &str); 2] = [
    (
        "traces",
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    ),
    (
        "metrics",
        "OTEL_METRICS_EXPORTER",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    ),
];

impl TelemetrySettings {
    /// Reads the standard variables (unknown values are errors, not ignored).
    pub fn from_vars(vars: &BTreeMap<String, String>) -> Result<TelemetrySettings, TelemetryError> {
        let get = |k: &str| vars.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let disabled = match get("OTEL_SDK_DISABLED") {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(v) => {
                return Err(TelemetryError::Setting {
                    name: "OTEL_SDK_DISABLED",
                    reason: format!("{v:?} is neither true nor false"),
                });
            }
        };
        let mut chosen = [None, None];
        for (i, (signal, exporter_var, endpoint_var, protocol_var)) in SIGNALS.iter().enumerate() {
            let wanted = match get(exporter_var) {
                Some(list) => {
                    let mut otlp = false;
                    for e in list.split(',').map(str::trim) {
                        match e {
                            "otlp" => otlp = true,
                            "none" => {}
                            "prometheus" if *signal == "metrics" => {}
                            other => {
                                return Err(TelemetryError::Setting {
                                    name: exporter_var,
                                    reason: format!(
                                        "exporter {other:?} is not supported (otlp{} or none)",
                                        if *signal == "metrics" {
                                            ", prometheus"
                                        } else {
                                            ""
                                        }
                                    ),
                                });
                            }
                        }
                    }
                    otlp
                }
                None => get("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() || get(endpoint_var).is_some(),
            };
            if !wanted || disabled {
                continue;
            }
            let (name, value) = match get(protocol_var) {
                Some(v) => (*protocol_var, v),
                None => (
                    "OTEL_EXPORTER_OTLP_PROTOCOL",
                    get("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or("http/protobuf"),
                ),
            };
            chosen[i] = Some(match value {
                "grpc" => Protocol::Grpc,
                "http/protobuf" => Protocol::HttpProtobuf,
                other => {
                    return Err(TelemetryError::Setting {
                        name,
                        reason: format!(
                            "protocol {other:?} is not supported (grpc or http/protobuf)"
                        ),
                    });
                }
            });
        }
        let arg = || -> Result<f64, TelemetryError> {
            let raw = get("OTEL_TRACES_SAMPLER_ARG").unwrap_or("1.0");
            raw.parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| TelemetryError::Setting {
                    name: "OTEL_TRACES_SAMPLER_ARG",
                    reason: format!("{raw:?} is not a ratio between 0 and 1"),
                })
        };
        let sample_ratio = match get("OTEL_TRACES_SAMPLER") {
            None | Some("always_on") | Some("parentbased_always_on") => 1.0,
            Some("always_off") | Some("parentbased_always_off") => 0.0,
            Some("traceidratio") | Some("parentbased_traceidratio") => arg()?,
            Some(other) => {
                return Err(TelemetryError::Setting {
                    name: "OTEL_TRACES_SAMPLER",
                    reason: format!(
                        "sampler {other:?} is not supported (always_on, always_off, traceidratio and their parentbased_ forms)"
                    ),
                });
            }
        };
        let metric_interval = match get("OTEL_METRIC_EXPORT_INTERVAL") {
            None => Duration::from_secs(60),
            Some(ms) => ms
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis)
                .ok_or_else(|| TelemetryError::Setting {
                    name: "OTEL_METRIC_EXPORT_INTERVAL",
                    reason: format!("{ms:?} is not a positive number of milliseconds"),
                })?,
        };
        let service_name_given = get("OTEL_SERVICE_NAME").is_some()
            || get("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| {
                a.split(',')
                    .any(|kv| kv.trim().starts_with("service.name="))
            });
        Ok(TelemetrySettings {
            traces: chosen[0],
            metrics: chosen[1],
            sample_ratio,
            metric_interval,
            service_name_given,
        })
    }
}

static SAMPLE_RATIO: OnceLock<f64> = OnceLock::new();
static TRACING_ON: AtomicBool = AtomicBool::new(false);

/// Whether a trace with this ID is sampled at its root: the SDK's ratio rule
/// (`TraceIdRatioBased`), so the command API and a runner decide alike.
pub(crate) fn root_sampled(trace_id: TraceId) -> bool {
    let ratio = SAMPLE_RATIO.get().copied().unwrap_or(1.0);
    if ratio >= 1.0 {
        return true;
    }
    let bytes = trace_id.to_bytes();
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[8..]);
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    (u64::from_be_bytes(low) >> 1) < bound
}

/// Whether spans are exported by this process.
pub fn tracing_enabled() -> bool {
    TRACING_ON.load(Ordering::Relaxed)
}

/// What [`init`] set up; [`Telemetry::shutdown`] flushes what is buffered.
#[derive(Debug, Default)]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporters (call before exit).
    pub fn shutdown(&self) {
        if let Some(t) = &self.tracer {
            let _ = t.force_flush();
            let _ = t.shutdown();
        }
        metrics::shutdown();
    }
}

/// Installs logging, tracing and metrics from the process environment.
/// `service` names this process when `OTEL_SERVICE_NAME` does not. Needs a
/// tokio runtime (the gRPC exporter's channel). Idempotent: later calls in the
/// same process leave the first set-up in place.
pub fn init(service: &str, default_filter: &str) -> Result<Telemetry, TelemetryError> {
    let vars: BTreeMap<String, String> = std::env::vars().collect();
    let settings = TelemetrySettings::from_vars(&vars)?;
    init_with(service, default_filter, &settings)
}

fn init_with(
    service: &str,
    default_filter: &str,
    settings: &TelemetrySettings,
) -> Result<Telemetry, TelemetryError> {
    let _ = SAMPLE_RATIO.set(settings.sample_ratio);
    let resource = {
        let b = opentelemetry_sdk::Resource::builder();
        if settings.service_name_given {
            b.build()
        } else {
            b.with_service_name(service.to_owned()).build()
        }
    };
    metrics::install(resource.clone(), settings)?;
    let tracer = match settings.traces {
        None => None,
        Some(protocol) => {
            let exporter = match protocol {
                Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .build(),
                Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .build(),
            }
            .map_err(|e| TelemetryError::Exporter {
                signal: "traces",
                detail: e.to_string(),
            })?;
            let sampler = opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
                opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(settings.sample_ratio),
            ));
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_sampler(sampler)
                    .with_id_generator(ids::CorrelatedIds::default())
                    .with_resource(resource)
                    .build(),
            )
        }
    };
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let env = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let fmt = tracing_subscriber::fmt::layer()
        .event_format(logfmt::JsonLines)
        .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
        .with_writer(std::io::stderr);
    let otel = tracer.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("glassbox"))
            // Only what a reader of the trace needs: no source locations,
            // thread names or busy/idle timings on every span (each costs
            // allocations on the request path; measured by `bench --otlp`).
            .with_level(false)
            .with_target(false)
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
    });
    let installed = tracing_subscriber::registry()
        .with(logfmt::SpansAndEnv(env))
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();
    if installed && tracer.is_some() {
        TRACING_ON.store(true, Ordering::Relaxed);
    }
    Ok(Telemetry {
        tracer: if installed { tracer } else { None },
    })
}

/// Makes `span` the root of the request correlated by `correlation`: its
/// trace ID and span ID are the derived ones ([`ids`]). Call right after
/// creating the span, before it is entered.
pub fn start_root(span: &tracing::Span, correlation: &str) {
    if !tracing_enabled() {
        return;
    }
    ids::with_forced_ids(
        trace_id_for(correlation),
        root_span_id_for(correlation),
        || {
            let _ = span.context();
        },
    );
}

/// Makes `span` a child of the root span of `correlation` — for work done
/// later, elsewhere, for that request (a runner running its job, the
/// projector projecting its records). Call before the span is entered.
pub fn continue_trace(span: &tracing::Span, correlation: &str) {
    if !tracing_enabled() {
        return;
    }
    let cx = opentelemetry::Context::new().with_remote_span_context(root_context(correlation));
    let _ = span.set_parent(cx);
}

/// Makes `span` a child of the W3C trace context in `headers` (gRPC metadata
/// or HTTP headers as name → value), if there is a valid one.
pub fn continue_from_headers<'a>(span: &tracing::Span, headers: impl Fn(&str) -> Option<&'a str>) {
    if !tracing_enabled() {
        return;
    }
    struct Get<'a, F: Fn(&str) -> Option<&'a str>>(F);
    impl<'a, F: Fn(&str) -> Option<&'a str>> opentelemetry::propagation::Extractor for Get<'a, F> {
        fn get(&self, key: &str) -> Option<&str> {
            (self.0)(key)
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent", "tracestate"]
        }
    }
    let getter = Get(headers);
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&getter));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The W3C `traceparent` (and `tracestate`) of the current span, to send
/// along with an outgoing call. Empty when tracing is off.
pub fn current_trace_headers() -> Vec<(&'static str, String)> {
    if !tracing_enabled() {
        return Vec::new();
    }
    struct Put(Vec<(&'static str, String)>);
    impl opentelemetry::propagation::Injector for Put {
        fn set(&mut self, key: &str, value: String) {
            let k = match key {
                "traceparent" => "traceparent",
                "tracestate" => "tracestate",
                _ => return,
            };
            self.0.push((k, value));
        }
    }
    let cx = tracing::Span::current().context();
    let mut put = Put(Vec::new());
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut put));
    put.0
}

/// Renames `span` in its trace (the name a span was created with is fixed in
/// `tracing`; an HTTP span learns its route only after routing).
pub fn rename(span: &tracing::Span, name: String) {
    if !tracing_enabled() {
        return;
    }
    span.context().span().update_name(name);
}

/// The trace and span ID of the current span (hex), when tracing is on.
pub fn current_ids() -> Option<(String, String)> {
    if !tracing_enabled() {
        return None;
    }
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn nothing_is_exported_unless_configured() {
        let s = TelemetrySettings::from_vars(&vars(&[])).expect("ok");
        assert_eq!((s.traces, s.metrics), (None, None));
        assert_eq!(s.sample_ratio, 1.0);
    }

    #[test]
    fn an_endpoint_turns_both_signals_on_with_the_spec_default_protocol() {
        let s = TelemetrySettings::from_vars(&vars(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://127.0.0.1:4318",
        )]))
        .expect("ok");
        assert_eq!(s.traces, Some(Protocol::HttpProtobuf));
        assert_eq!(s.metrics, Some(Protocol::HttpProtobuf));
    }

    #[test]
    fn per_signal_settings_win() {
        let s = TelemetrySettings::from_vars(&vars(&[
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://127.0.0.1:4317",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
        ]))
        .expect("ok");
        assert_eq!(s.traces, Some(Protocol::Grpc));
        assert_eq!(s.metrics, None);
    }

    #[test]
    fn sdk_disabled_turns_everything_off() {
        let s = TelemetrySettings::from_vars(&vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ]))
        .expect("ok");
        assert_eq!((s.traces, s.metrics), (None, None));
    }

    #[test]
    fn unknown_values_are_refused_by_name() {
        for (k, v) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
            ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
            ("OTEL_SDK_DISABLED", "yes"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "-5"),
        ] {
            let e = TelemetrySettings::from_vars(&vars(&[
                (k, v),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ]))
            .expect_err(k);
            assert!(e.to_string().contains(k), "{e}");
        }
        let e = TelemetrySettings::from_vars(&vars(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ]))
        .expect_err("ratio");
        assert!(e.to_string().contains("OTEL_TRACES_SAMPLER_ARG"), "{e}");
    }

    #[test]
    fn the_ratio_rule_matches_the_sdk() {
        use opentelemetry::trace::SpanKind;
        use opentelemetry_sdk::trace::SamplingDecision;
        use opentelemetry_sdk::trace::ShouldSample as _;
        let _ = SAMPLE_RATIO.set(0.5);
        let ratio = SAMPLE_RATIO.get().copied().unwrap_or(1.0);
        let sdk = opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(ratio);
        for i in 0..200u32 {
            let t = trace_id_for(&format!("c{i}"));
            let r = sdk.should_sample(None, t, "x", &SpanKind::Internal, &[], &[]);
            assert_eq!(
                r.decision == SamplingDecision::RecordAndSample,
                root_sampled(t),
                "{t}"
            );
        }
    }
}
