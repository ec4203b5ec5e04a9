//! JSON logs on stderr, filtered by `RUST_LOG`. Correlation and request IDs travel
//! as span fields, so every line of a request carries them.

/// Installs the global subscriber (idempotent; later calls are no-ops).
pub fn init(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
