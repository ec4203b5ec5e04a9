//! The control plane's side of sessions: deciding whether one may open (the
//! same policies as a job, with the tenant's session limits and quota),
//! placing it on a runner with room (the runners' Redis heartbeats), and
//! calling that runner's data-plane API (`glassbox-runner-api`) with a token
//! signed for that runner and that session — the only caller that API has.
//!
//! Everything that happens to a session is on its ledger stream: the control
//! plane records the opening (one append: `session.requested`, each policy
//! decision, `session.opened` or `session.rejected`), closing, expiry and
//! loss; the runner records what it does (started, each exec, each file
//! operation, the workspace's destruction). Redis holds only what is hot —
//! which runner holds a session and when it is next due — and is rebuilt
//! from the read model when it has been lost.

use crate::core::{Caller, Core, DecisionView, evaluated_event};
use crate::error::ApiError;
use glassbox_domain::catalogue::{self, Decision as Verdict, KnownEvent, SessionLimits};
use glassbox_domain::request::{ExecRequest, ExecSource, SessionRequest};
use glassbox_domain::{
    Session, SessionCommand, SessionRefusal, SessionStatus, SessionView, Stream,
};
use glassbox_events::{DecideError, Digest};
use glassbox_platform::hot::{HotState, RunnerBeat, SessionHot};
use glassbox_platform::runner_token::{RunnerTokenKey, Subject};
use glassbox_policies::Policy;
use glassbox_runner_api::RunnerClient;
use glassbox_runner_api::v1 as api;
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;
use uuid::Uuid;

/// How long the control plane waits for a runner to start a sandbox
/// (dependencies are installed first).
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(150);
/// How long a file call to a runner may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a request to a session's exposed port may take (the runner's own
/// bound is 30 s).
const SERVICE_TIMEOUT: Duration = Duration::from_secs(40);
/// How often the reaper looks for sessions past their deadline or lost.
pub const REAP_EVERY: Duration = Duration::from_secs(1);
/// How long after the hot state was rebuilt no runner is judged gone (longer
/// than a runner's heartbeat lasts).
pub const HEARTBEAT_GRACE: Duration = Duration::from_secs(8);
/// The largest file written or read through the API in one call.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// The control plane's handle on the data plane: the runners' heartbeats and
/// the session deadlines in Redis, the token key, and one gRPC channel per
/// runner.
pub struct DataPlane {
    pub hot: HotState,
    key: RunnerTokenKey,
    clients: Mutex<HashMap<String, (String, RunnerClient<Channel>)>>,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane").field("hot", &self.hot).finish()
    }
}

impl DataPlane {
    pub fn new(hot: HotState, key: RunnerTokenKey) -> DataPlane {
        DataPlane {
            hot,
            key,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// A client for `runner` at `addr` (a channel is made once per address).
    fn client(&self, runner: &str, addr: &str) -> Result<RunnerClient<Channel>, ApiError> {
        let mut clients = self
            .clients
            .lock()
            .map_err(|_| ApiError::Internal("runner clients poisoned".into()))?;
        if let Some((a, c)) = clients.get(runner)
            && a == addr
        {
            return Ok(c.clone());
        }
        let endpoint = Channel::from_shared(addr.to_owned())
            .map_err(|e| ApiError::Internal(format!("runner {runner} address: {e}")))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true);
        let c = RunnerClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_FILE_BYTES as usize + (1 << 20))
            .max_encoding_message_size(MAX_FILE_BYTES as usize + (1 << 20));
        clients.insert(runner.to_owned(), (addr.to_owned(), c.clone()));
        Ok(c)
    }

    /// `message` with a token for `runner` about `session_id`.
    fn request<T>(
        &self,
        runner: &str,
        session_id: &str,
        message: T,
        timeout: Duration,
    ) -> Result<tonic::Request<T>, ApiError> {
        let token = self
            .key
            .mint(
                runner,
                &Subject::Session(session_id.to_owned()),
                glassbox_platform::runner_token::TTL,
            )
            .map_err(|e| ApiError::Internal(format!("mint a runner token: {e}")))?;
        let mut r = tonic::Request::new(message);
        r.set_timeout(timeout);
        let v = format!("Bearer {token}")
            .parse()
            .map_err(|_| ApiError::Internal("a runner token is not a header value".into()))?;
        r.metadata_mut().insert("authorization", v);
        // The caller's trace continues in the runner (W3C traceparent).
        for (k, v) in glassbox_platform::telemetry::current_trace_headers() {
            if let Ok(v) = v.parse() {
                r.metadata_mut().insert(k, v);
            }
        }
        Ok(r)
    }

    /// The live runner with the most room, if any has room.
    async fn place(&self) -> Result<Option<RunnerBeat>, ApiError> {
        let runners = self
            .hot
            .runners()
            .await
            .map_err(|e| ApiError::Unavailable(format!("hot session state: {e}")))?;
        Ok(runners
            .into_iter()
            .filter(|r| r.free() > 0)
            .max_by_key(|r| (r.free(), std::cmp::Reverse(r.runner_id.clone()))))
    }

    /// The runner holding a session, with a client for it.
    async fn runner_of(&self, s: &Session) -> Result<(String, RunnerClient<Channel>), ApiError> {
        let runner = s
            .runner
            .clone()
            .ok_or_else(|| ApiError::Conflict("the session is not placed on a runner".into()))?;
        let beat = self
            .hot
            .runner(&runner)
            .await
            .map_err(|e| ApiError::Unavailable(format!("hot session state: {e}")))?;
        if let Some(beat) = beat {
            let c = self.client(&runner, &beat.addr)?;
            return Ok((runner, c));
        }
        // No beat right now (it lapsed, or Redis lost it): the address last
        // seen, if any; the call itself tells whether the runner is there.
        let known = self
            .clients
            .lock()
            .ok()
            .and_then(|c| c.get(&runner).map(|(_, c)| c.clone()));
        match known {
            Some(c) => Ok((runner, c)),
            None => Err(ApiError::Unavailable(format!(
                "runner {runner} holding the session is not answering (the session will be recorded lost)"
            ))),
        }
    }
}

/// How a runner's refusal reaches the client (never with internals).
fn from_status(s: tonic::Status) -> ApiError {
    use tonic::Code;
    let m = s.message().to_owned();
    match s.code() {
        Code::InvalidArgument | Code::OutOfRange => ApiError::Invalid(m),
        Code::NotFound => ApiError::NotFound(m),
        Code::FailedPrecondition | Code::Aborted | Code::AlreadyExists => ApiError::Conflict(m),
        Code::ResourceExhausted => ApiError::Unavailable(m),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
            ApiError::Unavailable(format!("the session's runner: {m}"))
        }
        _ => ApiError::Internal(format!("runner call: {:?}: {m}", s.code())),
    }
}

fn session_refused(
    id: &str,
    step: &'static str,
) -> impl FnOnce(DecideError<SessionRefusal>) -> ApiError {
    let id = id.to_owned();
    move |e| match e {
        DecideError::Refused(SessionRefusal::NoSession) => {
            ApiError::NotFound(format!("session {id}"))
        }
        DecideError::Refused(r) => ApiError::Conflict(format!("session {id}: {r}")),
        DecideError::Contended { .. } => {
            ApiError::Conflict(format!("session {id} kept changing; try again"))
        }
        DecideError::Store(glassbox_events::store::StoreError::IdempotencyConflict { .. }) => {
            ApiError::IdempotencyConflict
        }
        DecideError::Store(s) => ApiError::store(step)(s),
    }
}

fn on_session(
    stream: &Stream,
    events: Vec<KnownEvent>,
) -> Result<Vec<glassbox_events::store::NewEvent>, SessionRefusal> {
    events
        .iter()
        .map(|e| glassbox_events::store::NewEvent::known(stream.as_str(), e))
        .collect::<Result<_, _>>()
        .map_err(|e| SessionRefusal::Invalid(e.to_string()))
}

/// The blob names of a session's data (its data key is its ID).
fn blob_path(session_id: &str, name: &str) -> String {
    format!("{}/{name}", Stream::session_blob_prefix(session_id))
}

// ---------------------------------------------------------------- replies

/// The reply to opening a session: the session as its stream says after the
/// opening, and each policy decision.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SessionReceipt {
    pub session: SessionView,
    pub decisions: Vec<DecisionView>,
    /// Why it was refused (empty when it opened).
    pub reasons: Vec<String>,
    /// Ledger position of the opening's last record.
    pub position: u64,
    #[serde(skip)]
    #[schemars(skip)]
    pub unauthorized: bool,
    #[serde(skip)]
    #[schemars(skip)]
    pub replayed: bool,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionView>,
    pub next_cursor: Option<glassbox_domain::Cursor>,
}

/// One exec's result (the JSON reply of `POST /v1/sessions/{id}/exec`).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ExecResult {
    pub session_id: String,
    pub exec: u64,
    /// succeeded, failed, timed_out, oom_killed, crashed, cancelled.
    pub outcome: String,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub wall_ms: u64,
    /// What the exec wrote (secret values redacted), up to the session's caps.
    pub stdout: crate::command::StreamOutput,
    pub stderr: crate::command::StreamOutput,
    /// The interpreter was restarted (a timeout or crash): earlier state is gone.
    pub context_reset: bool,
    /// Secret values replaced in the output.
    pub redactions: u64,
    pub error: Option<String>,
    /// Ledger position of `session.exec_finished`.
    pub position: u64,
}

/// What a streamed exec sends (server-sent events).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ExecEvent {
    Started {
        exec: u64,
        position: u64,
    },
    Stdout {
        data: String,
        encoding: crate::command::ContentEncoding,
    },
    Stderr {
        data: String,
        encoding: crate::command::ContentEncoding,
    },
    Finished(Box<ExecResult>),
    Error {
        detail: String,
    },
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct FileWritten {
    pub session_id: String,
    pub path: String,
    pub size_bytes: u64,
    pub position: u64,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct FileEntryView {
    pub name: String,
    /// file, dir, symlink or other.
    pub kind: String,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct FileListing {
    pub session_id: String,
    pub path: String,
    pub entries: Vec<FileEntryView>,
    pub truncated: bool,
    pub position: u64,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct FileDeleted {
    pub session_id: String,
    pub path: String,
    pub position: u64,
}

/// A file read from a session's workspace.
#[derive(Debug, Clone)]
pub struct FileBytes {
    pub data: Vec<u8>,
    pub size: u64,
    pub truncated: bool,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SessionClosed {
    pub session_id: String,
    pub status: SessionStatus,
    /// Position of `session.closed` (or of the end recorded before it).
    pub position: u64,
    /// Bytes overwritten when the workspace was scrubbed (null: the runner
    /// could not be reached; it destroys the sandbox when it notices).
    pub bytes_scrubbed: Option<u64>,
}

/// A port of a session was exposed (service mode).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Exposed {
    pub session_id: String,
    pub port: u16,
    /// Where callers reach it (their JWT, decided by `glassbox.services`).
    pub path: String,
    /// Position of `service.exposed`.
    pub position: u64,
}

/// A request to an exposed port, as the caller sent it.
#[derive(Debug, Clone)]
pub struct ServiceCall {
    pub port: u16,
    pub method: String,
    /// Path (below the port's prefix) and query, starting with `/`.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What the session's service answered.
#[derive(Debug, Clone)]
pub struct ServiceAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Headers of the caller's that never reach a session: its credentials.
fn caller_only(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "authorization" | "cookie" | "proxy-authorization" | "idempotency-key"
    )
}

/// A session's egress allowlist was replaced.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct EgressChanged {
    pub session_id: String,
    /// The allowlist now (normalized: lower-case, no trailing dot, each once).
    pub egress: Vec<String>,
    /// Position of `session.egress_changed`.
    pub position: u64,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SessionDataDeleted {
    pub session_id: String,
    /// Position of `key.destroyed`.
    pub position: u64,
}

/// The stored output of one exec.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ExecOutput {
    pub session_id: String,
    pub exec: u64,
    pub outcome: catalogue::Outcome,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub wall_ms: u64,
    pub stdout: crate::command::StreamOutput,
    pub stderr: crate::command::StreamOutput,
    pub context_reset: bool,
}

fn utf8_or_b64(bytes: &[u8]) -> (String, crate::command::ContentEncoding) {
    use base64::Engine as _;
    match std::str::from_utf8(bytes) {
        Ok(t) => (t.to_owned(), crate::command::ContentEncoding::Utf8),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(bytes),
            crate::command::ContentEncoding::Base64,
        ),
    }
}

fn output_of(bytes: &[u8], size: u64, truncated: bool) -> crate::command::StreamOutput {
    let (content, encoding) = utf8_or_b64(bytes);
    crate::command::StreamOutput {
        encoding,
        content,
        size_bytes: size,
        truncated,
    }
}

/// Milliseconds since the epoch of a deadline.
fn ms(t: chrono::DateTime<chrono::Utc>) -> u64 {
    t.timestamp_millis().max(0) as u64
}

impl Core {
    fn data_plane(&self) -> Result<&Arc<DataPlane>, ApiError> {
        self.data_plane.as_ref().ok_or_else(|| {
            ApiError::Unavailable("sessions are not configured on this service".into())
        })
    }

    /// The session as its stream says now; another tenant's is a 404.
    pub async fn session_now(&self, tenant: &str, session_id: &str) -> Result<Session, ApiError> {
        let s: Session = self
            .store
            .load(Stream::session(session_id).as_str())
            .await
            .map_err(ApiError::store("read the session"))?;
        if !s.exists() || s.tenant != tenant {
            return Err(ApiError::NotFound(format!("session {session_id}")));
        }
        Ok(s)
    }

    /// Opens a session (see the module docs).
    pub async fn open_session(
        &self,
        caller: &Caller,
        request: SessionRequest,
        idempotency_key: Option<String>,
    ) -> Result<SessionReceipt, ApiError> {
        let spec = request
            .clone()
            .parse()
            .map_err(|e| ApiError::Invalid(e.to_string()))?;
        let tenant = caller.identity.tenant.clone();
        let digest = request_digest(&request, caller);
        if let Some((first, last)) = self
            .earlier_answer(&tenant, idempotency_key.as_ref(), digest)
            .await?
        {
            let mut r = self.session_receipt(first, last).await?;
            r.replayed = true;
            return Ok(r);
        }
        let session_id = Uuid::new_v4().to_string();
        let stream = Stream::session(&session_id);
        let authz_input = Core::authz_input(caller, "session.open", &tenant);
        let authz = self.engine.evaluate(Policy::Authz, &authz_input);
        let mut events: Vec<KnownEvent> = Vec::new();
        let mut created_key = false;
        let mut placed: Option<RunnerBeat> = None;
        if !authz.allow {
            events.push(evaluated_event(&authz, &authz_input));
            events.push(KnownEvent::SessionRejected(Box::new(
                catalogue::SessionRejected {
                    session_id: session_id.clone(),
                    reasons: authz.reasons.clone(),
                },
            )));
        } else {
            created_key = true;
            let blob_err =
                |e: glassbox_platform::blob::BlobError| ApiError::Internal(e.to_string());
            self.blobs
                .create_data_key(&session_id, &tenant)
                .await
                .map_err(blob_err)?;
            let env = if spec.env.is_empty() {
                None
            } else {
                let bytes = serde_json::to_vec(&json!(spec.env))
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
                match self
                    .blobs
                    .put(&session_id, &blob_path(&session_id, "env"), &bytes)
                    .await
                {
                    Ok(b) => Some(catalogue::BlobRef {
                        hmac: b.hmac,
                        size_bytes: b.size_bytes,
                        key: b.key,
                    }),
                    Err(e) => {
                        self.shred_session_blobs(&session_id).await;
                        return Err(blob_err(e));
                    }
                }
            };
            let requested = catalogue::SessionRequested {
                session_id: session_id.clone(),
                language: spec.language.to_string(),
                env,
                env_count: spec.env.len() as u64,
                dependencies: spec.dependencies.iter().map(|d| d.dependency()).collect(),
                secrets: spec.secrets.iter().map(|s| s.name.to_string()).collect(),
                limits: spec.limits.clone(),
                idempotency_key: idempotency_key.clone(),
                egress: spec.egress.iter().map(ToString::to_string).collect(),
            };
            let open = glassbox_projector::queries::open_sessions(&self.pool, &tenant)
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            let limits_in = crate::core::requested_limits(&spec.limits);
            let admission_input = json!({
                "tenant": tenant,
                "kind": "session",
                "language": spec.language.as_str(),
                "limits": limits_in,
                "dependencies": requested.dependencies,
                "secrets": requested.secrets,
                "open_sessions": open,
            });
            events.push(KnownEvent::SessionRequested(Box::new(requested)));
            events.push(evaluated_event(&authz, &authz_input));
            let (reasons, effective) = self.admit::<SessionLimits>(
                &tenant,
                spec.language.as_str(),
                &admission_input,
                &spec.secrets,
                &spec.egress,
                &mut events,
            );
            if reasons.is_empty() {
                // Every policy allowed it; a session needs a runner with room.
                // None is a state of the service, not a decision about the
                // request: 503 (try again), and nothing of it is kept.
                let place = match self.data_plane.as_ref() {
                    None => Err(ApiError::Unavailable(
                        "sessions are not configured on this service".into(),
                    )),
                    Some(dp) => dp.place().await.and_then(|r| {
                        r.ok_or_else(|| {
                            ApiError::Unavailable(
                                "no runner has room for a session; try again later".into(),
                            )
                        })
                    }),
                };
                match place {
                    Ok(r) => placed = Some(r),
                    Err(e) => {
                        self.shred_session_blobs(&session_id).await;
                        return Err(e);
                    }
                }
            }
            events.push(match (reasons.is_empty(), effective, &placed) {
                (true, Some(effective_limits), Some(runner)) => {
                    let life = effective_limits.max_lifetime_secs.unwrap_or(3600);
                    let expires = chrono::Utc::now()
                        + chrono::Duration::seconds(i64::try_from(life).unwrap_or(i64::MAX / 2000));
                    KnownEvent::SessionOpened(Box::new(catalogue::SessionOpened {
                        session_id: session_id.clone(),
                        language: spec.language.to_string(),
                        runner: runner.runner_id.clone(),
                        effective_limits,
                        expires_at: glassbox_verify::record::format_timestamp(&expires),
                    }))
                }
                _ => KnownEvent::SessionRejected(Box::new(catalogue::SessionRejected {
                    session_id: session_id.clone(),
                    reasons,
                })),
            });
        }
        let envelope = caller.keyed_envelope(idempotency_key.as_ref(), digest);
        let command = SessionCommand::Open { events };
        let outcome = self
            .store
            .decide_from(
                stream.as_str(),
                Session::default(),
                &envelope,
                |s: &Session| on_session(&stream, s.decide(command.clone())?),
            )
            .await;
        let d = match outcome {
            Ok(d) => d,
            Err(e) => {
                if created_key {
                    self.shred_session_blobs(&session_id).await;
                }
                return Err(session_refused(&session_id, "append the opening")(e));
            }
        };
        let o = d
            .appended
            .ok_or_else(|| ApiError::Internal("the opening appended nothing".into()))?;
        if o.replayed {
            if created_key {
                self.shred_session_blobs(&session_id).await;
            }
            let mut r = self
                .session_receipt(o.first_position(), o.last_position())
                .await?;
            r.replayed = true;
            return Ok(r);
        }
        if let (Some(runner), SessionStatus::Opening) = (&placed, d.state.status) {
            self.start_on_runner(caller, &session_id, d.state, runner)
                .await;
        }
        self.session_receipt(o.first_position(), o.last_position())
            .await
    }

    /// Asks the placed runner to start the sandbox; when it cannot be
    /// reached, the session is recorded failed (the runner records its own
    /// failures).
    async fn start_on_runner(
        &self,
        caller: &Caller,
        session_id: &str,
        state: Session,
        runner: &RunnerBeat,
    ) {
        let Ok(dp) = self.data_plane() else { return };
        let started = async {
            let mut c = dp.client(&runner.runner_id, &runner.addr)?;
            let req = dp.request(
                &runner.runner_id,
                session_id,
                api::OpenSessionRequest {
                    session_id: session_id.to_owned(),
                },
                OPEN_TIMEOUT,
            )?;
            c.open_session(req).await.map_err(from_status)
        }
        .await;
        match started {
            Ok(_) => {
                let now: Result<Session, _> =
                    self.store.load(Stream::session(session_id).as_str()).await;
                if let Ok(s) = now {
                    self.touch(&s).await;
                }
            }
            Err(e) => {
                tracing::warn!(session = %session_id, runner = %runner.runner_id, error = %e, "a runner did not start a session");
                let stream = Stream::session(session_id);
                let reason = format!("runner {} did not start the sandbox", runner.runner_id);
                let r = runner.runner_id.clone();
                let _ = self
                    .store
                    .decide_from(stream.as_str(), state, &caller.envelope(), |s: &Session| {
                        // Only if the runner has not recorded an outcome itself.
                        let fresh = s.decide(SessionCommand::Fail {
                            runner: r.clone(),
                            reason: reason.clone(),
                        })?;
                        on_session(&stream, fresh)
                    })
                    .await;
            }
        }
    }

    /// Records a session's owner and next deadline in the hot state (or
    /// forgets it once it has ended).
    pub async fn touch(&self, s: &Session) {
        let Ok(dp) = self.data_plane() else { return };
        let (Some(id), Some(runner)) = (s.session_id.as_deref(), s.runner.as_deref()) else {
            return;
        };
        let r = match s.deadline() {
            Some((t, _)) => {
                dp.hot
                    .put_session(&SessionHot {
                        session_id: id.to_owned(),
                        tenant: s.tenant.clone(),
                        runner: runner.to_owned(),
                        deadline_ms: ms(t),
                    })
                    .await
            }
            None => dp.hot.remove_session(id, runner).await,
        };
        if let Err(e) = r {
            tracing::warn!(session = %id, error = %e, "could not update the hot session state");
        }
    }

    async fn shred_session_blobs(&self, session_id: &str) {
        let _ = self.blobs.destroy_key(session_id).await;
        let _ = self
            .blobs
            .delete_prefix(&format!("{}/", Stream::session_blob_prefix(session_id)))
            .await;
    }

    /// The reply to an opening, rebuilt from its records (so a retry with the
    /// same idempotency key gets the same decisions).
    pub async fn session_receipt(&self, first: u64, last: u64) -> Result<SessionReceipt, ApiError> {
        let records = self
            .store
            .read_all(first, last.saturating_sub(first) + 1)
            .await
            .map_err(ApiError::store("read the opening"))?;
        let mut decisions = Vec::new();
        let mut reasons = Vec::new();
        let mut unauthorized = false;
        let mut session_id = None;
        for s in records.iter().filter(|s| s.record.position <= last) {
            match KnownEvent::decode(&s.record.event_type, &s.record.data) {
                Ok(Some(KnownEvent::PolicyEvaluated(e))) => {
                    if e.policy == Policy::Authz.name() && e.decision == Verdict::Deny {
                        unauthorized = true;
                    }
                    decisions.push(DecisionView {
                        policy: e.policy,
                        decision: e.decision,
                        reasons: e.reasons,
                        error: e.error,
                    });
                }
                Ok(Some(KnownEvent::SessionRejected(e))) => {
                    session_id = Some(e.session_id);
                    reasons = e.reasons;
                }
                Ok(Some(KnownEvent::SessionOpened(e))) => session_id = Some(e.session_id),
                _ => {}
            }
        }
        let id = session_id.ok_or_else(|| {
            ApiError::Internal(format!(
                "records {first}..={last} are not a session opening"
            ))
        })?;
        let s: Session = self
            .store
            .load(Stream::session(&id).as_str())
            .await
            .map_err(ApiError::store("read the session"))?;
        let mut session = s
            .view()
            .ok_or_else(|| ApiError::Internal(format!("session {id} has no request")))?;
        if unauthorized {
            // Nothing of the caller's was stored: the view has no request.
            session.status = SessionStatus::Rejected;
        }
        Ok(SessionReceipt {
            session,
            decisions,
            reasons,
            position: last,
            unauthorized,
            replayed: false,
        })
    }

    /// An active session of the caller's tenant and a client for its runner.
    async fn live_session(
        &self,
        caller: &Caller,
        session_id: &str,
    ) -> Result<(Session, String, RunnerClient<Channel>), ApiError> {
        let dp = self.data_plane()?;
        let s = self
            .session_now(&caller.identity.tenant, session_id)
            .await?;
        if s.status != SessionStatus::Active {
            return Err(ApiError::Conflict(format!(
                "session {session_id} is {}",
                s.status
            )));
        }
        let (runner, c) = dp.runner_of(&s).await?;
        Ok((s, runner, c))
    }

    /// Runs an exec and streams its events (the JSON reply collects them).
    pub async fn exec_stream(
        &self,
        caller: &Caller,
        session_id: &str,
        request: ExecRequest,
    ) -> Result<tokio::sync::mpsc::Receiver<ExecEvent>, ApiError> {
        let source = request
            .parse()
            .map_err(|e| ApiError::Invalid(e.to_string()))?;
        let (s, runner, mut c) = self.live_session(caller, session_id).await?;
        let dp = self.data_plane()?;
        let exec_cap = s
            .effective_limits
            .as_ref()
            .and_then(|l| l.exec_timeout_ms)
            .unwrap_or(30_000);
        let timeout_ms = request.timeout_ms.unwrap_or(exec_cap);
        if timeout_ms > exec_cap {
            return Err(ApiError::Invalid(format!(
                "timeout_ms: at most the session's exec_timeout_ms ({exec_cap})"
            )));
        }
        let msg = api::ExecRequest {
            session_id: session_id.to_owned(),
            source: Some(match source {
                ExecSource::Code(t) => api::exec_request::Source::Code(t),
                ExecSource::Command(t) => api::exec_request::Source::Command(t),
            }),
            stdin: request.stdin.unwrap_or_default().into_bytes(),
            timeout_ms,
        };
        let req = dp.request(
            &runner,
            session_id,
            msg,
            Duration::from_millis(timeout_ms) + Duration::from_secs(30),
        )?;
        let mut stream = c.exec(req).await.map_err(from_status)?.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let core = self.clone();
        let id = session_id.to_owned();
        tokio::spawn(async move {
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            loop {
                // A client that goes away (its receiver dropped) cancels the
                // exec: dropping the gRPC stream tells the runner.
                let next = tokio::select! {
                    m = stream.message() => m,
                    _ = tx.closed() => break,
                };
                let event = match next {
                    Ok(Some(e)) => e,
                    Ok(None) => break,
                    Err(status) => {
                        let _ = tx
                            .send(ExecEvent::Error {
                                detail: status.message().to_owned(),
                            })
                            .await;
                        break;
                    }
                };
                let out = match event.event {
                    Some(api::exec_event::Event::Started(st)) => ExecEvent::Started {
                        exec: st.exec,
                        position: st.position,
                    },
                    Some(api::exec_event::Event::Output(o)) => {
                        let is_err = o.stream == api::OutputStream::Stderr as i32;
                        if is_err {
                            stderr.extend_from_slice(&o.data);
                        } else {
                            stdout.extend_from_slice(&o.data);
                        }
                        let (data, encoding) = utf8_or_b64(&o.data);
                        if is_err {
                            ExecEvent::Stderr { data, encoding }
                        } else {
                            ExecEvent::Stdout { data, encoding }
                        }
                    }
                    Some(api::exec_event::Event::Finished(f)) => {
                        ExecEvent::Finished(Box::new(ExecResult {
                            session_id: id.clone(),
                            exec: f.exec,
                            outcome: f.outcome,
                            exit_code: f.exit_code,
                            signal: f.signal,
                            wall_ms: f.wall_ms,
                            stdout: output_of(&stdout, f.stdout_bytes, f.stdout_truncated),
                            stderr: output_of(&stderr, f.stderr_bytes, f.stderr_truncated),
                            context_reset: f.context_reset,
                            redactions: f.redactions,
                            error: f.error,
                            position: f.position,
                        }))
                    }
                    None => continue,
                };
                if tx.send(out).await.is_err() {
                    // The client went away: dropping the stream cancels the exec.
                    break;
                }
            }
            if let Ok(s) = core
                .store
                .load::<Session>(Stream::session(&id).as_str())
                .await
            {
                core.touch(&s).await;
            }
        });
        Ok(rx)
    }

    /// Runs an exec to its end.
    pub async fn exec(
        &self,
        caller: &Caller,
        session_id: &str,
        request: ExecRequest,
    ) -> Result<ExecResult, ApiError> {
        let mut rx = self.exec_stream(caller, session_id, request).await?;
        while let Some(e) = rx.recv().await {
            match e {
                ExecEvent::Finished(r) => return Ok(*r),
                ExecEvent::Error { detail } => return Err(ApiError::Unavailable(detail)),
                _ => {}
            }
        }
        Err(ApiError::Unavailable(format!(
            "session {session_id}: the runner ended the exec without a result"
        )))
    }

    pub async fn write_file(
        &self,
        caller: &Caller,
        session_id: &str,
        path: String,
        data: Vec<u8>,
    ) -> Result<FileWritten, ApiError> {
        let (s, runner, mut c) = self.live_session(caller, session_id).await?;
        let dp = self.data_plane()?;
        let mut chunks = Vec::new();
        let size = data.len() as u64;
        let mut first = true;
        for part in data.chunks(1 << 20) {
            chunks.push(api::WriteFileChunk {
                session_id: if first {
                    session_id.to_owned()
                } else {
                    String::new()
                },
                path: if first { path.clone() } else { String::new() },
                data: part.to_vec(),
            });
            first = false;
        }
        if chunks.is_empty() {
            chunks.push(api::WriteFileChunk {
                session_id: session_id.to_owned(),
                path: path.clone(),
                data: Vec::new(),
            });
        }
        let req = dp.request(
            &runner,
            session_id,
            tokio_stream::iter(chunks),
            CALL_TIMEOUT,
        )?;
        let r = c.write_file(req).await.map_err(from_status)?.into_inner();
        self.touch_after(s, session_id).await;
        Ok(FileWritten {
            session_id: session_id.to_owned(),
            path,
            size_bytes: size.max(r.size),
            position: r.position,
        })
    }

    pub async fn read_file(
        &self,
        caller: &Caller,
        session_id: &str,
        path: String,
    ) -> Result<FileBytes, ApiError> {
        let (s, runner, mut c) = self.live_session(caller, session_id).await?;
        let dp = self.data_plane()?;
        let req = dp.request(
            &runner,
            session_id,
            api::ReadFileRequest {
                session_id: session_id.to_owned(),
                path,
                max_bytes: MAX_FILE_BYTES,
            },
            CALL_TIMEOUT,
        )?;
        let mut stream = c.read_file(req).await.map_err(from_status)?.into_inner();
        let mut out = FileBytes {
            data: Vec::new(),
            size: 0,
            truncated: false,
        };
        while let Some(chunk) = stream.message().await.map_err(from_status)? {
            out.data.extend_from_slice(&chunk.data);
            out.size = chunk.size;
            out.truncated |= chunk.truncated;
            if chunk.last {
                break;
            }
        }
        self.touch_after(s, session_id).await;
        Ok(out)
    }

    pub async fn list_files(
        &self,
        caller: &Caller,
        session_id: &str,
        path: String,
    ) -> Result<FileListing, ApiError> {
        let (s, runner, mut c) = self.live_session(caller, session_id).await?;
        let dp = self.data_plane()?;
        let req = dp.request(
            &runner,
            session_id,
            api::ListFilesRequest {
                session_id: session_id.to_owned(),
                path: path.clone(),
            },
            CALL_TIMEOUT,
        )?;
        let r = c.list_files(req).await.map_err(from_status)?.into_inner();
        self.touch_after(s, session_id).await;
        Ok(FileListing {
            session_id: session_id.to_owned(),
            path,
            entries: r
                .entries
                .into_iter()
                .map(|e| FileEntryView {
                    name: e.name,
                    kind: e.kind,
                    size_bytes: e.size,
                })
                .collect(),
            truncated: r.truncated,
            position: r.position,
        })
    }

    pub async fn delete_file(
        &self,
        caller: &Caller,
        session_id: &str,
        path: String,
    ) -> Result<FileDeleted, ApiError> {
        let (s, runner, mut c) = self.live_session(caller, session_id).await?;
        let dp = self.data_plane()?;
        let req = dp.request(
            &runner,
            session_id,
            api::DeleteFileRequest {
                session_id: session_id.to_owned(),
                path: path.clone(),
            },
            CALL_TIMEOUT,
        )?;
        let r = c.delete_file(req).await.map_err(from_status)?.into_inner();
        self.touch_after(s, session_id).await;
        Ok(FileDeleted {
            session_id: session_id.to_owned(),
            path,
            position: r.position,
        })
    }

    /// Refreshes the hot state after a call the runner recorded (its idle
    /// deadline moved): folds only the records appended since `s`.
    async fn touch_after(&self, mut s: Session, session_id: &str) {
        if self
            .store
            .catch_up(Stream::session(session_id).as_str(), &mut s)
            .await
            .is_ok()
        {
            self.touch(&s).await;
        }
    }

    /// Ends a session with `command` (close, expire or lose), then asks its
    /// runner to destroy the sandbox (the runner records the workspace's
    /// destruction).
    pub async fn end_session(
        &self,
        envelope: &glassbox_events::Envelope,
        state: Session,
        command: SessionCommand,
    ) -> Result<SessionClosed, ApiError> {
        let id = state.id().to_owned();
        let stream = Stream::session(&id);
        let d = self
            .store
            .decide_from(stream.as_str(), state, envelope, |s: &Session| {
                on_session(&stream, s.decide(command.clone())?)
            })
            .await
            .map_err(session_refused(&id, "record the session's end"))?;
        let position = d.appended.as_ref().map_or(0, |a| a.last_position());
        self.touch(&d.state).await;
        let mut bytes_scrubbed = None;
        if let Ok(dp) = self.data_plane()
            && let Ok((runner, mut c)) = dp.runner_of(&d.state).await
            && let Ok(req) = dp.request(
                &runner,
                &id,
                api::CloseSessionRequest {
                    session_id: id.clone(),
                },
                CALL_TIMEOUT,
            )
        {
            match c.close_session(req).await {
                Ok(r) => bytes_scrubbed = Some(r.into_inner().bytes_scrubbed),
                Err(e) => {
                    tracing::warn!(session = %id, error = %e.message(), "the runner did not destroy a session's sandbox")
                }
            }
        }
        Ok(SessionClosed {
            session_id: id,
            status: d.state.status,
            position,
            bytes_scrubbed,
        })
    }

    /// Exposes a port of an active session (service mode): recorded as
    /// `service.exposed`; callers then reach it through
    /// `/v1/sessions/{id}/ports/{port}/…`.
    pub async fn expose_port(
        &self,
        caller: &Caller,
        session_id: &str,
        request: glassbox_domain::request::ExposeRequest,
    ) -> Result<Exposed, ApiError> {
        request
            .check()
            .map_err(|e| ApiError::Invalid(e.to_string()))?;
        let (s, _, _) = self.live_session(caller, session_id).await?;
        let exposure = catalogue::ServiceExposed {
            session_id: session_id.to_owned(),
            port: u64::from(request.port),
            roles: request.roles,
            subjects: request.subjects,
            apps: request.apps,
        };
        let stream = Stream::session(session_id);
        let command = SessionCommand::Expose { exposure };
        let d = self
            .store
            .decide_from(stream.as_str(), s, &caller.envelope(), |s: &Session| {
                on_session(&stream, s.decide(command.clone())?)
            })
            .await
            .map_err(session_refused(session_id, "record an exposure"))?;
        Ok(Exposed {
            session_id: session_id.to_owned(),
            port: request.port,
            path: format!("/v1/sessions/{session_id}/ports/{}/", request.port),
            position: d.appended.as_ref().map_or(0, |a| a.last_position()),
        })
    }

    /// One request to an exposed port: `glassbox.services` decides, the
    /// tenant's service rate applies, the session's runner carries it, and
    /// the request is recorded (`service.request`) whatever the answer.
    pub async fn service_call(
        &self,
        caller: &Caller,
        session_id: &str,
        call: ServiceCall,
    ) -> Result<ServiceAnswer, ApiError> {
        let tenant = caller.identity.tenant.clone();
        let s = self.session_now(&tenant, session_id).await?;
        let Some(exposure) = s.exposure(u64::from(call.port)).cloned() else {
            return Err(ApiError::NotFound(format!(
                "port {} of session {session_id} (not exposed)",
                call.port
            )));
        };
        if s.status != SessionStatus::Active {
            return Err(ApiError::Conflict(format!(
                "session {session_id} is {}",
                s.status
            )));
        }
        if call.body.len() > glassbox_domain::request::MAX_SERVICE_BODY {
            return Err(ApiError::TooLarge(format!(
                "a service request body is at most {} bytes",
                glassbox_domain::request::MAX_SERVICE_BODY
            )));
        }
        let input = json!({
            "tenant": s.tenant,
            "caller": crate::core::identity_input(&caller.identity),
            "port": call.port,
            "exposure": {"roles": exposure.roles, "subjects": exposure.subjects, "apps": exposure.apps},
        });
        let d = self
            .engine
            .evaluate(glassbox_policies::Policy::Services, &input);
        let path_hmac = self
            .blobs
            .keyed_digest(session_id, call.path.as_bytes())
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let who = caller.identity.subject.clone();
        let record = |status: u16, bytes_in: u64, bytes_out: u64, allow: bool| {
            KnownEvent::ServiceRequest(Box::new(catalogue::ServiceRequest {
                session_id: session_id.to_owned(),
                port: u64::from(call.port),
                caller: who.clone(),
                method: call.method.clone(),
                path_hmac,
                decision: if allow {
                    catalogue::Decision::Allow
                } else {
                    catalogue::Decision::Deny
                },
                status: u64::from(status),
                bytes_in,
                bytes_out,
            }))
        };
        let request_bytes = call.body.len() as u64;
        let mut events = vec![crate::core::evaluated_event(&d, &input)];
        let outcome: Result<ServiceAnswer, ApiError> = if !d.allow {
            Err(ApiError::Forbidden(d.reasons.clone()))
        } else {
            let rate = d
                .effective_limits
                .as_ref()
                .and_then(|m| m.get("rate_per_sec"))
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(20);
            let limited = match &self.limiter {
                Some(l) => match l.check_service(&tenant, rate).await {
                    Ok(crate::ratelimit::Verdict::Allowed) => None,
                    Ok(crate::ratelimit::Verdict::Limited { .. }) => Some(ApiError::RateLimited {
                        retry_after_secs: 1,
                    }),
                    // Fail closed.
                    Err(e) => Some(ApiError::Unavailable(e.to_string())),
                },
                None => None,
            };
            match limited {
                Some(e) => Err(e),
                None => self.carry(&s, session_id, &call).await,
            }
        };
        let status = match &outcome {
            Ok(a) => a.status,
            Err(e) => e.to_problem().status,
        };
        let bytes_out = outcome.as_ref().map_or(0, |a| a.body.len() as u64);
        events.push(record(status, request_bytes, bytes_out, d.allow));
        let stream = Stream::session(session_id);
        let command = SessionCommand::Serve { events };
        let envelope = caller.envelope();
        // Not recorded: not answered either (every request is on the ledger).
        self.store
            .decide_from(stream.as_str(), s, &envelope, |s: &Session| {
                on_session(&stream, s.decide(command.clone())?)
            })
            .await
            .map_err(session_refused(session_id, "record a service request"))?;
        outcome
    }

    /// Carries one allowed request to the session's runner.
    async fn carry(
        &self,
        s: &Session,
        session_id: &str,
        call: &ServiceCall,
    ) -> Result<ServiceAnswer, ApiError> {
        let dp = self.data_plane()?;
        let (runner, mut client) = dp.runner_of(s).await?;
        let req = dp.request(
            &runner,
            session_id,
            api::ServiceHttpRequest {
                session_id: session_id.to_owned(),
                port: u32::from(call.port),
                method: call.method.clone(),
                path: call.path.clone(),
                headers: call
                    .headers
                    .iter()
                    .filter(|(k, _)| !caller_only(k))
                    .map(|(name, value)| api::HttpHeader {
                        name: name.clone(),
                        value: value.clone(),
                    })
                    .collect(),
                body: call.body.clone(),
            },
            SERVICE_TIMEOUT,
        )?;
        let r = client
            .service_request(req)
            .await
            .map_err(from_status)?
            .into_inner();
        Ok(ServiceAnswer {
            status: u16::try_from(r.status).unwrap_or(502),
            headers: r.headers.into_iter().map(|h| (h.name, h.value)).collect(),
            body: r.body,
        })
    }

    /// Replaces an active session's egress allowlist: each destination
    /// decided by `glassbox.egress` and recorded with the change (a refusal:
    /// the decisions alone, and 403); then its runner applies it to the
    /// session's proxy from the next connection on.
    pub async fn set_session_egress(
        &self,
        caller: &Caller,
        session_id: &str,
        egress: Vec<glassbox_domain::request::EgressTarget>,
    ) -> Result<EgressChanged, ApiError> {
        let tenant = caller.identity.tenant.clone();
        let (s, runner, mut client) = self.live_session(caller, session_id).await?;
        let mut events = Vec::new();
        let mut reasons = Vec::new();
        self.decide_egress(&tenant, &egress, &mut events, &mut reasons);
        let list: Vec<String> = egress.iter().map(ToString::to_string).collect();
        if reasons.is_empty() {
            events.push(KnownEvent::SessionEgressChanged(Box::new(
                catalogue::SessionEgressChanged {
                    session_id: session_id.to_owned(),
                    egress: list.clone(),
                },
            )));
        }
        let stream = Stream::session(session_id);
        let command = SessionCommand::ChangeEgress { events };
        let d = self
            .store
            .decide_from(stream.as_str(), s, &caller.envelope(), |s: &Session| {
                on_session(&stream, s.decide(command.clone())?)
            })
            .await
            .map_err(session_refused(session_id, "record an egress change"))?;
        if !reasons.is_empty() {
            return Err(ApiError::Forbidden(reasons));
        }
        let dp = self.data_plane()?;
        let req = dp.request(
            &runner,
            session_id,
            api::SetEgressRequest {
                session_id: session_id.to_owned(),
            },
            CALL_TIMEOUT,
        )?;
        client.set_egress(req).await.map_err(from_status)?;
        Ok(EgressChanged {
            session_id: session_id.to_owned(),
            egress: list,
            position: d.appended.as_ref().map_or(0, |a| a.last_position()),
        })
    }

    pub async fn close_session(
        &self,
        caller: &Caller,
        session_id: &str,
        reason: Option<String>,
    ) -> Result<SessionClosed, ApiError> {
        let s = self
            .session_now(&caller.identity.tenant, session_id)
            .await?;
        let reason = reason.unwrap_or_else(|| format!("closed by {}", caller.identity.subject));
        self.end_session(&caller.envelope(), s, SessionCommand::Close { reason })
            .await
    }

    pub async fn delete_session_data(
        &self,
        caller: &Caller,
        session_id: &str,
    ) -> Result<SessionDataDeleted, ApiError> {
        let s = self
            .session_now(&caller.identity.tenant, session_id)
            .await?;
        let stream = Stream::session(session_id);
        let reason = format!("deleted on request of {}", caller.identity.subject);
        let d = self
            .store
            .decide_from(stream.as_str(), s, &caller.envelope(), |s: &Session| {
                on_session(
                    &stream,
                    s.decide(SessionCommand::Shred {
                        reason: reason.clone(),
                    })?,
                )
            })
            .await
            .map_err(session_refused(session_id, "record the key destruction"))?;
        self.shred_session_blobs(session_id).await;
        Ok(SessionDataDeleted {
            session_id: session_id.to_owned(),
            position: d.state.destroyed.unwrap_or(0),
        })
    }

    /// An exec's stored output (from `session.exec_finished`, decrypted).
    pub async fn exec_output(
        &self,
        tenant: &str,
        session_id: &str,
        exec: u64,
    ) -> Result<ExecOutput, ApiError> {
        let s = self.session_now(tenant, session_id).await?;
        if s.destroyed.is_some() {
            return Err(ApiError::Gone(format!(
                "session {session_id}: its data was deleted"
            )));
        }
        let records = self
            .store
            .read_stream(Stream::session(session_id).as_str(), 1, 1_000_000)
            .await
            .map_err(ApiError::store("read the session"))?;
        let finished = records
            .iter()
            .filter_map(
                |r| match KnownEvent::decode(&r.record.event_type, &r.record.data) {
                    Ok(Some(KnownEvent::SessionExecFinished(f))) if f.exec == exec => Some(f),
                    _ => None,
                },
            )
            .next()
            .ok_or_else(|| ApiError::NotFound(format!("exec {exec} of session {session_id}")))?;
        let mut streams = Vec::new();
        for out in [&finished.stdout, &finished.stderr] {
            let bytes = match &out.blob {
                Some(b) => self
                    .blobs
                    .get_checked(session_id, &b.key, &b.hmac)
                    .await
                    .map_err(|e| ApiError::Internal(format!("read an exec's output: {e}")))?,
                None => Vec::new(),
            };
            streams.push(output_of(&bytes, out.size_bytes, out.truncated));
        }
        let stderr = streams.pop().unwrap_or_else(|| output_of(&[], 0, false));
        let stdout = streams.pop().unwrap_or_else(|| output_of(&[], 0, false));
        Ok(ExecOutput {
            session_id: session_id.to_owned(),
            exec,
            outcome: finished.outcome,
            exit_code: finished.exit_code,
            signal: finished.signal,
            wall_ms: finished.wall_ms,
            stdout,
            stderr,
            context_reset: finished.context_reset,
        })
    }

    /// One pass of the reaper: rebuilds the hot state from the read model if
    /// Redis lost it, expires sessions past their deadline, and records
    /// sessions whose runner stopped beating as lost. Any instance may run
    /// it; the domain refuses a second end of the same session.
    pub async fn reap(&self) -> Result<usize, ApiError> {
        let dp = self.data_plane()?.clone();
        let hot_err = |e: glassbox_platform::hot::HotError| ApiError::Unavailable(e.to_string());
        let now = chrono::Utc::now();
        let mut built_at = dp.hot.built_at().await.map_err(hot_err)?;
        if built_at.is_none() {
            let live = glassbox_projector::queries::live_sessions(&self.pool, 100_000)
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            for s in &live {
                self.touch(s).await;
            }
            dp.hot.mark_built(ms(now)).await.map_err(hot_err)?;
            built_at = Some(ms(now));
            tracing::info!(
                sessions = live.len(),
                "hot session state rebuilt from the read model"
            );
        }
        let mut ended = 0;
        for id in dp.hot.due(ms(now), 100).await.map_err(hot_err)? {
            let s: Session = match self.store.load(Stream::session(&id).as_str()).await {
                Ok(s) => s,
                Err(_) => continue,
            };
            let env = glassbox_events::Envelope::new(s.tenant.clone(), reaper_actor());
            match self
                .end_session(&env, s.clone(), SessionCommand::Expire { now })
                .await
            {
                Ok(_) => ended += 1,
                // Not due any more (it was used), or already ended: re-file it.
                Err(_) => self.touch(&s).await,
            }
        }
        // Heartbeats were lost with the rest: give runners time to beat again.
        let grace = HEARTBEAT_GRACE.as_millis() as u64;
        if built_at.is_some_and(|t| ms(now) < t.saturating_add(grace)) {
            return Ok(ended);
        }
        let beats: std::collections::HashSet<String> = dp
            .hot
            .runners()
            .await
            .map_err(hot_err)?
            .into_iter()
            .map(|b| b.runner_id)
            .collect();
        for id in dp.hot.sessions().await.map_err(hot_err)? {
            let Some(h) = dp.hot.session(&id).await.map_err(hot_err)? else {
                continue;
            };
            if beats.contains(&h.runner) {
                continue;
            }
            let s: Session = match self.store.load(Stream::session(&id).as_str()).await {
                Ok(s) => s,
                Err(_) => continue,
            };
            let env = glassbox_events::Envelope::new(s.tenant.clone(), reaper_actor());
            let reason = format!("runner {} stopped answering", h.runner);
            match self
                .end_session(&env, s.clone(), SessionCommand::Lose { reason })
                .await
            {
                Ok(_) => ended += 1,
                Err(_) => self.touch(&s).await,
            }
        }
        Ok(ended)
    }
}

fn reaper_actor() -> glassbox_events::Actor {
    glassbox_events::Actor::system("session-reaper")
}

/// What idempotency compares: the request and who sent it.
fn request_digest(request: &SessionRequest, caller: &Caller) -> Digest {
    let v = json!({
        "kind": "session",
        "request": request,
        "tenant": caller.identity.tenant,
        "subject": caller.identity.subject,
    });
    Digest::of(&serde_json::to_vec(&v).unwrap_or_default())
}
