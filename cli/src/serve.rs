//! `glassbox serve` (the command API, with a projector unless told otherwise) and
//! `glassbox projector run|rebuild|status`.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use glassbox_events::{EventStore, SigningKey};
use glassbox_projector::{Projector, Publisher};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Do not run a projector in this process (run `glassbox projector run` elsewhere).
    #[arg(long)]
    pub no_projector: bool,
    #[command(flatten)]
    pub signing: SigningArgs,
}

#[derive(Debug, Clone, Args)]
pub struct SigningArgs {
    /// Checkpoint signing key (created with mode 0600 if missing).
    #[arg(long, env = "GLASSBOX_LEDGER_KEY_FILE", default_value_os_t = crate::default_key_file())]
    pub key_file: std::path::PathBuf,
    /// Checkpoint origin (the key's name when it is created).
    #[arg(
        long,
        env = "GLASSBOX_LEDGER_ORIGIN",
        default_value = "glassbox.local/ledger"
    )]
    pub origin: String,
    /// Sign a checkpoint at most this often while events arrive (milliseconds).
    #[arg(long, env = "GLASSBOX_CHECKPOINT_INTERVAL_MS", default_value_t = 1000)]
    pub checkpoint_interval_ms: u64,
    /// Do not sign checkpoints.
    #[arg(long)]
    pub no_checkpoints: bool,
}

impl SigningArgs {
    pub(crate) fn publisher(&self) -> anyhow::Result<Option<Publisher>> {
        if self.no_checkpoints {
            return Ok(None);
        }
        let key = SigningKey::load_or_generate(&self.key_file, &self.origin)
            .with_context(|| format!("checkpoint key {}", self.key_file.display()))?;
        Ok(Some(Publisher {
            origin: key.name().to_owned(),
            key: Arc::new(key),
            interval: Duration::from_millis(self.checkpoint_interval_ms.max(1)),
        }))
    }
}

#[derive(Debug, Subcommand)]
pub enum ProjectorCommand {
    /// Fold new ledger records into the read models until interrupted, signing checkpoints.
    Run {
        #[command(flatten)]
        signing: SigningArgs,
    },
    /// Rebuild the read models from position 1 (one transaction; readers see the
    /// old tables until it commits). With --check, also compare with the tables
    /// as they were and exit 1 if they differ.
    Rebuild {
        #[arg(long)]
        check: bool,
    },
    /// Print the projection position and lag as JSON.
    Status,
}

pub(crate) async fn shutdown_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    token.cancel();
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut vars: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    let publisher = if args.no_projector {
        None
    } else {
        args.signing.publisher()?
    };
    if publisher.is_some() {
        vars.entry("GLASSBOX_LEDGER_KEY_FILE".into())
            .or_insert_with(|| args.signing.key_file.to_string_lossy().into_owned());
    }
    let config = glassbox_platform::Config::from_vars(vars).context("configuration")?;
    let app = glassbox_command_api::Application::build(config.clone()).await?;
    let token = app.shutdown_token();
    eprintln!(
        "glassbox command API listening on http://{}:{} ({} environment)",
        config.http_addr.ip(),
        app.port(),
        config.environment.as_str()
    );
    let mut projector = None;
    if !args.no_projector {
        let store = app.state().core.store.clone();
        projector = Some(tokio::spawn(
            Projector::new(store).run(publisher, token.clone()),
        ));
    }
    tokio::spawn(shutdown_signal(token.clone()));
    app.run_until_stopped().await.context("serving HTTP")?;
    token.cancel();
    if let Some(p) = projector {
        let _ = p.await;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn projector(db: &crate::DbArgs, command: ProjectorCommand) -> anyhow::Result<ExitCode> {
    let pool = glassbox_command_api::connect(db.url()?).await?;
    let store = EventStore::new(pool.clone());
    let p = Projector::new(store);
    match command {
        ProjectorCommand::Run { signing } => {
            let token = CancellationToken::new();
            tokio::spawn(shutdown_signal(token.clone()));
            eprintln!("projector running (Ctrl-C to stop)");
            p.run(signing.publisher()?, token).await;
            Ok(ExitCode::SUCCESS)
        }
        ProjectorCommand::Rebuild { check } => {
            let before = if check {
                p.catch_up().await?;
                Some(glassbox_projector::snapshot(&pool).await?)
            } else {
                None
            };
            let started = std::time::Instant::now();
            let to = p.rebuild().await?;
            let mut out = serde_json::json!({
                "rebuilt_to_position": to,
                "seconds": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            });
            let mut code = ExitCode::SUCCESS;
            if let Some(before) = before {
                let after = glassbox_projector::snapshot(&pool).await?;
                // Records appended during the rebuild would differ legitimately;
                // compare only when nothing arrived.
                let identical = before == after;
                out["identical"] = identical.into();
                if !identical {
                    code = ExitCode::from(1);
                }
            }
            println!("{out}");
            Ok(code)
        }
        ProjectorCommand::Status => {
            let lag = p.lag().await?;
            println!(
                "{}",
                serde_json::json!({
                    "head": lag.head, "position": lag.position,
                    "lag_events": lag.events, "lag_ms": lag.millis,
                })
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
