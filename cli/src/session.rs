//! `glassbox session …`: drive a session from the shell (create, exec, cp,
//! ls, close, repl) through the REST API, like an agent would.

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct SessionArgs {
    /// The API (default: GLASSBOX_API_URL or http://GLASSBOX_HTTP_ADDR).
    #[arg(long, env = "GLASSBOX_API_URL", global = true)]
    pub api: Option<String>,
    /// A bearer token (default: a development token minted locally).
    #[arg(long, env = "GLASSBOX_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Tenant of the minted development token.
    #[arg(long, default_value = "default", global = true)]
    pub tenant: String,
    #[command(subcommand)]
    pub command: SessionCommand,
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Open a session; prints its ID.
    Create {
        /// python, node or bash.
        #[arg(long, default_value = "python")]
        lang: String,
        /// Idle timeout in seconds (the tenant's default otherwise).
        #[arg(long)]
        idle_timeout: Option<u64>,
        /// A destination it may reach through its egress proxy (`host:port`,
        /// `*.domain:port`; repeat for more). Changeable later with `egress`.
        #[arg(long = "egress", value_name = "DEST")]
        egress: Vec<String>,
        /// Print the whole answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Expose a port of a session (service mode); prints the path callers use.
    Expose {
        id: String,
        port: u16,
        /// Only callers with this role (repeat for more).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Only this subject (repeat for more).
        #[arg(long = "subject")]
        subjects: Vec<String>,
        /// Only callers acting for this app (repeat for more).
        #[arg(long = "app")]
        apps: Vec<String>,
    },
    /// Replace a session's egress allowlist (no DEST: no way out).
    Egress {
        id: String,
        #[arg(value_name = "DEST")]
        egress: Vec<String>,
    },
    /// Run code (default) or a shell command (`--command`) in a session.
    Exec {
        id: String,
        /// The code or command; `-` (or nothing) reads it from stdin.
        text: Option<String>,
        #[arg(long)]
        command: bool,
        #[arg(long)]
        timeout_ms: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Copy a file in (`local ID:path`) or out (`ID:path local`).
    Cp { from: String, to: String },
    /// List a directory of the session's workspace.
    Ls {
        id: String,
        #[arg(default_value = "")]
        path: String,
    },
    /// Show a session.
    Show { id: String },
    /// Close a session (its sandbox and workspace are destroyed).
    Close { id: String },
    /// An interactive loop: each line (or block ended by an empty line) is an exec.
    Repl { id: String },
}

pub(crate) struct Client {
    api: String,
    token: String,
    pub(crate) http: reqwest::Client,
}

impl Client {
    fn new(a: &SessionArgs) -> anyhow::Result<Client> {
        Client::from_parts(a.api.clone(), a.token.clone(), &a.tenant, None, "submitter")
    }

    /// A client of `api` (or the default) with `token` (or a development
    /// token minted for `tenant` with `roles`, comma-separated).
    pub(crate) fn from_parts(
        api: Option<String>,
        token: Option<String>,
        tenant: &str,
        subject: Option<String>,
        roles: &str,
    ) -> anyhow::Result<Client> {
        let api = api.unwrap_or_else(|| {
            format!(
                "http://{}",
                std::env::var("GLASSBOX_HTTP_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into())
            )
        });
        let token = match token {
            Some(t) => t,
            None => crate::mint_token(&crate::TokenArgs {
                tenant: tenant.to_owned(),
                subject: subject.unwrap_or_else(|| {
                    std::env::var("USER").unwrap_or_else(|_| "developer".into())
                }),
                roles: roles.into(),
                app: Some("glassbox-cli".into()),
                agent: None,
                ttl: 3600,
            })
            .context("no --token: minting a development token")?,
        };
        Ok(Client {
            api,
            token,
            http: reqwest::Client::new(),
        })
    }

    pub(crate) async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("calling {} (is glassbox dev running?)", self.api))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            bail!(
                "{status}: {}",
                body.get("detail")
                    .and_then(Value::as_str)
                    .or_else(|| body.get("title").and_then(Value::as_str))
                    .unwrap_or("no detail")
            );
        }
        Ok(resp)
    }

    pub(crate) async fn json(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        self.send(req)
            .await?
            .json()
            .await
            .context("reading the answer")
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    async fn exec(&self, id: &str, body: Value) -> anyhow::Result<Value> {
        self.json(
            self.http
                .post(self.url(&format!("/v1/sessions/{id}/exec")))
                .json(&body),
        )
        .await
    }
}

fn print_exec(r: &Value) -> ExitCode {
    for (k, out) in [("stdout", false), ("stderr", true)] {
        if let Some(text) = r[k]["content"].as_str() {
            if out {
                eprint!("{text}");
            } else {
                print!("{text}");
            }
        }
    }
    let _ = std::io::stdout().flush();
    if r["context_reset"] == true {
        eprintln!("[glassbox: the interpreter was restarted; earlier state is gone]");
    }
    match r["outcome"].as_str() {
        Some("succeeded") => ExitCode::SUCCESS,
        Some(o) => {
            if o != "failed" {
                eprintln!("[glassbox: {o}]");
            }
            ExitCode::from(r["exit_code"].as_i64().unwrap_or(1).clamp(1, 255) as u8)
        }
        None => ExitCode::from(1),
    }
}

/// `s` %-escaped for a URL (unreserved characters and `/` kept).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn read_stdin() -> anyhow::Result<String> {
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
    Ok(s)
}

pub async fn run(args: SessionArgs) -> anyhow::Result<ExitCode> {
    let c = Client::new(&args)?;
    match args.command {
        SessionCommand::Create {
            lang,
            idle_timeout,
            egress,
            json,
        } => {
            let mut body = json!({"language": lang, "egress": egress});
            if let Some(t) = idle_timeout {
                body["limits"] = json!({"idle_timeout_secs": t});
            }
            let r = c
                .json(c.http.post(c.url("/v1/sessions")).json(&body))
                .await?;
            if json {
                println!("{r}");
            } else {
                println!(
                    "{}",
                    r["session"]["session_id"].as_str().unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SessionCommand::Exec {
            id,
            text,
            command,
            timeout_ms,
            json,
        } => {
            let text = match text.as_deref() {
                None | Some("-") => read_stdin()?,
                Some(t) => t.to_owned(),
            };
            let mut body = if command {
                json!({"command": text})
            } else {
                json!({"code": text})
            };
            if let Some(t) = timeout_ms {
                body["timeout_ms"] = t.into();
            }
            let r = c.exec(&id, body).await?;
            if json {
                println!("{r}");
                return Ok(ExitCode::SUCCESS);
            }
            Ok(print_exec(&r))
        }
        SessionCommand::Cp { from, to } => {
            match (from.split_once(':'), to.split_once(':')) {
                (None, Some((id, path))) => {
                    let data = std::fs::read(&from).with_context(|| format!("reading {from}"))?;
                    c.json(
                        c.http
                            .put(c.url(&format!("/v1/sessions/{id}/files/{}", escape(path))))
                            .body(data),
                    )
                    .await?;
                }
                (Some((id, path)), None) => {
                    let bytes = c
                        .send(
                            c.http
                                .get(c.url(&format!("/v1/sessions/{id}/files/{}", escape(path)))),
                        )
                        .await?
                        .bytes()
                        .await?;
                    let out = PathBuf::from(&to);
                    std::fs::write(&out, &bytes)
                        .with_context(|| format!("writing {}", out.display()))?;
                }
                _ => bail!("one side must be SESSION_ID:path, the other a local file"),
            }
            Ok(ExitCode::SUCCESS)
        }
        SessionCommand::Ls { id, path } => {
            let r = c
                .json(
                    c.http
                        .get(c.url(&format!("/v1/sessions/{id}/files?path={}", escape(&path)))),
                )
                .await?;
            for e in r["entries"].as_array().into_iter().flatten() {
                println!(
                    "{:<8} {:>10}  {}",
                    e["kind"].as_str().unwrap_or("?"),
                    e["size_bytes"].as_u64().unwrap_or(0),
                    e["name"].as_str().unwrap_or("")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SessionCommand::Show { id } => {
            let r = c
                .json(c.http.get(c.url(&format!("/v1/sessions/{id}"))))
                .await?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(ExitCode::SUCCESS)
        }
        SessionCommand::Expose {
            id,
            port,
            roles,
            subjects,
            apps,
        } => {
            let r = c
                .json(
                    c.http
                        .post(c.url(&format!("/v1/sessions/{id}/ports")))
                        .json(&json!({"port": port, "roles": roles, "subjects": subjects, "apps": apps})),
                )
                .await?;
            println!("{}", r["path"].as_str().unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        SessionCommand::Egress { id, egress } => {
            let r = c
                .json(
                    c.http
                        .patch(c.url(&format!("/v1/sessions/{id}/egress")))
                        .json(&json!({ "egress": egress })),
                )
                .await?;
            for d in r["egress"].as_array().into_iter().flatten() {
                println!("{}", d.as_str().unwrap_or_default());
            }
            eprintln!(
                "session {id}: egress changed (ledger position {})",
                r["position"]
            );
            Ok(ExitCode::SUCCESS)
        }
        SessionCommand::Close { id } => {
            let r = c
                .json(c.http.delete(c.url(&format!("/v1/sessions/{id}"))))
                .await?;
            println!("{}", r["status"].as_str().unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        SessionCommand::Repl { id } => {
            let stdin = std::io::stdin();
            let mut block = String::new();
            eprint!(">>> ");
            for line in stdin.lock().lines() {
                let line = line?;
                let more = !block.is_empty() || line.trim_end().ends_with(':');
                if more && !line.is_empty() {
                    block.push_str(&line);
                    block.push('\n');
                    eprint!("... ");
                    continue;
                }
                if !more {
                    block.push_str(&line);
                }
                if !block.trim().is_empty() {
                    match c.exec(&id, json!({"code": block})).await {
                        Ok(r) => {
                            print_exec(&r);
                        }
                        Err(e) => eprintln!("error: {e:#}"),
                    }
                }
                block.clear();
                eprint!(">>> ");
            }
            eprintln!();
            Ok(ExitCode::SUCCESS)
        }
    }
}
