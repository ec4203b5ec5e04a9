//! The data plane's instruments: sandbox start and execution latency, and
//! each runner's capacity and work in flight (registered by the service).

use opentelemetry::KeyValue;
use opentelemetry::metrics::Histogram;
use std::sync::OnceLock;
use std::time::Duration;

struct SandboxMetrics {
    start: Histogram<f64>,
    execution: Histogram<f64>,
}

fn metrics() -> &'static SandboxMetrics {
    static M: OnceLock<SandboxMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let m = opentelemetry::global::meter(glassbox_platform::telemetry::metrics::METER);
        SandboxMetrics {
            start: m
                .f64_histogram("glassbox.sandbox.start.duration")
                .with_unit("s")
                .with_description(
                    "Time to start a sandbox: for a job, provisioning until runsc is running; for a session, until its agent answers (start: cold — there is no warm pool)",
                )
                .with_boundaries(glassbox_platform::telemetry::metrics::SECONDS_BUCKETS.to_vec())
                .build(),
            execution: m
                .f64_histogram("glassbox.execution.duration")
                .with_unit("s")
                .with_description("Wall time of an execution (a job's run or a session's exec) by runtime and outcome")
                .with_boundaries(glassbox_platform::telemetry::metrics::SECONDS_BUCKETS.to_vec())
                .build(),
        }
    })
}

/// A sandbox of `kind` (`job`, `session`) for `runtime` started after `took`.
pub fn sandbox_started(kind: &'static str, runtime: &str, took: Duration) {
    metrics().start.record(
        took.as_secs_f64(),
        &[
            KeyValue::new("kind", kind),
            KeyValue::new("runtime", runtime.to_owned()),
            KeyValue::new("start", "cold"),
        ],
    );
}

/// An execution of `kind` for `runtime` ended with `outcome` after `wall`.
pub fn execution_finished(kind: &'static str, runtime: &str, outcome: &str, wall: Duration) {
    metrics().execution.record(
        wall.as_secs_f64(),
        &[
            KeyValue::new("kind", kind),
            KeyValue::new("runtime", runtime.to_owned()),
            KeyValue::new("outcome", outcome.to_owned()),
        ],
    );
}

/// Gauges kept alive for the process (an observable gauge reports through
/// its callback for as long as its handle lives).
static GAUGES: std::sync::Mutex<Vec<opentelemetry::metrics::ObservableGauge<u64>>> =
    std::sync::Mutex::new(Vec::new());

/// Reports `runner`'s capacity for `kind` (`job` slots, `session` places) and
/// how much of it is in use, for as long as `in_use` answers (it returns
/// `None` once the runner is gone).
pub fn register_capacity(
    runner: &str,
    kind: &'static str,
    capacity: u64,
    in_use: impl Fn() -> Option<u64> + Send + Sync + 'static,
) {
    let m = opentelemetry::global::meter(glassbox_platform::telemetry::metrics::METER);
    let attrs = [
        KeyValue::new("runner", runner.to_owned()),
        KeyValue::new("kind", kind),
    ];
    let live = std::sync::Arc::new(in_use);
    let (a1, l1) = (attrs.clone(), live.clone());
    let cap = m
        .u64_observable_gauge("glassbox.runner.capacity")
        .with_description("Jobs (slots) or sessions a runner can hold at once")
        .with_callback(move |o| {
            if l1().is_some() {
                o.observe(capacity, &a1);
            }
        })
        .build();
    let used = m
        .u64_observable_gauge("glassbox.runner.in_flight")
        .with_description("Jobs running or sessions open on a runner")
        .with_callback(move |o| {
            if let Some(n) = live() {
                o.observe(n, &attrs);
            }
        })
        .build();
    if let Ok(mut g) = GAUGES.lock() {
        g.push(cap);
        g.push(used);
    }
}
