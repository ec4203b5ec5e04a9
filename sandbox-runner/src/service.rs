//! The runner service: picks accepted jobs up from the ledger, runs them with a
//! [`SandboxBackend`], and records every step (DESIGN §5–§6).
//!
//! **Discovery vs decision.** Candidate jobs come from the projector's read model
//! (cheap to query, woken by the projector's NOTIFY); whether a job may be
//! claimed — and everything else that happens to it — is decided by the domain's
//! [`Job::decide`] on the job's ledger stream, through the store's one decide
//! loop (`EventStore::decide`), which appends at the stream version it folded.
//! So of several runners racing for one attempt exactly one wins.
//!
//! **State carried forward.** The runner folds a job's stream once, when it
//! claims it, and keeps the [`Job`] it gets back from each append: its next
//! decision is made on that state without reading the stream again (a conflict
//! makes it read the records it missed). Cancellation requests reach it through
//! one filtered ledger watch per runner (`job.cancel_requested` only), not by
//! polling each job's stream.
//!
//! **At-least-once with de-duplication.** A claim carries a lease (the job's wall
//! time plus a grace period). A lease that expires without `execution.finished`
//! may be claimed again by any runner as the next attempt, at most
//! `max_attempts` times. The first `execution.finished` of a job is its result;
//! a later one is recorded as `execution.superseded`, never as a second result.
//! All of these rules live in [`Job::decide`].
//!
//! **What runs.** Only approved secrets (a `secret.injection_approved` in the
//! stream) are materialized, from the configured provider; their values are
//! redacted from stdout, stderr, artifacts and file names before anything is
//! stored, and never logged. Declared dependencies are checked against
//! `glassbox.dependencies` first; a denial fails the job before anything runs.

use crate::backend::{Progress, SandboxBackend};
use crate::result::ExecutionResult;
use crate::spec::{ExecutionSpec, InputFile, Limits};
use chrono::Utc;
use glassbox_domain::catalogue::{self, BlobRef, Decision as Verdict, KnownEvent, OutputRef};
use glassbox_domain::{Finish, Job, JobCommand, Refusal, Stream};
use glassbox_events::store::{AppendRequest, EventStore, NewEvent, StoreError};
use glassbox_events::{Actor, DecideError, Decided, Envelope};
use glassbox_platform::blob::BlobStore;
use glassbox_policies::{Policy, PolicyEngine};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("runner: job {job}: {step}: {source}")]
    Store {
        job: String,
        step: &'static str,
        #[source]
        source: Box<StoreError>,
    },
    #[error("runner: job {job}: {step}: {detail}")]
    Job {
        job: String,
        step: &'static str,
        detail: String,
    },
    #[error("runner: {step}: {detail}")]
    Query { step: &'static str, detail: String },
}

/// Where secret values come from. Values never leave this module except into
/// the sandbox.
#[derive(Clone, Default)]
pub enum SecretProvider {
    /// No secrets: a job with an approved secret fails (fail closed).
    #[default]
    None,
    /// A JSON file `{"NAME": "value", …}` (read on each use, so it can rotate).
    File(PathBuf),
    /// Environment variables `GLASSBOX_SECRET_<NAME>` of the runner process.
    Env,
}

impl std::fmt::Debug for SecretProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretProvider::None => f.write_str("SecretProvider::None"),
            SecretProvider::File(p) => write!(f, "SecretProvider::File({})", p.display()),
            SecretProvider::Env => f.write_str("SecretProvider::Env"),
        }
    }
}

impl SecretProvider {
    /// The secret's value, if this runner has it.
    pub fn value(&self, name: &str) -> Option<String> {
        match self {
            SecretProvider::None => None,
            SecretProvider::Env => std::env::var(format!("GLASSBOX_SECRET_{name}")).ok(),
            SecretProvider::File(p) => {
                let text = std::fs::read_to_string(p).ok()?;
                let v: Value = serde_json::from_str(&text).ok()?;
                v.get(name).and_then(Value::as_str).map(str::to_owned)
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Recorded in `execution.claimed`; also the sandbox backend's runner id.
    pub runner_id: String,
    /// Jobs run at once; more wait in the queue.
    pub slots: usize,
    /// Added to a job's wall time to make its lease.
    pub lease_grace: Duration,
    pub secrets: SecretProvider,
    /// A directory of vetted wheels; allowed Python dependencies are installed
    /// from it inside the sandbox. Without one, jobs with dependencies fail closed.
    pub wheel_mirror: Option<PathBuf>,
    /// Attempts a job gets; when the last one's lease expires without a
    /// result, the job fails instead of being claimed again.
    pub max_attempts: u64,
    /// How sandboxes that ask for destinations get out.
    pub egress: crate::egress::EgressSettings,
}

/// Default of [`RunnerConfig::max_attempts`].
pub const DEFAULT_MAX_ATTEMPTS: u64 = 3;

pub struct Runner<B: SandboxBackend> {
    store: EventStore,
    blobs: BlobStore,
    engine: Arc<PolicyEngine>,
    backend: B,
    config: RunnerConfig,
    slots: Arc<Semaphore>,
    queued: AtomicUsize,
    /// The jobs this runner runs, and how to cancel each.
    running: std::sync::Mutex<HashMap<String, CancellationToken>>,
}

/// What stops an attempt early, and why (recorded as the cancel reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Requested,
    Shutdown,
    TakenOver,
}

impl Stop {
    fn reason(self) -> &'static str {
        match self {
            Stop::Requested => "cancel requested",
            Stop::Shutdown => "the runner shut down",
            Stop::TakenOver => "another runner took the job over",
        }
    }
}

/// Why an attempt ended early without a result of its own.
enum Halt {
    /// Another attempt holds the job, or the job ended: nothing more to record.
    Lost,
    Err(RunnerError),
}

impl From<RunnerError> for Halt {
    fn from(e: RunnerError) -> Halt {
        Halt::Err(e)
    }
}

impl<B: SandboxBackend + 'static> Runner<B> {
    pub fn new(
        store: EventStore,
        blobs: BlobStore,
        engine: Arc<PolicyEngine>,
        backend: B,
        config: RunnerConfig,
    ) -> Arc<Runner<B>> {
        Arc::new(Runner {
            slots: Arc::new(Semaphore::new(config.slots.max(1))),
            store,
            blobs,
            engine,
            backend,
            config,
            queued: AtomicUsize::new(0),
            running: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Jobs that could be claimed but wait for a free slot.
    pub fn queue_depth(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    fn actor(&self) -> Actor {
        Actor::system(format!("runner:{}", self.config.runner_id))
    }

    /// What the runner appends for a job: under the job's correlation ID, so
    /// its records sit in the submission's trace and correlation.
    fn envelope(&self, state: &Job) -> Envelope {
        let mut e = Envelope::new(state.tenant.clone(), self.actor());
        e.correlation_id.clone_from(&state.correlation_id);
        e
    }

    /// Claims and runs jobs until `shutdown`; then stops claiming, cancels the
    /// jobs it holds and waits until each has recorded its end and cleaned up,
    /// so nothing is left half-done.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        {
            let (slots, capacity) = (Arc::downgrade(&self.slots), self.config.slots.max(1));
            crate::metrics::register_capacity(
                &self.config.runner_id,
                "job",
                capacity as u64,
                move || {
                    slots
                        .upgrade()
                        .map(|s| capacity.saturating_sub(s.available_permits()) as u64)
                },
            );
        }
        let pool = self.store.pool().clone();
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(mut l) => l
                .listen(glassbox_projector::NOTIFY_CHANNEL)
                .await
                .ok()
                .map(|_| l),
            Err(_) => None,
        };
        // Cancellation requests, as they are appended (one watch per runner).
        let from = self.store.head().await.map(|(h, _)| h).unwrap_or(0);
        let mut cancels = self.store.watch_types(
            from,
            &[<catalogue::JobCancelRequested as catalogue::Event>::TYPE],
        );
        let watcher = {
            let me = self.clone();
            tokio::spawn(async move {
                while let Some(item) = cancels.next().await {
                    let Ok(r) = item else { continue };
                    if let Some(job) = glassbox_domain::stream::job_of(&r.record.stream)
                        && let Ok(running) = me.running.lock()
                        && let Some(t) = running.get(job)
                    {
                        t.cancel();
                    }
                }
            })
        };
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            match self.candidates().await {
                Ok(jobs) => {
                    let mut waiting = 0;
                    for job in jobs {
                        if self.is_running(&job) {
                            continue;
                        }
                        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                            waiting += 1;
                            continue;
                        };
                        match self.try_claim(&job).await {
                            Ok(Some(state)) => {
                                // A stopping runner (SIGINT/SIGTERM) cancels what
                                // it runs: each job records `job.cancelled` ("the
                                // runner shut down") and its sandbox is cleaned up.
                                let token = CancellationToken::new();
                                self.mark(&job, Some(token.clone()));
                                let me = self.clone();
                                let stop = shutdown.clone();
                                tasks.spawn(async move {
                                    let attempt = state.attempt;
                                    if let Err(e) = me.execute_job(&job, state, token, stop).await {
                                        tracing::error!(error = %e, "runner: an attempt failed; recording it");
                                        // Any error ends the attempt with a recorded
                                        // reason; if even that cannot be appended, the
                                        // lease expires and max_attempts bounds retries.
                                        if let Err(e2) = me
                                            .fail(&job, attempt, format!("attempt {attempt} failed: {e}"))
                                            .await
                                        {
                                            tracing::error!(error = %e2, "runner: could not record a failed attempt");
                                        }
                                    }
                                    me.mark(&job, None);
                                    drop(permit);
                                });
                            }
                            Ok(None) => drop(permit),
                            Err(e) => {
                                drop(permit);
                                tracing::warn!(error = %e, "runner: claim failed");
                            }
                        }
                    }
                    self.queued.store(waiting, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(error = %e, "runner: cannot list jobs"),
            }
            while tasks.try_join_next().is_some() {}
            let wait = Duration::from_millis(500);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = async {
                    match listener.as_mut() {
                        Some(l) => { let _ = tokio::time::timeout(wait, l.recv()).await; }
                        None => tokio::time::sleep(wait).await,
                    }
                } => {}
            }
        }
        // Graceful shutdown: running jobs see the shutdown, record it and
        // clean up before the runner exits.
        while tasks.join_next().await.is_some() {}
        watcher.abort();
    }

    fn is_running(&self, job: &str) -> bool {
        self.running
            .lock()
            .map(|r| r.contains_key(job))
            .unwrap_or(true)
    }

    fn mark(&self, job: &str, token: Option<CancellationToken>) {
        if let Ok(mut r) = self.running.lock() {
            match token {
                Some(t) => {
                    r.insert(job.to_owned(), t);
                }
                None => {
                    r.remove(job);
                }
            }
        }
    }

    /// Jobs that may need a runner, oldest first (from the read model).
    async fn candidates(&self) -> Result<Vec<String>, RunnerError> {
        glassbox_projector::queries::runnable_jobs(self.store.pool(), 256)
            .await
            .map_err(|e| RunnerError::Query {
                step: "list candidate jobs",
                detail: e.to_string(),
            })
    }

    fn store_error(job: &str, step: &'static str) -> impl FnOnce(StoreError) -> RunnerError {
        let job = job.to_owned();
        move |source| RunnerError::Store {
            job,
            step,
            source: Box::new(source),
        }
    }

    /// Decides `command` on the state carried forward and appends it.
    async fn decide(
        &self,
        job: &str,
        state: Job,
        command: impl Fn(&Job) -> JobCommand,
    ) -> Result<Decided<Job>, Halt> {
        let stream = Stream::job(job);
        let env = self.envelope(&state);
        let decided = self
            .store
            .decide_from(stream.as_str(), state, &env, |j: &Job| {
                let events = j.decide(command(j))?;
                events
                    .iter()
                    .map(|e| NewEvent::known(stream.as_str(), e))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Refusal::Invalid(e.to_string()))
            })
            .await;
        match decided {
            Ok(d) => Ok(d),
            Err(DecideError::Refused(Refusal::LeaseLost { .. } | Refusal::Ended(_))) => {
                Err(Halt::Lost)
            }
            Err(DecideError::Refused(r)) => Err(Halt::Err(RunnerError::Job {
                job: job.to_owned(),
                step: "decide",
                detail: r.to_string(),
            })),
            Err(DecideError::Store(e)) => Err(Halt::Err(Self::store_error(job, "append")(e))),
            Err(DecideError::Contended { .. }) => Err(Halt::Err(RunnerError::Job {
                job: job.to_owned(),
                step: "append",
                detail: "the stream kept changing".into(),
            })),
        }
    }

    /// Claims the next attempt of `job`; `None` if it is not claimable, another
    /// runner won, or the claim decision ended the job instead (a result was
    /// already recorded, it was cancelled before it ran, or its attempts are
    /// used up — each recorded).
    pub async fn try_claim(&self, job: &str) -> Result<Option<Job>, RunnerError> {
        let stream = Stream::job(job);
        let state: Job = self
            .store
            .load(stream.as_str())
            .await
            .map_err(Self::store_error(job, "read stream"))?;
        if !state.claimable(Utc::now()) {
            return Ok(None);
        }
        let span = tracing::info_span!("job.claim", job_id = %job, tenant = %state.tenant, attempt = tracing::field::Empty, won = tracing::field::Empty);
        if let Some(c) = &state.correlation_id {
            glassbox_platform::telemetry::continue_trace(&span, c);
        }
        self.claim(job, state).instrument(span).await
    }

    async fn claim(&self, job: &str, state: Job) -> Result<Option<Job>, RunnerError> {
        let before = state.attempt;
        let (runner, grace, max) = (
            self.config.runner_id.clone(),
            self.config.lease_grace.as_millis() as u64,
            self.config.max_attempts,
        );
        match self
            .decide(job, state, |_| JobCommand::Claim {
                runner: runner.clone(),
                now: Utc::now(),
                grace_ms: grace,
                max_attempts: max,
            })
            .await
        {
            Ok(d) if d.state.attempt > before && d.state.runner.as_deref() == Some(&runner) => {
                tracing::Span::current().record("attempt", d.state.attempt);
                tracing::Span::current().record("won", true);
                Ok(Some(d.state))
            }
            Ok(_) | Err(Halt::Lost) => Ok(None),
            Err(Halt::Err(RunnerError::Job { step: "decide", .. })) => Ok(None),
            Err(Halt::Err(e)) => Err(e),
        }
    }

    /// Records progress of `attempt` on the carried state; `Lost` when the
    /// attempt no longer holds the job.
    async fn progress(&self, job: &str, state: Job, events: Vec<KnownEvent>) -> Result<Job, Halt> {
        let attempt = state.attempt;
        self.decide(job, state, move |_| JobCommand::Progress {
            attempt,
            events: events.clone(),
        })
        .await
        .map(|d| d.state)
    }

    /// Ends `attempt` with `reason` (reading the stream afresh: used when the
    /// carried state may be gone with an error).
    async fn fail(&self, job: &str, attempt: u64, reason: String) -> Result<(), RunnerError> {
        let state: Job = self
            .store
            .load(Stream::job(job).as_str())
            .await
            .map_err(Self::store_error(job, "read stream"))?;
        match self
            .decide(job, state, |_| JobCommand::Fail {
                attempt,
                reason: reason.clone(),
            })
            .await
        {
            Ok(_) | Err(Halt::Lost) => Ok(()),
            Err(Halt::Err(e)) => Err(e),
        }
    }

    /// An input blob, checked against the keyed digest in the ledger. `what`
    /// names the input (`code`, `file 3`), never anything of its content.
    async fn blob(&self, job: &str, what: &str, r: &BlobRef) -> Result<Vec<u8>, RunnerError> {
        self.blobs
            .get_checked(job, &r.key, &r.hmac)
            .await
            .map_err(|e| RunnerError::Job {
                job: job.to_owned(),
                step: "read input blob",
                detail: match e {
                    glassbox_platform::blob::BlobError::DigestMismatch { .. } => {
                        format!("{what}: does not match the digest in the ledger")
                    }
                    other => format!("{what}: {other}"),
                },
            })
    }

    async fn json_blob<T: serde::de::DeserializeOwned>(
        &self,
        job: &str,
        what: &str,
        r: &BlobRef,
    ) -> Result<T, RunnerError> {
        let bytes = self.blob(job, what, r).await?;
        serde_json::from_slice(&bytes).map_err(|e| RunnerError::Job {
            job: job.to_owned(),
            step: "read input blob",
            detail: format!("{what}: not the expected JSON ({e})"),
        })
    }

    fn failed(job: &str, reason: String) -> KnownEvent {
        KnownEvent::JobFailed(Box::new(catalogue::JobFailed {
            job_id: job.to_owned(),
            reason,
        }))
    }

    /// Runs one claimed attempt to its recorded end. `cancel` fires when a
    /// cancellation is requested; `shutdown` when the runner stops.
    pub async fn execute_job(
        &self,
        job: &str,
        state: Job,
        cancel: CancellationToken,
        shutdown: CancellationToken,
    ) -> Result<(), RunnerError> {
        let span = tracing::info_span!(
            "job.attempt",
            job_id = %job,
            tenant = %state.tenant,
            attempt = state.attempt,
            runtime = state.submitted.as_ref().map(|s| s.language.as_str()).unwrap_or(""),
            outcome = tracing::field::Empty,
        );
        if let Some(c) = &state.correlation_id {
            glassbox_platform::telemetry::continue_trace(&span, c);
        }
        match self
            .attempt(job, state, cancel, shutdown)
            .instrument(span)
            .await
        {
            Ok(()) | Err(Halt::Lost) => Ok(()),
            Err(Halt::Err(e)) => Err(e),
        }
    }

    async fn attempt(
        &self,
        job: &str,
        mut state: Job,
        cancel: CancellationToken,
        shutdown: CancellationToken,
    ) -> Result<(), Halt> {
        let attempt = state.attempt;
        let Some(sub) = state.submitted.clone() else {
            return Err(Halt::Err(RunnerError::Job {
                job: job.to_owned(),
                step: "read submission",
                detail: "the job's submission is missing from its stream".into(),
            }));
        };
        let tenant = state.tenant.clone();

        // Dependencies: every declared package is checked before anything runs.
        let mut events = Vec::new();
        let mut denied = Vec::new();
        for d in &sub.dependencies {
            let input = json!({"tenant": tenant, "ecosystem": d.ecosystem, "name": d.name, "version": d.version});
            let dec = self.engine.evaluate(Policy::Dependencies, &input);
            if !dec.allow {
                denied.push(format!(
                    "{} {}: {}",
                    d.name,
                    d.version.clone().unwrap_or_default(),
                    dec.reasons.join("; ")
                ));
            }
            events.push(KnownEvent::DependencyChecked(Box::new(
                catalogue::DependencyChecked {
                    ecosystem: d.ecosystem.clone(),
                    name: d.name.clone(),
                    version: d.version.clone(),
                    decision: if dec.allow {
                        Verdict::Allow
                    } else {
                        Verdict::Deny
                    },
                    rule: dec.rule.clone(),
                },
            )));
        }
        let refused = if !denied.is_empty() {
            Some(format!("dependency denied: {}", denied.join(", ")))
        } else if sub.dependencies.is_empty() {
            None
        } else if sub.language != "python" {
            Some("dependencies are only installed for python jobs".to_owned())
        } else if let Some(d) = sub.dependencies.iter().find(|d| d.ecosystem != "pypi") {
            Some(format!(
                "ecosystem {} is not installable here (pypi only)",
                d.ecosystem
            ))
        } else if self.config.wheel_mirror.is_none() {
            Some("this runner has no wheel mirror (GLASSBOX_WHEEL_MIRROR)".to_owned())
        } else {
            None
        };
        if let Some(reason) = refused {
            events.push(Self::failed(job, reason));
            self.progress(job, state, events).await?;
            return Ok(());
        }
        if (sub.arg_count > 0 && sub.args.is_none())
            || (!sub.files.is_empty() && sub.file_paths.is_none())
        {
            events.push(Self::failed(
                job,
                "submitted by an older version that kept args and file paths in the ledger; resubmit it".into(),
            ));
            self.progress(job, state, events).await?;
            return Ok(());
        }

        // Inputs from the blob store, checked against the ledger's digests.
        let mut spec = ExecutionSpec::new(
            sub.language.clone(),
            self.blob(job, "code", &sub.code).await?,
        );
        if let Some(s) = &sub.stdin {
            spec.stdin = self.blob(job, "stdin", s).await?;
        }
        if let Some(e) = &sub.env {
            spec.env = self.json_blob(job, "env", e).await?;
        }
        if let Some(a) = &sub.args {
            spec.args = self.json_blob(job, "args", a).await?;
        }
        let paths: Vec<String> = match &sub.file_paths {
            Some(p) => self.json_blob(job, "file paths", p).await?,
            None => Vec::new(),
        };
        if paths.len() != sub.files.len() {
            events.push(Self::failed(
                job,
                "the input files and their paths do not match in number".into(),
            ));
            self.progress(job, state, events).await?;
            return Ok(());
        }
        for (i, (f, path)) in sub.files.iter().zip(paths).enumerate() {
            spec.files.push(InputFile {
                path,
                content: self.blob(job, &format!("file {i}"), f).await?,
                executable: false,
            });
        }
        spec.limits = limits(state.effective_limits.as_ref().unwrap_or(&sub.limits));
        if let (false, Some(mirror)) = (sub.dependencies.is_empty(), &self.config.wheel_mirror) {
            spec.wheels = Some(crate::spec::WheelInstall {
                mirror: mirror.clone(),
                requirements: sub
                    .dependencies
                    .iter()
                    .map(|d| match &d.version {
                        Some(v) => format!("{}=={v}", d.name),
                        None => d.name.clone(),
                    })
                    .collect(),
            });
        }

        // Secrets: only approved ones, from the provider. A brokered one stays
        // with the sandbox's egress proxy; the sandbox gets its placeholder.
        let broker = if state.approved_secrets.iter().any(|s| s.mode == "brokered") {
            let made = if sub.egress.is_empty() {
                Err("a brokered secret needs egress to its hosts (the job asks for none)".into())
            } else {
                crate::egress::broker_for(&self.config.egress, job, &state.approved_secrets, |n| {
                    self.config.secrets.value(n)
                })
            };
            match made {
                Ok(b) => b,
                Err(reason) => {
                    events.push(Self::failed(job, reason));
                    self.progress(job, state, events).await?;
                    return Ok(());
                }
            }
        } else {
            None
        };
        let mut secret_values: Vec<(String, String)> = Vec::new();
        for s in state.approved_secrets.clone() {
            let Some(value) = self.config.secrets.value(&s.name) else {
                events.push(Self::failed(
                    job,
                    format!("secret {} has no value in this runner's provider", s.name),
                ));
                self.progress(job, state, events).await?;
                return Ok(());
            };
            if s.mode == "brokered" {
                let placeholder = broker
                    .as_ref()
                    .and_then(|b| b.secrets().iter().find(|x| x.name == s.name))
                    .map(|x| x.placeholder.clone())
                    .unwrap_or_default();
                spec.env.insert(s.name.clone(), placeholder);
            } else if s.mode == "file" {
                spec.files.push(InputFile {
                    path: format!(".secrets/{}", s.name),
                    content: value.clone().into_bytes(),
                    executable: false,
                });
            } else {
                spec.env.insert(s.name.clone(), value.clone());
            }
            events.push(KnownEvent::SecretMaterialized(Box::new(
                catalogue::SecretMaterialized {
                    name: s.name.clone(),
                    mode: s.mode.clone(),
                },
            )));
            secret_values.push((s.name, value));
        }
        if !events.is_empty() {
            state = self.progress(job, state, events).await?;
        }

        // Egress: a proxy of its own for a job that asked for destinations.
        let mut egress = None;
        if !sub.egress.is_empty() {
            let requested = sub
                .egress
                .iter()
                .filter_map(|t| glassbox_domain::request::EgressTarget::parse(t).ok())
                .collect();
            let ledger = Arc::new(JobEgressLedger {
                store: self.store.clone(),
                job: job.to_owned(),
                envelope: self.envelope(&state),
                state: tokio::sync::Mutex::new(state.clone()),
            });
            match crate::egress::SandboxEgress::start(
                &self.config.egress,
                job,
                crate::egress::TenantEgress::new(self.engine.clone(), &tenant, requested),
                self.blobs.clone(),
                ledger,
                broker,
            )
            .await
            {
                Ok(e) => {
                    spec.egress = Some(e.path());
                    spec.env.extend(e.trust_env());
                    egress = Some(e);
                }
                Err(e) => {
                    self.progress(job, state, vec![Self::failed(job, e.to_string())])
                        .await?;
                    return Ok(());
                }
            }
        }

        // Run, recording progress as it happens and honouring cancellation.
        let stop = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let exec = self.backend.execute_observed(spec, stop.clone(), Some(tx));
        tokio::pin!(exec);
        let mut why: Option<Stop> = state.cancel_requested.map(|_| Stop::Requested);
        if why.is_some() {
            stop.cancel();
        }
        let result = loop {
            tokio::select! {
                r = &mut exec => break r,
                Some(p) = rx.recv() => {
                    let e = match p {
                        Progress::Provisioned { sandbox_id, runtime, image_digest } => KnownEvent::SandboxProvisioned(Box::new(catalogue::SandboxProvisioned {
                            attempt, sandbox_id, backend: self.backend.name().to_owned(), runtime, image_digest,
                        })),
                        Progress::Started { sandbox_id } => KnownEvent::ExecutionStarted(Box::new(catalogue::ExecutionStarted { attempt, sandbox_id })),
                    };
                    match self.progress(job, state.clone(), vec![e]).await {
                        Ok(s) => {
                            // A conflict folded in what others appended: a
                            // cancellation request among it stops the run.
                            if s.cancel_requested.is_some() && why.is_none() {
                                why = Some(Stop::Requested);
                                stop.cancel();
                            }
                            state = s;
                        }
                        Err(Halt::Lost) => {
                            why.get_or_insert(Stop::TakenOver);
                            stop.cancel();
                        }
                        Err(Halt::Err(e)) => return Err(Halt::Err(e)),
                    }
                }
                _ = cancel.cancelled(), if !stop.is_cancelled() => {
                    why.get_or_insert(Stop::Requested);
                    stop.cancel();
                }
                _ = shutdown.cancelled(), if !stop.is_cancelled() => {
                    why.get_or_insert(Stop::Shutdown);
                    stop.cancel();
                }
            }
        };
        // The sandbox is gone: its connections end and are recorded before
        // the result (the record order is the order things happened in).
        if let Some(e) = egress {
            e.finish().await;
        }
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                let reason = format!("the sandbox failed: {e}");
                self.decide(job, state, |_| JobCommand::Fail {
                    attempt,
                    reason: reason.clone(),
                })
                .await?;
                return Ok(());
            }
        };
        self.record_result(
            job,
            state,
            result,
            &secret_values,
            why.map(|w| w.reason().to_owned()),
        )
        .await
    }

    /// Stores one output under a fresh blob name (never derived from anything
    /// the program chose).
    async fn store_output(&self, job: &str, attempt: u64, bytes: &[u8]) -> Result<BlobRef, String> {
        let b = self
            .blobs
            .put_new(job, &format!("jobs/{job}/attempts/{attempt}"), bytes)
            .await
            .map_err(|e| format!("storing an output failed: {e}"))?;
        Ok(BlobRef {
            hmac: b.hmac,
            size_bytes: b.size_bytes,
            key: b.key,
        })
    }

    /// Stores stdout, stderr, every artifact and the artifact index.
    async fn store_outputs(
        &self,
        job: &str,
        attempt: u64,
        r: &ExecutionResult,
    ) -> Result<StoredOutputs, String> {
        let stdout = self.store_output(job, attempt, &r.stdout.bytes).await?;
        let stderr = self.store_output(job, attempt, &r.stderr.bytes).await?;
        let mut artifacts = Vec::with_capacity(r.files.len());
        for f in &r.files {
            artifacts.push((
                self.store_output(job, attempt, &f.content).await?,
                f.truncated,
            ));
        }
        let index = if r.files.is_empty() {
            None
        } else {
            let paths: Vec<&str> = r.files.iter().map(|f| f.path.as_str()).collect();
            let bytes = serde_json::to_vec(&paths).map_err(|e| e.to_string())?;
            Some(self.store_output(job, attempt, &bytes).await?)
        };
        Ok(StoredOutputs {
            stdout: Some(stdout),
            stderr: Some(stderr),
            artifacts,
            index,
        })
    }

    async fn record_result(
        &self,
        job: &str,
        state: Job,
        mut r: ExecutionResult,
        secrets: &[(String, String)],
        cancel_reason: Option<String>,
    ) -> Result<(), Halt> {
        let attempt = state.attempt;
        // Redact before anything is stored: contents, a secret cut in half by
        // an output cap, and file names.
        let redactions = redact_result(&mut r, secrets);
        // A storage failure does not lose the execution: its facts are
        // recorded without blobs and the job fails with the reason, so the
        // attempt ends (it is never left to expire and run again).
        let (stored, storage_error) = match self.store_outputs(job, attempt, &r).await {
            Ok(s) => (s, None),
            Err(e) => (StoredOutputs::default(), Some(e)),
        };
        let finish = Finish {
            attempt,
            finished: catalogue::ExecutionFinished {
                attempt,
                outcome: r.outcome,
                exit_code: r.exit_code.map(i64::from),
                signal: r.signal.map(i64::from),
                wall_ms: r.wall_ms,
                cpu_ms: r.cpu_ms,
                peak_memory_bytes: r.peak_memory_bytes,
                stdout: OutputRef {
                    blob: stored.stdout.clone(),
                    size_bytes: r.stdout.total_bytes,
                    truncated: r.stdout.truncated,
                },
                stderr: OutputRef {
                    blob: stored.stderr.clone(),
                    size_bytes: r.stderr.total_bytes,
                    truncated: r.stderr.truncated,
                },
                artifact_index: stored.index.clone(),
                artifacts_skipped: r.skipped_total,
            },
            redactions: redactions
                .into_iter()
                .map(|(secret_name, target, count)| catalogue::OutputRedacted {
                    secret_name,
                    target,
                    count,
                })
                .collect(),
            artifacts: stored
                .artifacts
                .iter()
                .enumerate()
                .map(|(i, (blob, truncated))| catalogue::ArtifactStored {
                    attempt,
                    index: i as u64,
                    blob: blob.clone(),
                    truncated: *truncated,
                })
                .collect(),
            workspace: catalogue::WorkspaceDestroyed {
                sandbox_id: r.sandbox_id.clone(),
                method: r.teardown.method.clone(),
                bytes_scrubbed: r.teardown.bytes_scrubbed,
                files_scrubbed: r.teardown.files_scrubbed,
                complete: r.teardown.complete,
                error: r.teardown.error.clone(),
            },
            storage_error,
            cancel_reason,
        };
        self.decide(job, state, |_| JobCommand::Finish(Box::new(finish.clone())))
            .await
            .map(|_| ())
    }
}

/// A job's egress records go on its stream as progress of the attempt that
/// runs the sandbox (refused once the attempt no longer holds the job).
struct JobEgressLedger {
    store: EventStore,
    job: String,
    envelope: Envelope,
    /// Carried forward between appends (the runner appends to the same
    /// stream; a conflict reads what it missed).
    state: tokio::sync::Mutex<Job>,
}

impl crate::egress::EgressLedger for JobEgressLedger {
    fn append(
        &self,
        events: Vec<KnownEvent>,
    ) -> glassbox_egress::proxy::BoxFuture<'_, Result<Vec<u64>, String>> {
        Box::pin(async move {
            let mut state = self.state.lock().await;
            let stream = Stream::job(&self.job);
            let attempt = state.attempt;
            let d = self
                .store
                .decide_from(stream.as_str(), state.clone(), &self.envelope, |j: &Job| {
                    let decided = j.decide(JobCommand::Progress {
                        attempt,
                        events: events.clone(),
                    })?;
                    decided
                        .iter()
                        .map(|e| NewEvent::known(stream.as_str(), e))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| Refusal::Invalid(e.to_string()))
                })
                .await
                .map_err(|e| format!("job {}: record egress: {e}", self.job))?;
            *state = d.state;
            Ok(d.appended
                .map(|o| o.events.iter().map(|a| a.position).collect())
                .unwrap_or_default())
        })
    }
}

/// What [`Runner::store_outputs`] put in the blob store.
#[derive(Debug, Default)]
struct StoredOutputs {
    stdout: Option<BlobRef>,
    stderr: Option<BlobRef>,
    /// Each artifact's blob and whether it was truncated, in index order.
    artifacts: Vec<(BlobRef, bool)>,
    index: Option<BlobRef>,
}

/// Takes every secret value out of a result before anything of it is stored:
/// whole occurrences in stdout, stderr and file contents become `[REDACTED]`;
/// where an output was cut by its cap, a trailing prefix of a secret is cut
/// too (half a secret is still a secret); and file names that contain a secret
/// are renamed. Returns (secret name, target, count) per redaction — targets
/// are `stdout`, `stderr`, `artifact:<index>` and `artifact_names`, never a
/// file's name.
pub fn redact_result(
    r: &mut ExecutionResult,
    secrets: &[(String, String)],
) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    for (name, value) in secrets {
        let mut note = |target: String, n: u64| {
            if n > 0 {
                out.push((name.clone(), target, n));
            }
        };
        for (target, cap) in [("stdout", &mut r.stdout), ("stderr", &mut r.stderr)] {
            let mut n = redact(&mut cap.bytes, value);
            if cap.truncated {
                n += cut_partial_tail(&mut cap.bytes, value);
            }
            note(target.into(), n);
        }
        for (i, f) in r.files.iter_mut().enumerate() {
            let mut n = redact(&mut f.content, value);
            if f.truncated {
                n += cut_partial_tail(&mut f.content, value);
            }
            note(format!("artifact:{i}"), n);
        }
        let mut renamed = 0;
        for f in &mut r.files {
            let mut p = f.path.clone().into_bytes();
            let k = redact(&mut p, value);
            if k > 0 {
                f.path = String::from_utf8_lossy(&p).into_owned();
                renamed += k;
            }
        }
        note("artifact_names".into(), renamed);
    }
    // Renaming may have made two names equal: keep every file reachable.
    let mut seen = std::collections::BTreeSet::new();
    for f in &mut r.files {
        if !seen.insert(f.path.clone()) {
            let mut k = 2;
            while !seen.insert(format!("{}~{k}", f.path)) {
                k += 1;
            }
            f.path = format!("{}~{k}", f.path);
        }
    }
    out
}

/// If `buf` ends with the start of `secret` (an output cap cut it), removes
/// that partial secret; returns 1 if it did.
pub fn cut_partial_tail(buf: &mut Vec<u8>, secret: &str) -> u64 {
    let s = secret.as_bytes();
    for k in (1..s.len()).rev() {
        if buf.ends_with(&s[..k]) {
            buf.truncate(buf.len() - k);
            return 1;
        }
    }
    0
}

/// Replaces every occurrence of `secret` in `buf` with `[REDACTED]`; returns the count.
pub fn redact(buf: &mut Vec<u8>, secret: &str) -> u64 {
    let needle = secret.as_bytes();
    if needle.is_empty() || buf.len() < needle.len() {
        return 0;
    }
    let mut out = Vec::with_capacity(buf.len());
    let mut count = 0;
    let mut i = 0;
    while i < buf.len() {
        if buf[i..].starts_with(needle) {
            out.extend_from_slice(b"[REDACTED]");
            i += needle.len();
            count += 1;
        } else {
            out.push(buf[i]);
            i += 1;
        }
    }
    if count > 0 {
        *buf = out;
    }
    count
}

/// Effective limits from the ledger over the core's defaults.
pub fn limits(l: &catalogue::Limits) -> Limits {
    let d = Limits::default();
    Limits {
        wall_time_ms: l.wall_time_ms.unwrap_or(d.wall_time_ms),
        cpu_millicores: l.cpu_millicores.unwrap_or(d.cpu_millicores),
        memory_bytes: l.memory_bytes.unwrap_or(d.memory_bytes),
        processes: l.processes.unwrap_or(d.processes),
        workspace_bytes: l.workspace_bytes.unwrap_or(d.workspace_bytes),
        tmp_bytes: l.tmp_bytes.unwrap_or(d.tmp_bytes),
        stdout_bytes: l.stdout_bytes.unwrap_or(d.stdout_bytes),
        stderr_bytes: l.stderr_bytes.unwrap_or(d.stderr_bytes),
        output_bytes: l.output_bytes.unwrap_or(d.output_bytes),
        output_files: l.output_files.unwrap_or(d.output_files),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_cut_by_the_output_cap_leaves_no_prefix() {
        let mut b = b"token: s3cr".to_vec();
        assert_eq!(cut_partial_tail(&mut b, "s3cr3t"), 1);
        assert_eq!(b, b"token: ".to_vec());
        let mut b = b"nothing".to_vec();
        assert_eq!(cut_partial_tail(&mut b, "s3cr3t"), 0);
        assert_eq!(b, b"nothing".to_vec());
    }

    #[test]
    fn secrets_in_file_names_are_renamed_and_names_stay_unique() {
        use crate::result::{Captured, CollectedFile, Teardown};
        use glassbox_domain::catalogue::Outcome;
        let file = |p: &str| CollectedFile {
            path: p.into(),
            content: b"x".to_vec(),
            size_bytes: 1,
            truncated: false,
        };
        let mut r = ExecutionResult {
            sandbox_id: "sb".into(),
            backend: "test",
            runtime: "python".into(),
            outcome: Outcome::Succeeded,
            exit_code: Some(0),
            signal: None,
            detail: None,
            wall_ms: 1,
            cpu_ms: None,
            peak_memory_bytes: None,
            stdout: Captured {
                bytes: b"v=hunter2hunt".to_vec(),
                total_bytes: 99,
                truncated: true,
            },
            stderr: Captured::default(),
            files: vec![
                file("hunter2.txt"),
                file("[REDACTED].txt"),
                file("dir/hunter2/x"),
            ],
            files_truncated: false,
            skipped: vec![],
            skipped_total: 0,
            teardown: Teardown::default(),
        };
        let notes = redact_result(&mut r, &[("PW".into(), "hunter2".into())]);
        assert_eq!(r.stdout.bytes, b"v=[REDACTED]".to_vec());
        let paths: Vec<&str> = r.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            ["[REDACTED].txt", "[REDACTED].txt~2", "dir/[REDACTED]/x"]
        );
        assert!(notes.contains(&("PW".into(), "artifact_names".into(), 2)));
        assert!(notes.contains(&("PW".into(), "stdout".into(), 2)));
        assert!(notes.iter().all(|(_, t, _)| !t.contains("hunter2")));
    }

    #[test]
    fn redaction_counts_and_replaces_every_occurrence() {
        let mut b = b"key=s3cr3t and s3cr3t again; s3cr".to_vec();
        assert_eq!(redact(&mut b, "s3cr3t"), 2);
        assert_eq!(b, b"key=[REDACTED] and [REDACTED] again; s3cr".to_vec());
        let mut b = b"nothing here".to_vec();
        assert_eq!(redact(&mut b, "s3cr3t"), 0);
        assert_eq!(redact(&mut b, ""), 0);
    }
}

/// A runner's own settings (the shared ones — database, blobs, policies — come
/// from `glassbox_platform::Config`).
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    pub runner: RunnerConfig,
    pub local: crate::local::LocalConfig,
    pub sessions: SessionSettings,
    /// Where `/metrics` (Prometheus text) is served
    /// (`GLASSBOX_RUNNER_METRICS_ADDR`; unset: not served — in `glassbox dev`
    /// the control plane's `/metrics` includes the runner's instruments).
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// How the runner serves sessions (the data-plane gRPC API).
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Off: the runner runs jobs only.
    pub enabled: bool,
    /// Where the gRPC API listens (`GLASSBOX_RUNNER_GRPC_ADDR`, default
    /// `127.0.0.1:0`: a free port on loopback).
    pub grpc_addr: std::net::SocketAddr,
    /// Where the control plane reaches it (`GLASSBOX_RUNNER_ADVERTISE`,
    /// default `http://<the bound address>`).
    pub advertise: Option<String>,
    /// Sessions held at most (`GLASSBOX_RUNNER_SESSION_CAPACITY`, default 100).
    pub capacity: u32,
    /// The control plane's public token key (`GLASSBOX_RUNNER_TOKEN_VERIFIER`);
    /// without it, the key file's (`GLASSBOX_RUNNER_TOKEN_KEY_FILE`, default
    /// `<data dir>/runner-token.key`).
    pub verifier: Option<glassbox_platform::runner_token::RunnerTokenVerifier>,
    /// Development and test only (`GLASSBOX_RUNNER_AUTH_BYPASS=true`): calls
    /// without a token are let through and each is recorded.
    pub bypass: bool,
}

/// A bad runner setting, naming its variable.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct SettingError {
    pub var: &'static str,
    pub reason: String,
}

impl RunnerSettings {
    /// `GLASSBOX_RUNNER_ID` (`[a-z0-9_]{1,32}`, default `local`),
    /// `GLASSBOX_RUNNER_SLOTS` (default 2), `GLASSBOX_RUNNER_LEASE_GRACE_SECS`
    /// (default 30), `GLASSBOX_RUNNER_MAX_ATTEMPTS` (default 3),
    /// `GLASSBOX_SECRETS_FILE` or `GLASSBOX_SECRETS_FROM_ENV=true`,
    /// `GLASSBOX_RUNSC` (default `runsc`), `GLASSBOX_SANDBOX_DIR` (default
    /// `/run/glassbox`), `GLASSBOX_RUNTIMES_FILE`, `GLASSBOX_IMAGES_DIR` (default
    /// `/var/lib/glassbox/images`), `GLASSBOX_WHEEL_MIRROR`, and egress's
    /// `GLASSBOX_EGRESS_HOSTS`, `GLASSBOX_EGRESS_MAX_CONNECTIONS`,
    /// `GLASSBOX_EGRESS_MAX_BYTES`, `GLASSBOX_EGRESS_DIR`
    /// ([`crate::egress::EgressSettings::from_vars`]).
    pub fn from_vars(vars: &BTreeMap<String, String>) -> Result<RunnerSettings, SettingError> {
        let get = |k: &str| vars.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let number = |var: &'static str, default: u64| -> Result<u64, SettingError> {
            match get(var) {
                None => Ok(default),
                Some(v) => v.parse::<u64>().map_err(|_| SettingError {
                    var,
                    reason: format!("{v:?} is not a non-negative integer"),
                }),
            }
        };
        let runner_id = get("GLASSBOX_RUNNER_ID").unwrap_or("local").to_owned();
        let ok = !runner_id.is_empty()
            && runner_id.len() <= 32
            && runner_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(SettingError {
                var: "GLASSBOX_RUNNER_ID",
                reason: format!("{runner_id:?} must be 1-32 of a-z, 0-9, _"),
            });
        }
        let slots = number("GLASSBOX_RUNNER_SLOTS", 2)?;
        let max_attempts = number("GLASSBOX_RUNNER_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)?;
        if !(1..=100).contains(&max_attempts) {
            return Err(SettingError {
                var: "GLASSBOX_RUNNER_MAX_ATTEMPTS",
                reason: "must be 1 to 100".into(),
            });
        }
        if slots == 0 || slots > 256 {
            return Err(SettingError {
                var: "GLASSBOX_RUNNER_SLOTS",
                reason: "must be 1 to 256".into(),
            });
        }
        let secrets = match (
            get("GLASSBOX_SECRETS_FILE"),
            get("GLASSBOX_SECRETS_FROM_ENV"),
        ) {
            (Some(f), _) => SecretProvider::File(PathBuf::from(f)),
            (None, Some("true" | "1")) => SecretProvider::Env,
            _ => SecretProvider::None,
        };
        let mut local = crate::local::LocalConfig {
            runner_id: runner_id.clone(),
            ..crate::local::LocalConfig::default()
        };
        if let Some(r) = get("GLASSBOX_RUNSC") {
            local.runsc = PathBuf::from(r);
        }
        if let Some(d) = get("GLASSBOX_SANDBOX_DIR") {
            local.base_dir = PathBuf::from(d);
        }
        if let Some(d) = get(glassbox_images::STORE_ENV) {
            local.roots =
                crate::local::Roots::Images(glassbox_images::ImageStore::open(PathBuf::from(d)));
        }
        if let Some(f) = get("GLASSBOX_RUNTIMES_FILE") {
            local.registry = crate::runtime::RuntimeRegistry::load(std::path::Path::new(f))
                .map_err(|e| SettingError {
                    var: "GLASSBOX_RUNTIMES_FILE",
                    reason: e.to_string(),
                })?;
        }
        let sessions = SessionSettings {
            enabled: !matches!(get("GLASSBOX_RUNNER_SESSIONS"), Some("false" | "0" | "off")),
            grpc_addr: match get("GLASSBOX_RUNNER_GRPC_ADDR") {
                None => std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                Some(a) => a.parse().map_err(|_| SettingError {
                    var: "GLASSBOX_RUNNER_GRPC_ADDR",
                    reason: format!("{a:?} is not host:port"),
                })?,
            },
            advertise: match get("GLASSBOX_RUNNER_ADVERTISE") {
                None => None,
                Some(a) if a.starts_with("http://") || a.starts_with("https://") => {
                    Some(a.trim_end_matches('/').to_owned())
                }
                Some(a) => {
                    return Err(SettingError {
                        var: "GLASSBOX_RUNNER_ADVERTISE",
                        reason: format!("{a:?} is not an http:// or https:// URL"),
                    });
                }
            },
            capacity: match number("GLASSBOX_RUNNER_SESSION_CAPACITY", 100)? {
                n @ 1..=10_000 => n as u32,
                _ => {
                    return Err(SettingError {
                        var: "GLASSBOX_RUNNER_SESSION_CAPACITY",
                        reason: "must be 1 to 10000".into(),
                    });
                }
            },
            verifier: match get("GLASSBOX_RUNNER_TOKEN_VERIFIER") {
                None => None,
                Some(v) => Some(v.parse().map_err(
                    |e: glassbox_platform::runner_token::RunnerTokenError| SettingError {
                        var: "GLASSBOX_RUNNER_TOKEN_VERIFIER",
                        reason: e.to_string(),
                    },
                )?),
            },
            bypass: match get("GLASSBOX_RUNNER_AUTH_BYPASS") {
                None | Some("false" | "0") => false,
                Some("true" | "1") => true,
                Some(v) => {
                    return Err(SettingError {
                        var: "GLASSBOX_RUNNER_AUTH_BYPASS",
                        reason: format!("{v:?} is not true or false"),
                    });
                }
            },
        };
        let metrics_addr = match get("GLASSBOX_RUNNER_METRICS_ADDR") {
            None => None,
            Some(a) => Some(a.parse().map_err(|_| SettingError {
                var: "GLASSBOX_RUNNER_METRICS_ADDR",
                reason: format!("{a:?} is not host:port"),
            })?),
        };
        Ok(RunnerSettings {
            sessions,
            metrics_addr,
            runner: RunnerConfig {
                runner_id,
                slots: slots as usize,
                lease_grace: Duration::from_secs(number("GLASSBOX_RUNNER_LEASE_GRACE_SECS", 30)?),
                max_attempts,
                secrets,
                wheel_mirror: match get("GLASSBOX_WHEEL_MIRROR") {
                    None => None,
                    Some(d) => {
                        let p = PathBuf::from(d);
                        if !p.is_absolute() || !p.is_dir() {
                            return Err(SettingError {
                                var: "GLASSBOX_WHEEL_MIRROR",
                                reason: format!("{d:?} is not an absolute path to a directory"),
                            });
                        }
                        Some(p)
                    }
                },
                egress: crate::egress::EgressSettings::from_vars(|k| get(k).map(str::to_owned))
                    .map_err(|(var, reason)| SettingError { var, reason })?,
            },
            local,
        })
    }
}

/// Records what a start-up sweep removed and could not remove
/// (`runner.sweep_finished` on `runner-<id>`); nothing when there was nothing to do.
/// A failure to record is logged, never fatal: the runner must come up.
pub async fn record_sweep(store: &EventStore, runner_id: &str, swept: &crate::result::SweepReport) {
    if swept.sandboxes.is_empty() && swept.workspaces.is_empty() && swept.failures.is_empty() {
        return;
    }
    tracing::warn!(
        sandboxes = swept.sandboxes.len(),
        workspaces = swept.workspaces.len(),
        failures = swept.failures.len(),
        bytes_scrubbed = swept.bytes_scrubbed,
        "runner: swept what an earlier run left behind"
    );
    let event = catalogue::RunnerSweepFinished {
        runner: runner_id.to_owned(),
        sandboxes: swept.sandboxes.len() as u64,
        workspaces: swept.workspaces.len() as u64,
        bytes_scrubbed: swept.bytes_scrubbed,
        failures: swept
            .failures
            .iter()
            .map(|f| catalogue::SweepFailure {
                sandbox_id: f.sandbox_id.clone(),
                step: f.step.clone(),
                detail: f.detail.clone(),
            })
            .collect(),
    };
    let appended = match NewEvent::typed(format!("runner-{runner_id}"), &event) {
        Ok(e) => store
            .append(AppendRequest::new(
                "system",
                Actor::system(format!("runner:{runner_id}")),
                vec![e],
            ))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = appended {
        tracing::error!(error = %e, "runner: could not record the start-up sweep");
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("runner start-up: GLASSBOX_DATABASE_URL (or DATABASE_URL) is not set")]
    NoDatabase,
    #[error("runner start-up: connecting to PostgreSQL: {0}")]
    Database(#[source] sqlx::Error),
    #[error("runner start-up: {0}")]
    Store(#[from] StoreError),
    #[error("runner start-up: blob store: {0}")]
    Blob(#[from] glassbox_platform::blob::BlobError),
    #[error("runner start-up: {0}")]
    Policy(#[from] glassbox_policies::PolicyError),
    #[error("runner start-up: {0}")]
    Sandbox(#[from] crate::error::SandboxError),
    #[error(
        "runner start-up: GLASSBOX_RUNNER_AUTH_BYPASS is refused in the {0} environment (development and test only)"
    )]
    BypassRefused(String),
    #[error("runner start-up: runner token key: {0}")]
    TokenKey(#[from] glassbox_platform::runner_token::RunnerTokenError),
    #[error("runner start-up: Redis (hot session state): {0}")]
    Hot(#[from] glassbox_platform::hot::HotError),
    #[error("runner start-up: the data-plane API on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Connects to the database and blob store, loads the policy bundle, starts the
/// runsc backend (sweeping what an earlier run of this runner id left) and runs
/// the runner until `shutdown`.
pub async fn run_service(
    config: &glassbox_platform::Config,
    settings: RunnerSettings,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let url = config
        .database_url
        .as_deref()
        .ok_or(StartError::NoDatabase)?;
    let pool = glassbox_events::pg::pool_options(url)
        .max_connections(8)
        .connect(url)
        .await
        .map_err(StartError::Database)?;
    glassbox_events::store::migrate(&pool).await?;
    let store = EventStore::new(pool.clone());
    let kek = glassbox_platform::blob::Kek::load_or_generate(&config.data_dir.join("kek"))?;
    let blobs = BlobStore::new(&config.blob, pool, kek)?;
    let bundle = match &config.policy_dir {
        Some(d) => glassbox_policies::Bundle::load_dir(d)?,
        None => glassbox_policies::Bundle::builtin(),
    };
    let engine = Arc::new(PolicyEngine::new(&bundle)?);
    let s = &settings.sessions;
    if s.enabled && s.bypass && !config.environment.is_permissive() {
        return Err(StartError::BypassRefused(format!(
            "{:?}",
            config.environment
        )));
    }
    let (backend, swept) = crate::local::LocalRunsc::start(settings.local.clone()).await?;
    record_sweep(&store, &settings.runner.runner_id, &swept).await;
    let host = if s.enabled {
        start_sessions(
            config, &settings, &store, &blobs, &backend, &engine, &shutdown,
        )
        .await?
    } else {
        None
    };
    if let Some(addr) = settings.metrics_addr {
        serve_metrics(addr, shutdown.clone()).await?;
    }
    tracing::info!(runner = %settings.runner.runner_id, slots = settings.runner.slots, sessions = host.is_some(), "runner started");
    Runner::new(store, blobs, engine, backend, settings.runner)
        .run(shutdown)
        .await;
    if let Some(h) = host {
        let _ = h.await;
    }
    Ok(())
}

/// Serves `/metrics` (every instrument of this process, Prometheus text) and
/// `/healthz` on `addr` until `shutdown`.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    glassbox_platform::telemetry::metrics::ensure();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(|| async {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    glassbox_platform::telemetry::metrics::render(),
                )
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "runner: the metrics listener stopped");
        }
    });
    Ok(())
}

/// Starts the data-plane API: records the bypass when it is on, records the
/// sessions an earlier run of this runner held as lost, and serves until
/// `shutdown`. `None` when the session agent is missing (jobs still run).
async fn start_sessions(
    config: &glassbox_platform::Config,
    settings: &RunnerSettings,
    store: &EventStore,
    blobs: &BlobStore,
    backend: &crate::local::LocalRunsc,
    engine: &Arc<PolicyEngine>,
    shutdown: &CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>, StartError> {
    let s = &settings.sessions;
    let runner_id = settings.runner.runner_id.clone();
    let agent = match crate::local::session::find_agent() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "sessions are off: the session agent was not found");
            return Ok(None);
        }
    };
    let verifier = match &s.verifier {
        Some(v) => Some(v.clone()),
        None => Some(
            glassbox_platform::runner_token::RunnerTokenKey::load_or_generate(
                &config.runner_token_key_file,
            )?
            .verifier(),
        ),
    };
    let ns = glassbox_platform::hot::namespace(config.database_url.as_deref().unwrap_or(""));
    let hot = glassbox_platform::hot::HotState::connect(&config.redis_url, &ns).await?;
    let listener = tokio::net::TcpListener::bind(s.grpc_addr)
        .await
        .map_err(|source| StartError::Listen {
            addr: s.grpc_addr,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| StartError::Listen {
        addr: s.grpc_addr,
        source,
    })?;
    let advertise = s
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{bound}"));
    if s.bypass {
        let env = config.environment.as_str().to_owned();
        record_data_plane_bypass(store, &runner_id, &env).await?;
    }
    let host = crate::sessions::SessionHost::new(
        store.clone(),
        blobs.clone(),
        backend.clone(),
        Some(hot),
        crate::sessions::HostConfig {
            runner_id: runner_id.clone(),
            capacity: s.capacity,
            advertise: advertise.clone(),
            verifier,
            bypass: s.bypass,
            agent: agent.clone(),
            secrets: settings.runner.secrets.clone(),
            wheel_mirror: settings.runner.wheel_mirror.clone(),
            egress: Some(crate::sessions::SessionEgress {
                settings: crate::egress::EgressSettings {
                    agent: Some(agent.clone()),
                    ..settings.runner.egress.clone()
                },
                engine: engine.clone(),
            }),
        },
    );
    let orphans = glassbox_projector::queries::sessions_on_runner(store.pool(), &runner_id)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "could not list this runner's earlier sessions");
            Vec::new()
        });
    host.lose_orphans(orphans.into_iter().map(|(id, t)| (t, id)).collect())
        .await;
    host.register_metrics();
    tracing::info!(%bound, %advertise, capacity = s.capacity, bypass = s.bypass, "runner: data-plane API listening");
    let stop = shutdown.clone();
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = host.serve(listener, stop).await {
            tracing::error!(error = %e, "runner: the data-plane API stopped");
        }
    })))
}

/// `auth.bypass_enabled` (plane `data`) on the runner's start.
async fn record_data_plane_bypass(
    store: &EventStore,
    runner_id: &str,
    environment: &str,
) -> Result<(), StartError> {
    tracing::warn!("runner: the data-plane auth bypass is on (development/test only)");
    let e = catalogue::AuthBypassEnabled {
        plane: "data".into(),
        environment: environment.to_owned(),
    };
    let ev = NewEvent::typed(glassbox_domain::Stream::auth("system").as_str(), &e)
        .map_err(|e| StoreError::InvalidRequest(e.to_string()))?;
    store
        .append(AppendRequest::new(
            "system",
            Actor::system(format!("runner:{runner_id}")),
            vec![ev],
        ))
        .await?;
    Ok(())
}
