//! `glassbox` command-line tools: the services (`serve`, `projector`), keys, ledger
//! verification and proofs, benchmarks.
//!
//! Exit codes: 0 success (for `ledger verify`: the ledger verifies), 1 the ledger
//! does not verify (or a proof does not check), 2 usage or infrastructure errors.

pub mod audit;
pub mod bench;
mod bench_audit;
mod bench_e2e;
mod bench_egress;
mod bench_mcp;
mod bench_otlp;
mod bench_sandbox;
mod bench_session;
mod bench_submit;
mod bench_workflow;
pub mod dev;
pub mod images;
pub mod ledger;
pub mod mcp_stdio;
pub mod otlp_sink;
pub mod sandbox;
pub mod serve;
pub mod session;
pub mod workflow;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use glassbox_events::SigningKey;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "glassbox",
    version,
    about = "Glassbox: audited sandboxed code execution"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Checkpoint signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Inspect and verify the ledger.
    Ledger {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        command: ledger::LedgerCommand,
    },
    /// Database schema management.
    Db {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Run code in a gVisor sandbox directly (a debugging aid; needs root and runsc).
    Sandbox {
        #[command(subcommand)]
        command: sandbox::SandboxCommand,
    },
    /// Runtime images (and plane image bases): build, list, verify, export.
    Images {
        #[command(subcommand)]
        command: images::ImagesCommand,
    },
    /// Exit 0 when URL answers 2xx within 3 s (for container HEALTHCHECKs).
    Healthcheck { url: String },
    /// Run the command API (and, unless --no-projector, a projector signing checkpoints).
    /// Configured by GLASSBOX_* variables (see README).
    Serve(serve::ServeArgs),
    /// Read models: run the projector, rebuild from position 1, show lag.
    Projector {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        command: serve::ProjectorCommand,
    },
    /// Everything on one machine: command API, projector and a runner, on embedded
    /// defaults (a private PostgreSQL cluster unless DATABASE_URL is set).
    Dev(dev::DevArgs),
    /// The runner service: claims accepted jobs and runs them under runsc (as root).
    Runner,
    /// Submit a program, wait for it, print its output; exits with its exit code.
    Run(dev::RunArgs),
    /// Sessions: a sandbox that keeps its state between calls (create, exec,
    /// cp, ls, show, close, repl).
    Session(session::SessionArgs),
    /// Workflows: define (apply FILE), run, follow (status), approve, cancel.
    Workflow(workflow::WorkflowArgs),
    /// Evidence bundles: export (recorded in the ledger) and offline verification.
    Audit {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// A stream's state and timeline at a position or time; --reevaluate re-runs
    /// each recorded policy decision against its bundle (exit 1 if one differs).
    Replay {
        #[command(flatten)]
        db: DbArgs,
        stream: String,
        /// A ledger position or an RFC 3339 time (default: now).
        #[arg(long)]
        at: Option<String>,
        #[arg(long)]
        reevaluate: bool,
        #[arg(long)]
        json: bool,
    },
    /// MCP over stdio for desktop agents: relays to a running Glassbox's /mcp.
    Mcp(mcp_stdio::McpArgs),
    /// Mint a development JWT (HS256 with GLASSBOX_AUTH_HS256_SECRET; development/test only).
    Token(TokenArgs),
    /// Benchmarks that measure their own baseline in the same run.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a new Ed25519 checkpoint key (file mode 0600) and print its verifier key.
    Generate {
        #[command(flatten)]
        key: KeyFileArgs,
        /// The key (and checkpoint origin) name.
        #[arg(
            long,
            env = "GLASSBOX_LEDGER_ORIGIN",
            default_value = "glassbox.local/ledger"
        )]
        name: String,
    },
    /// Print the verifier key of an existing key file.
    Verifier {
        #[command(flatten)]
        key: KeyFileArgs,
    },
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[arg(long, default_value = "default")]
    pub tenant: String,
    #[arg(long, default_value = "developer")]
    pub subject: String,
    /// Comma-separated roles.
    #[arg(long, default_value = "submitter")]
    pub roles: String,
    #[arg(long)]
    pub app: Option<String>,
    #[arg(long)]
    pub agent: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
}

pub(crate) fn mint_token(args: &TokenArgs) -> anyhow::Result<String> {
    let mut vars: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    // A development tool: development unless told otherwise, with the secret
    // `glassbox dev` keeps in the data directory.
    vars.entry("GLASSBOX_ENV".into())
        .or_insert_with(|| "development".into());
    if let Some(s) = dev::dev_secret(false)? {
        vars.entry("GLASSBOX_AUTH_HS256_SECRET".into()).or_insert(s);
    }
    let config = glassbox_platform::Config::from_vars(vars).context("configuration")?;
    anyhow::ensure!(
        config.environment.is_permissive(),
        "glassbox token mints development tokens: set GLASSBOX_ENV=development (it is {})",
        config.environment.as_str()
    );
    let secret =
        config.auth.hs256_secret.as_ref().context(
            "set GLASSBOX_AUTH_HS256_SECRET (at least 32 bytes) to mint development tokens",
        )?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let names = &config.auth.claims;
    let mut claims = serde_json::Map::new();
    claims.insert("iss".into(), config.auth.issuer.clone().into());
    claims.insert("aud".into(), config.auth.audience.clone().into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + args.ttl).into());
    claims.insert(names.tenant.clone(), args.tenant.clone().into());
    claims.insert(names.subject.clone(), args.subject.clone().into());
    let roles: Vec<serde_json::Value> = args
        .roles
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| r.to_owned().into())
        .collect();
    claims.insert(names.roles.clone(), roles.into());
    if let Some(a) = &args.app {
        claims.insert(names.app.clone(), a.clone().into());
    }
    if let Some(a) = &args.agent {
        claims.insert(names.agent.clone(), a.clone().into());
    }
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.expose().as_bytes()),
    )?)
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply all migrations.
    Migrate,
}

#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
}

impl DbArgs {
    pub fn url(&self) -> anyhow::Result<&str> {
        self.database_url
            .as_deref()
            .context("no database: pass --database-url or set DATABASE_URL")
    }
}

#[derive(Debug, Clone, Args)]
pub struct KeyFileArgs {
    /// Private checkpoint key file (C2SP note format, mode 0600).
    #[arg(long, env = "GLASSBOX_LEDGER_KEY_FILE", default_value_os_t = default_key_file())]
    pub key_file: PathBuf,
}

/// `$GLASSBOX_DATA_DIR/keys/ledger.key`, default data dir `~/.local/share/glassbox`.
pub fn default_key_file() -> PathBuf {
    let data = std::env::var_os("GLASSBOX_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."))
                .join(".local/share/glassbox")
        });
    data.join("keys/ledger.key")
}

/// The service name a command reports its telemetry under (unless
/// `OTEL_SERVICE_NAME` says otherwise): one per plane, so a trace shows which
/// process did what.
fn service_name(command: &Command) -> &'static str {
    match command {
        Command::Serve(_) | Command::Projector { .. } => "glassbox-control-plane",
        Command::Runner => "glassbox-runner",
        Command::Dev(_) => "glassbox-dev",
        _ => "glassbox-cli",
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Keys { command } => match command {
            KeysCommand::Generate { key, name } => {
                let k = SigningKey::generate(&name)?;
                k.write_new_file(&key.key_file)
                    .with_context(|| format!("writing key file {}", key.key_file.display()))?;
                eprintln!(
                    "wrote private key to {} (mode 0600)",
                    key.key_file.display()
                );
                println!("{}", k.verifier());
                Ok(ExitCode::SUCCESS)
            }
            KeysCommand::Verifier { key } => {
                let k = SigningKey::load_file(&key.key_file)?;
                println!("{}", k.verifier());
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Ledger { db, command } => ledger::run(&db, command).await,
        Command::Db { db, command } => match command {
            DbCommand::Migrate => {
                let pool = sqlx::PgPool::connect(db.url()?)
                    .await
                    .context("connecting to PostgreSQL")?;
                glassbox_events::migrate(&pool).await?;
                eprintln!("migrations applied");
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Sandbox { command } => sandbox::run(command).await,
        Command::Images { command } => images::run(command).await,
        Command::Healthcheck { url } => images::healthcheck(&url).await,
        Command::Bench { command } => bench::run(command).await,
        Command::Serve(args) => serve::serve(args).await,
        Command::Dev(args) => dev::dev(args).await,
        Command::Audit { db, command } => audit::run(&db, command).await,
        Command::Replay {
            db,
            stream,
            at,
            reevaluate,
            json,
        } => audit::replay(&db, &stream, at, reevaluate, json).await,
        Command::Runner => dev::runner().await,
        Command::Run(args) => dev::run(args).await,
        Command::Session(args) => session::run(args).await,
        Command::Workflow(args) => workflow::run(args).await,
        Command::Mcp(args) => mcp_stdio::run(args).await,
        Command::Token(args) => {
            println!("{}", mint_token(&args)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Projector { db, command } => serve::projector(&db, command).await,
    }
}

/// The `glassbox` command's entry point: parse the arguments, run, exit.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    // JSON logs to stderr (RUST_LOG, default warnings); spans and metrics over
    // OTLP when the OTEL_* variables ask for it. Inside the runtime: the gRPC
    // exporter needs one.
    let telemetry = {
        let _in_runtime = runtime.enter();
        match glassbox_platform::telemetry::init(service_name(&cli.command), "warn") {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    };
    {
        let _in_runtime = runtime.enter();
        telemetry.shutdown();
    }
    code
}
