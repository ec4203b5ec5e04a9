//! `glassbox sandbox exec`: run one file through the sandbox core and print the
//! result as JSON — the same path the runner service uses, without the ledger.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use glassbox_sandbox_runner::spec::{parse_bytes, parse_duration};
use glassbox_sandbox_runner::{
    CancellationToken, ExecutionSpec, LocalConfig, LocalRunsc, RuntimeRegistry, SandboxBackend,
};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Run FILE and print the result as JSON (exit 0 when the program succeeded).
    Exec(ExecArgs),
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// A language of the runtime registry (python, node, bash, …).
    #[arg(long)]
    pub lang: String,
    /// The program to run.
    pub file: PathBuf,
    /// Arguments passed to the program.
    #[arg(last = true)]
    pub args: Vec<String>,
    /// Memory limit, e.g. 256M.
    #[arg(long, value_parser = parse_bytes)]
    pub memory: Option<u64>,
    /// Wall-clock limit, e.g. 5s or 500ms.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// CPU limit in cores, as thousandths (1000 = one core).
    #[arg(long)]
    pub cpu_millicores: Option<u64>,
    /// Feed this file to the program's stdin.
    #[arg(long)]
    pub stdin: Option<PathBuf>,
    /// Runtime registry file (default: built-in python, node, bash).
    #[arg(long, env = "GLASSBOX_RUNTIMES_FILE")]
    pub runtimes: Option<PathBuf>,
    /// The image store the runtimes' roots come from.
    #[arg(long, env = "GLASSBOX_IMAGES_DIR", default_value = glassbox_images::DEFAULT_STORE)]
    pub images: PathBuf,
    /// Base directory for runsc state, bundles and workspaces.
    #[arg(long, env = "GLASSBOX_SANDBOX_DIR", default_value = "/run/glassbox")]
    pub base_dir: PathBuf,
    /// Runner id (sandboxes of this id left by a crash are swept at start).
    #[arg(long, default_value = "cli")]
    pub runner_id: String,
}

pub async fn run(command: SandboxCommand) -> anyhow::Result<ExitCode> {
    let SandboxCommand::Exec(a) = command;
    let code = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let mut spec = ExecutionSpec::new(&a.lang, code);
    spec.args = a.args;
    if let Some(m) = a.memory {
        spec.limits.memory_bytes = m;
    }
    if let Some(t) = a.timeout {
        spec.limits.wall_time_ms = t.as_millis() as u64;
    }
    if let Some(c) = a.cpu_millicores {
        spec.limits.cpu_millicores = c;
    }
    if let Some(p) = &a.stdin {
        spec.stdin = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    }
    let registry = match &a.runtimes {
        Some(p) => RuntimeRegistry::load(p)?,
        None => RuntimeRegistry::builtin(),
    };
    let (backend, _) = LocalRunsc::start(LocalConfig {
        runner_id: a.runner_id,
        base_dir: a.base_dir,
        registry,
        roots: glassbox_sandbox_runner::Roots::Images(glassbox_images::ImageStore::open(a.images)),
        ..LocalConfig::default()
    })
    .await?;
    let cancel = CancellationToken::new();
    let ctrl_c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            ctrl_c.cancel();
        }
    });
    let r = backend.execute(spec, cancel).await?;
    let mut v = serde_json::to_value(&r)?;
    v["stdout"]["text"] = json!(r.stdout.text());
    v["stderr"]["text"] = json!(r.stderr.text());
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(
        if r.outcome == glassbox_events::catalogue::Outcome::Succeeded {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        },
    )
}
