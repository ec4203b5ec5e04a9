//! The session aggregate: a session's life, folded from its stream
//! (`session-<id>`), and every rule about what may happen next.
//!
//! A session is opened like a job is submitted (the request, every policy
//! decision and `session.opened` or `session.rejected` in one append), is
//! started by the runner it was placed on, takes calls one at a time while
//! active — each exec and file operation an event — and ends exactly once:
//! closed by a client, expired (idle or past its lifetime), lost (its runner
//! or sandbox went away) or failed (it never started). Its workspace is
//! destroyed after it ends, and its data can be crypto-shredded.

use crate::aggregate::Aggregate;
use crate::catalogue::{self as c, KnownEvent, SessionLimits};
use crate::job::{ApprovedSecret, Submitter};
use crate::status::SessionStatus;
use chrono::{DateTime, Utc};
use glassbox_verify::record::{Record, format_timestamp};
use serde::{Deserialize, Serialize};

/// A session as its stream says it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub version: u64,
    pub tenant: String,
    /// The correlation ID of the stream's first record (the request that
    /// created it): what the work done for it later is traced under.
    #[serde(default)]
    pub correlation_id: Option<String>,
    pub status: SessionStatus,
    pub session_id: Option<String>,
    pub requested: Option<c::SessionRequested>,
    pub submitted_by: Option<Submitter>,
    pub opened_position: u64,
    pub opened_at: Option<DateTime<Utc>>,
    pub last_position: u64,
    pub updated_at: Option<DateTime<Utc>>,
    pub effective_limits: Option<SessionLimits>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Where it was placed.
    pub runner: Option<String>,
    pub sandbox_id: Option<String>,
    pub runtime: Option<String>,
    pub approved_secrets: Vec<ApprovedSecret>,
    /// Execs started so far (the last one's number).
    pub execs: u64,
    /// An exec that started and has not finished.
    pub running_exec: Option<u64>,
    pub file_ops: u64,
    /// The last call (or the start): what the idle timeout counts from.
    pub last_activity: Option<DateTime<Utc>>,
    pub reasons: Vec<String>,
    /// Why it ended, in words.
    pub ended_reason: Option<String>,
    /// Position of `workspace.destroyed`.
    pub workspace_destroyed: Option<u64>,
    /// Position of `key.destroyed`.
    pub destroyed: Option<u64>,
    /// The destinations its proxy lets it reach now (asked for when it
    /// opened, replaced by `session.egress_changed`).
    #[serde(default)]
    pub egress: Vec<String>,
    /// Ports exposed in service mode (the latest exposure of each).
    #[serde(default)]
    pub exposed: Vec<c::ServiceExposed>,
}

/// What may be asked of a session.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionCommand {
    /// Record an opening: `session.requested`, the policy decisions, and
    /// `session.opened` or `session.rejected` last — on a new stream.
    Open { events: Vec<KnownEvent> },
    /// The runner it was placed on has its sandbox up (`materialized`: the
    /// secrets it delivered).
    Start {
        runner: String,
        sandbox_id: String,
        backend: String,
        runtime: String,
        image_digest: Option<String>,
        materialized: Vec<c::SecretMaterialized>,
    },
    /// Its sandbox could not be started.
    Fail { runner: String, reason: String },
    /// Begin an exec (numbered by the session).
    StartExec {
        runner: String,
        kind: String,
        source: c::BlobRef,
        stdin: Option<c::BlobRef>,
        timeout_ms: u64,
    },
    /// The exec that is running ended.
    FinishExec {
        runner: String,
        finished: Box<c::SessionExecFinished>,
    },
    /// A file operation (`session.file_written`, `_read`, `_deleted`,
    /// `session.files_listed`) happened.
    FileOp { runner: String, event: KnownEvent },
    /// Replace its egress allowlist: the `glassbox.egress` decisions, then
    /// `session.egress_changed` last if every one allowed (else only the
    /// decisions, which are recorded as a refusal).
    ChangeEgress { events: Vec<KnownEvent> },
    /// What its egress proxy saw (`egress.*`), until its workspace is destroyed.
    RecordEgress {
        runner: String,
        events: Vec<KnownEvent>,
    },
    /// Expose a port in service mode (while active).
    Expose { exposure: c::ServiceExposed },
    /// A request to an exposed port happened: its decision and answer.
    Serve { events: Vec<KnownEvent> },
    /// A client closes it.
    Close { reason: String },
    /// The reaper at `now`: expired if past its idle timeout or lifetime.
    Expire { now: DateTime<Utc> },
    /// Its runner or sandbox is gone.
    Lose { reason: String },
    /// Its workspace was destroyed (after it ended).
    Destroyed { workspace: c::WorkspaceDestroyed },
    /// Crypto-shred its data (after it ended).
    Shred { reason: String },
}

/// Why a session command was refused (nothing is appended).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionRefusal {
    #[error("there is no such session")]
    NoSession,
    #[error("the session already exists")]
    Exists,
    #[error("the session is {0}")]
    NotActive(SessionStatus),
    #[error("the session has ended ({0})")]
    Ended(SessionStatus),
    #[error("the session has not ended ({0}); close it first")]
    NotEnded(SessionStatus),
    #[error("the session runs on another runner")]
    WrongRunner,
    #[error("exec {0} is still running")]
    Busy(u64),
    #[error("no exec {0} is running")]
    NotRunning(u64),
    #[error("the session has not expired")]
    NotDue,
    #[error("invalid command: {0}")]
    Invalid(String),
}

/// Seconds as a chrono duration, saturating.
fn secs(s: u64) -> chrono::Duration {
    chrono::Duration::seconds(
        i64::try_from(s)
            .unwrap_or(i64::MAX / 1000)
            .min(i64::MAX / 1000),
    )
}

impl Session {
    pub fn exists(&self) -> bool {
        self.requested.is_some()
    }

    pub fn id(&self) -> &str {
        self.session_id.as_deref().unwrap_or_default()
    }

    fn end(&mut self, status: SessionStatus, reason: String) {
        if !self.status.is_terminal() {
            self.status = status;
            self.ended_reason = Some(reason);
            self.running_exec = None;
        }
    }

    /// Applies one record of the session's stream.
    pub fn apply(&mut self, r: &Record) {
        self.version = r.stream_version;
        if self.tenant.is_empty() {
            self.tenant.clone_from(&r.tenant);
        }
        if self.correlation_id.is_none() {
            self.correlation_id = Some(r.correlation_id.clone());
        }
        self.last_position = r.position;
        self.updated_at = Some(r.occurred_at);
        let Ok(Some(event)) = KnownEvent::decode(&r.event_type, &r.data) else {
            return;
        };
        match event {
            KnownEvent::SessionRequested(e) if self.requested.is_none() => {
                self.session_id = Some(e.session_id.clone());
                self.submitted_by = Some(Submitter {
                    id: r.actor.id.clone(),
                    app: r.actor.app.clone(),
                    agent: r.actor.agent.clone(),
                });
                self.opened_position = r.position;
                self.opened_at = Some(r.occurred_at);
                self.last_activity = Some(r.occurred_at);
                self.egress.clone_from(&e.egress);
                self.requested = Some(*e);
            }
            KnownEvent::SessionEgressChanged(e) => self.egress = e.egress,
            KnownEvent::ServiceExposed(e) => {
                self.exposed.retain(|x| x.port != e.port);
                self.exposed.push(*e);
            }
            KnownEvent::SessionOpened(e) => {
                self.runner = Some(e.runner);
                self.effective_limits = Some(e.effective_limits);
                self.expires_at = DateTime::parse_from_rfc3339(&e.expires_at)
                    .ok()
                    .map(|t| t.with_timezone(&Utc));
            }
            KnownEvent::SessionRejected(e) => {
                self.session_id.get_or_insert(e.session_id);
                self.reasons = e.reasons;
                self.status = SessionStatus::Rejected;
            }
            KnownEvent::SecretInjectionApproved(e) => {
                self.approved_secrets.push(ApprovedSecret {
                    name: e.name,
                    mode: e.mode,
                    hosts: e.hosts,
                });
            }
            KnownEvent::SessionStarted(e) => {
                self.sandbox_id = Some(e.sandbox_id);
                self.runtime = Some(e.runtime);
                // The idle clock starts when it can take calls.
                self.last_activity = Some(r.occurred_at);
                if self.status == SessionStatus::Opening {
                    self.status = SessionStatus::Active;
                }
            }
            KnownEvent::SessionFailed(e) => self.end(SessionStatus::Failed, e.reason),
            KnownEvent::SessionExecStarted(e) => {
                self.execs = self.execs.max(e.exec);
                self.running_exec = Some(e.exec);
                self.last_activity = Some(r.occurred_at);
            }
            KnownEvent::SessionExecFinished(e) => {
                if self.running_exec == Some(e.exec) {
                    self.running_exec = None;
                }
                self.last_activity = Some(r.occurred_at);
            }
            KnownEvent::SessionFileWritten(_)
            | KnownEvent::SessionFileRead(_)
            | KnownEvent::SessionFileDeleted(_)
            | KnownEvent::SessionFilesListed(_) => {
                self.file_ops += 1;
                self.last_activity = Some(r.occurred_at);
            }
            KnownEvent::SessionClosed(e) => self.end(SessionStatus::Closed, e.reason),
            KnownEvent::SessionExpired(e) => self.end(SessionStatus::Expired, e.reason),
            KnownEvent::SessionLost(e) => self.end(SessionStatus::Lost, e.reason),
            KnownEvent::WorkspaceDestroyed(_) => {
                self.workspace_destroyed.get_or_insert(r.position);
            }
            KnownEvent::KeyDestroyed(_) => {
                self.destroyed.get_or_insert(r.position);
            }
            _ => {}
        }
    }

    /// When it is due to expire, and why (the earlier of idle and lifetime).
    pub fn deadline(&self) -> Option<(DateTime<Utc>, &'static str)> {
        if self.status.is_terminal() || !self.exists() {
            return None;
        }
        let idle = self
            .effective_limits
            .as_ref()
            .and_then(|l| l.idle_timeout_secs)
            .zip(self.last_activity)
            .map(|(s, at)| (at + secs(s), "idle"));
        let lifetime = self.expires_at.map(|t| (t, "lifetime"));
        match (idle, lifetime) {
            (Some(i), Some(l)) => Some(if l.0 <= i.0 { l } else { i }),
            (a, b) => a.or(b),
        }
    }

    /// The events `command` causes, or why it is refused. No I/O.
    pub fn decide(&self, command: SessionCommand) -> Result<Vec<KnownEvent>, SessionRefusal> {
        match command {
            SessionCommand::Open { events } => self.decide_open(events),
            SessionCommand::Start {
                runner,
                sandbox_id,
                backend,
                runtime,
                image_digest,
                materialized,
            } => {
                self.on_runner(&runner)?;
                if self.status != SessionStatus::Opening {
                    return Err(self.not_active());
                }
                let mut out: Vec<KnownEvent> = materialized
                    .into_iter()
                    .map(|m| KnownEvent::SecretMaterialized(Box::new(m)))
                    .collect();
                out.push(KnownEvent::SessionStarted(Box::new(c::SessionStarted {
                    session_id: self.id().to_owned(),
                    runner,
                    sandbox_id,
                    backend,
                    runtime,
                    image_digest,
                })));
                Ok(out)
            }
            SessionCommand::Fail { runner, reason } => {
                self.on_runner(&runner)?;
                if self.status != SessionStatus::Opening {
                    return Err(self.not_active());
                }
                Ok(vec![KnownEvent::SessionFailed(Box::new(
                    c::SessionFailed {
                        session_id: self.id().to_owned(),
                        reason,
                    },
                ))])
            }
            SessionCommand::StartExec {
                runner,
                kind,
                source,
                stdin,
                timeout_ms,
            } => {
                self.active_on(&runner)?;
                if let Some(n) = self.running_exec {
                    return Err(SessionRefusal::Busy(n));
                }
                if kind != "code" && kind != "command" {
                    return Err(SessionRefusal::Invalid(format!("exec kind {kind}")));
                }
                Ok(vec![KnownEvent::SessionExecStarted(Box::new(
                    c::SessionExecStarted {
                        session_id: self.id().to_owned(),
                        exec: self.execs + 1,
                        kind,
                        source,
                        stdin,
                        timeout_ms,
                    },
                ))])
            }
            SessionCommand::FinishExec { runner, finished } => {
                self.on_runner(&runner)?;
                if !self.exists() {
                    return Err(SessionRefusal::NoSession);
                }
                // An exec that was running when the session ended still gets
                // its end recorded; one that is not running does not.
                if self.running_exec != Some(finished.exec)
                    && !(self.status.is_terminal() && finished.exec == self.execs)
                {
                    return Err(SessionRefusal::NotRunning(finished.exec));
                }
                Ok(vec![KnownEvent::SessionExecFinished(finished)])
            }
            SessionCommand::FileOp { runner, event } => {
                self.active_on(&runner)?;
                let ok = matches!(
                    event,
                    KnownEvent::SessionFileWritten(_)
                        | KnownEvent::SessionFileRead(_)
                        | KnownEvent::SessionFileDeleted(_)
                        | KnownEvent::SessionFilesListed(_)
                );
                if !ok {
                    return Err(SessionRefusal::Invalid(format!(
                        "{} is not a file operation",
                        event.event_type()
                    )));
                }
                Ok(vec![event])
            }
            SessionCommand::ChangeEgress { events } => {
                self.live()?;
                for (i, e) in events.iter().enumerate() {
                    let ok = match e {
                        KnownEvent::PolicyEvaluated(_) => true,
                        KnownEvent::SessionEgressChanged(c) => {
                            i + 1 == events.len() && c.session_id == self.id()
                        }
                        _ => false,
                    };
                    if !ok {
                        return Err(SessionRefusal::Invalid(format!(
                            "{} does not belong in an egress change",
                            e.event_type()
                        )));
                    }
                }
                Ok(events)
            }
            SessionCommand::RecordEgress { runner, events } => {
                self.on_runner(&runner)?;
                if !self.exists() {
                    return Err(SessionRefusal::NoSession);
                }
                if self.workspace_destroyed.is_some() {
                    return Err(SessionRefusal::Ended(self.status));
                }
                if let Some(e) = events.iter().find(|e| {
                    !matches!(
                        e,
                        KnownEvent::EgressAllowed(_)
                            | KnownEvent::EgressDenied(_)
                            | KnownEvent::EgressClosed(_)
                            | KnownEvent::EgressLimitReached(_)
                            | KnownEvent::SecretBrokered(_)
                            | KnownEvent::OutputRedacted(_)
                    )
                }) {
                    return Err(SessionRefusal::Invalid(format!(
                        "{} is not an egress record",
                        e.event_type()
                    )));
                }
                Ok(events)
            }
            SessionCommand::Expose { exposure } => {
                self.live()?;
                if self.status != SessionStatus::Active {
                    return Err(self.not_active());
                }
                if exposure.session_id != self.id() || !(1..=65535).contains(&exposure.port) {
                    return Err(SessionRefusal::Invalid(
                        "not an exposure of this session".into(),
                    ));
                }
                Ok(vec![KnownEvent::ServiceExposed(Box::new(exposure))])
            }
            SessionCommand::Serve { events } => {
                self.live()?;
                for e in &events {
                    let ok = match e {
                        KnownEvent::PolicyEvaluated(_) => true,
                        KnownEvent::ServiceRequest(r) => {
                            r.session_id == self.id() && self.exposure(r.port).is_some()
                        }
                        _ => false,
                    };
                    if !ok {
                        return Err(SessionRefusal::Invalid(format!(
                            "{} is not a service request of an exposed port",
                            e.event_type()
                        )));
                    }
                }
                Ok(events)
            }
            SessionCommand::Close { reason } => {
                self.live()?;
                Ok(vec![KnownEvent::SessionClosed(Box::new(
                    c::SessionClosed {
                        session_id: self.id().to_owned(),
                        reason,
                    },
                ))])
            }
            SessionCommand::Expire { now } => {
                self.live()?;
                match self.deadline() {
                    Some((at, why)) if at <= now => {
                        let reason = match why {
                            "idle" => format!(
                                "idle since {} (idle timeout {} s)",
                                self.last_activity
                                    .as_ref()
                                    .map(format_timestamp)
                                    .unwrap_or_default(),
                                self.effective_limits
                                    .as_ref()
                                    .and_then(|l| l.idle_timeout_secs)
                                    .unwrap_or(0)
                            ),
                            _ => format!("its maximum lifetime ended at {}", format_timestamp(&at)),
                        };
                        Ok(vec![KnownEvent::SessionExpired(Box::new(
                            c::SessionExpired {
                                session_id: self.id().to_owned(),
                                reason,
                            },
                        ))])
                    }
                    _ => Err(SessionRefusal::NotDue),
                }
            }
            SessionCommand::Lose { reason } => {
                self.live()?;
                Ok(vec![KnownEvent::SessionLost(Box::new(c::SessionLost {
                    session_id: self.id().to_owned(),
                    reason,
                }))])
            }
            SessionCommand::Destroyed { workspace } => {
                if !self.exists() {
                    return Err(SessionRefusal::NoSession);
                }
                if !self.status.is_terminal() {
                    return Err(SessionRefusal::NotEnded(self.status));
                }
                if self.workspace_destroyed.is_some() {
                    return Ok(Vec::new());
                }
                Ok(vec![KnownEvent::WorkspaceDestroyed(Box::new(workspace))])
            }
            SessionCommand::Shred { reason } => {
                if !self.exists() {
                    return Err(SessionRefusal::NoSession);
                }
                if self.destroyed.is_some() {
                    return Ok(Vec::new());
                }
                if !self.status.is_terminal() {
                    return Err(SessionRefusal::NotEnded(self.status));
                }
                Ok(vec![KnownEvent::KeyDestroyed(Box::new(c::KeyDestroyed {
                    key_id: self.id().to_owned(),
                    reason,
                }))])
            }
        }
    }

    fn not_active(&self) -> SessionRefusal {
        if self.status.is_terminal() {
            SessionRefusal::Ended(self.status)
        } else {
            SessionRefusal::NotActive(self.status)
        }
    }

    /// Open or active (not ended).
    /// How `port` is exposed, if it is.
    pub fn exposure(&self, port: u64) -> Option<&c::ServiceExposed> {
        self.exposed.iter().find(|x| x.port == port)
    }

    fn live(&self) -> Result<(), SessionRefusal> {
        if !self.exists() {
            return Err(SessionRefusal::NoSession);
        }
        if self.status.is_terminal() {
            return Err(SessionRefusal::Ended(self.status));
        }
        Ok(())
    }

    fn on_runner(&self, runner: &str) -> Result<(), SessionRefusal> {
        if !self.exists() {
            return Err(SessionRefusal::NoSession);
        }
        if self.runner.as_deref() != Some(runner) {
            return Err(SessionRefusal::WrongRunner);
        }
        Ok(())
    }

    fn active_on(&self, runner: &str) -> Result<(), SessionRefusal> {
        self.on_runner(runner)?;
        if self.status != SessionStatus::Active {
            return Err(self.not_active());
        }
        Ok(())
    }

    fn decide_open(&self, events: Vec<KnownEvent>) -> Result<Vec<KnownEvent>, SessionRefusal> {
        if self.version > 0 {
            return Err(SessionRefusal::Exists);
        }
        let bad = |m: &str| Err(SessionRefusal::Invalid(format!("opening: {m}")));
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return bad("no events");
        };
        if !matches!(first, KnownEvent::SessionRequested(_)) {
            return bad("must start with session.requested");
        }
        let denied = events.iter().any(|e| match e {
            KnownEvent::PolicyEvaluated(p) => p.decision == c::Decision::Deny,
            KnownEvent::SecretInjectionDenied(_) => true,
            _ => false,
        });
        match last {
            KnownEvent::SessionOpened(_) if denied => bad("opened although a policy denied it"),
            KnownEvent::SessionRejected(_) if !denied => {
                bad("rejected although every policy allowed it")
            }
            KnownEvent::SessionOpened(_) | KnownEvent::SessionRejected(_) => Ok(events),
            _ => bad("must end with session.opened or session.rejected"),
        }
    }

    /// What clients see (`None` before it exists).
    pub fn view(&self) -> Option<SessionView> {
        let req = self.requested.as_ref()?;
        let by = self.submitted_by.clone().unwrap_or_default();
        let ts = |t: Option<DateTime<Utc>>| t.as_ref().map(format_timestamp);
        Some(SessionView {
            session_id: self.id().to_owned(),
            tenant: self.tenant.clone(),
            status: self.status,
            language: req.language.clone(),
            submitted_by: by.id,
            app: by.app,
            agent: by.agent,
            idempotency_key: req.idempotency_key.clone(),
            opened_position: self.opened_position,
            opened_at: ts(self.opened_at).unwrap_or_default(),
            last_position: self.last_position,
            updated_at: ts(self.updated_at).unwrap_or_default(),
            requested_limits: req.limits.clone(),
            effective_limits: self.effective_limits.clone(),
            expires_at: ts(self.expires_at),
            last_activity_at: ts(self.last_activity),
            next_deadline: self.deadline().map(|(t, _)| format_timestamp(&t)),
            runner: self.runner.clone(),
            runtime: self.runtime.clone(),
            secrets: req.secrets.clone(),
            dependencies: req.dependencies.clone(),
            execs: self.execs,
            running_exec: self.running_exec,
            file_ops: self.file_ops,
            reasons: self.reasons.clone(),
            ended_reason: self.ended_reason.clone(),
            workspace_destroyed: self.workspace_destroyed.is_some(),
            data_destroyed: self.destroyed.is_some(),
        })
    }
}

impl Aggregate for Session {
    fn apply(&mut self, record: &Record) {
        Session::apply(self, record);
    }
    fn version(&self) -> u64 {
        self.version
    }
}

/// A session as clients see it (`GET /v1/sessions/{id}`, the read model).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SessionView {
    pub session_id: String,
    pub tenant: String,
    pub status: SessionStatus,
    pub language: String,
    pub submitted_by: String,
    pub app: Option<String>,
    pub agent: Option<String>,
    pub idempotency_key: Option<String>,
    pub opened_position: u64,
    /// RFC 3339, UTC, microseconds.
    pub opened_at: String,
    /// The session stream's last record.
    pub last_position: u64,
    pub updated_at: String,
    pub requested_limits: SessionLimits,
    pub effective_limits: Option<SessionLimits>,
    /// The end of its maximum lifetime.
    pub expires_at: Option<String>,
    pub last_activity_at: Option<String>,
    /// When it expires unless a call comes first (idle) — or at the latest.
    pub next_deadline: Option<String>,
    pub runner: Option<String>,
    pub runtime: Option<String>,
    pub secrets: Vec<String>,
    pub dependencies: Vec<c::Dependency>,
    /// Execs started so far.
    pub execs: u64,
    pub running_exec: Option<u64>,
    pub file_ops: u64,
    /// Why it was rejected.
    pub reasons: Vec<String>,
    /// Why it ended.
    pub ended_reason: Option<String>,
    pub workspace_destroyed: bool,
    pub data_destroyed: bool,
}

#[cfg(test)]
mod tests;
