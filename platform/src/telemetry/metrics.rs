//! The process's one meter provider: every crate records on
//! `opentelemetry::global::meter(METER)`; this module installs the provider
//! behind it with a Prometheus reader (for `/metrics`) and, when configured,
//! an OTLP reader that pushes the same instruments.
//!
//! Names follow the OpenTelemetry semantic conventions where one exists
//! (`http.server.request.duration`); Glassbox's own are `glassbox.*`. The
//! Prometheus names are the exporter's translation: dots become underscores,
//! the unit is a suffix (`_seconds`), counters end in `_total`.

use super::{Protocol, TelemetryError, TelemetrySettings};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use std::sync::OnceLock;

/// The meter (instrumentation scope) every Glassbox instrument belongs to.
pub const METER: &str = "glassbox";

/// Histogram boundaries for durations in seconds, 1 ms to 2 min.
pub const SECONDS_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

struct Meters {
    registry: prometheus::Registry,
    provider: SdkMeterProvider,
}

static METERS: OnceLock<Meters> = OnceLock::new();

fn build(
    resource: opentelemetry_sdk::Resource,
    settings: Option<&TelemetrySettings>,
) -> Result<Meters, TelemetryError> {
    let registry = prometheus::Registry::new();
    let prom = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .scope_info_enabled(false)
        .build()
        .map_err(|e| TelemetryError::Exporter {
            signal: "prometheus metrics",
            detail: e.to_string(),
        })?;
    let mut b = SdkMeterProvider::builder()
        .with_reader(prom)
        .with_resource(resource);
    if let Some(s) = settings
        && let Some(protocol) = s.metrics
    {
        let exporter = match protocol {
            Protocol::Grpc => opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .build(),
            Protocol::HttpProtobuf => opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .build(),
        }
        .map_err(|e| TelemetryError::Exporter {
            signal: "metrics",
            detail: e.to_string(),
        })?;
        b = b.with_reader(
            opentelemetry_sdk::metrics::PeriodicReader::builder(exporter)
                .with_interval(s.metric_interval)
                .build(),
        );
    }
    let provider = b.build();
    opentelemetry::global::set_meter_provider(provider.clone());
    Ok(Meters { registry, provider })
}

/// Serialises installation: two callers racing (services built in parallel in
/// one process) must not both build a provider — the second would become the
/// global one while `/metrics` renders the first's registry.
static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn install_once(
    resource: impl FnOnce() -> opentelemetry_sdk::Resource,
    settings: Option<&TelemetrySettings>,
) -> Result<(), TelemetryError> {
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if METERS.get().is_none() {
        let _ = METERS.set(build(resource(), settings)?);
    }
    Ok(())
}

/// Installs the provider from `settings` (the first installation wins).
pub(crate) fn install(
    resource: opentelemetry_sdk::Resource,
    settings: &TelemetrySettings,
) -> Result<(), TelemetryError> {
    install_once(|| resource, Some(settings))
}

/// Installs a Prometheus-only provider unless one is installed — for
/// processes (tests, embedded uses) that never called `telemetry::init`.
/// Instruments made before any provider was installed record nothing.
pub fn ensure() {
    if METERS.get().is_none() {
        let _ = install_once(|| opentelemetry_sdk::Resource::builder().build(), None);
    }
}

/// Every instrument in Prometheus text exposition format.
pub fn render() -> String {
    ensure();
    let Some(m) = METERS.get() else {
        return String::new();
    };
    prometheus::TextEncoder::new()
        .encode_to_string(&m.registry.gather())
        .unwrap_or_default()
}

pub(crate) fn shutdown() {
    if let Some(m) = METERS.get() {
        let _ = m.provider.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruments_appear_in_the_text_format_under_their_prometheus_names() {
        ensure();
        let meter = opentelemetry::global::meter(METER);
        let c = meter
            .u64_counter("glassbox.test.things")
            .with_description("things counted by a test")
            .build();
        c.add(3, &[opentelemetry::KeyValue::new("kind", "a")]);
        let h = meter
            .f64_histogram("glassbox.test.wait")
            .with_unit("s")
            .with_boundaries(SECONDS_BUCKETS.to_vec())
            .build();
        h.record(0.2, &[]);
        let text = render();
        assert!(
            text.contains("glassbox_test_things_total{kind=\"a\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("glassbox_test_wait_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("glassbox_test_wait_seconds_bucket{le=\"0.25\"} 1"),
            "{text}"
        );
    }
}
