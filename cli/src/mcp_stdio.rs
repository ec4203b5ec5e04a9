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

/// The routing headers streamable HTTP asks for since 2026-07-28 (SEP-2243):
/// `Mcp-Method`, and `Mcp-Name` from the member each method names. Earlier
/// versions ignore them. (Glassbox's tools annotate no `Mcp-Param-*` headers.)
fn routing_headers(msg: &Value) -> Vec<(&'static str, String)> {
    let Some(method) = msg.get("method").and_then(Value::as_str) else {
        return Vec::new();
    };
    let mut out = vec![("mcp-method", method.to_owned())];
    let key = match method {
        "tools/call" | "prompts/get" => "name",
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => "uri",
        "tasks/get" | "tasks/update" | "tasks/cancel" => "taskId",
        _ => return out,
    };
    if let Some(name) = msg
        .pointer("/params")
        .and_then(|p| p.get(key))
        .and_then(Value::as_str)
    {
        out.push(("mcp-name", header_value(name)));
    }
    out
}

/// A header value as SEP-2243 encodes it: as is when it is plain visible
/// ASCII, else base64 inside `=?base64?…?=`.
fn header_value(v: &str) -> String {
    use base64::Engine as _;
    let padded = v.starts_with([' ', '\t']) || v.ends_with([' ', '\t']);
    let sentinel = v.starts_with("=?base64?") && v.ends_with("?=");
    if !padded && !sentinel && v.chars().all(|c| (' '..='~').contains(&c)) {
        v.to_owned()
    } else {
        format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode(v)
        )
    }
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
        // 2026-07-28 and later name the version in each request's _meta, which
        // the header must repeat; earlier ones negotiate it once at initialize.
        let per_request = msg
            .pointer("/params/_meta")
            .and_then(|m| m.get("io.modelcontextprotocol/protocolVersion"))
            .and_then(Value::as_str);
        if let Some(p) = per_request.or(protocol.as_deref()) {
            req = req.header("mcp-protocol-version", p);
        }
        for (name, value) in routing_headers(&msg) {
            req = req.header(name, value);
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
                    // Glassbox's refusals are JSON-RPC errors (with the problem
                    // in `data`); pass them on under this request's ID.
                    let body = serde_json::from_str::<Value>(&text).ok();
                    id.iter()
                        .map(|id| match body.as_ref().and_then(|b| b.get("error")) {
                            Some(error) => json!({"jsonrpc": "2.0", "id": id, "error": error}),
                            None => error_reply(
                                id,
                                format!(
                                    "Glassbox refused the request ({status}): {}",
                                    text.chars().take(300).collect::<String>()
                                ),
                            ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_headers_name_the_method_and_its_target() {
        let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": "run_code", "arguments": {}}});
        assert_eq!(
            routing_headers(&call),
            [
                ("mcp-method", "tools/call".into()),
                ("mcp-name", "run_code".into())
            ]
        );
        let read = json!({"method": "resources/read", "params": {"uri": "glassbox://jobs/ü"}});
        assert_eq!(
            routing_headers(&read)[1],
            ("mcp-name", "=?base64?Z2xhc3Nib3g6Ly9qb2JzL8O8?=".into())
        );
        assert_eq!(
            routing_headers(&json!({"method": "tools/list"})),
            [("mcp-method", "tools/list".into())]
        );
        assert!(routing_headers(&json!({"jsonrpc": "2.0", "id": 1, "result": {}})).is_empty());
        assert_eq!(header_value(" padded"), "=?base64?IHBhZGRlZA==?=");
    }
}
