//! `glassbox mcp`: MCP over stdio for desktop agents that launch tools as
//! processes. It relays each JSON-RPC message to a running Glassbox's `/mcp`
//! endpoint (streamable HTTP) with the configured token, and writes the answers
//! back — so the tools, identity, policies and ledger records are exactly those
//! of the HTTP server; this process holds no logic of its own.

use anyhow::Context as _;
use clap::Args;
use serde_json::{Value, json};
use std::process::ExitCode;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

#[derive(Debug, Args)]
pub struct McpArgs {
    /// The Glassbox API (default: GLASSBOX_API_URL or http://GLASSBOX_HTTP_ADDR).
    #[arg(long, env = "GLASSBOX_API_URL")]
    pub api: Option<String>,
    /// The bearer token the agent acts with (default: a development token).
    #[arg(long, env = "GLASSBOX_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

fn error_reply(id: &Value, message: String) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32001, "message": message}})
}

pub async fn run(args: McpArgs) -> anyhow::Result<ExitCode> {
    let api = args.api.unwrap_or_else(|| {
        format!(
            "http://{}",
            std::env::var("GLASSBOX_HTTP_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into())
        )
    });
    let token = match args.token {
        Some(t) => t,
        None => crate::mint_token(&crate::TokenArgs {
            tenant: "default".into(),
            subject: std::env::var("USER").unwrap_or_else(|_| "developer".into()),
            roles: "submitter".into(),
            app: Some("glassbox-mcp".into()),
            agent: Some("mcp-stdio".into()),
            ttl: 12 * 3600,
        })
        .context("no --token / GLASSBOX_TOKEN: minting a development token")?,
    };
    let url = format!("{}/mcp", api.trim_end_matches('/'));
    let http = reqwest::Client::new();
    let mut session: Option<String> = None;
    let mut protocol: Option<String> = None;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let msg: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                let reply = json!({"jsonrpc": "2.0", "id": null,
                                   "error": {"code": -32700, "message": format!("parse error: {e}")}});
                out.write_all(format!("{reply}\n").as_bytes()).await?;
                out.flush().await?;
                continue;
            }
        };
        let id = msg.get("id").cloned();
        let mut req = http
            .post(&url)
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .json(&msg);
        if let Some(s) = &session {
            req = req.header("mcp-session-id", s);
        }
        if let Some(p) = &protocol {
            req = req.header("mcp-protocol-version", p);
        }
        let replies: Vec<Value> = match req.send().await {
            Err(e) => id
                .iter()
                .map(|id| error_reply(id, format!("Glassbox at {url} is unreachable: {e}")))
                .collect(),
            Ok(resp) => {
                if let Some(s) = resp
                    .headers()
                    .get("mcp-session-id")
                    .and_then(|v| v.to_str().ok())
                {
                    session = Some(s.to_owned());
                }
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                if !status.is_success() {
                    let detail = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v.get("detail").and_then(Value::as_str).map(str::to_owned))
                        .unwrap_or_else(|| text.chars().take(300).collect());
                    id.iter()
                        .map(|id| {
                            error_reply(
                                id,
                                format!("Glassbox refused the request ({status}): {detail}"),
                            )
                        })
                        .collect()
                } else if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    vec![v]
                } else {
                    text.lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
                        .collect()
                }
            }
        };
        for r in replies {
            if let Some(p) = r.pointer("/result/protocolVersion").and_then(Value::as_str) {
                protocol = Some(p.to_owned());
            }
            out.write_all(format!("{r}\n").as_bytes()).await?;
        }
        out.flush().await?;
    }
    Ok(ExitCode::SUCCESS)
}
