//! The runner service as its own process: `sandbox-runner` (configured by the
//! GLASSBOX_* variables; see README). SIGINT/SIGTERM stop it gracefully: running
//! jobs are cancelled and recorded, and the sandboxes cleaned up.

use anyhow::Context as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    glassbox_platform::install_crypto_provider();
    let telemetry = glassbox_platform::telemetry::init("glassbox-runner", "info")
        .context("telemetry configuration")?;
    let config = glassbox_platform::Config::from_env().context("configuration")?;
    let vars = std::env::vars().collect();
    let settings = glassbox_sandbox_runner::service::RunnerSettings::from_vars(&vars)
        .context("runner configuration")?;
    let token = tokio_util::sync::CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
        }
        t.cancel();
    });
    let result = glassbox_sandbox_runner::service::run_service(&config, settings, token).await;
    telemetry.shutdown();
    result?;
    Ok(())
}
