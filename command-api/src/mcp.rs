//! The MCP server (Model Context Protocol, rmcp): agents run code and query the
//! audit trail through tools, mounted at `/mcp` (streamable HTTP).
//!
//! Same identity, same policies, same ledger as REST: `/mcp` sits behind the
//! same authentication middleware (an unauthenticated connection gets the 401
//! problem before any MCP message is read), each tool takes the caller from the
//! request and calls the same [`Core`] functions the REST handlers call — MCP
//! adds no path around a check. Failures are tool errors (`isError: true`)
//! with the problem's text, never a broken session.

use crate::AppState;
use crate::core::{Caller, JobRequest, SecretInput};
use crate::error::ApiError;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::schemars::{self, JsonSchema};
use rmcp::{ErrorData, ServerHandler, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Longest a `run_code` call waits for the job to finish.
pub const MAX_RUN_WAIT: Duration = Duration::from_secs(120);

#[derive(Clone)]
pub struct GlassboxMcp {
    state: AppState,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCodeArgs {
    /// python, node or bash.
    pub language: String,
    /// The program.
    pub code: String,
    /// Standard input for the program.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Program arguments.
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// Names of secrets to inject (as environment variables), if policy allows.
    #[serde(default)]
    pub secrets: Option<Vec<String>>,
    /// Seconds to wait for the result (default 60, at most 120).
    #[serde(default)]
    pub wait_seconds: Option<u64>,
    /// Retrying with the same key never runs the job twice.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

impl RunCodeArgs {
    /// The REST request this call mirrors.
    fn job_request(&self) -> JobRequest {
        JobRequest {
            language: self.language.clone(),
            code: self.code.clone(),
            stdin: self.stdin.clone(),
            args: self.args.clone().unwrap_or_default(),
            env: Default::default(),
            files: Vec::new(),
            dependencies: Vec::new(),
            secrets: self
                .secrets
                .iter()
                .flatten()
                .cloned()
                .map(SecretInput::Name)
                .collect(),
            limits: Default::default(),
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobArgs {
    /// The job ID returned by run_code.
    pub job_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArtifactArgs {
    pub job_id: String,
    /// Path relative to /workspace/out, as list_artifacts shows it.
    pub path: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayArgs {
    /// The stream, e.g. job-<id>.
    pub stream: String,
    /// A ledger position (default: now).
    #[serde(default)]
    pub at: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchArgs {
    /// Only this event type (e.g. job.submitted, policy.evaluated).
    #[serde(default)]
    pub event_type: Option<String>,
    /// Only this stream (e.g. job-<id>).
    #[serde(default)]
    pub stream: Option<String>,
    /// At most this many records (1-100, default 20), newest first.
    #[serde(default)]
    pub limit: Option<u64>,
}

fn caller(parts: &axum::http::request::Parts) -> Result<Caller, ErrorData> {
    parts
        .extensions
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| ErrorData::invalid_request("not authenticated", None))
}

fn tool_error(e: ApiError) -> CallToolResult {
    let p = e.to_problem();
    CallToolResult::error(vec![ContentBlock::text(format!(
        "{} ({}): {}",
        p.title,
        p.code,
        p.detail.unwrap_or_default()
    ))])
}

fn ok_json(v: Value) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(v.to_string())])
}

const TERMINAL_EVENTS: [&str; 4] = [
    "job.completed",
    "job.failed",
    "job.cancelled",
    "job.rejected",
];

#[tool_router]
impl GlassboxMcp {
    pub fn new(state: AppState) -> GlassboxMcp {
        GlassboxMcp { state }
    }

    /// The tool error for a refused action (recorded like REST's), if refused.
    async fn denied(&self, caller: &Caller, action: &str) -> Option<CallToolResult> {
        let tenant = caller.identity.tenant.clone();
        self.state
            .core
            .authorize(caller, action, &tenant)
            .await
            .err()
            .map(tool_error)
    }

    async fn wait_and_collect(
        &self,
        caller: &Caller,
        job_id: &str,
        wait: Duration,
    ) -> Result<Value, ApiError> {
        let tenant = &caller.identity.tenant;
        let deadline = Instant::now() + wait;
        let (status, position) = loop {
            let records = self.state.core.job_records(tenant, job_id).await?;
            let position = records.last().map_or(0, |r| r.record.position);
            if let Some(t) = records
                .iter()
                .rev()
                .map(|r| r.record.event_type.as_str())
                .find(|t| TERMINAL_EVENTS.contains(t))
            {
                break (t.trim_start_matches("job.").to_owned(), position);
            }
            if Instant::now() >= deadline {
                return Ok(
                    json!({"job_id": job_id, "status": "running", "ledger_position": position,
                                 "note": "still running: call get_job later"}),
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let mut out = json!({"job_id": job_id, "status": status, "ledger_position": position});
        if let Ok(r) = self.state.core.result(tenant, job_id).await {
            let f = &r.finished;
            out["outcome"] = serde_json::to_value(f.outcome).unwrap_or(Value::Null);
            out["exit_code"] = f.exit_code.into();
            for (name, o) in [("stdout", &f.stdout), ("stderr", &f.stderr)] {
                if let Some(b) = &o.blob {
                    let bytes = self.state.core.read_blob(job_id, b).await?;
                    out[name] = String::from_utf8_lossy(&bytes).into_owned().into();
                }
            }
            out["artifacts"] = r
                .artifacts
                .iter()
                .map(|a| a.path.clone())
                .collect::<Vec<_>>()
                .into();
        }
        Ok(out)
    }

    #[tool(
        description = "Run a program in a gVisor sandbox and return its output. Every step (policy decisions, execution, result) is recorded in Glassbox's tamper-evident ledger. Returns JSON with job_id, status, outcome, exit_code, stdout, stderr and ledger_position. Refused (as a tool error) when the caller's policy denies the language, limits or secrets."
    )]
    async fn run_code(
        &self,
        Extension(parts): Extension<axum::http::request::Parts>,
        Parameters(a): Parameters<RunCodeArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let caller = caller(&parts)?;
        let request = a.job_request();
        let reply = match self
            .state
            .core
            .submit(&caller, request, a.idempotency_key)
            .await
        {
            Ok(r) => r,
            Err(e) => return Ok(tool_error(e)),
        };
        let r = reply.receipt;
        if r.status != "accepted" {
            return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "job {} was rejected by policy: {}",
                r.job_id,
                r.reasons.join("; ")
            ))]));
        }
        let wait = Duration::from_secs(a.wait_seconds.unwrap_or(60)).min(MAX_RUN_WAIT);
        match self.wait_and_collect(&caller, &r.job_id, wait).await {
            Ok(v) => Ok(ok_json(v)),
            Err(e) => Ok(tool_error(e)),
        }
    }

    #[tool(
        description = "The status and (once finished) the output of a job started with run_code."
    )]
    async fn get_job(
        &self,
        Extension(parts): Extension<axum::http::request::Parts>,
        Parameters(a): Parameters<JobArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let caller = caller(&parts)?;
        if let Some(denied) = self.denied(&caller, "job.read").await {
            return Ok(denied);
        }
        match self
            .wait_and_collect(&caller, &a.job_id, Duration::ZERO)
            .await
        {
            Ok(v) => Ok(ok_json(v)),
            Err(e) => Ok(tool_error(e)),
        }
    }

    #[tool(
        description = "Submit a program to run in a gVisor sandbox without waiting; returns job_id and ledger position. Poll with get_job."
    )]
    async fn submit_job(
        &self,
        Extension(parts): Extension<axum::http::request::Parts>,
        Parameters(a): Parameters<RunCodeArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let caller = caller(&parts)?;
        let request = a.job_request();
        match self
            .state
            .core
            .submit(&caller, request, a.idempotency_key)
            .await
        {
            Ok(reply) if reply.receipt.status == "accepted" => Ok(ok_json(
                serde_json::to_value(&reply.receipt).unwrap_or(Value::Null),
            )),
            Ok(reply) => Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "job {} was rejected by policy: {}",
                reply.receipt.job_id,
                reply.receipt.reasons.join("; ")
            ))])),
            Err(e) => Ok(tool_error(e)),
        }
    }

    #[tool(description = "Cancel a job (at once if it has not started, else its runner stops it).")]
    async fn cancel_job(
        &self,
        Extension(parts): Extension<axum::http::request::Parts>,
        Parameters(a): Parameters<JobArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let caller = caller(&parts)?;
        if let Some(denied) = self.denied(&caller, "job.cancel").await {
            return Ok(denied);
        }
        match self
            .state
            .core
            .cancel(&caller, &a.job_id, Some("cancelled over MCP".into()))
            .await
        {
            Ok(r) => Ok(ok_json(serde_json::to_value(&r).unwrap_or(Value::Null))),
            Err(e) => Ok(tool_error(e)),
        }
    }

    #[tool(description = "Files a finished job left in /workspace/out (path, size, sha256).")]
    async fn list_artifacts(
        &self,
        Extension(parts): Extension<axum::http::request::Parts>,
        Parameters(a): Parameters<JobArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let caller = caller(&parts)?;
        let tenant = caller.identity.tenant.clone();
        if let Some(denied) = self.denied(&caller, "artifact.read").await {
            return Ok(denied);
        }
        match self.state.core.result(&tenant, &a.job_id).await {
            Ok(r) => Ok(ok_json(
                json!({"job_id": a.job_id, "artifacts": r.artifacts.iter().map(|x| json!({
                "path": x.path, "size_bytes": x.blob.size_bytes, "sha256": x.blob.sha256})).collect::<Vec<_>>()}),
            )),
            Err(e) => Ok(tool_error(e)),
        }
    }

    #[tool(description = "One artifact of a finished job: text inline, binary as base64.")]
    async fn read_artifact(
        &self,
        Extension(parts): Extension<axum::http::request::Parts>,
        Parameters(a): Parameters<ArtifactArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let caller = caller(&parts)?;
        let tenant = caller.identity.tenant.clone();
        if let Some(denied) = self.denied(&caller, "artifact.read").await {
            return Ok(denied);
        }
        let r = match self.state.core.result(&tenant, &a.job_id).await {
            Ok(r) => r,
            Err(e) => return Ok(tool_error(e)),
        };
        let Some(art) = r.artifacts.iter().find(|x| x.path == a.path) else {
            return Ok(tool_error(ApiError::NotFound(format!(
                "artifact {} of job {}",
                a.path, a.job_id
            ))));
        };
        match self.state.core.read_blob(&a.job_id, &art.blob).await {
            Ok(bytes) => Ok(match String::from_utf8(bytes) {
                Ok(text) => CallToolResult::success(vec![ContentBlock::text(text)]),
                Err(e) => {
                    use base64::Engine as _;
                    ok_json(json!({"path": a.path, "encoding": "base64",
                        "content": base64::engine::general_purpose::STANDARD.encode(e.into_bytes())}))
                }
            }),
            Err(e) => Ok(tool_error(e)),
        }
    }

    #[tool(
        description = "Verify the whole ledger against its signed checkpoints; returns the first failure if any. Needs an audit role."
    )]
    async fn verify_ledger(
        &self,
        Extension(parts): Extension<axum::http::request::Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        let caller = caller(&parts)?;
        if let Some(denied) = self.denied(&caller, "audit.verify").await {
            return Ok(denied);
        }
        let key = self.state.verifier_key.as_deref();
        match self.state.core.store.verify(key, &[], None, None).await {
            Ok(Ok(r)) => Ok(ok_json(
                json!({"verifies": true, "records": r.records, "root": r.root.to_hex(),
                "checkpoints_checked": r.checkpoints_checked}),
            )),
            Ok(Err(f)) => Ok(ok_json(
                json!({"verifies": false, "position": f.position, "reason": f.problem.to_string()}),
            )),
            Err(e) => Ok(tool_error(ApiError::Internal(e.to_string()))),
        }
    }

    #[tool(
        description = "A stream's state and timeline at a ledger position (e.g. job-<id>), for incident review. Needs an audit role."
    )]
    async fn replay(
        &self,
        Extension(parts): Extension<axum::http::request::Parts>,
        Parameters(a): Parameters<ReplayArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        use glassbox_audit_query::replay::{self, At};
        let caller = caller(&parts)?;
        let tenant = caller.identity.tenant.clone();
        if let Some(denied) = self.denied(&caller, "audit.replay").await {
            return Ok(denied);
        }
        match replay::replay(&self.state.core.store, &a.stream, a.at.map(At::Position)).await {
            Ok(r) if r.tenant == tenant => {
                Ok(ok_json(serde_json::to_value(&r).unwrap_or(Value::Null)))
            }
            Ok(_) | Err(replay::ReplayError::NoStream(_)) => Ok(tool_error(ApiError::NotFound(
                format!("stream {}", a.stream),
            ))),
            Err(e) => Ok(tool_error(ApiError::Internal(e.to_string()))),
        }
    }

    #[tool(
        description = "Search the caller's tenant's audit trail (the ledger records), newest first. Needs an audit role."
    )]
    async fn search_audit(
        &self,
        Extension(parts): Extension<axum::http::request::Parts>,
        Parameters(a): Parameters<SearchArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let caller = caller(&parts)?;
        let tenant = caller.identity.tenant.clone();
        if let Some(denied) = self.denied(&caller, "audit.read").await {
            return Ok(denied);
        }
        let filters = glassbox_audit_query::bundle::Filters {
            tenant: Some(tenant),
            stream: a.stream,
            event_type: a.event_type,
            ..Default::default()
        };
        let limit = a.limit.unwrap_or(20).clamp(1, 100);
        match glassbox_audit_query::search::search(
            &self.state.core.store,
            &filters,
            glassbox_audit_query::search::Order::Desc,
            limit,
            None,
        )
        .await
        {
            Ok(page) => Ok(ok_json(json!({"events": page.events}))),
            Err(e) => Ok(tool_error(ApiError::Invalid(e.to_string()))),
        }
    }
}

#[tool_handler]
impl ServerHandler for GlassboxMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("glassbox", env!("CARGO_PKG_VERSION")))
    }
}
