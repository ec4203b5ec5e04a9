//! The one door: every operation a client may ask for is a [`Command`] value,
//! and [`Core::dispatch`] is the only way to run one. It asks
//! `glassbox.authz` for the action the command needs (recording a refusal)
//! before anything else happens, so no handler can forget the check; HTTP and
//! MCP only parse into commands and render the [`Reply`].
//!
//! (The firecracker `VmmAction` shape: parsed request → action → one
//! dispatcher.) A few commands check a second time once they know the
//! resource — a record or stream of another tenant needs a cross-tenant role,
//! and such a read is recorded — but never instead of the first check.

use crate::core::{Artifact, Caller, CancelReply, Core, DeleteReply, SubmitReply};
use crate::error::ApiError;
use crate::sessions::{
    ExecEvent, ExecOutput, ExecResult, FileBytes, FileDeleted, FileListing, FileWritten,
    SessionClosed, SessionDataDeleted, SessionList, SessionReceipt,
};
use crate::workflows::{
    ApprovalReply, RunCancelReply, RunStarted, RunView, WorkflowDefinedReply, WorkflowVersionsView,
};
use glassbox_audit_query::bundle::Filters;
use glassbox_audit_query::replay::At;
use glassbox_audit_query::search::Order;
use glassbox_domain::request::{ExecRequest, SessionRequest};
use glassbox_domain::workflow::{RunRequest, WorkflowRequest};
use glassbox_domain::{Cursor, JobRequest, JobStatus, JobView, SessionStatus, SessionView};
use glassbox_events::catalogue::{self, Outcome};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;
use std::time::{Duration, Instant};
use tracing::Instrument as _;

/// A job ID as it came in: a UUID, or the job does not exist (404).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobId(String);

/// A UUID in its hyphenated form, or the `kind` named does not exist (404).
fn parse_uuid(kind: &str, s: &str) -> Result<String, ApiError> {
    match uuid::Uuid::parse_str(s) {
        Ok(u) if u.hyphenated().to_string() == s.to_ascii_lowercase() => Ok(s.to_ascii_lowercase()),
        _ => Err(ApiError::NotFound(format!(
            "{kind} {}",
            s.chars().take(64).collect::<String>()
        ))),
    }
}

impl JobId {
    pub fn parse(s: &str) -> Result<JobId, ApiError> {
        parse_uuid("job", s).map(JobId)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl JsonSchema for JobId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "JobId".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "uuid"})
    }
}

/// A session ID as it came in: a UUID, or the session does not exist (404).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionId(String);

impl SessionId {
    pub fn parse(s: &str) -> Result<SessionId, ApiError> {
        parse_uuid("session", s).map(SessionId)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl JsonSchema for SessionId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SessionId".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "uuid"})
    }
}

/// A workflow run ID as it came in: a UUID, or the run does not exist (404).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunId(String);

impl RunId {
    pub fn parse(s: &str) -> Result<RunId, ApiError> {
        parse_uuid("workflow run", s).map(RunId)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl JsonSchema for RunId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RunId".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "uuid"})
    }
}

/// A workflow name as it came in (`[a-z0-9][a-z0-9_-]{0,63}`), or the
/// workflow does not exist (404).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowName(String);

impl WorkflowName {
    pub const PATTERN: &'static str = "^[a-z0-9][a-z0-9_-]{0,63}$";

    pub fn parse(s: &str) -> Result<WorkflowName, ApiError> {
        glassbox_domain::workflow::StepName::parse(s)
            .map(|n| WorkflowName(n.as_str().to_owned()))
            .map_err(|_| {
                ApiError::NotFound(format!(
                    "workflow {}",
                    s.chars().take(64).collect::<String>()
                ))
            })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl JsonSchema for WorkflowName {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "WorkflowName".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "pattern": WorkflowName::PATTERN})
    }
}

/// Free text a client filters or names things by (tenants, streams, event
/// types, actors): 1-256 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterText(String);

impl FilterText {
    pub const MAX_CHARS: usize = 256;

    /// Parses `value` of the member `name` (named in the refusal).
    pub fn parse(name: &str, value: &str) -> Result<FilterText, ApiError> {
        let n = value.chars().count();
        if n == 0 || n > Self::MAX_CHARS || value.chars().any(char::is_control) {
            return Err(ApiError::Invalid(format!(
                "{name}: 1-{} characters, no control characters",
                Self::MAX_CHARS
            )));
        }
        Ok(FilterText(value.to_owned()))
    }

    /// An optional member.
    pub fn parse_opt(name: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
        match value {
            None => Ok(None),
            Some(v) => FilterText::parse(name, &v).map(|t| Some(t.0)),
        }
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

impl JsonSchema for FilterText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "FilterText".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": FilterText::MAX_CHARS,
            "pattern": glassbox_domain::request::pattern::NO_CONTROL,
        })
    }
}

/// An `Idempotency-Key` (REST header or MCP argument): 1-255 visible ASCII
/// characters. It is stored in the ledger for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const PATTERN: &'static str = "^[!-~]{1,255}$";

    pub fn parse(name: &str, s: &str) -> Result<IdempotencyKey, ApiError> {
        if !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(IdempotencyKey(s.to_owned()))
        } else {
            Err(ApiError::Invalid(format!(
                "{name}: 1-255 visible ASCII characters"
            )))
        }
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

impl JsonSchema for IdempotencyKey {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IdempotencyKey".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "pattern": IdempotencyKey::PATTERN})
    }
}

/// Whose records an audit command reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The caller's own tenant.
    Own,
    /// One other tenant (needs a cross-tenant audit role).
    Tenant(String),
    /// Every tenant (needs a cross-tenant audit role).
    All,
}

impl Scope {
    /// `tenant` as a client sends it (absent: own; `*`: all).
    pub fn parse(tenant: Option<&str>, caller: &Caller) -> Scope {
        match tenant {
            None => Scope::Own,
            Some("*") => Scope::All,
            Some(t) if t == caller.identity.tenant => Scope::Own,
            Some(t) => Scope::Tenant(t.to_owned()),
        }
    }

    /// The resource tenant authz is asked about.
    fn resource(&self, caller: &Caller) -> String {
        match self {
            Scope::Own => caller.identity.tenant.clone(),
            Scope::Tenant(t) => t.clone(),
            Scope::All => "*".into(),
        }
    }

    /// The tenant filter: `None` for every tenant.
    fn tenant(&self, caller: &Caller) -> Option<String> {
        match self {
            Scope::All => None,
            other => Some(other.resource(caller)),
        }
    }
}

/// Everything a client may ask (REST and MCP parse into these).
#[derive(Debug, Clone)]
pub enum Command {
    SubmitJob {
        request: JobRequest,
        idempotency_key: Option<String>,
    },
    GetJob {
        job: JobId,
        /// Wait up to this long for a terminal status.
        wait: Duration,
        /// Do not answer from read models older than this position.
        min_position: Option<u64>,
    },
    ListJobs {
        status: Option<JobStatus>,
        language: Option<String>,
        limit: u64,
        cursor: Option<Cursor>,
        min_position: Option<u64>,
    },
    /// The job as its ledger stream says now (no wait for the read models).
    JobNow {
        job: JobId,
    },
    JobEvents {
        job: JobId,
    },
    CancelJob {
        job: JobId,
        reason: Option<String>,
    },
    JobOutput {
        job: JobId,
    },
    ListArtifacts {
        job: JobId,
    },
    ReadArtifact {
        job: JobId,
        path: String,
    },
    DeleteJobData {
        job: JobId,
    },
    SearchAudit {
        scope: Scope,
        filters: Filters,
        order: Order,
        limit: u64,
        cursor: Option<Cursor>,
    },
    LatestCheckpoint,
    VerifierKey,
    InclusionProof {
        position: u64,
        size: Option<u64>,
    },
    ConsistencyProof {
        from: u64,
        to: u64,
    },
    VerifyLedger {
        from: Option<u64>,
        to: Option<u64>,
    },
    Replay {
        stream: String,
        at: Option<At>,
        reevaluate: bool,
    },
    ExportAudit {
        scope: Scope,
        filters: Filters,
    },
    Status,
    OpenSession {
        request: SessionRequest,
        idempotency_key: Option<String>,
    },
    GetSession {
        session: SessionId,
        min_position: Option<u64>,
    },
    ListSessions {
        status: Option<SessionStatus>,
        limit: u64,
        cursor: Option<Cursor>,
        min_position: Option<u64>,
    },
    SessionEvents {
        session: SessionId,
    },
    /// An exec, answered when it ends (`stream`: its events as they come).
    Exec {
        session: SessionId,
        request: ExecRequest,
        stream: bool,
    },
    ExecOutput {
        session: SessionId,
        exec: u64,
    },
    WriteFile {
        session: SessionId,
        path: String,
        data: Vec<u8>,
    },
    ReadFile {
        session: SessionId,
        path: String,
    },
    ListFiles {
        session: SessionId,
        path: String,
    },
    DeleteFile {
        session: SessionId,
        path: String,
    },
    CloseSession {
        session: SessionId,
        reason: Option<String>,
    },
    DeleteSessionData {
        session: SessionId,
    },
    /// Expose a port of an active session (service mode).
    ExposePort {
        session: SessionId,
        request: glassbox_domain::request::ExposeRequest,
    },
    /// A request to a session's exposed port.
    ServiceCall {
        session: SessionId,
        call: crate::sessions::ServiceCall,
    },
    /// Replace an active session's egress allowlist.
    SetSessionEgress {
        session: SessionId,
        egress: Vec<glassbox_domain::request::EgressTarget>,
    },
    DefineWorkflow {
        request: WorkflowRequest,
    },
    WorkflowVersions {
        name: WorkflowName,
    },
    StartRun {
        name: WorkflowName,
        request: RunRequest,
        idempotency_key: Option<String>,
    },
    GetRun {
        run: RunId,
    },
    /// Grant or deny a step's approval.
    AnswerApproval {
        run: RunId,
        step: String,
        grant: bool,
        reason: Option<String>,
    },
    CancelRun {
        run: RunId,
    },
}

impl Command {
    /// The command's name, for spans (`submit_job`, `exec`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Command::SubmitJob { .. } => "submit_job",
            Command::GetJob { .. } => "get_job",
            Command::ListJobs { .. } => "list_jobs",
            Command::JobNow { .. } => "job_now",
            Command::JobEvents { .. } => "job_events",
            Command::CancelJob { .. } => "cancel_job",
            Command::JobOutput { .. } => "job_output",
            Command::ListArtifacts { .. } => "list_artifacts",
            Command::ReadArtifact { .. } => "read_artifact",
            Command::DeleteJobData { .. } => "delete_job_data",
            Command::SearchAudit { .. } => "search_audit",
            Command::LatestCheckpoint => "latest_checkpoint",
            Command::VerifierKey => "verifier_key",
            Command::InclusionProof { .. } => "inclusion_proof",
            Command::ConsistencyProof { .. } => "consistency_proof",
            Command::VerifyLedger { .. } => "verify_ledger",
            Command::Replay { .. } => "replay",
            Command::ExportAudit { .. } => "export_audit",
            Command::Status => "status",
            Command::OpenSession { .. } => "open_session",
            Command::GetSession { .. } => "get_session",
            Command::ListSessions { .. } => "list_sessions",
            Command::SessionEvents { .. } => "session_events",
            Command::Exec { .. } => "exec",
            Command::ExecOutput { .. } => "exec_output",
            Command::WriteFile { .. } => "write_file",
            Command::ReadFile { .. } => "read_file",
            Command::ListFiles { .. } => "list_files",
            Command::DeleteFile { .. } => "delete_file",
            Command::CloseSession { .. } => "close_session",
            Command::DeleteSessionData { .. } => "delete_session_data",
            Command::SetSessionEgress { .. } => "set_session_egress",
            Command::ExposePort { .. } => "expose_port",
            Command::ServiceCall { .. } => "service_request",
            Command::DefineWorkflow { .. } => "define_workflow",
            Command::WorkflowVersions { .. } => "workflow_versions",
            Command::StartRun { .. } => "run_workflow",
            Command::GetRun { .. } => "get_workflow_run",
            Command::AnswerApproval { .. } => "approve_step",
            Command::CancelRun { .. } => "cancel_workflow_run",
        }
    }

    /// The authz action this command needs (`None`: its authorization is one
    /// of the decisions recorded with it — a submission).
    pub fn action(&self) -> Option<&'static str> {
        Some(match self {
            // A service call's authorization is `glassbox.services`, recorded
            // with the request.
            Command::SubmitJob { .. }
            | Command::OpenSession { .. }
            | Command::ServiceCall { .. } => return None,
            Command::GetSession { .. }
            | Command::ListSessions { .. }
            | Command::SessionEvents { .. }
            | Command::Exec { .. }
            | Command::ExecOutput { .. }
            | Command::WriteFile { .. }
            | Command::ReadFile { .. }
            | Command::ListFiles { .. }
            | Command::DeleteFile { .. }
            | Command::CloseSession { .. }
            | Command::SetSessionEgress { .. }
            | Command::ExposePort { .. } => "session.use",
            Command::DeleteSessionData { .. } => "job.delete_data",
            Command::GetJob { .. }
            | Command::JobNow { .. }
            | Command::ListJobs { .. }
            | Command::JobEvents { .. } => "job.read",
            Command::CancelJob { .. } => "job.cancel",
            Command::JobOutput { .. }
            | Command::ListArtifacts { .. }
            | Command::ReadArtifact { .. } => "artifact.read",
            Command::DeleteJobData { .. } => "job.delete_data",
            Command::SearchAudit { .. } => "audit.read",
            Command::LatestCheckpoint
            | Command::VerifierKey
            | Command::InclusionProof { .. }
            | Command::ConsistencyProof { .. }
            | Command::VerifyLedger { .. } => "audit.verify",
            Command::Replay { .. } => "audit.replay",
            Command::ExportAudit { .. } => "audit.export",
            Command::Status => "job.read",
            Command::DefineWorkflow { .. } => "workflow.define",
            Command::WorkflowVersions { .. } | Command::GetRun { .. } => "workflow.read",
            Command::StartRun { .. } => "workflow.run",
            Command::AnswerApproval { .. } => "workflow.approve",
            Command::CancelRun { .. } => "workflow.cancel",
        })
    }

    /// The tenant the command acts on.
    pub fn resource_tenant(&self, caller: &Caller) -> String {
        match self {
            Command::SearchAudit { scope, .. } | Command::ExportAudit { scope, .. } => {
                scope.resource(caller)
            }
            _ => caller.identity.tenant.clone(),
        }
    }
}

/// One record as the API shows it: position, entry hash, the record itself.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RecordView {
    pub position: u64,
    pub entry_hash: String,
    /// The record (ledger format v1).
    pub record: serde_json::Map<String, Value>,
}

impl RecordView {
    pub fn of(s: &glassbox_events::store::StoredRecord) -> RecordView {
        RecordView {
            position: s.record.position,
            entry_hash: s.entry_hash.to_hex(),
            record: serde_json::from_slice(&s.canonical).unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<Cursor>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct JobEvents {
    pub job_id: String,
    pub events: Vec<RecordView>,
}

#[derive(Debug, Clone, Copy, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ContentEncoding {
    Utf8,
    Base64,
}

/// One output stream, decrypted.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StreamOutput {
    pub encoding: ContentEncoding,
    pub content: String,
    /// Everything the program wrote, counted past the cap.
    pub size_bytes: u64,
    pub truncated: bool,
}

impl StreamOutput {
    fn of(bytes: &[u8], out: &catalogue::OutputRef) -> StreamOutput {
        use base64::Engine as _;
        let (encoding, content) = match std::str::from_utf8(bytes) {
            Ok(t) => (ContentEncoding::Utf8, t.to_owned()),
            Err(_) => (
                ContentEncoding::Base64,
                base64::engine::general_purpose::STANDARD.encode(bytes),
            ),
        };
        StreamOutput {
            encoding,
            content,
            size_bytes: out.size_bytes,
            truncated: out.truncated,
        }
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct JobOutput {
    pub job_id: String,
    pub attempt: u64,
    pub outcome: Outcome,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub wall_ms: u64,
    pub stdout: StreamOutput,
    pub stderr: StreamOutput,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ArtifactList {
    pub job_id: String,
    pub artifacts: Vec<Artifact>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AuditPage {
    pub events: Vec<Value>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<Cursor>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CheckpointView {
    pub origin: String,
    pub tree_size: u64,
    pub root: String,
    pub key_name: String,
    /// The C2SP signed note.
    pub note: String,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct VerifierKeyView {
    pub verifier_key: String,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct InclusionView {
    pub position: u64,
    pub leaf_index: u64,
    pub tree_size: u64,
    pub leaf_hash: String,
    pub entry_hash: String,
    pub proof: Vec<String>,
    pub root: String,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ConsistencyView {
    pub from: u64,
    pub to: u64,
    pub from_root: String,
    pub to_root: String,
    pub proof: Vec<String>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct VerifyFailure {
    pub position: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct VerifyView {
    pub verifies: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<VerifyFailure>,
}

/// An evidence bundle written to a temporary file (the transport streams it).
#[derive(Debug)]
pub struct Bundle {
    pub dir: std::path::PathBuf,
    pub path: std::path::PathBuf,
    pub sha256: String,
    pub records: u64,
    pub tree_size: u64,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct LedgerStatus {
    pub head: u64,
    pub latest_checkpoint_size: u64,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct QueueStatus {
    pub accepted_not_claimed: u64,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ProjectionStatus {
    pub position: u64,
    pub lag_events: u64,
    pub lag_ms: u64,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StatusView {
    pub ledger: LedgerStatus,
    pub queue: QueueStatus,
    pub projection: ProjectionStatus,
    pub policy_bundle_digest: String,
}

/// What a command produced.
#[derive(Debug)]
pub enum Reply {
    Submitted(SubmitReply),
    Job(Box<JobView>),
    Jobs(JobList),
    Events(JobEvents),
    Cancelled(CancelReply),
    Output(Box<JobOutput>),
    Artifacts(ArtifactList),
    ArtifactBytes(Vec<u8>),
    Deleted(DeleteReply),
    Audit(AuditPage),
    Checkpoint(CheckpointView),
    VerifierKey(VerifierKeyView),
    Inclusion(InclusionView),
    Consistency(ConsistencyView),
    Verified(VerifyView),
    Replayed(Value),
    Exported(Bundle),
    Status(StatusView),
    SessionOpened(Box<SessionReceipt>),
    Session(Box<SessionView>),
    Sessions(SessionList),
    SessionEvents(SessionEvents),
    ExecResult(Box<ExecResult>),
    /// The events of an exec as they come (rendered as server-sent events).
    ExecStream(tokio::sync::mpsc::Receiver<ExecEvent>),
    ExecOutput(Box<ExecOutput>),
    FileWritten(FileWritten),
    FileBytes(FileBytes),
    Files(FileListing),
    FileDeleted(FileDeleted),
    SessionClosed(SessionClosed),
    SessionDataDeleted(SessionDataDeleted),
    EgressChanged(crate::sessions::EgressChanged),
    Exposed(crate::sessions::Exposed),
    ServiceAnswer(Box<crate::sessions::ServiceAnswer>),
    WorkflowDefined(WorkflowDefinedReply),
    WorkflowVersions(WorkflowVersionsView),
    RunStarted(Box<RunStarted>),
    Run(Box<RunView>),
    Approval(ApprovalReply),
    RunCancelled(RunCancelReply),
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SessionEvents {
    pub session_id: String,
    pub events: Vec<RecordView>,
}

/// One page of a keyset listing read with `limit + 1` rows: the first
/// `limit` items, and the cursor after the last of them when there are more.
fn keyset_page<T>(rows: Vec<(T, i64)>, limit: u64) -> (Vec<T>, Option<Cursor>) {
    let more = rows.len() as u64 > limit;
    let page: Vec<(T, i64)> = rows.into_iter().take(limit as usize).collect();
    let next = if more {
        page.last().map(|(_, p)| Cursor::at(*p as u64))
    } else {
        None
    };
    (page.into_iter().map(|(t, _)| t).collect(), next)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// A tree the ledger has not grown to yet is a conflict with its current
/// state (409; asking again later may succeed); other proof refusals are bad
/// requests.
fn proof_error(e: glassbox_events::store::StoreError) -> ApiError {
    use glassbox_events::merkle::ProofError;
    match e {
        glassbox_events::store::StoreError::Proof(p @ ProofError::SizeBeyondLedger { .. }) => {
            ApiError::Conflict(p.to_string())
        }
        glassbox_events::store::StoreError::Proof(p) => ApiError::Invalid(p.to_string()),
        other => ApiError::Internal(other.to_string()),
    }
}

impl Core {
    /// Authorizes `command` for `caller` (a refusal is recorded and is a 403),
    /// then runs it.
    pub async fn dispatch(&self, caller: &Caller, command: Command) -> Result<Reply, ApiError> {
        let span = tracing::info_span!(
            "command",
            command = command.name(),
            tenant = %caller.identity.tenant,
            outcome = tracing::field::Empty,
        );
        async {
            if let Some(action) = command.action() {
                self.authorize(caller, action, &command.resource_tenant(caller))
                    .await?;
            }
            self.execute(caller, command).await
        }
        .instrument(span.clone())
        .await
        .inspect(|_| {
            span.record("outcome", "ok");
        })
        .inspect_err(|_| {
            span.record("outcome", "error");
        })
    }

    async fn execute(&self, caller: &Caller, command: Command) -> Result<Reply, ApiError> {
        let tenant = caller.identity.tenant.clone();
        match command {
            Command::SubmitJob {
                request,
                idempotency_key,
            } => Ok(Reply::Submitted(
                self.submit(caller, request, idempotency_key).await?,
            )),
            Command::GetJob {
                job,
                wait,
                min_position,
            } => {
                let deadline = Instant::now() + wait;
                if let Some(min) = min_position {
                    self.await_projection(min, wait.max(Duration::from_secs(10)))
                        .await?;
                }
                let mut rx = self.projected.clone();
                loop {
                    rx.borrow_and_update();
                    let found = glassbox_projector::queries::job(&self.pool, &tenant, job.as_str())
                        .await
                        .map_err(internal)?
                        .and_then(|j| j.view());
                    let Some(view) = found else {
                        return Err(ApiError::NotFound(format!("job {}", job.as_str())));
                    };
                    let now = Instant::now();
                    if view.status.is_terminal() || now >= deadline {
                        return Ok(Reply::Job(Box::new(view)));
                    }
                    // Wake on the next projection (or re-check at least every second).
                    let _ = tokio::time::timeout(
                        (deadline - now).min(Duration::from_secs(1)),
                        rx.changed(),
                    )
                    .await;
                }
            }
            Command::ListJobs {
                status,
                language,
                limit,
                cursor,
                min_position,
            } => {
                if let Some(min) = min_position {
                    self.await_projection(min, Duration::from_secs(10)).await?;
                }
                let rows = glassbox_projector::queries::list_jobs(
                    &self.pool,
                    &tenant,
                    status,
                    language.as_deref(),
                    cursor.map(|c| c.position() as i64),
                    limit as i64 + 1,
                )
                .await
                .map_err(internal)?;
                let (page, next_cursor) = keyset_page(rows, limit);
                Ok(Reply::Jobs(JobList {
                    jobs: page.into_iter().filter_map(|j| j.view()).collect(),
                    next_cursor,
                }))
            }
            Command::JobNow { job } => {
                let view = self
                    .job(&tenant, job.as_str())
                    .await?
                    .view()
                    .ok_or_else(|| ApiError::NotFound(format!("job {}", job.as_str())))?;
                Ok(Reply::Job(Box::new(view)))
            }
            Command::JobEvents { job } => {
                let records = self.job_records(&tenant, job.as_str()).await?;
                Ok(Reply::Events(JobEvents {
                    job_id: job.as_str().to_owned(),
                    events: records.iter().map(RecordView::of).collect(),
                }))
            }
            Command::CancelJob { job, reason } => Ok(Reply::Cancelled(
                self.cancel(caller, job.as_str(), reason).await?,
            )),
            Command::JobOutput { job } => {
                let id = job.as_str();
                let r = self.result(&tenant, id).await?;
                let f = &r.finished;
                let mut streams = Vec::new();
                for out in [&f.stdout, &f.stderr] {
                    let bytes = match &out.blob {
                        Some(b) => self.read_blob(id, b).await?,
                        None => Vec::new(),
                    };
                    streams.push(StreamOutput::of(&bytes, out));
                }
                let stderr = streams.pop().ok_or_else(|| internal("no stderr"))?;
                let stdout = streams.pop().ok_or_else(|| internal("no stdout"))?;
                Ok(Reply::Output(Box::new(JobOutput {
                    job_id: id.to_owned(),
                    attempt: f.attempt,
                    outcome: f.outcome,
                    exit_code: f.exit_code,
                    signal: f.signal,
                    wall_ms: f.wall_ms,
                    stdout,
                    stderr,
                })))
            }
            Command::ListArtifacts { job } => {
                let r = self.result(&tenant, job.as_str()).await?;
                Ok(Reply::Artifacts(ArtifactList {
                    job_id: job.as_str().to_owned(),
                    artifacts: self.artifacts(job.as_str(), &r).await?,
                }))
            }
            Command::ReadArtifact { job, path } => {
                let id = job.as_str();
                let r = self.result(&tenant, id).await?;
                let a = self
                    .artifacts(id, &r)
                    .await?
                    .into_iter()
                    .find(|a| a.path == path)
                    .ok_or_else(|| ApiError::NotFound(format!("artifact {path} of job {id}")))?;
                Ok(Reply::ArtifactBytes(self.read_blob(id, &a.blob).await?))
            }
            Command::DeleteJobData { job } => {
                let reason = format!("deleted on request of {}", caller.identity.subject);
                Ok(Reply::Deleted(
                    self.delete_data(caller, job.as_str(), reason).await?,
                ))
            }
            Command::SearchAudit {
                scope,
                mut filters,
                order,
                limit,
                cursor,
            } => {
                filters.tenant = scope.tenant(caller);
                let page = glassbox_audit_query::search::search(
                    &self.store,
                    &filters,
                    order,
                    limit,
                    cursor,
                )
                .await
                .map_err(crate::audit::search_error)?;
                if scope != Scope::Own {
                    let mut query = match serde_json::to_value(&filters) {
                        Ok(Value::Object(m)) => m,
                        _ => serde_json::Map::new(),
                    };
                    // `*` is recorded as asked: a read of every tenant, not an empty query.
                    query.insert("tenant".into(), scope.resource(caller).into());
                    self.record_cross_tenant_read(caller, query, page.events.len() as u64)
                        .await?;
                }
                Ok(Reply::Audit(AuditPage {
                    events: page.events,
                    next_cursor: page.next_cursor,
                }))
            }
            Command::LatestCheckpoint => {
                let cps = self
                    .store
                    .checkpoints()
                    .await
                    .map_err(ApiError::store("read checkpoints"))?;
                let c = cps
                    .iter()
                    .max_by_key(|c| c.checkpoint.size)
                    .ok_or_else(|| ApiError::NotFound("a signed checkpoint".into()))?;
                Ok(Reply::Checkpoint(CheckpointView {
                    origin: c.checkpoint.origin.clone(),
                    tree_size: c.checkpoint.size,
                    root: c.checkpoint.root.to_hex(),
                    key_name: c.key_name.clone(),
                    note: c.note.clone(),
                }))
            }
            Command::VerifierKey => Ok(Reply::VerifierKey(VerifierKeyView {
                verifier_key: self.verifier()?.to_string(),
            })),
            Command::InclusionProof { position, size } => {
                let explicit_size = size.is_some();
                let size = match size {
                    Some(s) => s,
                    None => self
                        .store
                        .latest_checkpoint_size()
                        .await
                        .map_err(ApiError::store("read checkpoints"))?,
                };
                if size == 0 {
                    return Err(ApiError::NotFound("a signed checkpoint".into()));
                }
                if position > size {
                    // With an explicit size the request contradicts itself; by
                    // default the record is newer than the latest checkpoint,
                    // which a later checkpoint will cover.
                    let why = format!("position {position} is beyond the tree size {size}");
                    return Err(if explicit_size {
                        ApiError::Invalid(why)
                    } else {
                        ApiError::Conflict(format!("{why} of the latest signed checkpoint"))
                    });
                }
                let rec = self
                    .store
                    .record(position)
                    .await
                    .map_err(ApiError::store("read the record"))?
                    .ok_or_else(|| ApiError::NotFound(format!("record {position}")))?;
                if rec.record.tenant != tenant {
                    // Only cross-tenant roles see other tenants' records (404
                    // otherwise), and such a read is recorded like any other.
                    if self
                        .authorize_quietly(caller, "audit.read", &rec.record.tenant)
                        .is_err()
                    {
                        return Err(ApiError::NotFound(format!("record {position}")));
                    }
                    let mut query = serde_json::Map::new();
                    query.insert("inclusion_proof".into(), position.into());
                    query.insert("size".into(), size.into());
                    query.insert("tenant".into(), rec.record.tenant.clone().into());
                    self.record_cross_tenant_read(caller, query, 1).await?;
                }
                let proof = self
                    .store
                    .inclusion_proof(position, size)
                    .await
                    .map_err(proof_error)?;
                let root = self.store.root_at(size).await.map_err(proof_error)?;
                Ok(Reply::Inclusion(InclusionView {
                    position,
                    leaf_index: position - 1,
                    tree_size: size,
                    leaf_hash: glassbox_events::merkle::leaf_hash(&rec.canonical).to_hex(),
                    entry_hash: rec.entry_hash.to_hex(),
                    proof: proof.iter().map(|d| d.to_hex()).collect(),
                    root: root.to_hex(),
                }))
            }
            Command::ConsistencyProof { from, to } => {
                let proof = self
                    .store
                    .consistency_proof(from, to)
                    .await
                    .map_err(proof_error)?;
                let from_root = self.store.root_at(from).await.map_err(proof_error)?;
                let to_root = self.store.root_at(to).await.map_err(proof_error)?;
                Ok(Reply::Consistency(ConsistencyView {
                    from,
                    to,
                    from_root: from_root.to_hex(),
                    to_root: to_root.to_hex(),
                    proof: proof.iter().map(|d| d.to_hex()).collect(),
                }))
            }
            Command::VerifyLedger { from, to } => {
                let key = self.verifier()?;
                let (head, _) = self
                    .store
                    .head()
                    .await
                    .map_err(ApiError::store("read the ledger head"))?;
                if let Some(beyond) = [from, to].into_iter().flatten().find(|p| *p > head) {
                    return Err(ApiError::Conflict(format!(
                        "position {beyond} is beyond the ledger head ({head})"
                    )));
                }
                let result = self
                    .store
                    .verify(Some(key), &[], from.filter(|f| *f > 0), to)
                    .await
                    .map_err(proof_error)?;
                if result.is_err() {
                    glassbox_events::store::count_verification_failure("audit");
                }
                Ok(Reply::Verified(match result {
                    Ok(r) => VerifyView {
                        verifies: true,
                        report: serde_json::to_value(r).ok(),
                        failure: None,
                    },
                    Err(f) => VerifyView {
                        verifies: false,
                        report: None,
                        failure: Some(VerifyFailure {
                            position: f.position,
                            reason: f.problem.to_string(),
                        }),
                    },
                }))
            }
            Command::Replay {
                stream,
                at,
                reevaluate,
            } => self.replay(caller, &stream, at, reevaluate).await,
            Command::ExportAudit { scope, mut filters } => {
                filters.tenant = scope.tenant(caller);
                self.export(caller, filters).await
            }
            Command::Status => Ok(Reply::Status(self.status().await?)),
            Command::OpenSession {
                request,
                idempotency_key,
            } => Ok(Reply::SessionOpened(Box::new(
                self.open_session(caller, request, idempotency_key).await?,
            ))),
            Command::GetSession {
                session,
                min_position,
            } => {
                if let Some(min) = min_position {
                    self.await_projection(min, Duration::from_secs(10)).await?;
                }
                let view =
                    glassbox_projector::queries::session(&self.pool, &tenant, session.as_str())
                        .await
                        .map_err(internal)?
                        .and_then(|s| s.view())
                        .ok_or_else(|| {
                            ApiError::NotFound(format!("session {}", session.as_str()))
                        })?;
                Ok(Reply::Session(Box::new(view)))
            }
            Command::ListSessions {
                status,
                limit,
                cursor,
                min_position,
            } => {
                if let Some(min) = min_position {
                    self.await_projection(min, Duration::from_secs(10)).await?;
                }
                let rows = glassbox_projector::queries::list_sessions(
                    &self.pool,
                    &tenant,
                    status,
                    cursor.map(|c| c.position() as i64),
                    limit as i64 + 1,
                )
                .await
                .map_err(internal)?;
                let (page, next_cursor) = keyset_page(rows, limit);
                Ok(Reply::Sessions(SessionList {
                    sessions: page.into_iter().filter_map(|s| s.view()).collect(),
                    next_cursor,
                }))
            }
            Command::SessionEvents { session } => {
                self.session_now(&tenant, session.as_str()).await?;
                let records = self
                    .store
                    .read_stream(
                        glassbox_domain::Stream::session(session.as_str()).as_str(),
                        1,
                        1_000_000,
                    )
                    .await
                    .map_err(ApiError::store("read the session"))?;
                Ok(Reply::SessionEvents(SessionEvents {
                    session_id: session.as_str().to_owned(),
                    events: records.iter().map(RecordView::of).collect(),
                }))
            }
            Command::Exec {
                session,
                request,
                stream,
            } => {
                if stream {
                    Ok(Reply::ExecStream(
                        self.exec_stream(caller, session.as_str(), request).await?,
                    ))
                } else {
                    Ok(Reply::ExecResult(Box::new(
                        self.exec(caller, session.as_str(), request).await?,
                    )))
                }
            }
            Command::ExecOutput { session, exec } => Ok(Reply::ExecOutput(Box::new(
                self.exec_output(&tenant, session.as_str(), exec).await?,
            ))),
            Command::WriteFile {
                session,
                path,
                data,
            } => Ok(Reply::FileWritten(
                self.write_file(caller, session.as_str(), path, data)
                    .await?,
            )),
            Command::ReadFile { session, path } => Ok(Reply::FileBytes(
                self.read_file(caller, session.as_str(), path).await?,
            )),
            Command::ListFiles { session, path } => Ok(Reply::Files(
                self.list_files(caller, session.as_str(), path).await?,
            )),
            Command::DeleteFile { session, path } => Ok(Reply::FileDeleted(
                self.delete_file(caller, session.as_str(), path).await?,
            )),
            Command::CloseSession { session, reason } => Ok(Reply::SessionClosed(
                self.close_session(caller, session.as_str(), reason).await?,
            )),
            Command::DeleteSessionData { session } => Ok(Reply::SessionDataDeleted(
                self.delete_session_data(caller, session.as_str()).await?,
            )),
            Command::ExposePort { session, request } => Ok(Reply::Exposed(
                self.expose_port(caller, session.as_str(), request).await?,
            )),
            Command::ServiceCall { session, call } => Ok(Reply::ServiceAnswer(Box::new(
                self.service_call(caller, session.as_str(), call).await?,
            ))),
            Command::SetSessionEgress { session, egress } => Ok(Reply::EgressChanged(
                self.set_session_egress(caller, session.as_str(), egress)
                    .await?,
            )),
            Command::DefineWorkflow { request } => Ok(Reply::WorkflowDefined(
                self.define_workflow(caller, request).await?,
            )),
            Command::WorkflowVersions { name } => Ok(Reply::WorkflowVersions(
                self.workflow_versions(&tenant, &name).await?,
            )),
            Command::StartRun {
                name,
                request,
                idempotency_key,
            } => Ok(Reply::RunStarted(Box::new(
                self.start_run(caller, &name, request, idempotency_key)
                    .await?,
            ))),
            Command::GetRun { run } => {
                Ok(Reply::Run(Box::new(self.run_view(&tenant, &run).await?)))
            }
            Command::AnswerApproval {
                run,
                step,
                grant,
                reason,
            } => Ok(Reply::Approval(
                self.answer_approval(caller, &run, &step, grant, reason)
                    .await?,
            )),
            Command::CancelRun { run } => {
                Ok(Reply::RunCancelled(self.cancel_run(caller, &run).await?))
            }
        }
    }

    fn verifier(&self) -> Result<&glassbox_events::VerifierKey, ApiError> {
        self.verifier_key.as_deref().ok_or_else(|| {
            ApiError::NotFound("a verifier key (GLASSBOX_LEDGER_KEY_FILE is not set)".into())
        })
    }

    /// Records that `caller` read another tenant's records (before answering).
    pub(crate) async fn record_cross_tenant_read(
        &self,
        caller: &Caller,
        query: serde_json::Map<String, Value>,
        result_count: u64,
    ) -> Result<(), ApiError> {
        let e = glassbox_events::store::NewEvent::typed(
            glassbox_domain::Stream::audit(&caller.identity.tenant).as_str(),
            &catalogue::AuditCrossTenantQueried {
                query,
                result_count,
            },
        )
        .map_err(internal)?;
        self.store
            .append(caller.append(vec![e]))
            .await
            .map_err(ApiError::store("record a cross-tenant read"))?;
        Ok(())
    }

    async fn replay(
        &self,
        caller: &Caller,
        stream: &str,
        at: Option<At>,
        reevaluate: bool,
    ) -> Result<Reply, ApiError> {
        use glassbox_audit_query::replay::{self, ReplayError};
        let not_found = || ApiError::NotFound(format!("stream {stream}"));
        let r = match replay::replay(&self.store, stream, at).await {
            Ok(r) => r,
            Err(ReplayError::NoStream(_)) => return Err(not_found()),
            Err(e) => return Err(internal(e)),
        };
        if r.tenant != caller.identity.tenant {
            if self
                .authorize_quietly(caller, "audit.replay", &r.tenant)
                .is_err()
            {
                return Err(not_found());
            }
            let mut query = serde_json::Map::new();
            query.insert("replay".into(), stream.into());
            query.insert("tenant".into(), r.tenant.clone().into());
            self.record_cross_tenant_read(caller, query, r.timeline.len() as u64)
                .await?;
        }
        let mut v = serde_json::to_value(&r).map_err(internal)?;
        if reevaluate {
            let records = replay::records_until(&self.store, stream, at)
                .await
                .map_err(internal)?;
            let re = replay::reevaluate(&self.blobs, &records).await;
            v["all_reproduce"] = re.iter().all(|x| x.reproduces).into();
            v["reevaluated"] = serde_json::to_value(&re).map_err(internal)?;
        }
        Ok(Reply::Replayed(v))
    }

    async fn export(&self, caller: &Caller, filters: Filters) -> Result<Reply, ApiError> {
        let key = self.signing_key.clone().ok_or_else(|| {
            ApiError::NotFound("a checkpoint key (GLASSBOX_LEDGER_KEY_FILE is not set)".into())
        })?;
        let dir =
            std::env::temp_dir().join(format!("glassbox-export-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).map_err(|e| internal(format!("export dir: {e}")))?;
        let path = dir.join("evidence.tar");
        let result = glassbox_audit_query::bundle::export_recorded(
            &self.store,
            &key,
            &filters,
            caller.actor(),
            &path,
        )
        .await;
        match result {
            Ok((report, digest)) => Ok(Reply::Exported(Bundle {
                dir,
                path,
                sha256: digest.to_hex(),
                records: report.records,
                tree_size: report.tree_size,
            })),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(match e {
                    glassbox_audit_query::bundle::BundleError::NotReady(m) => {
                        ApiError::Unavailable(m)
                    }
                    glassbox_audit_query::bundle::BundleError::InvalidFilter(m) => {
                        ApiError::Invalid(m)
                    }
                    other => internal(other),
                })
            }
        }
    }

    /// Ledger head, latest checkpoint, queue and projection lag.
    pub async fn status(&self) -> Result<StatusView, ApiError> {
        let lag = glassbox_projector::Projector::new(self.store.clone())
            .lag()
            .await
            .map_err(internal)?;
        let signed = self
            .store
            .latest_checkpoint_size()
            .await
            .map_err(ApiError::store("read checkpoints"))?;
        let queued = glassbox_projector::queries::queued_jobs(&self.pool)
            .await
            .map_err(internal)?;
        Ok(StatusView {
            ledger: LedgerStatus {
                head: lag.head,
                latest_checkpoint_size: signed,
            },
            queue: QueueStatus {
                accepted_not_claimed: queued.max(0) as u64,
            },
            projection: ProjectionStatus {
                position: lag.position,
                lag_events: lag.events,
                lag_ms: lag.millis,
            },
            policy_bundle_digest: self.engine.bundle_digest().to_hex(),
        })
    }
}
