//! The MCP server (Model Context Protocol, rmcp): agents run code and query the
//! audit trail through tools, and read jobs and artifacts as resources, at
//! `/mcp` (streamable HTTP; `glassbox mcp` relays stdio to it).
//!
//! Same identity, same policies, same ledger as REST: `/mcp` sits behind the
//! same authentication middleware (an unauthenticated connection is refused
//! before any MCP message is read), and each tool or resource read takes the
//! caller from the request and calls the same [`Core`] functions and the same
//! authorization check the REST handler it mirrors calls — MCP adds no path
//! around a check, and a refusal is recorded the same way. Failures are tool
//! errors (`isError: true`) or JSON-RPC errors with the problem's text, never a
//! broken session; nothing internal reaches the message (internal errors say
//! only `internal`).
//!
//! [`Core`]: crate::core::Core

use crate::AppState;
use crate::command::{Command, JobId, Reply, RunId, Scope, SessionId, WorkflowName};
use crate::core::{Caller, JobRequest};
use crate::error::ApiError;
use axum::Router;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use glassbox_domain::JobStatus;
use glassbox_domain::request::{ExecRequest, SessionRequest};
use rmcp::handler::server::common::FromContextPart;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CacheScope, CallToolResult, ContentBlock, Implementation, ListResourceTemplatesResult,
    ListResourcesResult, PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse,
    ReadResourceResult, Resource, ResourceContents, ResourceTemplate, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// Longest a `run_code` call waits for the job to finish.
pub const MAX_RUN_WAIT: Duration = Duration::from_secs(120);

/// Most recent jobs `resources/list` shows (older ones stay readable by URI).
const LISTED_JOBS: u64 = 50;

/// The URI scheme of Glassbox's resources.
const SCHEME: &str = "glassbox://";

#[derive(Clone)]
pub struct GlassboxMcp {
    state: AppState,
}

/// `/mcp`: the MCP service behind REST's authentication (and rate limit).
///
/// Host checking is off: rmcp's default allows only loopback `Host`s (against
/// DNS rebinding of unauthenticated local servers), but every request here
/// must carry a bearer token, which a rebinding page cannot (the identity
/// header of `GLASSBOX_AUTH_BYPASS`, refused outside development and test, is
/// the exception, as it is for REST). The body is
/// limited after authentication (an anonymous client cannot make us buffer).
/// Refusals before the MCP service (401, 413, 429, 503) are JSON-RPC errors
/// carrying the problem, so an MCP client shows the reason, not a bare status.
pub(crate) fn router(state: AppState, shutdown: CancellationToken) -> Router<AppState> {
    let max_body = state.config.max_body_bytes;
    let mcp_state = state.clone();
    let service = StreamableHttpService::new(
        move || Ok(GlassboxMcp::new(mcp_state.clone())),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default()
            .disable_allowed_hosts()
            .with_max_request_body_bytes(max_body)
            .with_cancellation_token(shutdown),
    );
    Router::new()
        .nest_service("/mcp", service)
        .layer(middleware::from_fn_with_state(
            (state.clone(), SessionOwners::default()),
            bind_sessions,
        ))
        .layer(middleware::from_fn_with_state(max_body, limit_body))
        .layer(middleware::from_fn_with_state(
            state,
            crate::auth::authenticate,
        ))
        .layer(middleware::from_fn(refusals_as_jsonrpc))
}

/// Which identity opened each MCP session. A session ID is not a credential:
/// only the (tenant, subject) that opened a session may use or end it.
#[derive(Clone, Default)]
struct SessionOwners(Arc<std::sync::Mutex<std::collections::HashMap<String, Owner>>>);

#[derive(Clone, PartialEq, Eq)]
struct Owner {
    tenant: String,
    subject: String,
    seen: Instant,
}

/// Sessions remembered at most (the oldest are forgotten first; a forgotten
/// session is refused like an unknown one, never opened to others).
const MAX_SESSIONS: usize = 100_000;
const SESSION_HEADER: &str = "mcp-session-id";

impl SessionOwners {
    fn owner(&self, sid: &str) -> Option<Owner> {
        self.0.lock().ok()?.get(sid).cloned()
    }

    fn bind(&self, sid: String, caller: &Caller) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= MAX_SESSIONS {
                let oldest = m.iter().min_by_key(|(_, o)| o.seen).map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    m.remove(&k);
                }
            }
            m.insert(
                sid,
                Owner {
                    tenant: caller.identity.tenant.clone(),
                    subject: caller.identity.subject.clone(),
                    seen: Instant::now(),
                },
            );
        }
    }

    fn forget(&self, sid: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(sid);
        }
    }
}

/// Binds each MCP session to the identity that opened it: a request naming a
/// session opened by another identity is refused as if the session did not
/// exist (404), and recorded as `access.refused`.
async fn bind_sessions(
    State((state, owners)): State<(AppState, SessionOwners)>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    let caller = req.extensions().get::<Caller>().cloned();
    let sid = req
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let deleting = req.method() == axum::http::Method::DELETE;
    let Some(caller) = caller else {
        return next.run(req).await;
    };
    if let Some(sid) = &sid
        && let Some(owner) = owners.owner(sid)
        && (owner.tenant != caller.identity.tenant || owner.subject != caller.identity.subject)
    {
        let e = glassbox_events::store::NewEvent::typed(
            format!("access-{}", caller.identity.tenant),
            &glassbox_events::catalogue::AccessRefused {
                action: if deleting {
                    "mcp.session.close".into()
                } else {
                    "mcp.session.use".into()
                },
                reason: "the MCP session was opened by another identity".into(),
            },
        );
        if let Ok(e) = e
            && let Err(err) = state.core.store.append(caller.append(vec![e])).await
        {
            tracing::error!(error = %err, "could not record a refused MCP session");
        }
        return ApiError::NotFound("MCP session".into()).into_response();
    }
    let resp = next.run(req).await;
    match (&sid, resp.headers().get(SESSION_HEADER)) {
        (None, Some(new)) => {
            if let Ok(new) = new.to_str() {
                owners.bind(new.to_owned(), &caller);
            }
        }
        (Some(sid), _) if deleting && resp.status().is_success() => owners.forget(sid),
        _ => {}
    }
    resp
}

/// JSON-RPC error code for a request Glassbox refused before MCP saw it.
pub const REFUSED: i32 = -32001;

/// How much of an oversized message is read and dropped so that the client,
/// still sending, reads the 413 rather than a reset connection.
const DRAIN_LIMIT: usize = 64 << 20;

/// Buffers an authenticated request's body up to `max_body` bytes; refuses a
/// larger one with 413 (declared by `Content-Length` or found while reading).
async fn limit_body(
    State(max_body): State<usize>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    use futures::StreamExt as _;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut over = declared.is_some_and(|n| n > max_body as u64);
    while !over {
        match stream.next().await {
            Some(Ok(chunk)) if buf.len() + chunk.len() <= max_body => {
                buf.extend_from_slice(&chunk);
            }
            Some(Ok(_)) => over = true,
            Some(Err(_)) => {
                return ApiError::Invalid("the request body could not be read".into())
                    .into_response();
            }
            None => break,
        }
    }
    if over {
        let mut drained = buf.len();
        drop(buf);
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(chunk)) = stream.next().await {
                drained += chunk.len();
                if drained > DRAIN_LIMIT {
                    break;
                }
            }
        })
        .await;
        return ApiError::TooLarge(format!(
            "the MCP message is larger than the limit of {max_body} bytes"
        ))
        .into_response();
    }
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(buf),
    ))
    .await
}

/// Turns a problem+json refusal (401, 403, 413, 429, …) into a JSON-RPC error
/// with the problem as its data, keeping the status and headers.
async fn refusals_as_jsonrpc(req: axum::extract::Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let is_problem = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/problem+json"));
    if !is_problem {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let problem = axum::body::to_bytes(body, 64 * 1024)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .unwrap_or(Value::Null);
    let text = |k: &str| problem.get(k).and_then(Value::as_str).unwrap_or_default();
    let message = format!("{} ({}): {}", text("title"), text("code"), text("detail"));
    let body = json!({"jsonrpc": "2.0", "id": null,
                      "error": {"code": REFUSED, "message": message, "data": problem}});
    parts.headers.remove(CONTENT_LENGTH);
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, axum::body::Body::from(body.to_string()))
}

// ------------------------------------------------------------------ arguments

/// `run_code` / `submit_job` arguments: a `POST /v1/jobs` body — the same
/// [`JobRequest`], with its schema and its rules — and two members of MCP's
/// own. A member sent as `null` is absent (as agents often send them).
#[derive(Debug, Clone)]
pub struct RunCodeArgs {
    pub request: JobRequest,
    /// Seconds to wait for the result (run_code only; default 60, at most 120).
    pub wait_seconds: Option<u64>,
    /// Retrying with the same key returns the first call's job and never runs it twice.
    pub idempotency_key: Option<String>,
}

impl<'de> Deserialize<'de> for RunCodeArgs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut m = serde_json::Map::<String, Value>::deserialize(d)?;
        m.retain(|_, v| !v.is_null());
        let wait_seconds = m
            .remove("wait_seconds")
            .map(serde_json::from_value::<u64>)
            .transpose()
            .map_err(|e| D::Error::custom(format!("wait_seconds: {e}")))?;
        let idempotency_key = m
            .remove("idempotency_key")
            .map(serde_json::from_value::<String>)
            .transpose()
            .map_err(|e| D::Error::custom(format!("idempotency_key: {e}")))?;
        let request = serde_path_to_error::deserialize::<_, JobRequest>(Value::Object(m))
            .map_err(D::Error::custom)?;
        Ok(RunCodeArgs {
            request,
            wait_seconds,
            idempotency_key,
        })
    }
}

impl JsonSchema for RunCodeArgs {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RunCodeArgs".into()
    }

    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut schema = JobRequest::json_schema(g);
        if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
            props.insert(
                "wait_seconds".into(),
                json!({"type": "integer", "minimum": 0,
                       "description": "Seconds to wait for the result (run_code only; default 60, at most 120)."}),
            );
            props.insert(
                "idempotency_key".into(),
                json!({"type": "string", "pattern": crate::command::IdempotencyKey::PATTERN,
                       "description": "Retrying with the same key returns the first call's job and never runs it twice."}),
            );
        }
        schema
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DefineWorkflowArgs {
    /// The workflow: its name and steps (each step a job as for run_code,
    /// with needs, inputs from earlier steps' artifacts, retries, approval).
    pub definition: glassbox_domain::workflow::WorkflowRequest,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunWorkflowArgs {
    /// The workflow's name (as defined with define_workflow).
    pub name: String,
    /// The definition version (default: the latest).
    #[serde(default)]
    pub version: Option<u64>,
    /// Files every step finds in its workspace.
    #[serde(default)]
    pub inputs: Vec<glassbox_domain::request::FileInput>,
    /// Retrying with the same key starts no second run.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowRunArgs {
    /// The run ID returned by run_workflow.
    pub run_id: String,
    /// Wait up to this long (at most 60 s) until the run finishes or a step
    /// waits for an approval.
    #[serde(default)]
    pub wait_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveStepArgs {
    pub run_id: String,
    /// The step waiting for approval.
    pub step: String,
    /// false denies the step (default true: grant).
    #[serde(default)]
    pub grant: Option<bool>,
    /// Why (recorded with the answer).
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelWorkflowRunArgs {
    pub run_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobArgs {
    /// The job ID returned by run_code or submit_job.
    pub job_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArtifactArgs {
    /// The job ID.
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

/// `create_session` arguments: a `POST /v1/sessions` body (the same
/// [`SessionRequest`], its schema and its rules) and an idempotency key.
#[derive(Debug, Clone)]
pub struct CreateSessionArgs {
    pub request: SessionRequest,
    pub idempotency_key: Option<String>,
}

impl<'de> Deserialize<'de> for CreateSessionArgs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut m = serde_json::Map::<String, Value>::deserialize(d)?;
        m.retain(|_, v| !v.is_null());
        let idempotency_key = m
            .remove("idempotency_key")
            .map(serde_json::from_value::<String>)
            .transpose()
            .map_err(|e| D::Error::custom(format!("idempotency_key: {e}")))?;
        let request = serde_path_to_error::deserialize::<_, SessionRequest>(Value::Object(m))
            .map_err(D::Error::custom)?;
        Ok(CreateSessionArgs {
            request,
            idempotency_key,
        })
    }
}

impl JsonSchema for CreateSessionArgs {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "CreateSessionArgs".into()
    }

    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut schema = SessionRequest::json_schema(g);
        if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
            props.insert(
                "idempotency_key".into(),
                json!({"type": "string", "pattern": crate::command::IdempotencyKey::PATTERN,
                       "description": "Retrying with the same key returns the first call's session and never opens two."}),
            );
        }
        schema
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionArgs {
    /// The session ID returned by create_session.
    pub session_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionExecArgs {
    /// The session ID returned by create_session.
    pub session_id: String,
    /// Code for the session's interpreter (python and node keep variables,
    /// imports and functions between calls; a final expression's value is
    /// printed). Exactly one of code and command.
    #[serde(default)]
    pub code: Option<String>,
    /// A shell command run in /workspace. Exactly one of code and command.
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub stdin: Option<String>,
    /// At most this long (the session's exec_timeout_ms caps it).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionFileArgs {
    pub session_id: String,
    /// A path relative to /workspace.
    pub path: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionWriteArgs {
    pub session_id: String,
    /// A path relative to /workspace (parent directories are created).
    pub path: String,
    pub content: String,
    /// How `content` is encoded (default utf8).
    #[serde(default)]
    pub encoding: Option<glassbox_domain::request::Encoding>,
}

// ------------------------------------------------------------------ results
// What the tools answer, typed: each is the tool's `outputSchema` and its
// `structuredContent` (and, as JSON, its text).

/// `run_code` and `get_job`.
#[derive(Debug, serde::Serialize, JsonSchema)]
pub struct JobRun {
    pub job_id: String,
    /// `glassbox://jobs/{job_id}`.
    pub uri: String,
    pub status: JobStatus,
    /// The job stream's last record.
    pub ledger_position: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<glassbox_domain::catalogue::Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_destroyed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// Why the output is not shown (the caller may not read it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Paths of the files the job left in /workspace/out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<Vec<String>>,
}

impl JobRun {
    fn new(job_id: &str, status: JobStatus, ledger_position: u64) -> JobRun {
        JobRun {
            job_id: job_id.to_owned(),
            uri: job_uri(job_id),
            status,
            ledger_position,
            note: None,
            outcome: None,
            exit_code: None,
            data_destroyed: None,
            stdout: None,
            stderr: None,
            output: None,
            artifacts: None,
        }
    }
}

#[derive(Debug, serde::Serialize, JsonSchema)]
pub struct ArtifactLink {
    pub path: String,
    pub size_bytes: u64,
    pub truncated: bool,
    /// `glassbox://jobs/{job_id}/artifacts/{path}`.
    pub uri: String,
}

/// `list_artifacts`.
#[derive(Debug, serde::Serialize, JsonSchema)]
pub struct ArtifactLinks {
    pub job_id: String,
    pub artifacts: Vec<ArtifactLink>,
}

/// A file's content (`read_artifact`, `session_read_file`); it also comes as
/// text or as an embedded blob.
#[derive(Debug, serde::Serialize, JsonSchema)]
pub struct FileContent {
    pub uri: String,
    pub path: String,
    /// The file's whole size.
    pub size_bytes: u64,
    /// Only the first part was read.
    pub truncated: bool,
    pub encoding: crate::command::ContentEncoding,
    pub content: String,
}

impl FileContent {
    fn of(uri: &str, path: &str, bytes: &[u8], size: u64, truncated: bool) -> FileContent {
        let (content, encoding) = match std::str::from_utf8(bytes) {
            Ok(t) => (t.to_owned(), crate::command::ContentEncoding::Utf8),
            Err(_) => (
                base64::engine::general_purpose::STANDARD.encode(bytes),
                crate::command::ContentEncoding::Base64,
            ),
        };
        FileContent {
            uri: uri.to_owned(),
            path: path.to_owned(),
            size_bytes: size,
            truncated,
            encoding,
            content,
        }
    }
}

/// `verify_ledger`.
#[derive(Debug, Default, serde::Serialize, JsonSchema)]
pub struct LedgerVerdict {
    pub verifies: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoints_checked: Option<u64>,
    /// The first record that does not verify.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `search_audit`.
#[derive(Debug, serde::Serialize, JsonSchema)]
pub struct AuditEvents {
    /// Ledger records, newest first.
    pub events: Vec<Value>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionListArgs {
    pub session_id: String,
    /// A directory relative to /workspace (default: the workspace).
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseSessionArgs {
    pub session_id: String,
    /// Why (recorded with the closing).
    #[serde(default)]
    pub reason: Option<String>,
}

/// `expose_port`: the session and the `POST /v1/sessions/{id}/ports` body.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExposePortArgs {
    pub session_id: String,
    #[serde(flatten)]
    pub request: glassbox_domain::request::ExposeRequest,
}

// ------------------------------------------------------------------ helpers

/// The authenticated caller of an MCP request, taken from the HTTP request
/// the authentication middleware let through — an rmcp extractor, so no tool
/// repeats it.
pub struct McpCaller(pub Caller);

fn caller_of(extensions: &rmcp::model::Extensions) -> Result<Caller, ErrorData> {
    extensions
        .get::<axum::http::request::Parts>()
        .and_then(|p| p.extensions.get::<Caller>())
        .cloned()
        .ok_or_else(|| ErrorData::invalid_request("not authenticated", None))
}

impl<C: rmcp::handler::server::common::AsRequestContext> FromContextPart<C> for McpCaller {
    fn from_context_part(context: &mut C) -> Result<Self, ErrorData> {
        caller_of(&context.as_request_context().extensions).map(McpCaller)
    }
}

/// The caller of a request that is not a tool call (resources).
fn context_caller(context: &RequestContext<RoleServer>) -> Result<Caller, ErrorData> {
    caller_of(&context.extensions)
}

/// The problem's text, as an agent reads it (internal details are logged,
/// never shown, as for REST).
fn problem_text(e: &ApiError) -> String {
    if let ApiError::Internal(detail) = e {
        tracing::error!(error = %detail, "MCP request failed");
    }
    let p = e.to_problem();
    format!("{} ({}): {}", p.title, p.code, p.detail.unwrap_or_default())
}

/// A failed tool call: `isError: true` with the problem's text.
fn tool_result(r: Result<CallToolResult, ApiError>) -> CallToolResult {
    r.unwrap_or_else(|e| CallToolResult::error(vec![ContentBlock::text(problem_text(&e))]))
}

/// A failed resource read: the JSON-RPC error for the problem.
fn rpc_error(e: ApiError) -> ErrorData {
    let text = problem_text(&e);
    match e {
        ApiError::NotFound(_) | ApiError::Gone(_) => ErrorData::resource_not_found(text, None),
        ApiError::Internal(_) | ApiError::Unavailable(_) => ErrorData::internal_error(text, None),
        _ => ErrorData::invalid_request(text, None),
    }
}

/// A JSON result: as text (for clients that read text) and as
/// `structuredContent` (described by the tool's `outputSchema`).
fn ok_json(v: Value) -> CallToolResult {
    structured(v)
}

/// A JSON result as text and as `structuredContent`.
fn structured(v: Value) -> CallToolResult {
    let mut r = CallToolResult::success(vec![ContentBlock::text(v.to_string())]);
    r.structured_content = Some(v);
    r
}

fn session_uri(session_id: &str) -> String {
    format!("{SCHEME}sessions/{session_id}")
}

fn session_file_uri(session_id: &str, path: &str) -> String {
    format!("{}/files/{}", session_uri(session_id), escape_path(path))
}

fn job_uri(job_id: &str) -> String {
    format!("{SCHEME}jobs/{job_id}")
}

/// Unreserved characters and '/' as they are, the rest %-escaped, so any
/// file name round-trips through `parse_uri`.
fn escape_path(path: &str) -> String {
    let mut p = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            p.push(char::from(b));
        } else {
            p.push_str(&format!("%{b:02X}"));
        }
    }
    p
}

fn artifact_uri(job_id: &str, path: &str) -> String {
    format!("{SCHEME}jobs/{job_id}/artifacts/{}", escape_path(path))
}

/// What a `glassbox://` URI names.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Session(String),
    SessionFile(String, String),
    Job(String),
    Artifact(String, String),
}

fn parse_uri(uri: &str) -> Option<Target> {
    if let Some(rest) = uri.strip_prefix(SCHEME)?.strip_prefix("sessions/") {
        return match rest.split_once('/') {
            None if !rest.is_empty() => Some(Target::Session(percent_decode(rest)?)),
            Some((id, path)) if !id.is_empty() => match path.strip_prefix("files/") {
                Some(p) if !p.is_empty() => {
                    Some(Target::SessionFile(percent_decode(id)?, percent_decode(p)?))
                }
                _ => None,
            },
            _ => None,
        };
    }
    let rest = uri.strip_prefix(SCHEME)?.strip_prefix("jobs/")?;
    match rest.split_once('/') {
        None if !rest.is_empty() => Some(Target::Job(percent_decode(rest)?)),
        Some((id, path)) if !id.is_empty() => match path.strip_prefix("artifacts/") {
            Some(p) if !p.is_empty() => {
                Some(Target::Artifact(percent_decode(id)?, percent_decode(p)?))
            }
            _ => None,
        },
        _ => None,
    }
}

/// `%XX` escapes decoded (a client expanding `{path}` per RFC 6570 escapes
/// `/`); `None` for a malformed escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A best guess from the file name; `None` leaves it to the content.
fn mime_type(path: &str) -> Option<&'static str> {
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase())?;
    Some(match ext.as_str() {
        "json" => "application/json",
        "csv" => "text/csv",
        "txt" | "log" => "text/plain",
        "md" => "text/markdown",
        "html" | "htm" => "text/html",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        _ => return None,
    })
}

/// An artifact's bytes as resource contents: text when it is UTF-8, else a
/// base64 blob.
fn artifact_contents(uri: String, path: &str, bytes: Vec<u8>) -> ResourceContents {
    match String::from_utf8(bytes) {
        Ok(text) => ResourceContents::text(text, uri)
            .with_mime_type(mime_type(path).unwrap_or("text/plain")),
        Err(e) => ResourceContents::blob(
            base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
            uri,
        )
        .with_mime_type(mime_type(path).unwrap_or("application/octet-stream")),
    }
}

// ------------------------------------------------------------------ the calls

impl GlassboxMcp {
    pub fn new(state: AppState) -> GlassboxMcp {
        GlassboxMcp { state }
    }

    /// Runs a command through the core's one door (authorization included).
    async fn run(&self, caller: &Caller, command: Command) -> Result<Reply, ApiError> {
        let span = tracing::info_span!("mcp.call", command = command.name());
        self.state
            .core
            .dispatch(caller, command)
            .instrument(span)
            .await
    }

    /// The job now (from the ledger, not the read models: the answer does not
    /// wait for the projector, and its position is the job's last record),
    /// waiting up to `wait` for it to end; with its output once it has.
    async fn wait_and_collect(
        &self,
        caller: &Caller,
        job_id: &str,
        wait: Duration,
    ) -> Result<Value, ApiError> {
        let run = self.collect(caller, job_id, wait).await?;
        serde_json::to_value(&run).map_err(|e| ApiError::Internal(e.to_string()))
    }

    async fn collect(
        &self,
        caller: &Caller,
        job_id: &str,
        wait: Duration,
    ) -> Result<JobRun, ApiError> {
        let deadline = Instant::now() + wait;
        let job = loop {
            let Reply::Job(v) = self
                .run(
                    caller,
                    Command::JobNow {
                        job: JobId::parse(job_id)?,
                    },
                )
                .await?
            else {
                return Err(ApiError::Internal("unexpected reply".into()));
            };
            if v.status.is_terminal() {
                break v;
            }
            if Instant::now() >= deadline {
                return Ok(JobRun {
                    note: Some("still running: call get_job later".into()),
                    ..JobRun::new(job_id, JobStatus::Running, v.last_position)
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let mut out = JobRun::new(job_id, job.status, job.last_position);
        let Some(outcome) = job.outcome else {
            return Ok(out);
        };
        out.outcome = Some(outcome);
        out.exit_code = job.exit_code;
        if job.data_destroyed {
            out.data_destroyed = Some(true);
            return Ok(out);
        }
        // The output is what REST serves under artifact.read: the same check
        // (and a refusal recorded the same way), or no output.
        let job_ref = JobId::parse(job_id)?;
        match self
            .run(
                caller,
                Command::JobOutput {
                    job: job_ref.clone(),
                },
            )
            .await
        {
            Ok(Reply::Output(o)) => {
                out.stdout = Some(o.stdout.content);
                out.stderr = Some(o.stderr.content);
            }
            Ok(_) => return Err(ApiError::Internal("unexpected reply".into())),
            Err(e @ ApiError::Forbidden(_)) => {
                out.output = Some(problem_text(&e));
                return Ok(out);
            }
            Err(e) => return Err(e),
        }
        if let Reply::Artifacts(a) = self
            .run(caller, Command::ListArtifacts { job: job_ref })
            .await?
        {
            out.artifacts = Some(a.artifacts.into_iter().map(|a| a.path).collect());
        }
        Ok(out)
    }

    async fn submit(
        &self,
        caller: &Caller,
        a: RunCodeArgs,
    ) -> Result<crate::core::Receipt, ApiError> {
        let request = a.request;
        if let Some(k) = &a.idempotency_key {
            crate::command::IdempotencyKey::parse("idempotency_key", k)?;
        }
        let Reply::Submitted(reply) = self
            .run(
                caller,
                Command::SubmitJob {
                    request,
                    idempotency_key: a.idempotency_key,
                },
            )
            .await?
        else {
            return Err(ApiError::Internal("unexpected reply".into()));
        };
        let r = reply.receipt;
        if r.status != JobStatus::Accepted {
            return Err(ApiError::Forbidden(vec![format!(
                "job {} was rejected by policy: {}",
                r.job_id,
                r.reasons.join("; ")
            )]));
        }
        Ok(r)
    }

    async fn artifact(
        &self,
        caller: &Caller,
        job_id: &str,
        path: &str,
    ) -> Result<Vec<u8>, ApiError> {
        match self
            .run(
                caller,
                Command::ReadArtifact {
                    job: JobId::parse(job_id)?,
                    path: path.to_owned(),
                },
            )
            .await?
        {
            Reply::ArtifactBytes(b) => Ok(b),
            _ => Err(ApiError::Internal("unexpected reply".into())),
        }
    }

    async fn read_target(
        &self,
        caller: &Caller,
        uri: &str,
    ) -> Result<ReadResourceResult, ApiError> {
        match parse_uri(uri) {
            Some(Target::Session(id)) => {
                let s = self
                    .state
                    .core
                    .session_now(&caller.identity.tenant, SessionId::parse(&id)?.as_str())
                    .await?;
                self.state
                    .core
                    .authorize(caller, "session.use", &caller.identity.tenant)
                    .await?;
                let text = serde_json::to_string(&s.view())
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
                Ok(ReadResourceResult::new(vec![
                    ResourceContents::text(text, uri).with_mime_type("application/json"),
                ]))
            }
            Some(Target::SessionFile(id, path)) => {
                let Reply::FileBytes(f) = self
                    .run(
                        caller,
                        Command::ReadFile {
                            session: SessionId::parse(&id)?,
                            path: path.clone(),
                        },
                    )
                    .await?
                else {
                    return Err(ApiError::Internal("unexpected reply".into()));
                };
                Ok(ReadResourceResult::new(vec![artifact_contents(
                    uri.to_owned(),
                    &path,
                    f.data,
                )]))
            }
            Some(Target::Job(id)) => {
                let Reply::Job(job) = self
                    .run(
                        caller,
                        Command::GetJob {
                            job: JobId::parse(&id)?,
                            wait: Duration::ZERO,
                            min_position: None,
                        },
                    )
                    .await?
                else {
                    return Err(ApiError::Internal("unexpected reply".into()));
                };
                let text =
                    serde_json::to_string(&job).map_err(|e| ApiError::Internal(e.to_string()))?;
                Ok(ReadResourceResult::new(vec![
                    ResourceContents::text(text, uri).with_mime_type("application/json"),
                ]))
            }
            Some(Target::Artifact(id, path)) => {
                let bytes = self.artifact(caller, &id, &path).await?;
                Ok(ReadResourceResult::new(vec![artifact_contents(
                    uri.to_owned(),
                    &path,
                    bytes,
                )]))
            }
            None => Err(ApiError::NotFound(format!(
                "resource {uri} (Glassbox's URIs are {SCHEME}jobs/{{job_id}}, \
                 {SCHEME}jobs/{{job_id}}/artifacts/{{path}} and {SCHEME}sessions/{{session_id}})"
            ))),
        }
    }

    async fn recent_jobs(&self, caller: &Caller) -> Result<Vec<Resource>, ApiError> {
        let Reply::Jobs(list) = self
            .run(
                caller,
                Command::ListJobs {
                    status: None,
                    language: None,
                    limit: LISTED_JOBS,
                    cursor: None,
                    min_position: None,
                },
            )
            .await?
        else {
            return Err(ApiError::Internal("unexpected reply".into()));
        };
        Ok(list
            .jobs
            .into_iter()
            .map(|j| {
                Resource::new(job_uri(&j.job_id), format!("job {}", j.job_id))
                    .with_description(format!("A {} job, {}", j.language, j.status))
                    .with_mime_type("application/json")
            })
            .collect())
    }
}

#[tool_router]
impl GlassboxMcp {
    #[tool(
        description = "Run a program in a gVisor sandbox and return its output. Every step (policy decisions, execution, result) is recorded in Glassbox's tamper-evident ledger. Returns JSON with job_id, uri, status, outcome, exit_code, stdout, stderr, artifacts (files the program wrote to /workspace/out) and ledger_position. Refused (as a tool error) when the caller's policy denies the language, limits, dependencies or secrets. If it is still running after wait_seconds, poll get_job.",
        output_schema = rmcp::handler::server::common::schema_for_output::<JobRun>()
    )]
    async fn run_code(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(a): Parameters<RunCodeArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let wait = Duration::from_secs(a.wait_seconds.unwrap_or(60)).min(MAX_RUN_WAIT);
        Ok(tool_result(
            async {
                let r = self.submit(&caller, a).await?;
                Ok(ok_json(
                    self.wait_and_collect(&caller, &r.job_id, wait).await?,
                ))
            }
            .await,
        ))
    }

    #[tool(
        description = "The status of a job and, once it has finished, its output (stdout, stderr, exit_code, artifacts).",
        output_schema = rmcp::handler::server::common::schema_for_output::<JobRun>()
    )]
    async fn get_job(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(a): Parameters<JobArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(tool_result(
            async {
                Ok(ok_json(
                    self.wait_and_collect(&caller, &a.job_id, Duration::ZERO)
                        .await?,
                ))
            }
            .await,
        ))
    }

    #[tool(
        description = "Submit a program to run in a gVisor sandbox without waiting (same arguments as run_code); returns job_id, the policy decisions and the ledger position. Poll with get_job.",
        output_schema = rmcp::handler::server::common::schema_for_output::<crate::core::Receipt>()
    )]
    async fn submit_job(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(a): Parameters<RunCodeArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(tool_result(
            async {
                let r = self.submit(&caller, a).await?;
                let mut v = serde_json::to_value(&r).unwrap_or(Value::Null);
                v["uri"] = job_uri(&r.job_id).into();
                Ok(ok_json(v))
            }
            .await,
        ))
    }

    #[tool(
        description = "Cancel a job (at once if it has not started, else its runner stops it).",
        output_schema = rmcp::handler::server::common::schema_for_output::<crate::core::CancelReply>()
    )]
    async fn cancel_job(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(a): Parameters<JobArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(tool_result(
            async {
                let reply = self
                    .run(
                        &caller,
                        Command::CancelJob {
                            job: JobId::parse(&a.job_id)?,
                            reason: Some("cancelled over MCP".into()),
                        },
                    )
                    .await?;
                match reply {
                    Reply::Cancelled(r) => {
                        Ok(ok_json(serde_json::to_value(&r).unwrap_or(Value::Null)))
                    }
                    _ => Err(ApiError::Internal("unexpected reply".into())),
                }
            }
            .await,
        ))
    }

    #[tool(
        description = "The files a finished job left in /workspace/out: path, size, whether it was truncated, and a glassbox:// URI to read it by.",
        output_schema = rmcp::handler::server::common::schema_for_output::<ArtifactLinks>()
    )]
    async fn list_artifacts(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(a): Parameters<JobArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(tool_result(
            async {
                let Reply::Artifacts(list) = self
                    .run(
                        &caller,
                        Command::ListArtifacts {
                            job: JobId::parse(&a.job_id)?,
                        },
                    )
                    .await?
                else {
                    return Err(ApiError::Internal("unexpected reply".into()));
                };
                let links = ArtifactLinks {
                    artifacts: list
                        .artifacts
                        .iter()
                        .map(|x| ArtifactLink {
                            path: x.path.clone(),
                            size_bytes: x.size_bytes,
                            truncated: x.truncated,
                            uri: artifact_uri(&a.job_id, &x.path),
                        })
                        .collect(),
                    job_id: a.job_id.clone(),
                };
                Ok(ok_json(serde_json::to_value(&links).unwrap_or(Value::Null)))
            }
            .await,
        ))
    }

    #[tool(
        description = "One artifact of a finished job: UTF-8 text inline, anything else as an embedded resource (base64 blob with its MIME type).",
        output_schema = rmcp::handler::server::common::schema_for_output::<FileContent>()
    )]
    async fn read_artifact(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(a): Parameters<ArtifactArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(tool_result(
            async {
                let bytes = self.artifact(&caller, &a.job_id, &a.path).await?;
                let uri = artifact_uri(&a.job_id, &a.path);
                let structured = FileContent::of(&uri, &a.path, &bytes, bytes.len() as u64, false);
                let mut r =
                    CallToolResult::success(vec![match artifact_contents(uri, &a.path, bytes) {
                        ResourceContents::TextResourceContents { text, .. } => {
                            ContentBlock::text(text)
                        }
                        blob => ContentBlock::resource(blob),
                    }]);
                r.structured_content = serde_json::to_value(&structured).ok();
                Ok(r)
            }
            .await,
        ))
    }

    #[tool(
        description = "Open a session: a gVisor sandbox that stays up between calls, so variables, imports and files persist from one session_exec to the next (python and node keep an interpreter running). Same rules as run_code (language, env, dependencies installed once, secrets, limits incl. idle_timeout_secs and max_lifetime_secs). Returns the session (session_id, status, limits, expires_at) and the policy decisions; close it with close_session when done.",
        output_schema = rmcp::handler::server::common::schema_for_output::<crate::sessions::SessionReceipt>()
    )]
    async fn create_session(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(a): Parameters<CreateSessionArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(tool_result(
            async {
                let Reply::SessionOpened(r) = self
                    .run(
                        &caller,
                        Command::OpenSession {
                            request: a.request,
                            idempotency_key: a.idempotency_key,
                        },
                    )
                    .await?
                else {
                    return Err(ApiError::Internal("unexpected reply".into()));
                };
                if r.session.status.is_terminal() {
                    return Err(ApiError::Forbidden(if r.reasons.is_empty() {
                        vec![format!("the session is {}", r.session.status)]
                    } else {
                        r.reasons.clone()
                    }));
                }
                let mut v = serde_json::to_value(&*r).unwrap_or(Value::Null);
                v["uri"] = session_uri(&r.session.session_id).into();
                Ok(structured(v))
            }
            .await,
        ))
    }

    #[tool(
        description = "Run code (in the session's interpreter: state persists between calls; a final expression's value is printed) or a shell command (in /workspace) in an open session. Returns outcome, exit_code, stdout, stderr, wall_ms and context_reset (true when a timeout or crash restarted the interpreter and earlier state is gone).",
        output_schema = rmcp::handler::server::common::schema_for_output::<crate::sessions::ExecResult>()
    )]
    async fn session_exec(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(a): Parameters<SessionExecArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(tool_result(
            async {
                let request = ExecRequest {
                    code: a.code,
                    command: a.command,
                    stdin: a.stdin,
                    timeout_ms: a.timeout_ms,
                };
                let Reply::ExecResult(r) = self
                    .run(
                        &caller,
                        Command::Exec {
                            session: SessionId::parse(&a.session_id)?,
                            request,
                            stream: false,
                        },
                    )
                    .await?
                else {
                    return Err(ApiError::Internal("unexpected reply".into()));
                };
                Ok(structured(serde_json::to_value(&*r).unwrap_or(Value::Null)))
            }
            .await,
        ))
    }

    #[tool(
        description = "Write a file into an open session's /workspace (content as UTF-8 text, or base64 with encoding: base64).",
        output_schema = rmcp::handler::server::common::schema_for_output::<crate::sessions::FileWritten>()
    )]
    async fn session_write_file(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(a): Parameters<SessionWriteArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(tool_result(
            async {
                let data = match a
                    .encoding
                    .unwrap_or(glassbox_domain::request::Encoding::Utf8)
                {
                    glassbox_domain::request::Encoding::Utf8 => a.content.into_bytes(),
                    glassbox_domain::request::Encoding::Base64 => {
                        base64::engine::general_purpose::STANDARD
                            .decode(a.content.as_bytes())
                            .map_err(|_| ApiError::Invalid("content: not base64".into()))?
                    }
                };
                let Reply::FileWritten(r) = self
                    .run(
                        &caller,
                        Command::WriteFile {
                            session: SessionId::parse(&a.session_id)?,
                            path: a.path,
                            data,
                        },
                    )
                    .await?
                else {
                    return Err(ApiError::Internal("unexpected reply".into()));
                };
                Ok(structured(serde_json::to_value(&r).unwrap_or(Value::Null)))
            }
            .await,
        ))
    }

    #[tool(
        description = "Read a file from an open session's /workspace: UTF-8 text inline, anything else as an embedded resource (base64 blob).",
        output_schema = rmcp::handler::server::common::schema_for_output::<FileContent>()
    )]
    async fn session_read_file(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(a): Parameters<SessionFileArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(tool_result(
            async {
                let Reply::FileBytes(f) = self
                    .run(
                        &caller,
                        Command::ReadFile {
                            session: SessionId::parse(&a.session_id)?,
                            path: a.path.clone(),
                        },
                    )
                    .await?
                else {
                    return Err(ApiError::Internal("unexpected reply".into()));
                };
                let uri = session_file_uri(&a.session_id, &a.path);
                let structured = FileContent::of(&uri, &a.path, &f.data, f.size, f.truncated);
                let mut r =
                    CallToolResult::success(vec![match artifact_contents(uri, &a.path, f.data) {
                        ResourceContents::TextResourceContents { text, .. } => {
                            ContentBlock::text(text)
                        }
                        blob => ContentBlock::resource(blob),
                    }]);
                r.structured_content = serde_json::to_value(&structured).ok();
                Ok(r)
            }
            .await,
        ))
    }

    #[tool(
        description = "List a directory of an open session's /workspace: name, kind, size.",
        output_schema = rmcp::handler::server::common::schema_for_output::<crate::sessions::FileListing>()
    )]
    async fn session_list_files(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(a): Parameters<SessionListArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(tool_result(
            async {
                let Reply::Files(r) = self
                    .run(
                        &caller,
                        Command::ListFiles {
                            session: SessionId::parse(&a.session_id)?,
                            path: a.path.unwrap_or_default(),
                        },
                    )
                    .await?
                else {
                    return Err(ApiError::Internal("unexpected reply".into()));
                };
                Ok(structured(serde_json::to_value(&r).unwrap_or(Value::Null)))
            }
            .await,
        ))
    }

    #[tool(
        description = "Close a session: its sandbox and workspace are destroyed (scrubbed) and the closing is recorded.",
        output_schema = rmcp::handler::server::common::schema_for_output::<crate::sessions::SessionClosed>()
    )]
    async fn close_session(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(a): Parameters<CloseSessionArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(tool_result(
            async {
                let Reply::SessionClosed(r) = self
                    .run(
                        &caller,
                        Command::CloseSession {
                            session: SessionId::parse(&a.session_id)?,
                            reason: a.reason,
                        },
                    )
                    .await?
                else {
                    return Err(ApiError::Internal("unexpected reply".into()));
                };
                Ok(structured(serde_json::to_value(&r).unwrap_or(Value::Null)))
            }
            .await,
        ))
    }

    #[tool(
        description = "Expose a port of an active session (service mode): callers of the tenant (or only the roles, subjects or apps named) reach whatever the session's program serves on its 127.0.0.1:PORT at /v1/sessions/{id}/ports/{port}/ with their own token; glassbox.services decides each request and every request is recorded.",
        output_schema = rmcp::handler::server::common::schema_for_output::<crate::sessions::Exposed>()
    )]
    async fn expose_port(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(a): Parameters<ExposePortArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(tool_result(
            async {
                let Reply::Exposed(r) = self
                    .run(
                        &caller,
                        Command::ExposePort {
                            session: SessionId::parse(&a.session_id)?,
                            request: a.request,
                        },
                    )
                    .await?
                else {
                    return Err(ApiError::Internal("unexpected reply".into()));
                };
                Ok(structured(serde_json::to_value(&r).unwrap_or(Value::Null)))
            }
            .await,
        ))
    }

    #[tool(
        description = "Define (or update) a workflow: named steps, each a job as for run_code, with needs (steps that must succeed first), inputs taken from earlier steps' artifacts (from: \"STEP:out/PATH\"), retries and an optional approval gate. Stored by content digest as a new version; refused with the reason if invalid (cycle, unknown step, input from a step that does not run before).",
        output_schema = rmcp::handler::server::common::schema_for_output::<crate::workflows::WorkflowDefinedReply>()
    )]
    async fn define_workflow(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(a): Parameters<DefineWorkflowArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(tool_result(
            async {
                let Reply::WorkflowDefined(r) = self
                    .run(
                        &caller,
                        Command::DefineWorkflow {
                            request: a.definition,
                        },
                    )
                    .await?
                else {
                    return Err(ApiError::Internal("unexpected reply".into()));
                };
                Ok(structured(serde_json::to_value(&r).unwrap_or(Value::Null)))
            }
            .await,
        ))
    }

    #[tool(
        description = "Start a run of a workflow. Steps become jobs when what they need has succeeded; steps the policy gates wait for approve_step by someone else. Returns run_id, the gated steps and the policy decisions; follow it with get_workflow_run.",
        output_schema = rmcp::handler::server::common::schema_for_output::<crate::workflows::RunReceipt>()
    )]
    async fn run_workflow(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(a): Parameters<RunWorkflowArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(tool_result(
            async {
                let idempotency_key = match a.idempotency_key {
                    Some(k) => Some(
                        crate::command::IdempotencyKey::parse("idempotency_key", &k)?.into_inner(),
                    ),
                    None => None,
                };
                let Reply::RunStarted(r) = self
                    .run(
                        &caller,
                        Command::StartRun {
                            name: WorkflowName::parse(&a.name)?,
                            request: glassbox_domain::workflow::RunRequest {
                                version: a.version,
                                inputs: a.inputs,
                            },
                            idempotency_key,
                        },
                    )
                    .await?
                else {
                    return Err(ApiError::Internal("unexpected reply".into()));
                };
                Ok(structured(
                    serde_json::to_value(&r.receipt).unwrap_or(Value::Null),
                ))
            }
            .await,
        ))
    }

    #[tool(
        description = "A workflow run with its step graph: each step's status (waiting, awaiting_approval, running, succeeded, failed, skipped, denied, cancelled), attempts and job IDs (read their output with get_job). With wait_seconds, waits until the run finishes or a step waits for approval.",
        output_schema = rmcp::handler::server::common::schema_for_output::<crate::workflows::RunView>()
    )]
    async fn get_workflow_run(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(a): Parameters<WorkflowRunArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let wait = Duration::from_secs(a.wait_seconds.unwrap_or(0).min(60));
        Ok(tool_result(
            async {
                let run = RunId::parse(&a.run_id)?;
                let deadline = Instant::now() + wait;
                loop {
                    let Reply::Run(v) = self
                        .run(&caller, Command::GetRun { run: run.clone() })
                        .await?
                    else {
                        return Err(ApiError::Internal("unexpected reply".into()));
                    };
                    let settled = v.status != glassbox_domain::status::RunStatus::Running
                        || v.steps.iter().any(|s| {
                            s.status == glassbox_domain::status::StepStatus::AwaitingApproval
                        });
                    if settled || Instant::now() >= deadline {
                        return Ok(structured(serde_json::to_value(&v).unwrap_or(Value::Null)));
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            .await,
        ))
    }

    #[tool(
        description = "Grant (or, with grant=false, deny) a workflow step that waits for approval. Only someone the tenant's policy names as approver, and never the run's submitter, may answer; a refused attempt is recorded and returned as an error.",
        output_schema = rmcp::handler::server::common::schema_for_output::<crate::workflows::ApprovalReply>()
    )]
    async fn approve_step(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(a): Parameters<ApproveStepArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(tool_result(
            async {
                crate::api::check_reason(a.reason.as_deref())?;
                let Reply::Approval(r) = self
                    .run(
                        &caller,
                        Command::AnswerApproval {
                            run: RunId::parse(&a.run_id)?,
                            step: a.step,
                            grant: a.grant.unwrap_or(true),
                            reason: a.reason,
                        },
                    )
                    .await?
                else {
                    return Err(ApiError::Internal("unexpected reply".into()));
                };
                Ok(structured(serde_json::to_value(&r).unwrap_or(Value::Null)))
            }
            .await,
        ))
    }

    #[tool(
        description = "Cancel a workflow run: running steps' jobs are cancelled, steps not started are skipped.",
        output_schema = rmcp::handler::server::common::schema_for_output::<crate::workflows::RunCancelReply>()
    )]
    async fn cancel_workflow_run(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(a): Parameters<CancelWorkflowRunArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(tool_result(
            async {
                let Reply::RunCancelled(r) = self
                    .run(
                        &caller,
                        Command::CancelRun {
                            run: RunId::parse(&a.run_id)?,
                        },
                    )
                    .await?
                else {
                    return Err(ApiError::Internal("unexpected reply".into()));
                };
                Ok(structured(serde_json::to_value(&r).unwrap_or(Value::Null)))
            }
            .await,
        ))
    }

    #[tool(
        description = "Verify the whole ledger against its signed checkpoints; returns the first failure if any. Needs an audit role.",
        output_schema = rmcp::handler::server::common::schema_for_output::<LedgerVerdict>()
    )]
    async fn verify_ledger(
        &self,
        McpCaller(caller): McpCaller,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(tool_result(
            async {
                match self
                    .run(
                        &caller,
                        Command::VerifyLedger {
                            from: None,
                            to: None,
                        },
                    )
                    .await?
                {
                    Reply::Verified(v) => {
                        let verdict = match (v.report, v.failure) {
                            (Some(r), _) => LedgerVerdict {
                                verifies: true,
                                records: r["records"].as_u64(),
                                root: r["root"].as_str().map(str::to_owned),
                                checkpoints_checked: r["checkpoints_checked"].as_u64(),
                                ..LedgerVerdict::default()
                            },
                            (_, Some(f)) => LedgerVerdict {
                                verifies: false,
                                position: Some(f.position),
                                reason: Some(f.reason),
                                ..LedgerVerdict::default()
                            },
                            _ => LedgerVerdict {
                                verifies: v.verifies,
                                ..LedgerVerdict::default()
                            },
                        };
                        Ok(ok_json(
                            serde_json::to_value(&verdict).unwrap_or(Value::Null),
                        ))
                    }
                    _ => Err(ApiError::Internal("unexpected reply".into())),
                }
            }
            .await,
        ))
    }

    #[tool(
        description = "A stream's state and timeline at a ledger position (e.g. job-<id>), for incident review. Needs an audit role.",
        output_schema = rmcp::handler::server::common::schema_for_output::<serde_json::Map<String, Value>>()
    )]
    async fn replay(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(a): Parameters<ReplayArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        use glassbox_audit_query::replay::At;
        Ok(tool_result(
            async {
                match self
                    .run(
                        &caller,
                        Command::Replay {
                            stream: a.stream.clone(),
                            at: a.at.map(At::Position),
                            reevaluate: false,
                        },
                    )
                    .await?
                {
                    Reply::Replayed(v) => Ok(ok_json(v)),
                    _ => Err(ApiError::Internal("unexpected reply".into())),
                }
            }
            .await,
        ))
    }

    #[tool(
        description = "Search the caller's tenant's audit trail (the ledger records), newest first. Needs an audit role.",
        output_schema = rmcp::handler::server::common::schema_for_output::<AuditEvents>()
    )]
    async fn search_audit(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(a): Parameters<SearchArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(tool_result(
            async {
                let command = Command::SearchAudit {
                    scope: Scope::Own,
                    filters: glassbox_audit_query::bundle::Filters {
                        stream: a.stream,
                        event_type: a.event_type,
                        ..Default::default()
                    },
                    order: glassbox_audit_query::search::Order::Desc,
                    limit: a.limit.unwrap_or(20).clamp(1, 100),
                    cursor: None,
                };
                match self.run(&caller, command).await? {
                    Reply::Audit(page) => Ok(ok_json(
                        serde_json::to_value(AuditEvents {
                            events: page.events,
                        })
                        .unwrap_or(Value::Null),
                    )),
                    _ => Err(ApiError::Internal("unexpected reply".into())),
                }
            }
            .await,
        ))
    }
}

#[tool_handler]
impl ServerHandler for GlassboxMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new("glassbox", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Glassbox runs untrusted code in gVisor sandboxes and records every step in a \
             tamper-evident ledger. Use run_code for short programs (it waits for the result), \
             submit_job + get_job for long ones. Files the program writes to /workspace/out \
             come back as artifacts (list_artifacts, read_artifact, or the resource \
             glassbox://jobs/{job_id}/artifacts/{path}). Pass an idempotency_key when you may \
             retry: a retry never runs the job twice. For interactive work, create_session \
             opens a sandbox that keeps its state: session_exec runs code or commands in it, \
             session_write_file / session_read_file / session_list_files move files, and \
             close_session ends it.",
        )
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let caller = context_caller(&context)?;
        self.recent_jobs(&caller)
            .await
            .map(|r| {
                // Per caller, and changing with every job.
                ListResourcesResult::with_all_items(r)
                    .with_ttl_ms(0)
                    .with_cache_scope(CacheScope::Private)
            })
            .map_err(rpc_error)
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new(format!("{SCHEME}jobs/{{job_id}}"), "job")
                .with_description(
                    "A job: status, policy decisions, limits, exit code, artifact list (JSON)",
                )
                .with_mime_type("application/json"),
            ResourceTemplate::new(
                format!("{SCHEME}jobs/{{job_id}}/artifacts/{{+path}}"),
                "artifact",
            )
            .with_description("A file the job wrote to /workspace/out: text, or a base64 blob"),
            ResourceTemplate::new(
                format!("{SCHEME}sessions/{{session_id}}/files/{{+path}}"),
                "session file",
            )
            .with_description("A file of an open session's /workspace: text, or a base64 blob"),
            ResourceTemplate::new(format!("{SCHEME}sessions/{{session_id}}"), "session")
                .with_description(
                    "A session: status, runner, limits, deadlines, exec and file-operation counts (JSON)",
                )
                .with_mime_type("application/json"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let caller = context_caller(&context)?;
        self.read_target(&caller, &request.uri)
            .await
            .map(|r| r.with_ttl_ms(0).with_cache_scope(CacheScope::Private))
            .map(ReadResourceResponse::from)
            .map_err(rpc_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_name_jobs_and_artifacts_and_nothing_else() {
        let artifact = |id: &str, p: &str| Some(Target::Artifact(id.into(), p.into()));
        assert_eq!(
            parse_uri("glassbox://jobs/abc"),
            Some(Target::Job("abc".into()))
        );
        assert_eq!(
            parse_uri("glassbox://jobs/abc/artifacts/dir/x.bin"),
            artifact("abc", "dir/x.bin")
        );
        // As a client expanding the template's {path} per RFC 6570 sends it.
        assert_eq!(
            parse_uri("glassbox://jobs/abc/artifacts/dir%2Fmy%20x.bin"),
            artifact("abc", "dir/my x.bin")
        );
        for name in ["dir/my x.bin", "100%.txt", "ü/a+b?.csv"] {
            assert_eq!(parse_uri(&artifact_uri("j", name)), artifact("j", name));
        }
        assert_eq!(
            parse_uri("glassbox://sessions/s1"),
            Some(Target::Session("s1".into()))
        );
        for name in ["a.txt", "dir/my x.bin", "100%.txt"] {
            assert_eq!(
                parse_uri(&session_file_uri("s1", name)),
                Some(Target::SessionFile("s1".into(), name.into()))
            );
        }
        for bad in [
            "glassbox://sessions/",
            "glassbox://sessions/s1/",
            "glassbox://sessions/s1/files/",
            "glassbox://sessions/s1/other/x",
        ] {
            assert_eq!(parse_uri(bad), None, "{bad}");
        }
        assert_eq!(parse_uri("glassbox://jobs/abc/artifacts/bad%zz"), None);
        assert_eq!(parse_uri("glassbox://jobs/abc/artifacts/cut%4"), None);
        for bad in [
            "glassbox://jobs/",
            "glassbox://jobs//artifacts/x",
            "glassbox://jobs/abc/artifacts/",
            "glassbox://jobs/abc/stdout",
            "glassbox://other/abc",
            "file:///etc/passwd",
        ] {
            assert_eq!(parse_uri(bad), None, "{bad}");
        }
    }

    #[test]
    fn artifacts_are_text_when_utf8_and_base64_blobs_otherwise() {
        match artifact_contents("u".into(), "r.json", b"{}".to_vec()) {
            ResourceContents::TextResourceContents {
                text, mime_type, ..
            } => {
                assert_eq!(text, "{}");
                assert_eq!(mime_type.as_deref(), Some("application/json"));
            }
            other => panic!("{other:?}"),
        }
        match artifact_contents("u".into(), "x.bin", vec![0, 159, 255]) {
            ResourceContents::BlobResourceContents {
                blob, mime_type, ..
            } => {
                assert_eq!(blob, "AJ//");
                assert_eq!(mime_type.as_deref(), Some("application/octet-stream"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn run_code_arguments_are_a_job_request_and_two_members() {
        let a: RunCodeArgs = serde_json::from_value(json!({
            "language": "python", "code": "print(1)",
            "limits": {"wall_time_ms": 5000, "output_files": 3},
            "files": [{"path": "in.txt", "content": "aGk=", "encoding": "base64"}],
            "dependencies": [{"name": "six", "version": "1.16.0"}],
            "args": null, "wait_seconds": 5, "idempotency_key": "k1"
        }))
        .expect("args");
        let r = &a.request;
        assert_eq!(r.limits.wall_time_ms, Some(5000));
        assert_eq!(r.limits.output_files, Some(3));
        assert_eq!(r.limits.memory_bytes, None);
        assert_eq!(
            r.files[0].encoding,
            glassbox_domain::request::Encoding::Base64
        );
        assert_eq!(r.dependencies[0].ecosystem, "pypi");
        assert!(r.args.is_empty());
        assert_eq!(
            (a.wait_seconds, a.idempotency_key.as_deref()),
            (Some(5), Some("k1"))
        );
        for bad in [
            json!({"language": "python", "code": "1", "files": [{"path": "a", "content": "", "encoding": "hex"}]}),
            json!({"language": "python", "code": "1", "gpu": true}),
            json!({"language": "python", "code": "1", "wait_seconds": "soon"}),
            json!({"language": "python", "code": "1", "limits": [1]}),
        ] {
            assert!(
                serde_json::from_value::<RunCodeArgs>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        // The schema is the request's, plus the two members.
        let schema = schemars::schema_for!(RunCodeArgs).to_value();
        let props = schema["properties"].as_object().expect("properties");
        let request = schemars::schema_for!(JobRequest).to_value();
        for k in request["properties"].as_object().expect("request").keys() {
            assert!(props.contains_key(k), "{k}");
        }
        assert!(props.contains_key("wait_seconds") && props.contains_key("idempotency_key"));
        assert_eq!(schema["additionalProperties"], false);
    }
}
