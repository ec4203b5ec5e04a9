//! `glassbox mcp`: MCP over stdio for desktop agents that launch tools as
//! processes. It relays each JSON-RPC message to a running Glassbox's `/mcp`
//! endpoint (streamable HTTP) with the configured token, and writes the answers
//! back — so the tools, identity, policies and ledger records are exactly those
//! of the HTTP server; this process holds no logic of its own.

use anyhow::Context as _;
use clap::Args;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

#[derive(Debug, Args)]
pub struct McpArgs {
    /// The Glassbox API (default: GLASSBOX_API_URL or http://GLASSBOX_HTTP_ADDR).
    #[arg(long, env = "GLASSBOX_API_URL")]
    pub api: Option<String>,
    /// The bearer token the agent acts with (default: a development token).
    #[arg(long, env = "GLASSBOX_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Longest message (one line) relayed; a longer one is refused here,
    /// without buffering it. Glassbox's own limit may be lower.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_message_bytes: usize,
}

/// One line of input: the message, or how long the refused one was.
enum Line {
    Message(String),
    TooLong(usize),
}

/// Reads the next line, keeping at most `max` bytes of it; `None` at EOF.
async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
) -> std::io::Result<Option<Line>> {
    let (mut buf, mut seen) = (Vec::new(), 0usize);
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            if seen == 0 {
                return Ok(None);
            }
            break;
        }
        let (part, used, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], i + 1, true),
            None => (chunk, chunk.len(), false),
        };
        seen += part.len();
        if seen <= max {
            buf.extend_from_slice(part);
        } else {
            buf = Vec::new();
        }
        r.consume(used);
        if done {
            break;
        }
    }
    Ok(Some(if seen > max {
        Line::TooLong(seen)
    } else {
        Line::Message(String::from_utf8_lossy(&buf).into_owned())
    }))
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

/// Where and as whom messages are relayed, and what the server told us.
#[derive(Clone)]
struct Relay {
    http: reqwest::Client,
    url: String,
    token: String,
    /// The session of a handshake-era connection (`Mcp-Session-Id`).
    session: Arc<Mutex<Option<String>>>,
    /// The version `initialize` negotiated (handshake era only).
    protocol: Arc<Mutex<Option<String>>>,
    /// The client's `initialize`, replayed when the session has expired.
    initialize: Arc<Mutex<Option<Value>>>,
}

impl Relay {
    /// Relays one message; returns the messages to write back. A request
    /// always gets a reply: the server's, or an error saying why there is none.
    async fn forward(&self, msg: &Value) -> Vec<Value> {
        let method = msg.get("method").and_then(Value::as_str);
        let id = msg.get("id").filter(|_| method.is_some());
        let (status, used_session, mut replies) = self.post(msg).await;
        // A handshake-era session the server no longer knows (idle expiry, a
        // restart): open a new one the way the client did, and retry once.
        if status == StatusCode::NOT_FOUND
            && used_session
            && method != Some("initialize")
            && self.reinitialize().await
        {
            replies = self.post(msg).await.2;
        }
        if let Some(id) = id
            && !replies.iter().any(|r| r.get("id") == Some(id))
        {
            replies.push(error_reply(
                id,
                format!(
                    "Glassbox at {} sent no reply to this request (status {status})",
                    self.url
                ),
            ));
        }
        replies
    }

    /// Opens a new session with the client's own `initialize`; true on success.
    async fn reinitialize(&self) -> bool {
        let Some(init) = lock(&self.initialize).clone() else {
            return false;
        };
        *lock(&self.session) = None;
        let (status, _, _) = self.post(&init).await;
        if !status.is_success() {
            return false;
        }
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        self.post(&initialized).await.0.is_success()
    }

    /// One POST to `/mcp`: its status, whether it carried a session, and the
    /// JSON-RPC messages in its answer.
    async fn post(&self, msg: &Value) -> (StatusCode, bool, Vec<Value>) {
        let method = msg.get("method").and_then(Value::as_str);
        // Errors are made up only for requests, never for the client's own
        // replies to the server.
        let id = msg.get("id").filter(|_| method.is_some());
        let url = &self.url;
        let mut req = self
            .http
            .post(url)
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .json(msg);
        let session = if method == Some("initialize") {
            *lock(&self.initialize) = Some(msg.clone());
            None
        } else {
            lock(&self.session).clone()
        };
        let used_session = session.is_some();
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        // 2026-07-28 and later name the version in each request's _meta, which
        // the header must repeat; earlier ones negotiate it once at initialize.
        let per_request = msg
            .pointer("/params/_meta")
            .and_then(|m| m.get("io.modelcontextprotocol/protocolVersion"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let Some(p) = per_request.or_else(|| lock(&self.protocol).clone()) {
            req = req.header("mcp-protocol-version", p);
        }
        for (name, value) in routing_headers(msg) {
            req = req.header(name, value);
        }
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) => {
                let replies = id
                    .iter()
                    .map(|id| error_reply(id, format!("Glassbox at {url} is unreachable: {e}")))
                    .collect();
                return (StatusCode::BAD_GATEWAY, used_session, replies);
            }
        };
        if let Some(s) = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
        {
            *lock(&self.session) = Some(s.to_owned());
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let replies: Vec<Value> = if !status.is_success() {
            // Glassbox's refusals are JSON-RPC errors (with the problem in
            // `data`); pass them on under this request's ID.
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
        };
        if method == Some("initialize")
            && let Some(p) = replies
                .iter()
                .find_map(|r| r.pointer("/result/protocolVersion").and_then(Value::as_str))
        {
            *lock(&self.protocol) = Some(p.to_owned());
        }
        (status, used_session, replies)
    }
}

/// The lock, even if a task panicked while holding it (the values stay valid).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
    let relay = Relay {
        http: reqwest::Client::new(),
        url: format!("{}/mcp", api.trim_end_matches('/')),
        token,
        session: Arc::new(Mutex::new(None)),
        protocol: Arc::new(Mutex::new(None)),
        initialize: Arc::new(Mutex::new(None)),
    };
    // One writer, so concurrent replies never interleave within a line.
    let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
    let writer = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        while let Some(v) = rx.recv().await {
            out.write_all(format!("{v}\n").as_bytes()).await?;
            out.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut tasks = JoinSet::new();
    let mut in_flight: HashMap<String, AbortHandle> = HashMap::new();
    let mut input = BufReader::new(tokio::io::stdin());
    let max = args.max_message_bytes;
    while let Some(line) = next_line(&mut input, max).await? {
        let line = match line {
            Line::Message(l) => l,
            Line::TooLong(n) => {
                let _ = tx.send(json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600,
                    "message": format!("payload_too_large: a {n}-byte message; glassbox mcp relays at most {max} bytes (--max-message-bytes)")}}));
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let msg: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                let _ = tx.send(json!({"jsonrpc": "2.0", "id": null,
                    "error": {"code": -32700, "message": format!("parse error: {e}")}}));
                continue;
            }
        };
        // Requests run concurrently: a long run_code must not hold up other
        // calls, nor a cancellation. The handshake and notifications go in
        // order, since what follows depends on them.
        let method = msg.get("method").and_then(Value::as_str);
        // A cancelled request's POST is dropped here (the 2026-07-28 server
        // has no other way to hear of it) and the notification passed on.
        if method == Some("notifications/cancelled")
            && let Some(handle) = msg
                .pointer("/params/requestId")
                .and_then(|id| in_flight.remove(&id.to_string()))
        {
            handle.abort();
        }
        in_flight.retain(|_, h| !h.is_finished());
        let in_order = msg.get("id").is_none() || matches!(method, Some("initialize"));
        if in_order {
            for r in relay.forward(&msg).await {
                let _ = tx.send(r);
            }
        } else {
            let (relay, tx) = (relay.clone(), tx.clone());
            let key = msg.get("id").map(Value::to_string);
            let handle = tasks.spawn(async move {
                for r in relay.forward(&msg).await {
                    let _ = tx.send(r);
                }
            });
            if let Some(key) = key {
                in_flight.insert(key, handle);
            }
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    drop(tx);
    writer.await.context("stdout writer")??;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_over_the_limit_are_refused_without_being_kept() {
        let input = format!("{}\n{{\"a\":1}}\n{}", "x".repeat(5000), "tail");
        let mut r = tokio::io::BufReader::with_capacity(64, input.as_bytes());
        assert!(matches!(
            next_line(&mut r, 100).await,
            Ok(Some(Line::TooLong(5000)))
        ));
        match next_line(&mut r, 100).await {
            Ok(Some(Line::Message(m))) => assert_eq!(m, "{\"a\":1}"),
            _ => panic!("the next message"),
        }
        match next_line(&mut r, 100).await {
            Ok(Some(Line::Message(m))) => assert_eq!(m, "tail"),
            _ => panic!("a last line without a newline"),
        }
        assert!(matches!(next_line(&mut r, 100).await, Ok(None)));
    }

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
