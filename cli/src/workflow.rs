//! `glassbox workflow …`: define workflows from a JSON or YAML file, start
//! runs, follow them and answer approvals, through the REST API.

use crate::session::Client;
use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use glassbox_domain::status::{RunStatus, StepStatus};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct WorkflowArgs {
    /// The API (default: GLASSBOX_API_URL or http://GLASSBOX_HTTP_ADDR).
    #[arg(long, env = "GLASSBOX_API_URL", global = true)]
    pub api: Option<String>,
    /// A bearer token (default: a development token minted locally).
    #[arg(long, env = "GLASSBOX_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Tenant of the minted development token.
    #[arg(long, default_value = "default", global = true)]
    pub tenant: String,
    /// Subject of the minted development token (default: $USER). An approver
    /// must not be the run's submitter.
    #[arg(long, global = true)]
    pub subject: Option<String>,
    /// Roles of the minted development token, comma-separated.
    #[arg(long, default_value = "submitter,approver", global = true)]
    pub roles: String,
    #[command(subcommand)]
    pub command: WorkflowCommand,
}

#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Define a workflow from a JSON or YAML file (a new version unless the
    /// latest is the same document).
    Apply {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// A workflow's versions.
    Versions {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Start a run; prints its ID (with --wait, follows it to the end).
    Run {
        name: String,
        /// The definition version (default: the latest).
        #[arg(long)]
        version: Option<u64>,
        /// A file every step gets: `PATH=LOCAL_FILE` (PATH in the workspace).
        #[arg(long = "input", value_name = "PATH=FILE")]
        inputs: Vec<String>,
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Follow the run until it ends (or waits for an approval).
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// A run's steps and their states (exit code 0 once it succeeded, 1 if it
    /// failed, 3 while it runs or waits).
    Status {
        run: String,
        /// Wait up to this many seconds for it to end or to wait for approval.
        #[arg(long, default_value_t = 0)]
        wait: u64,
        #[arg(long)]
        json: bool,
    },
    /// Grant a step waiting for approval (`--deny` to deny it).
    Approve {
        run: String,
        step: String,
        #[arg(long)]
        deny: bool,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Cancel a run.
    Cancel { run: String },
}

/// A definition file: JSON, or YAML (by extension, or when it is not JSON).
pub fn read_definition(path: &std::path::Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    if !yaml && let Ok(v) = serde_json::from_str::<Value>(&text) {
        return Ok(v);
    }
    serde_yaml::from_str::<Value>(&text)
        .with_context(|| format!("{}: neither JSON nor YAML", path.display()))
}

fn settled(run: &Value) -> bool {
    run["status"] != RunStatus::Running.as_str()
        || run["steps"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["status"] == StepStatus::AwaitingApproval.as_str())
        })
}

/// 0 succeeded, 3 still running (or waiting for an approval), 1 otherwise.
fn exit_code(run: &Value) -> ExitCode {
    match serde_json::from_value::<RunStatus>(run["status"].clone()) {
        Ok(RunStatus::Succeeded) => ExitCode::SUCCESS,
        Ok(RunStatus::Running) => ExitCode::from(3),
        _ => ExitCode::from(1),
    }
}

async fn follow(c: &Client, run: &str, wait: Duration) -> anyhow::Result<Value> {
    let deadline = Instant::now() + wait;
    loop {
        let v = c
            .json(c.http.get(c.url(&format!("/v1/workflow-runs/{run}"))))
            .await?;
        if settled(&v) || Instant::now() >= deadline {
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn print_run(v: &Value) -> ExitCode {
    println!(
        "run {} of {} v{}: {}",
        v["run_id"].as_str().unwrap_or(""),
        v["workflow"].as_str().unwrap_or(""),
        v["version"],
        v["status"].as_str().unwrap_or("")
    );
    for s in v["steps"].as_array().into_iter().flatten() {
        let jobs: Vec<&str> = s["jobs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!(
            "  {:<20} {:<18} attempt {} {}",
            s["name"].as_str().unwrap_or(""),
            s["status"].as_str().unwrap_or(""),
            s["attempt"],
            jobs.last().copied().unwrap_or("")
        );
    }
    exit_code(v)
}

pub async fn run(args: WorkflowArgs) -> anyhow::Result<ExitCode> {
    let c = Client::from_parts(
        args.api.clone(),
        args.token.clone(),
        &args.tenant,
        args.subject.clone(),
        &args.roles,
    )?;
    match args.command {
        WorkflowCommand::Apply { file, json } => {
            let body = read_definition(&file)?;
            let r = c
                .json(c.http.post(c.url("/v1/workflows")).json(&body))
                .await?;
            if json {
                println!("{r}");
            } else {
                println!(
                    "{} v{} {}{}",
                    r["name"].as_str().unwrap_or(""),
                    r["version"],
                    r["digest"].as_str().unwrap_or(""),
                    if r["created"] == true {
                        ""
                    } else {
                        " (unchanged)"
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        WorkflowCommand::Versions { name, json } => {
            let r = c
                .json(c.http.get(c.url(&format!("/v1/workflows/{name}"))))
                .await?;
            if json {
                println!("{r}");
            } else {
                for v in r["versions"].as_array().into_iter().flatten() {
                    println!(
                        "v{} {} {} by {}",
                        v["version"],
                        v["digest"].as_str().unwrap_or(""),
                        v["defined_at"].as_str().unwrap_or(""),
                        v["defined_by"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        WorkflowCommand::Run {
            name,
            version,
            inputs,
            idempotency_key,
            wait,
            json,
        } => {
            use base64::Engine as _;
            let mut files = Vec::new();
            for i in &inputs {
                let Some((path, local)) = i.split_once('=') else {
                    bail!("--input {i}: expected PATH=FILE");
                };
                let bytes = std::fs::read(local).with_context(|| format!("reading {local}"))?;
                files.push(json!({
                    "path": path,
                    "content": base64::engine::general_purpose::STANDARD.encode(bytes),
                    "encoding": "base64",
                }));
            }
            let mut body = json!({"inputs": files});
            if let Some(v) = version {
                body["version"] = v.into();
            }
            let mut req = c
                .http
                .post(c.url(&format!("/v1/workflows/{name}/runs")))
                .json(&body);
            if let Some(k) = &idempotency_key {
                req = req.header("Idempotency-Key", k);
            }
            let r = c.json(req).await?;
            let id = r["run_id"].as_str().unwrap_or("").to_owned();
            if !wait {
                if json {
                    println!("{r}");
                } else {
                    println!("{id}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            let v = follow(&c, &id, Duration::from_secs(3600)).await?;
            if json {
                println!("{v}");
                return Ok(ExitCode::SUCCESS);
            }
            Ok(print_run(&v))
        }
        WorkflowCommand::Status { run, wait, json } => {
            let v = follow(&c, &run, Duration::from_secs(wait)).await?;
            if json {
                println!("{v}");
                return Ok(exit_code(&v));
            }
            Ok(print_run(&v))
        }
        WorkflowCommand::Approve {
            run,
            step,
            deny,
            reason,
        } => {
            let verb = if deny { "deny" } else { "approve" };
            let r = c
                .json(
                    c.http
                        .post(c.url(&format!("/v1/workflow-runs/{run}/steps/{step}/{verb}")))
                        .json(&json!({"reason": reason})),
                )
                .await?;
            println!(
                "{} {}: {} (position {})",
                run,
                step,
                r["outcome"].as_str().unwrap_or(""),
                r["position"]
            );
            Ok(ExitCode::SUCCESS)
        }
        WorkflowCommand::Cancel { run } => {
            let r = c
                .json(
                    c.http
                        .post(c.url(&format!("/v1/workflow-runs/{run}/cancel"))),
                )
                .await?;
            println!("{run}: cancel requested (position {})", r["position"]);
            Ok(ExitCode::SUCCESS)
        }
    }
}
