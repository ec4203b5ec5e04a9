//! Workflows on the control plane: definitions stored by digest, runs started
//! and answered, and the orchestrator that moves every run forward.
//!
//! Everything a run does is decided by the domain's `WorkflowRun` (and the
//! scheduler it calls) through the ledger's one decide loop; this module only
//! does the I/O around those decisions: it loads definitions (encrypted in the
//! blob store, named by digest in `workflow.defined`), asks `glassbox.workflows`
//! which steps need an approval and who may give it (each decision recorded
//! with its input and bundle digest), submits scheduled steps as ordinary jobs
//! — with the job ID derived from run, step and attempt and the run's
//! correlation ID — and turns finished jobs into `workflow.step_finished`.
//!
//! The orchestrator is driven by the ledger like a runner: a type-filtered
//! watch wakes it when a run starts, an approval is answered, a cancel is asked
//! for or a job ends, and a sweep over unfinished runs (the audit index) picks
//! up anything a crashed instance left. Any instance may continue any run: one
//! PostgreSQL advisory lock per run serializes them, a scheduled step's job is
//! submitted only if its stream does not exist yet, and every decision is
//! appended at the run-stream version it was made on — so nothing runs twice.

use crate::command::{RunId, WorkflowName};
use crate::core::{Caller, Core, DecisionView, evaluated_event, on_stream};
use crate::error::ApiError;
use chrono::{DateTime, Utc};
use glassbox_domain::catalogue::{self as c, BlobRef, Event, KnownEvent, Outcome};
use glassbox_domain::request::{FileInput, WorkspacePath};
use glassbox_domain::status::{RunStatus, StepStatus};
use glassbox_domain::workflow::run::{RunCommand, RunRefusal, WorkflowRun};
use glassbox_domain::workflow::versions::WorkflowVersions;
use glassbox_domain::workflow::{
    RunRequest, StepName, StepState, WorkflowDefinition, WorkflowRequest,
};
use glassbox_domain::{Job, JobStatus, Stream};
use glassbox_events::{Actor, DecideError, Digest, Envelope};
use glassbox_platform::Identity;
use glassbox_policies::Policy;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Who the orchestrator's own records are by.
pub const ORCHESTRATOR: &str = "glassbox-orchestrator";
/// How often every unfinished run is looked at, whatever the watch says.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How long an approval may wait before it is denied (unless configured).
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Most passes of one advance (each pass decides at least one thing).
const MAX_PASSES: usize = 16;

/// The event types that mean a run may have something to do.
pub const WAKE_TYPES: [&str; 8] = [
    <c::WorkflowRunStarted as Event>::TYPE,
    <c::WorkflowApprovalGranted as Event>::TYPE,
    <c::WorkflowApprovalDenied as Event>::TYPE,
    <c::WorkflowCancelRequested as Event>::TYPE,
    <c::JobCompleted as Event>::TYPE,
    <c::JobFailed as Event>::TYPE,
    <c::JobCancelled as Event>::TYPE,
    <c::JobRejected as Event>::TYPE,
];

/// Parsed definitions by digest (a definition never changes under its digest).
#[derive(Default)]
pub struct DefinitionCache(Mutex<HashMap<String, Arc<WorkflowDefinition>>>);

impl DefinitionCache {
    const MAX: usize = 256;

    fn get(&self, digest: &str) -> Option<Arc<WorkflowDefinition>> {
        self.0.lock().ok()?.get(digest).cloned()
    }

    fn put(&self, def: Arc<WorkflowDefinition>) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= Self::MAX {
                m.clear();
            }
            m.insert(def.digest.clone(), def);
        }
    }
}

// ---------------------------------------------------------------- replies

/// A stored definition.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct WorkflowDefinedReply {
    pub name: String,
    pub version: u64,
    /// `sha256:` of the definition's canonical JSON.
    pub digest: String,
    pub steps: Vec<String>,
    /// Position of its `workflow.defined` record.
    pub position: u64,
    /// False when the latest version already was this document.
    pub created: bool,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct WorkflowVersionView {
    pub version: u64,
    pub digest: String,
    pub steps: Vec<String>,
    pub defined_at: DateTime<Utc>,
    pub defined_by: String,
    pub position: u64,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct WorkflowVersionsView {
    pub name: String,
    /// Oldest first.
    pub versions: Vec<WorkflowVersionView>,
}

/// The reply to starting a run, rebuilt from its records.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunReceipt {
    pub run_id: String,
    pub workflow: String,
    pub version: u64,
    pub digest: String,
    /// The run's and all its jobs' correlation ID (the run ID): pass it to
    /// the audit export for the run's evidence.
    pub correlation_id: String,
    pub stream: String,
    /// Steps that wait for an approval before they run.
    pub gated: Vec<String>,
    pub decisions: Vec<DecisionView>,
    pub position: u64,
}

#[derive(Debug, Clone)]
pub struct RunStarted {
    pub receipt: RunReceipt,
    pub replayed: bool,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StepView {
    pub name: String,
    pub needs: Vec<String>,
    pub status: StepStatus,
    /// The attempt running or last run (0: none yet).
    pub attempt: u64,
    /// Every job this step became, in order.
    pub jobs: Vec<String>,
    /// Whether it waits for an approval before running.
    pub approval_required: bool,
    /// Who granted or denied it.
    pub answered_by: Option<String>,
}

/// A run with its step graph and states, folded from its stream.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunView {
    pub run_id: String,
    pub workflow: String,
    pub version: u64,
    pub digest: String,
    pub correlation_id: String,
    pub status: RunStatus,
    pub cancel_requested: bool,
    pub submitted_by: String,
    pub started_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    /// Position of the run's last record.
    pub position: u64,
    /// In an order where each step comes after what it needs.
    pub steps: Vec<StepView>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalOutcome {
    Granted,
    Denied,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ApprovalReply {
    pub run_id: String,
    pub step: String,
    pub outcome: ApprovalOutcome,
    pub position: u64,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunCancelReply {
    pub run_id: String,
    pub cancel_requested: bool,
    pub position: u64,
}

// ---------------------------------------------------------------- helpers

fn refused(run_id: &str) -> impl Fn(DecideError<RunRefusal>) -> ApiError + '_ {
    move |e| match e {
        DecideError::Refused(RunRefusal::NoRun) => {
            ApiError::NotFound(format!("workflow run {run_id}"))
        }
        DecideError::Refused(r) => ApiError::Conflict(format!("workflow run {run_id}: {r}")),
        DecideError::Contended { .. } => {
            ApiError::Conflict(format!("workflow run {run_id} kept changing; try again"))
        }
        DecideError::Store(s) => ApiError::store("append to the workflow run")(s),
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// The data key of a definition blob is named in its path
/// (`workflows/<key id>/definition`).
fn definition_key_id(blob: &BlobRef) -> Option<&str> {
    blob.key
        .strip_prefix("workflows/")?
        .strip_suffix("/definition")
}

fn run_inputs_path(run_id: &str) -> String {
    format!("workflow-runs/{run_id}/inputs")
}

/// What the ledger's idempotency check compares for a run start.
fn run_digest(name: &str, request: &RunRequest, identity: &Identity) -> Digest {
    let bytes =
        serde_json::to_vec(&("workflow.run", &identity.subject, name, request)).unwrap_or_default();
    Digest::of(&bytes)
}

fn secrets_of(def: &WorkflowDefinition, step: &StepName) -> Vec<String> {
    def.step(step)
        .map(|s| s.job.secrets.iter().map(|x| x.name.to_string()).collect())
        .unwrap_or_default()
}

/// The envelope of what the orchestrator appends for a run.
fn orchestrator_envelope(run: &WorkflowRun) -> Envelope {
    let mut e = Envelope::new(run.tenant.clone(), Actor::system(ORCHESTRATOR));
    e.correlation_id.clone_from(&run.correlation_id);
    e
}

/// A step's job succeeded: it completed and its program exited successfully.
fn job_outcome(job: &Job) -> Option<(bool, Option<String>)> {
    if !job.status.is_terminal() {
        return None;
    }
    Some(match (&job.status, &job.finished) {
        (JobStatus::Completed, Some(f)) if f.outcome == Outcome::Succeeded => (true, None),
        (JobStatus::Completed, Some(f)) => (
            false,
            Some(match f.exit_code {
                Some(code) => format!("{} (exit code {code})", f.outcome.as_str()),
                None => f.outcome.as_str().to_owned(),
            }),
        ),
        (status, _) => (
            false,
            Some(if job.reasons.is_empty() {
                format!("job {status}")
            } else {
                format!("job {status}: {}", job.reasons.join("; "))
            }),
        ),
    })
}

// ---------------------------------------------------------------- commands

impl Core {
    /// Stores a definition (`workflow.defined`), or answers with the latest
    /// version when it is this very document.
    pub async fn define_workflow(
        &self,
        caller: &Caller,
        request: WorkflowRequest,
    ) -> Result<WorkflowDefinedReply, ApiError> {
        let def = request
            .parse()
            .map_err(|e| ApiError::Invalid(e.to_string()))?;
        let tenant = caller.identity.tenant.clone();
        let name = def.name.as_str().to_owned();
        let stream = Stream::workflow(&tenant, &name);
        let versions: WorkflowVersions = self
            .store
            .load(stream.as_str())
            .await
            .map_err(ApiError::store("read the workflow's versions"))?;
        if let Ok(v) = versions.version_for(&def.digest) {
            return Ok(WorkflowDefinedReply {
                name,
                version: v.defined.version,
                digest: v.defined.digest.clone(),
                steps: v.defined.steps.clone(),
                position: v.position,
                created: false,
            });
        }
        let key_id = Uuid::new_v4().to_string();
        let path = format!("workflows/{key_id}/definition");
        let bytes = serde_json::to_vec(&def.request).map_err(internal)?;
        self.blobs
            .create_data_key(&key_id, &tenant)
            .await
            .map_err(internal)?;
        let blob = self
            .blobs
            .put(&key_id, &path, &bytes)
            .await
            .map_err(internal)?;
        let blob = BlobRef {
            hmac: blob.hmac,
            size_bytes: blob.size_bytes,
            key: blob.key,
        };
        let steps: Vec<String> = def.steps.iter().map(|s| s.name.to_string()).collect();
        let digest = def.digest.clone();
        let decided = self
            .store
            .decide_from(
                stream.as_str(),
                versions,
                &caller.envelope(),
                |v: &WorkflowVersions| {
                    let event = match v.version_for(&digest) {
                        Ok(_) => return Ok(vec![]),
                        Err(version) => KnownEvent::WorkflowDefined(Box::new(c::WorkflowDefined {
                            name: name.clone(),
                            version,
                            digest: digest.clone(),
                            definition: blob.clone(),
                            steps: steps.clone(),
                        })),
                    };
                    on_stream(&stream, vec![event])
                },
            )
            .await;
        let d = match decided {
            Ok(d) => d,
            Err(e) => {
                let _ = self.blobs.destroy_key(&key_id).await;
                return Err(match e {
                    DecideError::Refused(r) => ApiError::Invalid(r.to_string()),
                    DecideError::Contended { .. } => {
                        ApiError::Conflict(format!("workflow {name} kept changing; try again"))
                    }
                    DecideError::Store(s) => ApiError::store("record the definition")(s),
                });
            }
        };
        let created = d.appended.is_some();
        if !created {
            // Someone stored the same document meanwhile; ours is unused.
            let _ = self.blobs.destroy_key(&key_id).await;
        }
        let v = d
            .state
            .latest()
            .ok_or_else(|| internal("the definition was not recorded"))?;
        self.definitions.put(Arc::new(def));
        Ok(WorkflowDefinedReply {
            name,
            version: v.defined.version,
            digest: v.defined.digest.clone(),
            steps: v.defined.steps.clone(),
            position: v.position,
            created,
        })
    }

    async fn versions(
        &self,
        tenant: &str,
        name: &WorkflowName,
    ) -> Result<WorkflowVersions, ApiError> {
        let versions: WorkflowVersions = self
            .store
            .load(Stream::workflow(tenant, name.as_str()).as_str())
            .await
            .map_err(ApiError::store("read the workflow's versions"))?;
        if versions.versions.is_empty() || versions.tenant != tenant {
            return Err(ApiError::NotFound(format!("workflow {}", name.as_str())));
        }
        Ok(versions)
    }

    pub async fn workflow_versions(
        &self,
        tenant: &str,
        name: &WorkflowName,
    ) -> Result<WorkflowVersionsView, ApiError> {
        let versions = self.versions(tenant, name).await?;
        Ok(WorkflowVersionsView {
            name: name.as_str().to_owned(),
            versions: versions
                .versions
                .iter()
                .map(|v| WorkflowVersionView {
                    version: v.defined.version,
                    digest: v.defined.digest.clone(),
                    steps: v.defined.steps.clone(),
                    defined_at: v.defined_at,
                    defined_by: v.defined_by.clone(),
                    position: v.position,
                })
                .collect(),
        })
    }

    /// The definition a `workflow.defined` record names: decrypted, parsed and
    /// checked against its digest.
    async fn definition(
        &self,
        defined: &c::WorkflowDefined,
    ) -> Result<Arc<WorkflowDefinition>, ApiError> {
        if let Some(d) = self.definitions.get(&defined.digest) {
            return Ok(d);
        }
        let blob = &defined.definition;
        let key_id = definition_key_id(blob)
            .ok_or_else(|| internal(format!("definition {}: unknown blob name", defined.digest)))?;
        let bytes = self
            .blobs
            .get_checked(key_id, &blob.key, &blob.hmac)
            .await
            .map_err(|e| internal(format!("definition {}: {e}", defined.digest)))?;
        let request: WorkflowRequest = serde_json::from_slice(&bytes)
            .map_err(|e| internal(format!("definition {}: {e}", defined.digest)))?;
        let def = request
            .parse()
            .map_err(|e| internal(format!("definition {}: {e}", defined.digest)))?;
        if def.digest != defined.digest {
            return Err(internal(format!(
                "definition {}: its document hashes to {}",
                defined.digest, def.digest
            )));
        }
        let def = Arc::new(def);
        self.definitions.put(def.clone());
        Ok(def)
    }

    /// The definition a run runs.
    async fn run_definition(&self, run: &WorkflowRun) -> Result<Arc<WorkflowDefinition>, ApiError> {
        let (Some(name), Some(digest)) = (&run.name, &run.digest) else {
            return Err(internal("the run has not started"));
        };
        if let Some(d) = self.definitions.get(digest) {
            return Ok(d);
        }
        let versions: WorkflowVersions = self
            .store
            .load(Stream::workflow(&run.tenant, name).as_str())
            .await
            .map_err(ApiError::store("read the workflow's versions"))?;
        let v = versions
            .get(run.definition_version)
            .filter(|v| &v.defined.digest == digest)
            .ok_or_else(|| internal(format!("run of {name}: definition {digest} not found")))?;
        self.definition(&v.defined).await
    }

    /// Starts a run: the authorization, one `glassbox.workflows` gate decision
    /// per step and `workflow.run_started`, in one append on a new stream; then
    /// the first steps are scheduled.
    pub async fn start_run(
        &self,
        caller: &Caller,
        name: &WorkflowName,
        request: RunRequest,
        idempotency_key: Option<String>,
    ) -> Result<RunStarted, ApiError> {
        let tenant = caller.identity.tenant.clone();
        let versions = self.versions(&tenant, name).await?;
        let v = match request.version {
            None => versions.latest(),
            Some(n) => versions.get(n),
        }
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "workflow {} version {}",
                name.as_str(),
                request.version.unwrap_or_default()
            ))
        })?;
        request
            .check()
            .map_err(|e| ApiError::Invalid(e.to_string()))?;
        let def = self.definition(&v.defined).await?;
        // Valid inputs that clash with this definition's steps conflict with
        // what is stored (another version, or other inputs, may do).
        def.check_inputs(&request.inputs)
            .map_err(|e| ApiError::Conflict(e.to_string()))?;
        let digest = run_digest(name.as_str(), &request, &caller.identity);
        if let Some((first, last)) = self
            .earlier_answer(&tenant, idempotency_key.as_ref(), digest)
            .await?
        {
            return Ok(RunStarted {
                receipt: self.run_receipt(first, last).await?,
                replayed: true,
            });
        }
        let run_id = Uuid::new_v4().to_string();
        let stream = Stream::workflow_run(&run_id);
        let inputs = if request.inputs.is_empty() {
            None
        } else {
            self.blobs
                .create_data_key(&run_id, &tenant)
                .await
                .map_err(internal)?;
            let bytes = serde_json::to_vec(&request.inputs).map_err(internal)?;
            let b = self
                .blobs
                .put(&run_id, &run_inputs_path(&run_id), &bytes)
                .await
                .map_err(internal)?;
            Some(BlobRef {
                hmac: b.hmac,
                size_bytes: b.size_bytes,
                key: b.key,
            })
        };
        let mut events = Vec::new();
        let authz_input = Core::authz_input(caller, "workflow.run", &tenant);
        let authz = self.engine.evaluate(Policy::Authz, &authz_input);
        events.push(evaluated_event(&authz, &authz_input));
        let mut gated = Vec::new();
        for step in &def.steps {
            let input = json!({
                "question": "gate",
                "tenant": tenant,
                "workflow": name.as_str(),
                "step": step.name.as_str(),
                "secrets": secrets_of(&def, &step.name),
                "requested": step.approval,
            });
            let d = self.engine.evaluate(Policy::Workflows, &input);
            events.push(evaluated_event(&d, &input));
            if !d.allow {
                gated.push(step.name.to_string());
            }
        }
        events.push(KnownEvent::WorkflowRunStarted(Box::new(
            c::WorkflowRunStarted {
                run_id: run_id.clone(),
                name: name.as_str().to_owned(),
                version: v.defined.version,
                digest: def.digest.clone(),
                inputs,
                input_count: request.inputs.len() as u64,
                idempotency_key: idempotency_key.clone(),
                gated,
                submitter_roles: caller.identity.roles.clone(),
            },
        )));
        let mut envelope = caller.keyed_envelope(idempotency_key.as_ref(), digest);
        envelope.correlation_id = Some(run_id.clone());
        let command = RunCommand::Start { events };
        let outcome = self
            .store
            .decide_from(
                stream.as_str(),
                WorkflowRun::default(),
                &envelope,
                |r: &WorkflowRun| {
                    on_stream(&stream, r.decide(command.clone())?)
                        .map_err(|e| RunRefusal::Invalid(e.to_string()))
                },
            )
            .await;
        let d = match outcome {
            Ok(d) => d,
            Err(e) => {
                let _ = self.blobs.destroy_key(&run_id).await;
                return Err(refused(&run_id)(e));
            }
        };
        let o = d
            .appended
            .ok_or_else(|| internal("the run's start appended nothing"))?;
        if o.replayed {
            let _ = self.blobs.destroy_key(&run_id).await;
        } else if let Err(e) = self.advance_run(&run_id).await {
            // The orchestrator's watch and sweep will try again.
            tracing::warn!(run_id, error = %e, "workflow: first advance failed");
        }
        Ok(RunStarted {
            receipt: self
                .run_receipt(o.first_position(), o.last_position())
                .await?,
            replayed: o.replayed,
        })
    }

    /// Rebuilds a run start's reply from its records.
    async fn run_receipt(&self, first: u64, last: u64) -> Result<RunReceipt, ApiError> {
        let records = self
            .store
            .read_all(first, last.saturating_sub(first) + 1)
            .await
            .map_err(ApiError::store("read the run's start"))?;
        let mut decisions = Vec::new();
        for s in records.iter().filter(|s| s.record.position <= last) {
            match KnownEvent::decode(&s.record.event_type, &s.record.data) {
                Ok(Some(KnownEvent::PolicyEvaluated(e))) => decisions.push(DecisionView {
                    policy: e.policy,
                    decision: e.decision,
                    reasons: e.reasons,
                    error: e.error,
                }),
                Ok(Some(KnownEvent::WorkflowRunStarted(e))) => {
                    return Ok(RunReceipt {
                        run_id: e.run_id.clone(),
                        workflow: e.name,
                        version: e.version,
                        digest: e.digest,
                        correlation_id: s.record.correlation_id.clone(),
                        stream: s.record.stream.clone(),
                        gated: e.gated,
                        decisions,
                        position: s.record.position,
                    });
                }
                _ => {}
            }
        }
        Err(internal(format!(
            "records {first}..={last} are not a run's start"
        )))
    }

    /// The run folded from its stream, if it exists and belongs to `tenant`.
    async fn run(&self, tenant: &str, run_id: &RunId) -> Result<WorkflowRun, ApiError> {
        let run: WorkflowRun = self
            .store
            .load(Stream::workflow_run(run_id.as_str()).as_str())
            .await
            .map_err(ApiError::store("read the run's stream"))?;
        // 404, not 403: another tenant's run does not exist for this caller.
        if run.run_id.is_none() || run.tenant != tenant {
            return Err(ApiError::NotFound(format!(
                "workflow run {}",
                run_id.as_str()
            )));
        }
        Ok(run)
    }

    pub async fn run_view(&self, tenant: &str, run_id: &RunId) -> Result<RunView, ApiError> {
        let run = self.run(tenant, run_id).await?;
        let def = self.run_definition(&run).await?;
        let status = match run.finished {
            None => RunStatus::Running,
            Some(true) => RunStatus::Succeeded,
            Some(false) if run.cancel_requested => RunStatus::Cancelled,
            Some(false) => RunStatus::Failed,
        };
        let steps = def
            .steps
            .iter()
            .map(|s| {
                let state = run.steps.get(&s.name).cloned().unwrap_or_default();
                let attempt = match state {
                    StepState::Running { attempt } | StepState::Failed { attempt } => attempt,
                    _ => run.jobs.get(&s.name).map_or(0, |j| j.len() as u32),
                };
                StepView {
                    name: s.name.to_string(),
                    needs: s.needs.iter().map(ToString::to_string).collect(),
                    status: state.status(),
                    attempt: u64::from(attempt),
                    jobs: run.jobs.get(&s.name).cloned().unwrap_or_default(),
                    approval_required: run.gated.contains(&s.name),
                    answered_by: run.approvers.get(&s.name).cloned(),
                }
            })
            .collect();
        Ok(RunView {
            run_id: run_id.as_str().to_owned(),
            workflow: run.name.clone().unwrap_or_default(),
            version: run.definition_version,
            digest: run.digest.clone().unwrap_or_default(),
            correlation_id: run.correlation_id.clone().unwrap_or_default(),
            status,
            cancel_requested: run.cancel_requested,
            submitted_by: run
                .submitted_by
                .as_ref()
                .map(|s| s.id.clone())
                .unwrap_or_default(),
            started_at: run.started_at,
            updated_at: run.updated_at,
            position: run.last_position,
            steps,
        })
    }

    /// An approver's answer for a step: `glassbox.workflows` decides whether
    /// this caller may answer (never the run's submitter); the decision and the
    /// answer — or the refusal — are one append on the run's stream. A refusal
    /// is a 403 after it is recorded.
    pub async fn answer_approval(
        &self,
        caller: &Caller,
        run_id: &RunId,
        step: &str,
        grant: bool,
        reason: Option<String>,
    ) -> Result<ApprovalReply, ApiError> {
        let tenant = caller.identity.tenant.clone();
        let run = self.run(&tenant, run_id).await?;
        let def = self.run_definition(&run).await?;
        let step = StepName::parse(step)
            .ok()
            .filter(|s| def.step(s).is_some())
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "step {} of workflow run {}",
                    step.chars().take(64).collect::<String>(),
                    run_id.as_str()
                ))
            })?;
        let input = json!({
            "question": "approve",
            "tenant": tenant,
            "workflow": run.name,
            "step": step.as_str(),
            "secrets": secrets_of(&def, &step),
            "approver": {"id": caller.identity.subject, "roles": caller.identity.roles},
            "submitter": run.submitted_by.as_ref().map(|s| s.id.clone()),
        });
        let d = self.engine.evaluate(Policy::Workflows, &input);
        let refusals = if d.allow {
            Vec::new()
        } else {
            d.reasons.clone()
        };
        let stream = Stream::workflow_run(run_id.as_str());
        let mut envelope = caller.envelope();
        envelope.correlation_id.clone_from(&run.correlation_id);
        let command = RunCommand::Answer {
            step: step.clone(),
            approver: caller.identity.subject.clone(),
            grant,
            reason,
            refusals,
        };
        let decided = self
            .store
            .decide_from(stream.as_str(), run, &envelope, |r: &WorkflowRun| {
                let mut events = vec![evaluated_event(&d, &input)];
                events.extend(r.decide(command.clone())?);
                on_stream(&stream, events).map_err(|e| RunRefusal::Invalid(e.to_string()))
            })
            .await
            .map_err(refused(run_id.as_str()))?;
        let o = decided
            .appended
            .ok_or_else(|| internal("the answer appended nothing"))?;
        let mut outcome = None;
        for r in &o.records {
            match KnownEvent::decode(&r.event_type, &r.data) {
                Ok(Some(KnownEvent::WorkflowApprovalRefused(e))) => {
                    return Err(ApiError::Forbidden(e.reasons));
                }
                Ok(Some(KnownEvent::WorkflowApprovalGranted(_))) => {
                    outcome = Some((ApprovalOutcome::Granted, r.position));
                }
                Ok(Some(KnownEvent::WorkflowApprovalDenied(_))) => {
                    outcome = Some((ApprovalOutcome::Denied, r.position));
                }
                _ => {}
            }
        }
        let (outcome, position) = outcome.ok_or_else(|| internal("no answer was recorded"))?;
        if let Err(e) = self.advance_run(run_id.as_str()).await {
            tracing::warn!(run_id = run_id.as_str(), error = %e, "workflow: advance after an answer failed");
        }
        Ok(ApprovalReply {
            run_id: run_id.as_str().to_owned(),
            step: step.to_string(),
            outcome,
            position,
        })
    }

    /// Asks for a run to be cancelled: running steps' jobs are cancelled, the
    /// rest skipped, and the run finishes once no job of it runs.
    pub async fn cancel_run(
        &self,
        caller: &Caller,
        run_id: &RunId,
    ) -> Result<RunCancelReply, ApiError> {
        let run = self.run(&caller.identity.tenant, run_id).await?;
        let stream = Stream::workflow_run(run_id.as_str());
        let mut envelope = caller.envelope();
        envelope.correlation_id.clone_from(&run.correlation_id);
        let d = self
            .store
            .decide_from(stream.as_str(), run, &envelope, |r: &WorkflowRun| {
                on_stream(&stream, r.decide(RunCommand::Cancel)?)
                    .map_err(|e| RunRefusal::Invalid(e.to_string()))
            })
            .await
            .map_err(refused(run_id.as_str()))?;
        if let Err(e) = self.advance_run(run_id.as_str()).await {
            tracing::warn!(run_id = run_id.as_str(), error = %e, "workflow: advance after a cancel failed");
        }
        Ok(RunCancelReply {
            run_id: run_id.as_str().to_owned(),
            cancel_requested: d.state.cancel_requested,
            position: d.state.last_position,
        })
    }

    // ------------------------------------------------------------ the orchestrator

    /// Moves one run forward as far as it can go now, holding the run's
    /// advisory lock (so two instances never decide for one run at once).
    pub async fn advance_run(&self, run_id: &str) -> Result<(), ApiError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| internal(format!("workflow lock: {e}")))?;
        let key = format!("glassbox.workflow-run:{run_id}");
        sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
            .bind(&key)
            .execute(&mut *conn)
            .await
            .map_err(|e| internal(format!("workflow lock: {e}")))?;
        let result = self.advance_locked(run_id).await;
        let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
            .bind(&key)
            .execute(&mut *conn)
            .await;
        if unlocked.is_err() {
            // Closing the connection releases the lock for sure.
            let _ = conn.detach();
        }
        result
    }

    async fn advance_locked(&self, run_id: &str) -> Result<(), ApiError> {
        let stream = Stream::workflow_run(run_id);
        let mut run: WorkflowRun = self
            .store
            .load(stream.as_str())
            .await
            .map_err(ApiError::store("read the run's stream"))?;
        if run.run_id.is_none() || run.finished.is_some() {
            return Ok(());
        }
        let def = self.run_definition(&run).await?;
        let envelope = orchestrator_envelope(&run);
        for _ in 0..MAX_PASSES {
            let mut commands: Vec<RunCommand> = Vec::new();
            // The jobs of running steps: submit those not yet submitted (a
            // crash between scheduling and submission), record those that ended,
            // cancel the rest after a cancel request.
            for (step, job_id) in run.running_jobs() {
                let job: Job = self
                    .store
                    .load(Stream::job(&job_id).as_str())
                    .await
                    .map_err(ApiError::store("read a step's job"))?;
                if job.version == 0 {
                    if run.cancel_requested {
                        commands.push(RunCommand::StepFinished {
                            step,
                            job_id,
                            succeeded: false,
                            reason: Some("cancelled before its job was submitted".into()),
                        });
                        continue;
                    }
                    if let Err(reason) = self.submit_step(&run, &def, &step, &job_id).await? {
                        commands.push(RunCommand::StepFinished {
                            step,
                            job_id,
                            succeeded: false,
                            reason: Some(reason),
                        });
                    }
                    continue;
                }
                match job_outcome(&job) {
                    Some((succeeded, reason)) => commands.push(RunCommand::StepFinished {
                        step,
                        job_id,
                        succeeded,
                        reason,
                    }),
                    None if run.cancel_requested && job.cancel_requested.is_none() => {
                        let mut caller = Caller::system(&run.tenant, ORCHESTRATOR);
                        caller.request_id = run.correlation_id.clone().unwrap_or_default();
                        if let Err(e) = self
                            .cancel(
                                &caller,
                                &job_id,
                                Some("the workflow run was cancelled".into()),
                            )
                            .await
                        {
                            tracing::warn!(run_id, job_id, error = %e, "workflow: could not cancel a step's job");
                        }
                    }
                    None => {}
                }
            }
            // Approvals nobody answered in time are denied.
            let now = Utc::now();
            let timeout =
                chrono::Duration::from_std(self.approval_timeout).unwrap_or(chrono::Duration::MAX);
            for (step, state) in &run.steps {
                if *state == StepState::AwaitingApproval
                    && run
                        .approval_requested_at
                        .get(step)
                        .is_some_and(|at| now - *at >= timeout)
                {
                    commands.push(RunCommand::Answer {
                        step: step.clone(),
                        approver: ORCHESTRATOR.into(),
                        grant: false,
                        reason: Some(format!(
                            "no answer within {} s",
                            self.approval_timeout.as_secs()
                        )),
                        refusals: Vec::new(),
                    });
                }
            }
            commands.push(RunCommand::Advance {
                definition: def.clone(),
            });
            let mut appended = false;
            for command in commands {
                let d = self
                    .store
                    .decide_from(stream.as_str(), run, &envelope, |r: &WorkflowRun| {
                        on_stream(&stream, r.decide(command.clone())?)
                            .map_err(|e| RunRefusal::Invalid(e.to_string()))
                    })
                    .await;
                match d {
                    Ok(d) => {
                        appended |= d.appended.is_some();
                        run = d.state;
                    }
                    Err(DecideError::Refused(r)) => {
                        // The stream moved on (another answer, a finish): re-read.
                        tracing::debug!(run_id, refusal = %r, "workflow: decision refused");
                        run = self
                            .store
                            .load(stream.as_str())
                            .await
                            .map_err(ApiError::store("read the run's stream"))?;
                    }
                    Err(e) => return Err(refused(run_id)(e)),
                }
                if run.finished.is_some() {
                    return Ok(());
                }
            }
            if !appended {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Submits `step`'s job as `job_id`: the step's job with earlier steps'
    /// artifacts and the run's inputs as input files, as the run's submitter
    /// (with the roles they started it with), under the run's correlation ID.
    /// `Ok(Err(reason))`: the step cannot run (a missing artifact).
    async fn submit_step(
        &self,
        run: &WorkflowRun,
        def: &WorkflowDefinition,
        step: &StepName,
        job_id: &str,
    ) -> Result<Result<(), String>, ApiError> {
        let Some(s) = def.step(step) else {
            return Ok(Err(format!("step {step} is not in the definition")));
        };
        let mut artifacts: BTreeMap<(StepName, String), Vec<u8>> = BTreeMap::new();
        for input in &s.inputs {
            if let Some(bytes) = self.artifact_of(run, &input.step, &input.artifact).await? {
                artifacts.insert(
                    (input.step.clone(), input.artifact.as_str().to_owned()),
                    bytes,
                );
            }
        }
        let mut request = match s
            .job_request(|from, path| artifacts.remove(&(from.clone(), path.as_str().to_owned())))
        {
            Ok(r) => r,
            Err(missing) => return Ok(Err(missing.to_string())),
        };
        if let Some(blob) = &run.inputs {
            let run_id = run.run_id.as_deref().unwrap_or_default();
            let bytes = self
                .blobs
                .get_checked(run_id, &blob.key, &blob.hmac)
                .await
                .map_err(|e| internal(format!("inputs of run {run_id}: {e}")))?;
            let inputs: Vec<FileInput> = serde_json::from_slice(&bytes)
                .map_err(|e| internal(format!("inputs of run {run_id}: {e}")))?;
            request.files.extend(inputs);
        }
        let spec = match request.parse() {
            Ok(spec) => spec,
            Err(e) => return Ok(Err(format!("the step's job is not valid: {e}"))),
        };
        let actor = run
            .started_by
            .clone()
            .unwrap_or_else(|| Actor::system(ORCHESTRATOR));
        let correlation = run.correlation_id.clone().unwrap_or_default();
        let caller = Caller {
            identity: Identity {
                tenant: run.tenant.clone(),
                subject: actor.id.clone(),
                app: actor.app.clone(),
                agent: actor.agent.clone(),
                roles: run.submitter_roles.clone(),
            },
            via: actor.via,
            request_id: correlation.clone(),
        };
        let mut envelope = caller.envelope();
        envelope.correlation_id = Some(correlation);
        envelope.causation_id = run.run_id.clone();
        self.submit_as(&caller, spec, None, job_id.to_owned(), envelope)
            .await?;
        Ok(Ok(()))
    }

    /// The bytes `producer` (its successful job) wrote at `path` (`out/…`),
    /// or `None` when it wrote no such file (or only part of it).
    async fn artifact_of(
        &self,
        run: &WorkflowRun,
        producer: &StepName,
        path: &WorkspacePath,
    ) -> Result<Option<Vec<u8>>, ApiError> {
        let Some(job_id) = run.jobs.get(producer).and_then(|j| j.last()) else {
            return Ok(None);
        };
        let Some(wanted) = path.as_str().strip_prefix("out/") else {
            return Ok(None);
        };
        let result = self.result(&run.tenant, job_id).await?;
        let artifacts = self.artifacts(job_id, &result).await?;
        match artifacts.iter().find(|a| a.path == wanted && !a.truncated) {
            Some(a) => Ok(Some(self.read_blob(job_id, &a.blob).await?)),
            None => Ok(None),
        }
    }
}

/// The orchestrator: advances runs when the ledger says something happened to
/// them, and sweeps every unfinished run every [`SWEEP_EVERY`].
pub async fn orchestrate(core: Core, token: CancellationToken) {
    let head = match core.store.head().await {
        Ok((h, _)) => h,
        Err(e) => {
            tracing::warn!(error = %e, "workflow orchestrator: cannot read the ledger head");
            0
        }
    };
    let mut watch = core.store.watch_types(head, &WAKE_TYPES);
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            next = watch.next() => {
                let Some(Ok(stored)) = next else {
                    if next.is_none() {
                        return;
                    }
                    continue;
                };
                let r = &stored.record;
                let run_id = match glassbox_domain::stream::kind_of(&r.stream) {
                    glassbox_domain::stream::StreamKind::WorkflowRun(id) => Some(id.to_owned()),
                    // A step's job (a derived ID) carries its run's ID as correlation.
                    glassbox_domain::stream::StreamKind::Job(job)
                        if glassbox_domain::workflow::run::is_step_job(job) =>
                    {
                        let candidate = Stream::workflow_run(&r.correlation_id);
                        match core.store.stream_version(candidate.as_str()).await {
                            Ok(Some(_)) => Some(r.correlation_id.clone()),
                            _ => None,
                        }
                    }
                    _ => None,
                };
                if let Some(run_id) = run_id
                    && let Err(e) = core.advance_run(&run_id).await
                {
                    tracing::warn!(run_id, error = %e, "workflow orchestrator: advance failed");
                }
            }
            _ = sweep.tick() => {
                match glassbox_projector::queries::unfinished_workflow_runs(
                    &core.pool,
                    <c::WorkflowRunStarted as Event>::TYPE,
                    <c::WorkflowRunFinished as Event>::TYPE,
                    Stream::WORKFLOW_RUN_PREFIX,
                    1000,
                ).await {
                    Ok(runs) => {
                        for run_id in runs {
                            if token.is_cancelled() {
                                return;
                            }
                            if let Err(e) = core.advance_run(&run_id).await {
                                tracing::warn!(run_id, error = %e, "workflow orchestrator: advance failed");
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "workflow orchestrator: sweep failed"),
                }
            }
        }
    }
}
