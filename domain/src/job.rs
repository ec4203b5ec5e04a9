//! The job aggregate: what a job is ([`Job`], folded from its stream with
//! [`Job::apply`]) and what may happen to it next ([`Job::decide`]).
//!
//! Why one home: the job's life used to be worked out again wherever it was
//! needed — a string state machine in the API's cancel, event lists in data
//! deletion, a fold in the runner, another in the projector. Every rule now
//! lives here once, as data in and events out, with no I/O: retries and leases
//! ("a claim holds until its lease expires", "a job gets `max_attempts`"),
//! "the first `execution.finished` is the result", "a cancelled job is never
//! claimed", "only a finished job's data can be destroyed". The API, the runner,
//! the projector and replay all fold with [`Job::apply`] and decide with
//! [`Job::decide`]; one loop in the ledger store reads, folds, decides and
//! appends (`EventStore::decide`).

use crate::aggregate::Aggregate;
use crate::catalogue::{self as c, KnownEvent, Limits, Outcome};
use crate::status::JobStatus;
use chrono::{DateTime, Utc};
use glassbox_verify::record::{Record, format_timestamp};
use serde::{Deserialize, Serialize};

/// Default wall time (ms) when the accepted limits do not say.
pub const DEFAULT_WALL_MS: u64 = 10_000;

/// Who submitted a job (from the `job.submitted` record's actor).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitter {
    pub id: String,
    pub app: Option<String>,
    pub agent: Option<String>,
}

/// A secret the control plane approved, and how it is delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovedSecret {
    pub name: String,
    pub mode: String,
    /// A brokered secret's hosts (`host:port`), as the policy named them.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// A job as its stream says it is, after the records applied so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Stream version of the last record applied (0: no record).
    pub version: u64,
    pub tenant: String,
    /// The correlation ID of the stream's first record (the request that
    /// created it): what the work done for it later is traced under.
    #[serde(default)]
    pub correlation_id: Option<String>,
    pub status: JobStatus,
    pub job_id: Option<String>,
    pub submitted: Option<c::JobSubmitted>,
    pub submitted_by: Option<Submitter>,
    pub submitted_position: u64,
    pub submitted_at: Option<DateTime<Utc>>,
    /// Position and time of the stream's last record.
    pub last_position: u64,
    pub updated_at: Option<DateTime<Utc>>,
    pub effective_limits: Option<Limits>,
    /// Why it was rejected or failed.
    pub reasons: Vec<String>,
    pub approved_secrets: Vec<ApprovedSecret>,
    /// The highest attempt claimed (0: never claimed).
    pub attempt: u64,
    pub runner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The first `execution.finished`: the result.
    pub finished: Option<c::ExecutionFinished>,
    pub artifacts: Vec<c::ArtifactStored>,
    /// Position of the first cancellation request.
    pub cancel_requested: Option<u64>,
    /// Position of `job.cancelled`.
    pub cancelled: Option<u64>,
    /// Position of `key.destroyed`.
    pub destroyed: Option<u64>,
}

/// What may be asked of a job.
#[derive(Debug, Clone, PartialEq)]
pub enum JobCommand {
    /// Record a submission: `job.submitted` (absent when the caller may not
    /// submit at all), the policy decisions in the order they were made, and
    /// `job.accepted` or `job.rejected` last — on a new stream.
    Submit { events: Vec<KnownEvent> },
    /// A runner asks for the next attempt at `now`. Depending on the stream this
    /// claims it, completes it from a recorded result, cancels it (requested
    /// before it ran), or fails it (its attempts are used up).
    Claim {
        runner: String,
        now: DateTime<Utc>,
        /// Added to the job's wall time to make the lease.
        grace_ms: u64,
        max_attempts: u64,
    },
    /// The runner holding `attempt` records what it did (dependency checks,
    /// secrets materialized, the sandbox provisioned and started, or a failure
    /// before anything ran).
    Progress {
        attempt: u64,
        events: Vec<KnownEvent>,
    },
    /// An attempt finished running.
    Finish(Box<Finish>),
    /// The attempt cannot go on.
    Fail { attempt: u64, reason: String },
    /// Someone asks for the job to be cancelled.
    Cancel { reason: Option<String> },
    /// Crypto-shred a finished job's data.
    Shred { reason: String },
}

/// What an attempt produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub attempt: u64,
    pub finished: c::ExecutionFinished,
    pub redactions: Vec<c::OutputRedacted>,
    pub artifacts: Vec<c::ArtifactStored>,
    pub workspace: c::WorkspaceDestroyed,
    /// The result could not be stored: the execution is recorded, then the job
    /// fails with this reason.
    pub storage_error: Option<String>,
    /// Why it was cancelled, when the outcome is `cancelled`.
    pub cancel_reason: Option<String>,
}

/// Why a command was refused (nothing is appended).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("there is no such job")]
    NoJob,
    #[error("the job already exists")]
    Exists,
    #[error("the job cannot be claimed: {0}")]
    NotClaimable(&'static str),
    #[error("attempt {attempt} no longer holds the job (attempt {current}, {status})")]
    LeaseLost {
        attempt: u64,
        current: u64,
        status: JobStatus,
    },
    #[error("the job is already {0}")]
    Ended(JobStatus),
    #[error("the job has not finished ({0}); cancel it first")]
    NotEnded(JobStatus),
    #[error("invalid command: {0}")]
    Invalid(String),
}

fn boxed<E>(e: E) -> Box<E> {
    Box::new(e)
}

impl Job {
    /// Folds a stream's records.
    /// Is there a job (a `job.submitted`) in this stream?
    pub fn exists(&self) -> bool {
        self.submitted.is_some()
    }

    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    fn set_status(&mut self, s: JobStatus) {
        if !self.status.is_terminal() {
            self.status = s;
        }
    }

    /// Applies one record of the job's stream (records of other types, or
    /// that do not decode, change only the version and position).
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
        let p = r.position;
        match event {
            KnownEvent::JobSubmitted(e) if self.submitted.is_none() => {
                self.job_id = Some(e.job_id.clone());
                self.submitted_by = Some(Submitter {
                    id: r.actor.id.clone(),
                    app: r.actor.app.clone(),
                    agent: r.actor.agent.clone(),
                });
                self.submitted_position = p;
                self.submitted_at = Some(r.occurred_at);
                self.submitted = Some(*e);
            }
            KnownEvent::JobAccepted(e) => {
                self.effective_limits = Some(e.effective_limits);
                self.set_status(JobStatus::Accepted);
            }
            KnownEvent::JobRejected(e) => {
                self.job_id.get_or_insert(e.job_id);
                self.reasons = e.reasons;
                self.status = JobStatus::Rejected;
            }
            KnownEvent::SecretInjectionApproved(e) => {
                self.approved_secrets.push(ApprovedSecret {
                    name: e.name,
                    mode: e.mode,
                    hosts: e.hosts,
                });
            }
            KnownEvent::ExecutionClaimed(e) => {
                self.attempt = self.attempt.max(e.attempt);
                self.lease_expires_at = DateTime::parse_from_rfc3339(&e.lease_expires_at)
                    .ok()
                    .map(|t| t.with_timezone(&Utc));
                self.runner = Some(e.runner);
                self.set_status(JobStatus::Claimed);
            }
            KnownEvent::ExecutionStarted(_) => self.set_status(JobStatus::Running),
            // The first finish is the result; a late one is not a second result.
            KnownEvent::ExecutionFinished(e) if self.finished.is_none() => {
                self.finished = Some(*e);
            }
            KnownEvent::ArtifactStored(e) => self.artifacts.push(*e),
            KnownEvent::JobCancelRequested(_) => {
                self.cancel_requested.get_or_insert(p);
            }
            KnownEvent::JobCompleted(_) => self.set_status(JobStatus::Completed),
            KnownEvent::JobFailed(e) => {
                self.reasons.push(e.reason);
                self.set_status(JobStatus::Failed);
            }
            KnownEvent::JobCancelled(_) => {
                self.cancel_requested.get_or_insert(p);
                self.cancelled.get_or_insert(p);
                self.set_status(JobStatus::Cancelled);
            }
            KnownEvent::KeyDestroyed(_) => {
                self.destroyed.get_or_insert(p);
            }
            _ => {}
        }
    }

    /// The wall time of an attempt (ms), from the accepted limits.
    pub fn wall_ms(&self) -> u64 {
        self.effective_limits
            .as_ref()
            .and_then(|l| l.wall_time_ms)
            .unwrap_or(DEFAULT_WALL_MS)
    }

    /// May a runner take the next attempt at `now`? (`Claim` decides; this is
    /// for discovery.)
    pub fn claimable(&self, now: DateTime<Utc>) -> bool {
        self.status != JobStatus::Submitted
            && !self.is_terminal()
            && (self.attempt == 0 || self.lease_expires_at.is_none_or(|t| t <= now))
    }

    /// The events `command` causes, or why it is refused. No I/O: the result
    /// depends on the job and the command only.
    pub fn decide(&self, command: JobCommand) -> Result<Vec<KnownEvent>, Refusal> {
        match command {
            JobCommand::Submit { events } => self.decide_submit(events),
            JobCommand::Claim {
                runner,
                now,
                grace_ms,
                max_attempts,
            } => self.decide_claim(runner, now, grace_ms, max_attempts),
            JobCommand::Progress { attempt, events } => {
                self.holds(attempt)?;
                for e in &events {
                    let ok = matches!(
                        e,
                        KnownEvent::DependencyChecked(_)
                            | KnownEvent::SecretMaterialized(_)
                            | KnownEvent::SandboxProvisioned(_)
                            | KnownEvent::ExecutionStarted(_)
                            | KnownEvent::EgressAllowed(_)
                            | KnownEvent::EgressDenied(_)
                            | KnownEvent::EgressClosed(_)
                            | KnownEvent::EgressLimitReached(_)
                            | KnownEvent::SecretBrokered(_)
                            | KnownEvent::OutputRedacted(_)
                            | KnownEvent::JobFailed(_)
                    );
                    if !ok {
                        return Err(Refusal::Invalid(format!(
                            "{} is not a progress event",
                            e.event_type()
                        )));
                    }
                }
                Ok(events)
            }
            JobCommand::Finish(f) => self.decide_finish(*f),
            JobCommand::Fail { attempt, reason } => {
                self.holds(attempt)?;
                Ok(vec![KnownEvent::JobFailed(boxed(c::JobFailed {
                    job_id: self.id().to_owned(),
                    reason,
                }))])
            }
            JobCommand::Cancel { reason } => self.decide_cancel(reason),
            JobCommand::Shred { reason } => {
                if !self.exists() {
                    return Err(Refusal::NoJob);
                }
                if self.destroyed.is_some() {
                    return Ok(Vec::new());
                }
                if !self.is_terminal() {
                    return Err(Refusal::NotEnded(self.status));
                }
                Ok(vec![KnownEvent::KeyDestroyed(boxed(c::KeyDestroyed {
                    key_id: self.id().to_owned(),
                    reason,
                }))])
            }
        }
    }

    fn id(&self) -> &str {
        self.job_id.as_deref().unwrap_or_default()
    }

    /// Does `attempt` still hold the job (the current attempt, not ended)?
    fn holds(&self, attempt: u64) -> Result<(), Refusal> {
        if !self.exists() {
            return Err(Refusal::NoJob);
        }
        if attempt != self.attempt || self.is_terminal() {
            return Err(Refusal::LeaseLost {
                attempt,
                current: self.attempt,
                status: self.status,
            });
        }
        Ok(())
    }

    fn decide_submit(&self, events: Vec<KnownEvent>) -> Result<Vec<KnownEvent>, Refusal> {
        if self.version > 0 {
            return Err(Refusal::Exists);
        }
        let bad = |m: &str| Err(Refusal::Invalid(format!("submission: {m}")));
        let (Some(last), Some(first)) = (events.last(), events.first()) else {
            return bad("no events");
        };
        let denied = events.iter().any(|e| match e {
            KnownEvent::PolicyEvaluated(p) => p.decision == c::Decision::Deny,
            KnownEvent::SecretInjectionDenied(_) => true,
            _ => false,
        });
        match last {
            KnownEvent::JobAccepted(_) if denied => bad("accepted although a policy denied it"),
            KnownEvent::JobAccepted(_) if !matches!(first, KnownEvent::JobSubmitted(_)) => {
                bad("accepted without job.submitted")
            }
            KnownEvent::JobRejected(_) if !denied => {
                bad("rejected although every policy allowed it")
            }
            KnownEvent::JobAccepted(_) | KnownEvent::JobRejected(_) => Ok(events),
            _ => bad("must end with job.accepted or job.rejected"),
        }
    }

    fn decide_claim(
        &self,
        runner: String,
        now: DateTime<Utc>,
        grace_ms: u64,
        max_attempts: u64,
    ) -> Result<Vec<KnownEvent>, Refusal> {
        if !self.exists() {
            return Err(Refusal::NoJob);
        }
        match self.status {
            JobStatus::Submitted => return Err(Refusal::NotClaimable("it was not accepted")),
            s if s.is_terminal() => return Err(Refusal::Ended(s)),
            _ => {}
        }
        if self.attempt > 0 && self.lease_expires_at.is_some_and(|t| t > now) {
            return Err(Refusal::NotClaimable("the lease of its attempt is live"));
        }
        // An attempt finished but its runner did not record the end: complete
        // from the recorded result, never run again.
        if let Some(f) = &self.finished {
            return Ok(vec![self.end_from(f.outcome, None)]);
        }
        if self.cancel_requested.is_some() {
            return Ok(vec![KnownEvent::JobCancelled(boxed(c::JobCancelled {
                job_id: self.id().to_owned(),
                reason: Some("cancelled before it ran".into()),
            }))]);
        }
        if self.attempt >= max_attempts.max(1) {
            return Ok(vec![KnownEvent::JobFailed(boxed(c::JobFailed {
                job_id: self.id().to_owned(),
                reason: format!(
                    "gave up after {a} attempts: the lease of attempt {a} expired without a result",
                    a = self.attempt
                ),
            }))]);
        }
        let lease = now
            + chrono::Duration::milliseconds(
                i64::try_from(self.wall_ms().saturating_add(grace_ms)).unwrap_or(i64::MAX / 2),
            );
        Ok(vec![KnownEvent::ExecutionClaimed(boxed(
            c::ExecutionClaimed {
                runner,
                attempt: self.attempt + 1,
                lease_expires_at: lease.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            },
        ))])
    }

    /// The event that ends the job with `outcome`.
    fn end_from(&self, outcome: Outcome, cancel_reason: Option<String>) -> KnownEvent {
        if outcome == Outcome::Cancelled {
            KnownEvent::JobCancelled(boxed(c::JobCancelled {
                job_id: self.id().to_owned(),
                reason: cancel_reason,
            }))
        } else {
            KnownEvent::JobCompleted(boxed(c::JobCompleted {
                job_id: self.id().to_owned(),
                outcome,
            }))
        }
    }

    fn decide_finish(&self, f: Finish) -> Result<Vec<KnownEvent>, Refusal> {
        if !self.exists() {
            return Err(Refusal::NoJob);
        }
        if f.attempt == 0 || f.attempt > self.attempt {
            return Err(Refusal::Invalid(format!(
                "attempt {} was never claimed",
                f.attempt
            )));
        }
        let mut out = Vec::new();
        let outcome = match &self.finished {
            // The first finish is the result.
            None => {
                out.push(KnownEvent::ExecutionFinished(boxed(f.finished.clone())));
                out.extend(
                    f.redactions
                        .into_iter()
                        .map(|e| KnownEvent::OutputRedacted(boxed(e))),
                );
                out.extend(
                    f.artifacts
                        .into_iter()
                        .map(|e| KnownEvent::ArtifactStored(boxed(e))),
                );
                f.finished.outcome
            }
            // A later one never is.
            Some(won) => {
                out.push(KnownEvent::ExecutionSuperseded(boxed(
                    c::ExecutionSuperseded {
                        attempt: f.attempt,
                        winning_attempt: won.attempt,
                    },
                )));
                won.outcome
            }
        };
        out.push(KnownEvent::WorkspaceDestroyed(boxed(f.workspace)));
        if !self.is_terminal() {
            out.push(match (&f.storage_error, self.finished.is_none()) {
                (Some(reason), true) => KnownEvent::JobFailed(boxed(c::JobFailed {
                    job_id: self.id().to_owned(),
                    reason: format!(
                        "the result of attempt {} could not be kept: {reason}",
                        f.attempt
                    ),
                })),
                _ => self.end_from(outcome, f.cancel_reason),
            });
        }
        Ok(out)
    }

    fn decide_cancel(&self, reason: Option<String>) -> Result<Vec<KnownEvent>, Refusal> {
        if !self.exists() && self.status != JobStatus::Rejected {
            return Err(Refusal::NoJob);
        }
        // Asking twice is not an error: the first request stands.
        if self.cancel_requested.is_some() {
            return Ok(Vec::new());
        }
        if self.is_terminal() {
            return Err(Refusal::Ended(self.status));
        }
        let mut out = vec![KnownEvent::JobCancelRequested(boxed(
            c::JobCancelRequested {
                job_id: self.id().to_owned(),
                reason: reason.clone(),
            },
        ))];
        // Never claimed: cancelled at once (a racing claim loses on the version).
        if self.attempt == 0 {
            out.push(KnownEvent::JobCancelled(boxed(c::JobCancelled {
                job_id: self.id().to_owned(),
                reason,
            })));
        }
        Ok(out)
    }

    /// The job as the API shows it (the read model), if there is one.
    pub fn view(&self) -> Option<JobView> {
        let s = self.submitted.as_ref()?;
        let by = self.submitted_by.clone().unwrap_or_default();
        let f = self.finished.as_ref();
        Some(JobView {
            job_id: s.job_id.clone(),
            tenant: self.tenant.clone(),
            status: self.status,
            language: s.language.clone(),
            submitted_by: by.id,
            app: by.app,
            agent: by.agent,
            idempotency_key: s.idempotency_key.clone(),
            submitted_position: self.submitted_position,
            submitted_at: self
                .submitted_at
                .as_ref()
                .map(format_timestamp)
                .unwrap_or_default(),
            last_position: self.last_position,
            updated_at: self
                .updated_at
                .as_ref()
                .map(format_timestamp)
                .unwrap_or_default(),
            requested_limits: s.limits.clone(),
            effective_limits: self.effective_limits.clone(),
            secrets: s.secrets.clone(),
            dependencies: s.dependencies.clone(),
            reasons: self.reasons.clone(),
            cancel_requested: self.cancel_requested.is_some(),
            attempt: self.attempt,
            runner: self.runner.clone(),
            outcome: f.map(|f| f.outcome),
            exit_code: f.and_then(|f| f.exit_code),
            signal: f.and_then(|f| f.signal),
            wall_ms: f.map(|f| f.wall_ms),
            artifacts: self
                .artifacts
                .iter()
                .map(|a| ArtifactSummary {
                    attempt: a.attempt,
                    index: a.index,
                    size_bytes: a.blob.size_bytes,
                    truncated: a.truncated,
                })
                .collect(),
            data_destroyed: self.destroyed.is_some(),
        })
    }
}

impl Aggregate for Job {
    fn apply(&mut self, record: &Record) {
        Job::apply(self, record);
    }
    fn version(&self) -> u64 {
        self.version
    }
}

/// An artifact as the job view lists it (its path is in the encrypted index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ArtifactSummary {
    pub attempt: u64,
    pub index: u64,
    pub size_bytes: u64,
    pub truncated: bool,
}

/// A job as clients see it (`GET /v1/jobs/{id}`, the read model).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JobView {
    pub job_id: String,
    pub tenant: String,
    pub status: JobStatus,
    pub language: String,
    pub submitted_by: String,
    pub app: Option<String>,
    pub agent: Option<String>,
    pub idempotency_key: Option<String>,
    pub submitted_position: u64,
    /// RFC 3339, UTC, microseconds (as the ledger writes times).
    pub submitted_at: String,
    /// The job stream's last record.
    pub last_position: u64,
    pub updated_at: String,
    pub requested_limits: Limits,
    pub effective_limits: Option<Limits>,
    pub secrets: Vec<String>,
    pub dependencies: Vec<c::Dependency>,
    pub reasons: Vec<String>,
    pub cancel_requested: bool,
    pub attempt: u64,
    pub runner: Option<String>,
    pub outcome: Option<Outcome>,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub wall_ms: Option<u64>,
    pub artifacts: Vec<ArtifactSummary>,
    pub data_destroyed: bool,
}

#[cfg(test)]
mod tests;
