//! The runner's side of sessions: the data-plane gRPC API
//! (`glassbox-runner-api`) over the session sandboxes this runner holds.
//!
//! The control plane decides whether a session may exist and places it here;
//! this host starts its sandbox, runs its calls one at a time, and records
//! each in the session's stream through the domain's `Session::decide` — the
//! same rules wherever a decision is made. What a program wrote is stored
//! encrypted under the session's data key, with approved secrets' values
//! redacted (in the stream the client sees, too); file names go into events
//! only as encrypted blobs.
//!
//! Every call is authenticated: a token the control plane signed for this
//! runner and this session (`glassbox_platform::runner_token`). A call
//! without one, or with one bound to another runner or session, is refused
//! and recorded (`access.refused` on the runner's stream). The audited
//! bypass (development and test only) records `auth.bypassed` for each call
//! it lets through.

use crate::local::LocalRunsc;
use crate::local::session::{Chunk, SessionSandbox};
use crate::service::SecretProvider;
use crate::spec::{ExecutionSpec, WheelInstall};
use glassbox_domain::catalogue::{self as c, KnownEvent, Outcome, OutputRef, SessionLimits};
use glassbox_domain::request::{EgressTarget, WorkspacePath};
use glassbox_domain::{Session, SessionCommand, SessionRefusal, SessionStatus, Stream};
use glassbox_events::store::{EventStore, NewEvent};
use glassbox_events::{Actor, DecideError, Envelope};
use glassbox_platform::blob::BlobStore;
use glassbox_platform::hot::{HotState, RunnerBeat};
use glassbox_platform::runner_token::{RunnerTokenVerifier, Subject};
use glassbox_runner_api::v1::{
    self as api, CloseSessionReply, CloseSessionRequest, DeleteFileReply, DeleteFileRequest,
    ExecEvent, ExecRequest, FileChunk, FileEntry, HealthReply, HealthRequest, ListFilesReply,
    ListFilesRequest, OpenSessionReply, OpenSessionRequest, ReadFileRequest, SetEgressReply,
    SetEgressRequest, WriteFileChunk, WriteFileReply, exec_event, exec_request,
};
use glassbox_session_agent::protocol::{ExecKind, Stream as OutStream};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

/// How often a runner says it is alive, and how long a beat lasts.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(6);
/// The largest file a client may read in one call.
pub const MAX_READ: u64 = 64 << 20;
/// The most entries one listing answers with.
pub const MAX_LIST: u32 = 10_000;

/// How the data-plane API is set up.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub runner_id: String,
    /// Sessions this runner holds at most.
    pub capacity: u32,
    /// Where the control plane reaches this runner (`http://host:port`).
    pub advertise: String,
    /// Verifies the control plane's tokens (required unless `bypass`).
    pub verifier: Option<RunnerTokenVerifier>,
    /// Development and test only: a call without a token is let through and
    /// recorded.
    pub bypass: bool,
    /// The `glassbox-session-agent` binary.
    pub agent: PathBuf,
    pub secrets: SecretProvider,
    pub wheel_mirror: Option<PathBuf>,
    /// Egress for sessions: each gets a proxy of its own (its allowlist may
    /// start empty and change while it runs). `None`: sessions get no way
    /// out, and a session that asks for one fails to start (fail closed).
    pub egress: Option<SessionEgress>,
}

/// How this runner gives sessions egress.
#[derive(Clone)]
pub struct SessionEgress {
    pub settings: crate::egress::EgressSettings,
    /// `glassbox.egress`, asked again for every connection.
    pub engine: Arc<glassbox_policies::PolicyEngine>,
}

impl std::fmt::Debug for SessionEgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionEgress")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

struct Live {
    tenant: String,
    sandbox: SessionSandbox,
    /// The session folded so far; its lock also makes calls one at a time.
    state: tokio::sync::Mutex<Session>,
    secrets: Vec<(String, String)>,
    limits: SessionLimits,
    /// The session's proxy, until the sandbox is destroyed.
    egress: tokio::sync::Mutex<Option<crate::egress::SandboxEgress>>,
    /// What the proxy lets it reach (changed by `SetEgress`).
    egress_allowlist: Option<Arc<std::sync::RwLock<Vec<EgressTarget>>>>,
    /// Service mode: how its exposed ports are reached.
    dock: Option<crate::ports::ServiceDock>,
}

/// Serves the data-plane API for the sessions placed on this runner.
#[derive(Clone)]
pub struct SessionHost {
    inner: Arc<Inner>,
}

struct Inner {
    store: EventStore,
    blobs: BlobStore,
    backend: LocalRunsc,
    hot: Option<HotState>,
    config: HostConfig,
    live: Mutex<HashMap<String, Arc<Live>>>,
}

/// Why a session call failed: a gRPC status (never with a secret or a
/// program's file name in it).
fn refused(r: SessionRefusal) -> Status {
    match r {
        SessionRefusal::NoSession => Status::not_found("no such session"),
        SessionRefusal::WrongRunner => {
            Status::failed_precondition("the session is placed on another runner")
        }
        SessionRefusal::Ended(s) => Status::failed_precondition(format!("the session is {s}")),
        SessionRefusal::Busy(n) => Status::aborted(format!("exec {n} is still running")),
        other => Status::failed_precondition(other.to_string()),
    }
}

fn internal(step: &str, e: impl std::fmt::Display) -> Status {
    tracing::error!(step, error = %e, "session call failed");
    Status::internal(format!("{step} failed"))
}

impl SessionHost {
    pub fn new(
        store: EventStore,
        blobs: BlobStore,
        backend: LocalRunsc,
        hot: Option<HotState>,
        config: HostConfig,
    ) -> SessionHost {
        SessionHost {
            inner: Arc::new(Inner {
                store,
                blobs,
                backend,
                hot,
                config,
                live: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn runner(&self) -> &str {
        &self.inner.config.runner_id
    }

    fn actor(&self) -> Actor {
        Actor::system(format!("runner:{}", self.runner()))
    }

    /// Reports this host's session capacity and open sessions as gauges.
    pub fn register_metrics(&self) {
        let inner = Arc::downgrade(&self.inner);
        crate::metrics::register_capacity(
            self.runner(),
            "session",
            u64::from(self.inner.config.capacity),
            move || {
                inner
                    .upgrade()
                    .map(|i| i.live.lock().map(|l| l.len() as u64).unwrap_or(0))
            },
        );
    }

    fn live_count(&self) -> usize {
        self.inner.live.lock().map(|l| l.len()).unwrap_or(0)
    }

    fn get(&self, session_id: &str) -> Result<Arc<Live>, Status> {
        self.inner
            .live
            .lock()
            .ok()
            .and_then(|l| l.get(session_id).cloned())
            .ok_or_else(|| {
                Status::not_found(
                    "the session has no sandbox on this runner (it ended, or the runner restarted)",
                )
            })
    }

    /// Decides `command` on the carried state and appends it.
    async fn decide(
        &self,
        tenant: &str,
        session_id: &str,
        state: Session,
        command: impl Fn(&Session) -> SessionCommand,
    ) -> Result<glassbox_events::Decided<Session>, Status> {
        let stream = Stream::session(session_id);
        let env = Envelope::new(tenant, self.actor());
        self.inner
            .store
            .decide_from(stream.as_str(), state, &env, |s: &Session| {
                let events = s.decide(command(s))?;
                events
                    .iter()
                    .map(|e| NewEvent::known(stream.as_str(), e))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| SessionRefusal::Invalid(e.to_string()))
            })
            .await
            .map_err(|e| match e {
                DecideError::Refused(r) => refused(r),
                DecideError::Store(e) => internal("append", e),
                DecideError::Contended { .. } => Status::aborted("the session kept changing"),
            })
    }

    fn position(d: &glassbox_events::Decided<Session>) -> u64 {
        d.appended.as_ref().map_or(0, |a| a.last_position())
    }

    /// Records a call that was refused before it reached a session.
    async fn record_refusal(&self, action: &str, reason: &str) {
        let e = c::AccessRefused {
            action: format!("runner.{action}"),
            reason: reason.to_owned(),
        };
        let stream = Stream::runner(self.runner());
        if let Ok(ev) = NewEvent::typed(stream.as_str(), &e) {
            let req = glassbox_events::AppendRequest::new("system", self.actor(), vec![ev]);
            if let Err(err) = self.inner.store.append(req).await {
                tracing::error!(error = %err, "could not record a refused runner call");
            }
        }
    }

    /// Checks the call's token for `subject` (or lets it through, recorded,
    /// under the bypass).
    async fn authorize<T>(
        &self,
        request: &Request<T>,
        action: &str,
        subject: &Subject,
    ) -> Result<(), Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match (token, &self.inner.config.verifier) {
            (None, _) if self.inner.config.bypass => {
                let path = match subject {
                    Subject::Session(id) => id.clone(),
                    Subject::Runner => "runner".into(),
                };
                let e = c::AuthBypassed {
                    plane: "data".into(),
                    method: action.to_owned(),
                    path,
                    asserted: serde_json::Map::new(),
                };
                let stream = Stream::auth("system");
                let ev = NewEvent::typed(stream.as_str(), &e)
                    .map_err(|e| internal("record the bypass", e))?;
                let req = glassbox_events::AppendRequest::new("system", self.actor(), vec![ev]);
                self.inner
                    .store
                    .append(req)
                    .await
                    .map_err(|e| internal("record the bypass", e))?;
                Ok(())
            }
            (None, _) => {
                self.record_refusal(action, "no bearer token").await;
                Err(Status::unauthenticated("a runner token is required"))
            }
            (Some(_), None) => {
                self.record_refusal(action, "this runner has no verifier key")
                    .await;
                Err(Status::unauthenticated("this runner cannot verify tokens"))
            }
            (Some(t), Some(v)) => match v.verify(t, self.runner(), subject) {
                Ok(()) => Ok(()),
                Err(e) => {
                    self.record_refusal(action, &e.to_string()).await;
                    Err(Status::permission_denied(e.to_string()))
                }
            },
        }
    }

    /// Starts the sandbox of a session placed on this runner.
    pub async fn open(&self, session_id: &str) -> Result<OpenSessionReply, Status> {
        if let Ok(live) = self.get(session_id) {
            let s = live.state.lock().await;
            return Ok(OpenSessionReply {
                sandbox_id: live.sandbox.sandbox_id.clone(),
                runtime: live.sandbox.runtime.clone(),
                position: s.last_position,
            });
        }
        if self.live_count() >= self.inner.config.capacity as usize {
            return Err(Status::resource_exhausted("this runner is at capacity"));
        }
        let stream = Stream::session(session_id);
        let state: Session = self
            .inner
            .store
            .load(stream.as_str())
            .await
            .map_err(|e| internal("read the session", e))?;
        if !state.exists() {
            return Err(Status::not_found("no such session"));
        }
        if state.runner.as_deref() != Some(self.runner()) {
            return Err(refused(SessionRefusal::WrongRunner));
        }
        if state.status != SessionStatus::Opening {
            return Err(refused(if state.status.is_terminal() {
                SessionRefusal::Ended(state.status)
            } else {
                SessionRefusal::NotActive(state.status)
            }));
        }
        let tenant = state.tenant.clone();
        let starting = std::time::Instant::now();
        match self.start(session_id, &state).await {
            Ok((sandbox, secrets, materialized, files, egress)) => {
                crate::metrics::sandbox_started(
                    "session",
                    runtime_language(&sandbox.runtime),
                    starting.elapsed(),
                );
                for (name, value) in &files {
                    if let Err(e) = sandbox
                        .write_file(&format!(".secrets/{name}"), value.as_bytes())
                        .await
                    {
                        let _ = sandbox.close().await;
                        if let Some((e, _, _)) = egress {
                            e.finish().await;
                        }
                        return self
                            .fail(session_id, state, format!("deliver a secret file: {e}"))
                            .await;
                    }
                }
                let runner = self.runner().to_owned();
                let (sandbox_id, runtime) = (sandbox.sandbox_id.clone(), sandbox.runtime.clone());
                let image_digest = sandbox.image_digest.clone();
                let close = |sandbox: SessionSandbox,
                             egress: Option<(
                    crate::egress::SandboxEgress,
                    Allowlist,
                    crate::ports::ServiceDock,
                )>| async move {
                    let _ = sandbox.close().await;
                    if let Some((e, _, _)) = egress {
                        e.finish().await;
                    }
                };
                let d = match self
                    .decide(&tenant, session_id, state, |_| SessionCommand::Start {
                        runner: runner.clone(),
                        sandbox_id: sandbox_id.clone(),
                        backend: "runsc".into(),
                        runtime: runtime.clone(),
                        image_digest: image_digest.clone(),
                        materialized: materialized.clone(),
                    })
                    .await
                {
                    Ok(d) => d,
                    Err(e) => {
                        close(sandbox, egress).await;
                        return Err(e);
                    }
                };
                let position = Self::position(&d);
                let limits = d.state.effective_limits.clone().unwrap_or_default();
                let egress_allowlist = egress.as_ref().map(|(_, list, _)| list.clone());
                let (egress, dock) = match egress {
                    Some((e, _, d)) => (Some(e), Some(d)),
                    None => (None, None),
                };
                let live = Arc::new(Live {
                    tenant,
                    sandbox,
                    state: tokio::sync::Mutex::new(d.state),
                    secrets,
                    limits,
                    egress: tokio::sync::Mutex::new(egress),
                    egress_allowlist,
                    dock,
                });
                if let Ok(mut l) = self.inner.live.lock() {
                    l.insert(session_id.to_owned(), live.clone());
                }
                self.watch(session_id.to_owned(), live);
                Ok(OpenSessionReply {
                    sandbox_id,
                    runtime,
                    position,
                })
            }
            Err(reason) => self.fail(session_id, state, reason).await,
        }
    }

    async fn fail(
        &self,
        session_id: &str,
        state: Session,
        reason: String,
    ) -> Result<OpenSessionReply, Status> {
        let tenant = state.tenant.clone();
        let runner = self.runner().to_owned();
        let r = reason.clone();
        self.decide(&tenant, session_id, state, |_| SessionCommand::Fail {
            runner: runner.clone(),
            reason: r.clone(),
        })
        .await?;
        Err(Status::failed_precondition(format!(
            "the session could not start: {reason}"
        )))
    }

    /// The sandbox, the secrets to redact, the secrets delivered, the
    /// file-mode secrets still to write, and its egress proxy with the
    /// allowlist it uses.
    #[allow(clippy::type_complexity)]
    async fn start(
        &self,
        session_id: &str,
        state: &Session,
    ) -> Result<
        (
            SessionSandbox,
            Vec<(String, String)>,
            Vec<c::SecretMaterialized>,
            Vec<(String, String)>,
            Option<(
                crate::egress::SandboxEgress,
                Allowlist,
                crate::ports::ServiceDock,
            )>,
        ),
        String,
    > {
        let Some(req) = state.requested.clone() else {
            return Err("the session's request is missing".into());
        };
        let limits = state.effective_limits.clone().unwrap_or_default();
        let mut spec = ExecutionSpec::new(req.language.clone(), "");
        if let Some(env) = &req.env {
            let bytes = self
                .inner
                .blobs
                .get_checked(session_id, &env.key, &env.hmac)
                .await
                .map_err(|e| format!("read the session's environment: {e}"))?;
            spec.env = serde_json::from_slice(&bytes)
                .map_err(|_| "the session's environment blob is not a JSON object".to_owned())?;
        }
        let l = &mut spec.limits;
        l.cpu_millicores = limits.cpu_millicores.unwrap_or(l.cpu_millicores);
        l.memory_bytes = limits.memory_bytes.unwrap_or(l.memory_bytes);
        l.processes = limits.processes.unwrap_or(l.processes);
        l.workspace_bytes = limits.workspace_bytes.unwrap_or(l.workspace_bytes);
        l.tmp_bytes = limits.tmp_bytes.unwrap_or(l.tmp_bytes);
        // The watchdog bound: the session's maximum lifetime.
        l.wall_time_ms = limits
            .max_lifetime_secs
            .unwrap_or(3600)
            .saturating_mul(1000);
        if !req.dependencies.is_empty() {
            let Some(mirror) = self.inner.config.wheel_mirror.clone() else {
                return Err("packages were requested but this runner has no wheel mirror".into());
            };
            spec.wheels = Some(WheelInstall {
                mirror,
                requirements: req
                    .dependencies
                    .iter()
                    .map(|d| match &d.version {
                        Some(v) => format!("{}=={v}", d.name),
                        None => d.name.clone(),
                    })
                    .collect(),
            });
        }
        let mut secrets = Vec::new();
        let mut materialized = Vec::new();
        let mut files = Vec::new();
        for s in &state.approved_secrets {
            let Some(value) = self.inner.config.secrets.value(&s.name) else {
                return Err(format!(
                    "the secret {} is not available on this runner",
                    s.name
                ));
            };
            if s.mode == "brokered" {
                // Its placeholder goes in below; the value stays with the proxy.
            } else if s.mode == "file" {
                files.push((s.name.clone(), value.clone()));
            } else {
                spec.env.insert(s.name.clone(), value.clone());
            }
            materialized.push(c::SecretMaterialized {
                name: s.name.clone(),
                mode: s.mode.clone(),
            });
            secrets.push((s.name.clone(), value));
        }
        let egress = match &self.inner.config.egress {
            Some(cfg) => {
                let policy = crate::egress::TenantEgress::new(
                    cfg.engine.clone(),
                    &state.tenant,
                    targets(&state.egress),
                );
                let list = policy.requested.clone();
                let ledger = Arc::new(SessionEgressLedger {
                    store: self.inner.store.clone(),
                    session_id: session_id.to_owned(),
                    runner: self.runner().to_owned(),
                    envelope: Envelope::new(state.tenant.clone(), self.actor()),
                    state: tokio::sync::Mutex::new(state.clone()),
                });
                let broker = crate::egress::broker_for(
                    &cfg.settings,
                    session_id,
                    &state.approved_secrets,
                    |n| self.inner.config.secrets.value(n),
                )?;
                if let Some(b) = &broker {
                    for x in b.secrets() {
                        spec.env.insert(x.name.clone(), x.placeholder.clone());
                    }
                }
                let mut e = crate::egress::SandboxEgress::start(
                    &cfg.settings,
                    session_id,
                    policy,
                    self.inner.blobs.clone(),
                    ledger,
                    broker,
                )
                .await
                .map_err(|e| e.to_string())?;
                let dock = match e.dock() {
                    Ok(d) => d,
                    Err(err) => {
                        e.finish().await;
                        return Err(err.to_string());
                    }
                };
                spec.egress = Some(e.path());
                spec.env.extend(e.trust_env());
                Some((e, list, dock))
            }
            None if !state.egress.is_empty()
                || state.approved_secrets.iter().any(|s| s.mode == "brokered") =>
            {
                return Err(
                    "egress or a brokered secret was asked for but this runner gives sessions no egress"
                        .into(),
                );
            }
            None => None,
        };
        let sandbox = match self
            .inner
            .backend
            .open_session(spec, &self.inner.config.agent)
            .await
        {
            Ok(s) => s,
            Err(err) => {
                if let Some((e, _, _)) = egress {
                    e.finish().await;
                }
                return Err(err.to_string());
            }
        };
        Ok((sandbox, secrets, materialized, files, egress))
    }

    /// Service mode: one HTTP request to a port the session's stream says is
    /// exposed (the control plane decided who may ask).
    pub async fn service_request(
        &self,
        req: api::ServiceHttpRequest,
    ) -> Result<api::ServiceHttpReply, Status> {
        let live = self.get(&req.session_id)?;
        let Some(dock) = &live.dock else {
            return Err(Status::failed_precondition(
                "this runner gives sessions no service mode",
            ));
        };
        let mut state = live.state.lock().await.clone();
        self.inner
            .store
            .catch_up(Stream::session(&req.session_id).as_str(), &mut state)
            .await
            .map_err(|e| internal("read the session", e))?;
        let port = u16::try_from(req.port)
            .ok()
            .filter(|p| state.exposure(u64::from(*p)).is_some())
            .ok_or_else(|| Status::failed_precondition("the port is not exposed"))?;
        if req.body.len() > crate::ports::MAX_BODY {
            return Err(Status::invalid_argument("the body is too large"));
        }
        let stream = dock
            .connect(port)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let answer = crate::ports::exchange(
            stream,
            port,
            &crate::ports::HttpRequest {
                method: req.method,
                path: req.path,
                headers: req.headers.into_iter().map(|h| (h.name, h.value)).collect(),
                body: req.body,
            },
        )
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(api::ServiceHttpReply {
            status: u32::from(answer.status),
            headers: answer
                .headers
                .into_iter()
                .map(|(name, value)| api::HttpHeader { name, value })
                .collect(),
            body: answer.body,
        })
    }

    /// Applies the allowlist the session's stream holds now to its proxy.
    pub async fn set_egress(&self, session_id: &str) -> Result<SetEgressReply, Status> {
        let live = self.get(session_id)?;
        let Some(list) = &live.egress_allowlist else {
            return Err(Status::failed_precondition(
                "this runner gives sessions no egress",
            ));
        };
        let mut state = live.state.lock().await.clone();
        self.inner
            .store
            .catch_up(Stream::session(session_id).as_str(), &mut state)
            .await
            .map_err(|e| internal("read the session", e))?;
        let now = targets(&state.egress);
        let n = now.len();
        if let Ok(mut l) = list.write() {
            *l = now;
        }
        Ok(SetEgressReply {
            destinations: u32::try_from(n).unwrap_or(u32::MAX),
        })
    }

    /// When a sandbox ends on its own (OOM, crash, lifetime), its session is
    /// lost — recorded — and what is left is torn down.
    fn watch(&self, session_id: String, live: Arc<Live>) {
        let host = self.clone();
        tokio::spawn(async move {
            let ended = live.sandbox.wait_ended().await;
            let still_ours = host
                .inner
                .live
                .lock()
                .map(|l| l.get(&session_id).is_some_and(|x| Arc::ptr_eq(x, &live)))
                .unwrap_or(false);
            if !still_ours {
                return;
            }
            let state = live.state.lock().await.clone();
            let reason = format!("the sandbox ended ({}): {}", ended.cause, ended.detail);
            let r = reason.clone();
            match host
                .decide(&live.tenant, &session_id, state, |_| SessionCommand::Lose {
                    reason: r.clone(),
                })
                .await
            {
                Ok(d) => *live.state.lock().await = d.state,
                Err(e) => {
                    tracing::warn!(session = %session_id, error = %e.message(), "could not record a lost session")
                }
            }
            tracing::warn!(session = %session_id, %reason, "session sandbox ended on its own");
            let _ = host.destroy(&session_id).await;
        });
    }

    /// Runs an exec: output on `events` as it comes, every step recorded.
    pub async fn exec(
        &self,
        session_id: &str,
        source: exec_request::Source,
        stdin: Vec<u8>,
        timeout_ms: u64,
        events: mpsc::Sender<Result<ExecEvent, Status>>,
        gone: CancellationToken,
    ) -> Result<(), Status> {
        let live = self.get(session_id)?;
        let mut state = live.state.lock().await;
        let (kind, text) = match &source {
            exec_request::Source::Code(c) => (ExecKind::Code, c.clone()),
            exec_request::Source::Command(c) => (ExecKind::Command, c.clone()),
        };
        let limit = live.limits.exec_timeout_ms.unwrap_or(30_000);
        let timeout = if timeout_ms == 0 {
            limit
        } else {
            timeout_ms.min(limit)
        };
        let blobs = &self.inner.blobs;
        let prefix = format!("{}/exec", Stream::session_blob_prefix(session_id));
        let source_blob = blobs
            .put_new(session_id, &prefix, text.as_bytes())
            .await
            .map_err(|e| internal("store the exec's source", e))?;
        let stdin_blob = if stdin.is_empty() {
            None
        } else {
            Some(
                blobs
                    .put_new(session_id, &prefix, &stdin)
                    .await
                    .map_err(|e| internal("store the exec's stdin", e))?,
            )
        };
        let runner = self.runner().to_owned();
        let kind_name = match kind {
            ExecKind::Code => "code",
            ExecKind::Command => "command",
        };
        let d = self
            .decide(&live.tenant, session_id, state.clone(), |_| {
                SessionCommand::StartExec {
                    runner: runner.clone(),
                    kind: kind_name.into(),
                    source: blob_ref(&source_blob),
                    stdin: stdin_blob.as_ref().map(blob_ref),
                    timeout_ms: timeout,
                }
            })
            .await?;
        let n = d.state.execs;
        let _ = events
            .send(Ok(ExecEvent {
                event: Some(exec_event::Event::Started(api::ExecStarted {
                    exec: n,
                    position: Self::position(&d),
                })),
            }))
            .await;
        *state = d.state;
        let max_out = live.limits.stdout_bytes.unwrap_or(1 << 20);
        let max_err = live.limits.stderr_bytes.unwrap_or(1 << 20);
        let (tx, mut rx) = mpsc::unbounded_channel::<Chunk>();
        let run = live.sandbox.exec(
            kind,
            &text,
            &stdin,
            Duration::from_millis(timeout),
            max_out,
            max_err,
            tx,
        );
        tokio::pin!(run);
        let secret_values: Vec<String> = live.secrets.iter().map(|(_, v)| v.clone()).collect();
        let mut out = Redactor::new(&secret_values);
        let mut err = Redactor::new(&secret_values);
        let (mut kept_out, mut kept_err) = (Vec::new(), Vec::new());
        let mut client_gone = false;
        let result = loop {
            tokio::select! {
                r = &mut run => break Some(r),
                Some(chunk) = rx.recv() => {
                    let (r, kept) = if chunk.stream == OutStream::Stdout { (&mut out, &mut kept_out) } else { (&mut err, &mut kept_err) };
                    let ready = r.push(&chunk.data);
                    if !ready.is_empty() {
                        kept.extend_from_slice(&ready);
                        if !client_gone && events.send(Ok(output(chunk.stream, ready))).await.is_err() {
                            client_gone = true;
                        }
                    }
                }
                _ = gone.cancelled(), if !client_gone => {
                    // The client went away: the exec is cancelled (dropping its
                    // future tells the agent), and its end still recorded.
                    client_gone = true;
                    break None;
                }
            }
        };
        // Whatever is still queued arrived before the end.
        while let Ok(chunk) = rx.try_recv() {
            let (r, kept) = if chunk.stream == OutStream::Stdout {
                (&mut out, &mut kept_out)
            } else {
                (&mut err, &mut kept_err)
            };
            let ready = r.push(&chunk.data);
            if !ready.is_empty() {
                kept.extend_from_slice(&ready);
                if !client_gone && events.send(Ok(output(chunk.stream, ready))).await.is_err() {
                    client_gone = true;
                }
            }
        }
        let (done, error) = match result {
            Some(Ok(done)) => (Some(done), None),
            Some(Err(e)) => (None, Some(e.to_string())),
            None => (
                None,
                Some("the client went away; the exec was cancelled".into()),
            ),
        };
        let truncated_out = done.as_ref().is_some_and(|d| d.stdout_truncated);
        let truncated_err = done.as_ref().is_some_and(|d| d.stderr_truncated);
        for (r, kept, truncated, stream) in [
            (&mut out, &mut kept_out, truncated_out, OutStream::Stdout),
            (&mut err, &mut kept_err, truncated_err, OutStream::Stderr),
        ] {
            let tail = r.finish(truncated);
            if !tail.is_empty() {
                kept.extend_from_slice(&tail);
                if !client_gone {
                    let _ = events.send(Ok(output(stream, tail))).await;
                }
            }
        }
        let redactions = out.count + err.count;
        let outcome = match (&done, result_cancelled(&error)) {
            (Some(d), _) if d.timed_out => Outcome::TimedOut,
            (Some(d), _) if d.cancelled => Outcome::Cancelled,
            (Some(d), _) if d.error.is_some() && d.exit_code.is_none() => Outcome::Crashed,
            (Some(d), _) => match d.exit_code {
                Some(0) => Outcome::Succeeded,
                Some(_) => Outcome::Failed,
                None => Outcome::Crashed,
            },
            (None, true) => Outcome::Cancelled,
            (None, false) => Outcome::Crashed,
        };
        let stored = |bytes: Vec<u8>, total: u64, truncated: bool| async move {
            let blob = if bytes.is_empty() {
                None
            } else {
                Some(
                    self.inner
                        .blobs
                        .put_new(
                            session_id,
                            &format!("{}/output", Stream::session_blob_prefix(session_id)),
                            &bytes,
                        )
                        .await
                        .map_err(|e| internal("store the exec's output", e))?,
                )
            };
            Ok::<_, Status>(OutputRef {
                blob: blob.as_ref().map(blob_ref),
                size_bytes: total,
                truncated,
            })
        };
        let d_ref = done.clone().unwrap_or_default();
        let stdout_total = if done.is_some() {
            d_ref.stdout_bytes
        } else {
            kept_out.len() as u64
        };
        let stderr_total = if done.is_some() {
            d_ref.stderr_bytes
        } else {
            kept_err.len() as u64
        };
        let stdout = stored(kept_out, stdout_total, truncated_out).await?;
        let stderr = stored(kept_err, stderr_total, truncated_err).await?;
        let finished = c::SessionExecFinished {
            session_id: session_id.to_owned(),
            exec: n,
            outcome,
            exit_code: d_ref.exit_code.map(i64::from),
            signal: d_ref.signal.map(i64::from),
            wall_ms: d_ref.wall_ms,
            stdout,
            stderr,
            context_reset: d_ref.context_reset,
            redactions,
        };
        crate::metrics::execution_finished(
            "session",
            runtime_language(&live.sandbox.runtime),
            outcome.as_str(),
            std::time::Duration::from_millis(d_ref.wall_ms),
        );
        let f = finished.clone();
        let d = self
            .decide(&live.tenant, session_id, state.clone(), |_| {
                SessionCommand::FinishExec {
                    runner: runner.clone(),
                    finished: Box::new(f.clone()),
                }
            })
            .await?;
        let position = Self::position(&d);
        *state = d.state;
        if !client_gone {
            let _ = events
                .send(Ok(ExecEvent {
                    event: Some(exec_event::Event::Finished(api::ExecFinished {
                        exec: n,
                        outcome: serde_json::to_value(outcome)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default(),
                        exit_code: finished.exit_code,
                        signal: finished.signal,
                        wall_ms: finished.wall_ms,
                        stdout_bytes: finished.stdout.size_bytes,
                        stderr_bytes: finished.stderr.size_bytes,
                        stdout_truncated: truncated_out,
                        stderr_truncated: truncated_err,
                        context_reset: finished.context_reset,
                        redactions,
                        error: error.or(d_ref.error),
                        position,
                    })),
                }))
                .await;
        }
        Ok(())
    }

    /// A file operation: checks the path, runs it, records it.
    async fn file_op<T>(
        &self,
        session_id: &str,
        path: &str,
        op: impl AsyncFnOnce(&Live) -> Result<(T, KnownEventFor), Status>,
    ) -> Result<(T, u64), Status> {
        if !path.is_empty() {
            WorkspacePath::parse(path)
                .map_err(|e| Status::invalid_argument(format!("path: {e}")))?;
        }
        let live = self.get(session_id)?;
        let mut state = live.state.lock().await;
        if state.status != SessionStatus::Active {
            return Err(refused(SessionRefusal::Ended(state.status)));
        }
        let (value, make) = op(&live).await?;
        let name = self
            .inner
            .blobs
            .put_new(
                session_id,
                &format!("{}/names", Stream::session_blob_prefix(session_id)),
                path.as_bytes(),
            )
            .await
            .map_err(|e| internal("store the file's name", e))?;
        let event = make.event(session_id, blob_ref(&name));
        let runner = self.runner().to_owned();
        let d = self
            .decide(&live.tenant, session_id, state.clone(), |_| {
                SessionCommand::FileOp {
                    runner: runner.clone(),
                    event: event.clone(),
                }
            })
            .await?;
        let position = Self::position(&d);
        *state = d.state;
        Ok((value, position))
    }

    pub async fn write_file(
        &self,
        session_id: &str,
        path: &str,
        data: Vec<u8>,
    ) -> Result<WriteFileReply, Status> {
        if path.is_empty() {
            return Err(Status::invalid_argument("path: a file name is needed"));
        }
        let blobs = self.inner.blobs.clone();
        let sid = session_id.to_owned();
        let p = path.to_owned();
        let (size, position) = self
            .file_op(session_id, path, async move |live: &Live| {
                let size = live
                    .sandbox
                    .write_file(&p, &data)
                    .await
                    .map_err(session_status)?;
                let content_hmac = blobs
                    .keyed_digest(&sid, &data)
                    .await
                    .map_err(|e| internal("digest the file", e))?;
                Ok((
                    size,
                    KnownEventFor::Written {
                        size_bytes: data.len() as u64,
                        content_hmac,
                    },
                ))
            })
            .await?;
        Ok(WriteFileReply { size, position })
    }

    pub async fn read_file(
        &self,
        session_id: &str,
        path: &str,
        max: u64,
    ) -> Result<(Vec<u8>, u64, bool, u64), Status> {
        if path.is_empty() {
            return Err(Status::invalid_argument("path: a file name is needed"));
        }
        let blobs = self.inner.blobs.clone();
        let sid = session_id.to_owned();
        let p = path.to_owned();
        let max = if max == 0 {
            MAX_READ
        } else {
            max.min(MAX_READ)
        };
        let ((data, size, truncated), position) = self
            .file_op(session_id, path, async move |live: &Live| {
                let (mut data, size) = live
                    .sandbox
                    .read_file(&p, max)
                    .await
                    .map_err(session_status)?;
                let truncated = (data.len() as u64) < size;
                // A file can hold a secret's value like any output can.
                let values: Vec<String> = live.secrets.iter().map(|(_, v)| v.clone()).collect();
                let mut r = Redactor::new(&values);
                let mut clean = r.push(&data);
                clean.extend(r.finish(truncated));
                data = clean;
                let content_hmac = blobs
                    .keyed_digest(&sid, &data)
                    .await
                    .map_err(|e| internal("digest the file", e))?;
                Ok((
                    (data, size, truncated),
                    KnownEventFor::Read {
                        size_bytes: size,
                        content_hmac,
                        truncated,
                    },
                ))
            })
            .await?;
        Ok((data, size, truncated, position))
    }

    pub async fn list(&self, session_id: &str, path: &str) -> Result<ListFilesReply, Status> {
        let p = path.to_owned();
        let ((entries, truncated), position) = self
            .file_op(session_id, path, async move |live: &Live| {
                let (entries, truncated) = live
                    .sandbox
                    .list(&p, MAX_LIST)
                    .await
                    .map_err(session_status)?;
                let n = entries.len() as u64;
                Ok(((entries, truncated), KnownEventFor::Listed { entries: n }))
            })
            .await?;
        Ok(ListFilesReply {
            entries: entries
                .into_iter()
                .map(|e| FileEntry {
                    name: e.name,
                    kind: e.kind,
                    size: e.size,
                })
                .collect(),
            truncated,
            position,
        })
    }

    pub async fn delete(&self, session_id: &str, path: &str) -> Result<DeleteFileReply, Status> {
        if path.is_empty() {
            return Err(Status::invalid_argument("path: a file name is needed"));
        }
        let p = path.to_owned();
        let ((), position) = self
            .file_op(session_id, path, async move |live: &Live| {
                live.sandbox.delete(&p).await.map_err(session_status)?;
                Ok(((), KnownEventFor::Deleted))
            })
            .await?;
        Ok(DeleteFileReply { position })
    }

    /// Destroys a session's sandbox (the control plane has recorded its
    /// end) and records the workspace's destruction.
    pub async fn destroy(&self, session_id: &str) -> Result<CloseSessionReply, Status> {
        let live = self
            .inner
            .live
            .lock()
            .ok()
            .and_then(|mut l| l.remove(session_id));
        let Some(live) = live else {
            return Err(Status::not_found(
                "the session has no sandbox on this runner",
            ));
        };
        let teardown = live.sandbox.close().await;
        // Its connections end with it and are recorded before its workspace.
        if let Some(e) = live.egress.lock().await.take() {
            e.finish().await;
        }
        let mut state = live.state.lock().await;
        // Catch up with the end the control plane recorded.
        let mut caught = state.clone();
        if let Err(e) = self
            .inner
            .store
            .catch_up(Stream::session(session_id).as_str(), &mut caught)
            .await
        {
            tracing::warn!(session = %session_id, error = %e, "could not read the session");
        } else {
            *state = caught;
        }
        let workspace = c::WorkspaceDestroyed {
            sandbox_id: live.sandbox.sandbox_id.clone(),
            method: teardown.method.clone(),
            bytes_scrubbed: teardown.bytes_scrubbed,
            files_scrubbed: teardown.files_scrubbed,
            complete: teardown.complete,
            error: teardown.error.clone(),
        };
        let position = match self
            .decide(&live.tenant, session_id, state.clone(), |_| {
                SessionCommand::Destroyed {
                    workspace: workspace.clone(),
                }
            })
            .await
        {
            Ok(d) => {
                let p = Self::position(&d);
                *state = d.state;
                p
            }
            Err(e) => {
                tracing::warn!(session = %session_id, error = %e.message(), "workspace destroyed but not recorded");
                0
            }
        };
        Ok(CloseSessionReply {
            bytes_scrubbed: teardown.bytes_scrubbed,
            complete: teardown.complete,
            position,
        })
    }

    /// Sessions this runner held before it restarted are gone with their
    /// sandboxes (the start-up sweep removed them): each is recorded lost.
    pub async fn lose_orphans(&self, orphans: Vec<(String, String)>) {
        for (tenant, session_id) in orphans {
            let stream = Stream::session(&session_id);
            let Ok(state) = self.inner.store.load::<Session>(stream.as_str()).await else {
                continue;
            };
            if state.status.is_terminal() || state.runner.as_deref() != Some(self.runner()) {
                continue;
            }
            let r = format!(
                "runner {} restarted; the session's sandbox is gone",
                self.runner()
            );
            if let Err(e) = self
                .decide(&tenant, &session_id, state, |_| SessionCommand::Lose {
                    reason: r.clone(),
                })
                .await
            {
                tracing::warn!(session = %session_id, error = %e.message(), "could not record an orphaned session as lost");
            }
        }
    }

    /// Says this runner is alive (and its free capacity) until `shutdown`.
    pub async fn heartbeat(self, shutdown: CancellationToken) {
        let Some(hot) = self.inner.hot.clone() else {
            return;
        };
        loop {
            let beat = RunnerBeat {
                runner_id: self.runner().to_owned(),
                addr: self.inner.config.advertise.clone(),
                capacity: self.inner.config.capacity,
                sessions: self.live_count() as u32,
                at_ms: chrono::Utc::now().timestamp_millis().max(0) as u64,
            };
            if let Err(e) = hot.beat(&beat, HEARTBEAT_TTL).await {
                tracing::warn!(error = %e, "runner heartbeat failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
            }
        }
    }

    /// Serves the data-plane API on `listener` until `shutdown`, then closes
    /// every sandbox this runner holds (their sessions are recorded lost).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), tonic::transport::Error> {
        tokio::spawn(self.clone().heartbeat(shutdown.clone()));
        // Small frames (an exec's output, its result) go out at once: without
        // TCP_NODELAY each waits for the peer's delayed ACK (~40 ms).
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            |conn| {
                if let Ok(c) = &conn {
                    let _ = c.set_nodelay(true);
                }
                conn
            },
        );
        let svc =
            glassbox_runner_api::RunnerServer::new(self.clone()).max_decoding_message_size(8 << 20);
        let stop = shutdown.clone();
        let r = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await })
            .await;
        self.shutdown().await;
        r
    }

    /// Ends every session held here: recorded lost ("the runner shut down"),
    /// sandboxes destroyed.
    pub async fn shutdown(&self) {
        let ids: Vec<String> = self
            .inner
            .live
            .lock()
            .map(|l| l.keys().cloned().collect())
            .unwrap_or_default();
        for id in ids {
            if let Ok(live) = self.get(&id) {
                let state = live.state.lock().await.clone();
                let r = format!("runner {} shut down", self.runner());
                if let Ok(d) = self
                    .decide(&live.tenant, &id, state, |_| SessionCommand::Lose {
                        reason: r.clone(),
                    })
                    .await
                {
                    *live.state.lock().await = d.state;
                }
            }
            let _ = self.destroy(&id).await;
        }
    }

    pub fn addr_of(listener: &tokio::net::TcpListener) -> Option<SocketAddr> {
        listener.local_addr().ok()
    }
}

/// The file event to record, once the name blob exists.
enum KnownEventFor {
    Written {
        size_bytes: u64,
        content_hmac: glassbox_events::Digest,
    },
    Read {
        size_bytes: u64,
        content_hmac: glassbox_events::Digest,
        truncated: bool,
    },
    Deleted,
    Listed {
        entries: u64,
    },
}

impl KnownEventFor {
    fn event(self, session_id: &str, name: c::BlobRef) -> KnownEvent {
        let session_id = session_id.to_owned();
        match self {
            KnownEventFor::Written {
                size_bytes,
                content_hmac,
            } => KnownEvent::SessionFileWritten(Box::new(c::SessionFileWritten {
                session_id,
                name,
                size_bytes,
                content_hmac,
            })),
            KnownEventFor::Read {
                size_bytes,
                content_hmac,
                truncated,
            } => KnownEvent::SessionFileRead(Box::new(c::SessionFileRead {
                session_id,
                name,
                size_bytes,
                content_hmac,
                truncated,
            })),
            KnownEventFor::Deleted => {
                KnownEvent::SessionFileDeleted(Box::new(c::SessionFileDeleted { session_id, name }))
            }
            KnownEventFor::Listed { entries } => {
                KnownEvent::SessionFilesListed(Box::new(c::SessionFilesListed {
                    session_id,
                    name,
                    entries,
                }))
            }
        }
    }
}

/// A session's egress allowlist, shared by its proxy's policy and `SetEgress`.
type Allowlist = Arc<std::sync::RwLock<Vec<EgressTarget>>>;

/// The destinations of a session's allowlist (recorded after parsing: a
/// record that does not parse allows nothing).
fn targets(egress: &[String]) -> Vec<EgressTarget> {
    egress
        .iter()
        .filter_map(|t| EgressTarget::parse(t).ok())
        .collect()
}

/// A session's egress records go on its stream, decided by the session (its
/// runner's, until its workspace is destroyed). Its own carried state: an
/// exec holds the session's lock for as long as it runs, and the program's
/// connections during it must be recorded (and answered) meanwhile.
struct SessionEgressLedger {
    store: EventStore,
    session_id: String,
    runner: String,
    envelope: Envelope,
    state: tokio::sync::Mutex<Session>,
}

impl crate::egress::EgressLedger for SessionEgressLedger {
    fn append(
        &self,
        events: Vec<KnownEvent>,
    ) -> glassbox_egress::proxy::BoxFuture<'_, Result<Vec<u64>, String>> {
        Box::pin(async move {
            let mut state = self.state.lock().await;
            let stream = Stream::session(&self.session_id);
            let d = self
                .store
                .decide_from(
                    stream.as_str(),
                    state.clone(),
                    &self.envelope,
                    |s: &Session| {
                        let decided = s.decide(SessionCommand::RecordEgress {
                            runner: self.runner.clone(),
                            events: events.clone(),
                        })?;
                        decided
                            .iter()
                            .map(|e| NewEvent::known(stream.as_str(), e))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|e| SessionRefusal::Invalid(e.to_string()))
                    },
                )
                .await
                .map_err(|e| format!("session {}: record egress: {e}", self.session_id))?;
            *state = d.state;
            Ok(d.appended
                .map(|o| o.events.iter().map(|a| a.position).collect())
                .unwrap_or_default())
        })
    }
}

fn result_cancelled(error: &Option<String>) -> bool {
    error.as_deref().is_some_and(|e| e.contains("cancelled"))
}

fn session_status(e: crate::local::session::SessionError) -> Status {
    use crate::local::session::SessionError as E;
    match e {
        E::Refused(m) => Status::invalid_argument(m),
        E::Ended { reason, .. } => {
            Status::failed_precondition(format!("the session's sandbox has ended: {reason}"))
        }
        E::Unresponsive { step, .. } => {
            Status::unavailable(format!("the session's sandbox did not answer ({step})"))
        }
    }
}

fn blob_ref(b: &glassbox_platform::blob::StoredBlob) -> c::BlobRef {
    c::BlobRef {
        hmac: b.hmac,
        size_bytes: b.size_bytes,
        key: b.key.clone(),
    }
}

fn output(stream: OutStream, data: Vec<u8>) -> ExecEvent {
    ExecEvent {
        event: Some(exec_event::Event::Output(api::ExecOutput {
            stream: match stream {
                OutStream::Stdout => api::OutputStream::Stdout as i32,
                OutStream::Stderr => api::OutputStream::Stderr as i32,
            },
            data,
        })),
    }
}

/// Replaces approved secrets' values in a stream of chunks with
/// `[REDACTED]`, holding back just enough at the end of each chunk that a
/// value split across chunks is still caught.
pub struct Redactor {
    secrets: Vec<Vec<u8>>,
    held: Vec<u8>,
    pub count: u64,
}

impl Redactor {
    pub fn new(values: &[String]) -> Redactor {
        Redactor {
            secrets: values
                .iter()
                .filter(|v| !v.is_empty())
                .map(|v| v.as_bytes().to_vec())
                .collect(),
            held: Vec::new(),
            count: 0,
        }
    }

    /// The bytes that can go out now.
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        if self.secrets.is_empty() {
            return data.to_vec();
        }
        self.held.extend_from_slice(data);
        let buf = std::mem::take(&mut self.held);
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        while i < buf.len() {
            if let Some(s) = self.secrets.iter().find(|s| buf[i..].starts_with(s)) {
                out.extend_from_slice(b"[REDACTED]");
                i += s.len();
                self.count += 1;
                continue;
            }
            let rest = &buf[i..];
            if self
                .secrets
                .iter()
                .any(|s| s.len() > rest.len() && s.starts_with(rest))
            {
                break;
            }
            out.push(buf[i]);
            i += 1;
        }
        self.held = buf[i..].to_vec();
        out
    }

    /// The end of the stream: what was held back goes out — unless the output
    /// was cut at its cap, when a held prefix of a secret is dropped.
    pub fn finish(&mut self, truncated: bool) -> Vec<u8> {
        let held = std::mem::take(&mut self.held);
        if truncated && !held.is_empty() {
            self.count += 1;
            return Vec::new();
        }
        held
    }
}

/// The language part of a runtime label (`python-3.11` → `python`), for
/// metric labels.
fn runtime_language(runtime: &str) -> &str {
    runtime.split('-').next().unwrap_or(runtime)
}

/// The span of one data-plane call, continuing the caller's trace from the
/// call's `traceparent` metadata.
fn rpc_span<T>(request: &Request<T>, method: &'static str, session_id: &str) -> tracing::Span {
    let span = tracing::info_span!(
        "runner.rpc",
        otel.name = %format!("glassbox.runner.v1.Runner/{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = method,
        session_id = %session_id,
    );
    let meta = request.metadata();
    glassbox_platform::telemetry::continue_from_headers(&span, |k| {
        meta.get(k).and_then(|v| v.to_str().ok())
    });
    span
}

type ExecStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<ExecEvent, Status>> + Send>>;
type FileStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<FileChunk, Status>> + Send>>;

#[tonic::async_trait]
impl glassbox_runner_api::Runner for SessionHost {
    async fn open_session(
        &self,
        request: Request<OpenSessionRequest>,
    ) -> Result<Response<OpenSessionReply>, Status> {
        let id = request.get_ref().session_id.clone();
        let span = rpc_span(&request, "open_session", &id);
        async {
            self.authorize(&request, "open_session", &Subject::Session(id.clone()))
                .await?;
            self.open(&id).await.map(Response::new)
        }
        .instrument(span)
        .await
    }

    type ExecStream = ExecStream;

    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<ExecStream>, Status> {
        let id = request.get_ref().session_id.clone();
        let span = rpc_span(&request, "exec", &id);
        self.authorize(&request, "exec", &Subject::Session(id.clone()))
            .instrument(span.clone())
            .await?;
        let r = request.into_inner();
        let Some(source) = r.source else {
            return Err(Status::invalid_argument("code or command is required"));
        };
        self.get(&id)?;
        let (tx, rx) = mpsc::channel(64);
        let host = self.clone();
        let gone = CancellationToken::new();
        let watch = gone.clone();
        // The client going away cancels the exec. The watcher holds a sender
        // only until the exec ends, so the stream closes after its result.
        let closed = tx.clone();
        let done = CancellationToken::new();
        let finished = done.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = closed.closed() => watch.cancel(),
                _ = finished.cancelled() => {}
            }
        });
        tokio::spawn(
            async move {
                if let Err(status) = host
                    .exec(&id, source, r.stdin, r.timeout_ms, tx.clone(), gone)
                    .await
                {
                    let _ = tx.send(Err(status)).await;
                }
                done.cancel();
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn write_file(
        &self,
        request: Request<tonic::Streaming<WriteFileChunk>>,
    ) -> Result<Response<WriteFileReply>, Status> {
        // The session is named by the first message; the token is checked
        // against it before any data is taken.
        let span = rpc_span(&request, "write_file", "");
        async {
            let (meta, ext, mut stream) = request.into_parts();
            let first = stream
                .message()
                .await?
                .ok_or_else(|| Status::invalid_argument("no file"))?;
            let probe = Request::from_parts(meta, ext, ());
            self.authorize(
                &probe,
                "write_file",
                &Subject::Session(first.session_id.clone()),
            )
            .await?;
            let mut data = first.data;
            while let Some(chunk) = stream.message().await? {
                data.extend_from_slice(&chunk.data);
                if data.len() as u64 > MAX_READ {
                    return Err(Status::resource_exhausted(format!(
                        "a file is at most {MAX_READ} bytes"
                    )));
                }
            }
            self.write_file(&first.session_id, &first.path, data)
                .await
                .map(Response::new)
        }
        .instrument(span)
        .await
    }

    type ReadFileStream = FileStream;

    async fn read_file(
        &self,
        request: Request<ReadFileRequest>,
    ) -> Result<Response<FileStream>, Status> {
        let id = request.get_ref().session_id.clone();
        let span = rpc_span(&request, "read_file", &id);
        async {
            self.authorize(&request, "read_file", &Subject::Session(id.clone()))
                .await?;
            let r = request.into_inner();
            let (data, size, truncated, position) =
                self.read_file(&id, &r.path, r.max_bytes).await?;
            let mut chunks: Vec<Result<FileChunk, Status>> = data
                .chunks(1 << 20)
                .map(|c| {
                    Ok(FileChunk {
                        data: c.to_vec(),
                        size,
                        last: false,
                        truncated,
                        position,
                    })
                })
                .collect();
            match chunks.last_mut() {
                Some(Ok(last)) => last.last = true,
                _ => chunks.push(Ok(FileChunk {
                    data: Vec::new(),
                    size,
                    last: true,
                    truncated,
                    position,
                })),
            }
            let stream: FileStream = Box::pin(tokio_stream::iter(chunks));
            Ok(Response::new(stream))
        }
        .instrument(span)
        .await
    }

    async fn list_files(
        &self,
        request: Request<ListFilesRequest>,
    ) -> Result<Response<ListFilesReply>, Status> {
        let id = request.get_ref().session_id.clone();
        let span = rpc_span(&request, "list_files", &id);
        async {
            self.authorize(&request, "list_files", &Subject::Session(id.clone()))
                .await?;
            let path = request.into_inner().path;
            self.list(&id, &path).await.map(Response::new)
        }
        .instrument(span)
        .await
    }

    async fn delete_file(
        &self,
        request: Request<DeleteFileRequest>,
    ) -> Result<Response<DeleteFileReply>, Status> {
        let id = request.get_ref().session_id.clone();
        let span = rpc_span(&request, "delete_file", &id);
        async {
            self.authorize(&request, "delete_file", &Subject::Session(id.clone()))
                .await?;
            let path = request.into_inner().path;
            self.delete(&id, &path).await.map(Response::new)
        }
        .instrument(span)
        .await
    }

    async fn close_session(
        &self,
        request: Request<CloseSessionRequest>,
    ) -> Result<Response<CloseSessionReply>, Status> {
        let id = request.get_ref().session_id.clone();
        let span = rpc_span(&request, "close_session", &id);
        async {
            self.authorize(&request, "close_session", &Subject::Session(id.clone()))
                .await?;
            self.destroy(&id).await.map(Response::new)
        }
        .instrument(span)
        .await
    }

    async fn set_egress(
        &self,
        request: Request<SetEgressRequest>,
    ) -> Result<Response<SetEgressReply>, Status> {
        let id = request.get_ref().session_id.clone();
        let span = rpc_span(&request, "set_egress", &id);
        async {
            self.authorize(&request, "set_egress", &Subject::Session(id.clone()))
                .await?;
            self.set_egress(&id).await.map(Response::new)
        }
        .instrument(span)
        .await
    }

    async fn service_request(
        &self,
        request: Request<api::ServiceHttpRequest>,
    ) -> Result<Response<api::ServiceHttpReply>, Status> {
        let id = request.get_ref().session_id.clone();
        let span = rpc_span(&request, "service_request", &id);
        async {
            self.authorize(&request, "service_request", &Subject::Session(id.clone()))
                .await?;
            self.service_request(request.into_inner())
                .await
                .map(Response::new)
        }
        .instrument(span)
        .await
    }

    async fn health(
        &self,
        request: Request<HealthRequest>,
    ) -> Result<Response<HealthReply>, Status> {
        self.authorize(&request, "health", &Subject::Runner).await?;
        Ok(Response::new(HealthReply {
            runner_id: self.runner().to_owned(),
            capacity: self.inner.config.capacity,
            sessions: self.live_count() as u32,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_split_across_chunks_is_redacted_and_counted() {
        let mut r = Redactor::new(&["hunter2".into()]);
        let mut out = Vec::new();
        for chunk in [&b"pass=hun"[..], b"ter2; again hunter2", b" and hun"] {
            out.extend(r.push(chunk));
        }
        out.extend(r.finish(false));
        assert_eq!(out, b"pass=[REDACTED]; again [REDACTED] and hun");
        assert_eq!(r.count, 2);
        // Cut at the cap in the middle of a value: the prefix is dropped.
        let mut r = Redactor::new(&["hunter2".into()]);
        let mut out = r.push(b"x hunt");
        out.extend(r.finish(true));
        assert_eq!(out, b"x ");
        // No secrets: chunks pass through untouched.
        let mut r = Redactor::new(&[]);
        assert_eq!(r.push(b"abc"), b"abc");
    }
}
