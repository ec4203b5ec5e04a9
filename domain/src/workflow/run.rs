//! The workflow run aggregate: a run's life, folded from its stream
//! (`workflow-run-<id>`), and what may happen next — decided with the
//! scheduler ([`super::plan`]) and no I/O, so any orchestrator instance that
//! reads the stream decides exactly what the first would have (a crashed
//! orchestrator is continued, nothing is scheduled twice: a scheduled step is
//! `Running` in the fold, and its job ID is derived from run, step and attempt).

use super::{Next, StepName, StepState, WorkflowDefinition, plan};
use crate::aggregate::Aggregate;
use crate::catalogue::{self as c, KnownEvent};
use crate::job::Submitter;
use glassbox_verify::record::Record;
use std::collections::{BTreeMap, BTreeSet};

/// A run as its stream says it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkflowRun {
    pub version: u64,
    pub tenant: String,
    pub correlation_id: Option<String>,
    pub run_id: Option<String>,
    pub name: Option<String>,
    /// The definition it runs, by digest.
    pub digest: Option<String>,
    pub submitted_by: Option<Submitter>,
    /// The actor of `workflow.run_started` (the steps' jobs are submitted as them).
    pub started_by: Option<glassbox_verify::record::Actor>,
    pub submitter_roles: Vec<String>,
    /// The definition's version, and the run's input files (encrypted, under
    /// the run ID's data key).
    pub definition_version: u64,
    pub inputs: Option<crate::catalogue::BlobRef>,
    /// Steps that wait for an approval before they run.
    pub gated: BTreeSet<StepName>,
    /// When each pending approval was asked for.
    pub approval_requested_at: BTreeMap<StepName, chrono::DateTime<chrono::Utc>>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Position of the stream's last record.
    pub last_position: u64,
    pub steps: BTreeMap<StepName, StepState>,
    /// Every job each step became, in order.
    pub jobs: BTreeMap<StepName, Vec<String>>,
    /// Who answered each approval.
    pub approvers: BTreeMap<StepName, String>,
    pub cancel_requested: bool,
    /// `Some(succeeded)` once finished.
    pub finished: Option<bool>,
}

/// What may be asked of a run.
#[derive(Debug, Clone, PartialEq)]
pub enum RunCommand {
    /// Record the start (and the policy decisions before it) on a new stream.
    Start {
        events: Vec<KnownEvent>,
    },
    /// Do what the scheduler says now: schedule, ask, skip, finish. The steps
    /// that wait for approval are those the run's start recorded as gated.
    Advance {
        definition: std::sync::Arc<WorkflowDefinition>,
    },
    /// The job of `step`'s attempt ended.
    StepFinished {
        step: StepName,
        job_id: String,
        succeeded: bool,
        reason: Option<String>,
    },
    /// An answer to `step`'s approval request. `refusals`: why the policy does
    /// not let this approver answer (empty: it does).
    Answer {
        step: StepName,
        approver: String,
        grant: bool,
        reason: Option<String>,
        refusals: Vec<String>,
    },
    Cancel,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunRefusal {
    #[error("there is no such run")]
    NoRun,
    #[error("the run already exists")]
    Exists,
    #[error("the run has finished")]
    Finished,
    #[error("a run starts with workflow.run_started")]
    BadStart,
    #[error("the run is of definition {0}, not this one")]
    WrongDefinition(String),
    #[error("step {0} is not waiting for approval")]
    NotAwaitingApproval(String),
    #[error("step {0} has no running job {1}")]
    NotRunning(String, String),
    /// The decision could not be turned into records.
    #[error("{0}")]
    Invalid(String),
}

/// The job ID of `step`'s `attempt` in run `run_id`: a UUID derived from the
/// three, so a scheduling repeated after a crash names the same job.
pub fn job_id_for(run_id: &str, step: &StepName, attempt: u32) -> String {
    let d = glassbox_verify::hash::Digest::of_parts(&[
        b"glassbox.workflow.job\0",
        run_id.as_bytes(),
        b"\0",
        step.as_str().as_bytes(),
        b"\0",
        &attempt.to_be_bytes(),
    ]);
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.0[..16]);
    b[6] = (b[6] & 0x0f) | 0x80; // version 8: name-based, custom hash
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 9562 variant
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Whether `job_id` is a workflow step's job: only [`job_id_for`] makes
/// version-8 UUIDs (a client's job gets a random, version-4 one). Lets the
/// orchestrator ignore the ends of every other job without a query.
pub fn is_step_job(job_id: &str) -> bool {
    job_id.len() == 36 && job_id.as_bytes().get(14) == Some(&b'8')
}

impl WorkflowRun {
    pub fn apply(&mut self, r: &Record) {
        self.version = r.stream_version;
        self.last_position = r.position;
        self.updated_at = Some(r.occurred_at);
        if self.tenant.is_empty() {
            self.tenant.clone_from(&r.tenant);
        }
        if self.correlation_id.is_none() {
            self.correlation_id = Some(r.correlation_id.clone());
        }
        let Ok(Some(event)) = KnownEvent::decode(&r.event_type, &r.data) else {
            return;
        };
        let step = |s: &str| StepName::parse(s).ok();
        match event {
            KnownEvent::WorkflowRunStarted(e) if self.run_id.is_none() => {
                self.run_id = Some(e.run_id);
                self.name = Some(e.name);
                self.digest = Some(e.digest);
                self.definition_version = e.version;
                self.inputs = e.inputs;
                self.gated = e.gated.iter().filter_map(|g| step(g)).collect();
                self.submitter_roles = e.submitter_roles;
                self.started_by = Some(r.actor.clone());
                self.started_at = Some(r.occurred_at);
                self.submitted_by = Some(Submitter {
                    id: r.actor.id.clone(),
                    app: r.actor.app.clone(),
                    agent: r.actor.agent.clone(),
                });
            }
            KnownEvent::WorkflowStepScheduled(e) => {
                if let Some(s) = step(&e.step) {
                    let attempt = u32::try_from(e.attempt).unwrap_or(u32::MAX);
                    self.steps.insert(s.clone(), StepState::Running { attempt });
                    self.jobs.entry(s).or_default().push(e.job_id);
                }
            }
            KnownEvent::WorkflowStepFinished(e) => {
                if let Some(s) = step(&e.step) {
                    let attempt = u32::try_from(e.attempt).unwrap_or(u32::MAX);
                    let state = if e.succeeded {
                        StepState::Succeeded
                    } else {
                        StepState::Failed { attempt }
                    };
                    self.steps.insert(s, state);
                }
            }
            KnownEvent::WorkflowStepSkipped(e) => {
                if let Some(s) = step(&e.step) {
                    self.steps.insert(s, StepState::Skipped);
                }
            }
            KnownEvent::WorkflowApprovalRequested(e) => {
                if let Some(s) = step(&e.step) {
                    self.steps.insert(s.clone(), StepState::AwaitingApproval);
                    self.approval_requested_at.insert(s, r.occurred_at);
                }
            }
            KnownEvent::WorkflowApprovalGranted(e) => {
                if let Some(s) = step(&e.step) {
                    self.steps.insert(s.clone(), StepState::Approved);
                    self.approvers.insert(s, e.approver);
                }
            }
            KnownEvent::WorkflowApprovalDenied(e) => {
                if let Some(s) = step(&e.step) {
                    self.steps.insert(s.clone(), StepState::Denied);
                    self.approvers.insert(s, e.approver);
                }
            }
            KnownEvent::WorkflowCancelRequested(_) => self.cancel_requested = true,
            KnownEvent::WorkflowRunFinished(e) => self.finished = Some(e.succeeded),
            _ => {}
        }
    }

    fn state(&self, step: &StepName) -> StepState {
        self.steps.get(step).cloned().unwrap_or_default()
    }

    fn live(&self) -> Result<&str, RunRefusal> {
        let id = self.run_id.as_deref().ok_or(RunRefusal::NoRun)?;
        if self.finished.is_some() {
            return Err(RunRefusal::Finished);
        }
        Ok(id)
    }

    pub fn decide(&self, command: RunCommand) -> Result<Vec<KnownEvent>, RunRefusal> {
        match command {
            RunCommand::Start { events } => {
                if self.run_id.is_some() || self.version > 0 {
                    return Err(RunRefusal::Exists);
                }
                if !matches!(events.last(), Some(KnownEvent::WorkflowRunStarted(_))) {
                    return Err(RunRefusal::BadStart);
                }
                Ok(events)
            }
            RunCommand::Advance { definition } => {
                let run_id = self.live()?.to_owned();
                if self.digest.as_deref() != Some(definition.digest.as_str()) {
                    return Err(RunRefusal::WrongDefinition(
                        self.digest.clone().unwrap_or_default(),
                    ));
                }
                if self.cancel_requested {
                    return Ok(self.wind_down(&run_id, &definition));
                }
                Ok(plan(&definition, &self.steps, &self.gated)
                    .into_iter()
                    .map(|next| match next {
                        Next::Schedule { step, attempt } => {
                            KnownEvent::WorkflowStepScheduled(Box::new(c::WorkflowStepScheduled {
                                run_id: run_id.clone(),
                                job_id: job_id_for(&run_id, &step, attempt),
                                step: step.as_str().to_owned(),
                                attempt: u64::from(attempt),
                            }))
                        }
                        Next::RequestApproval { step } => KnownEvent::WorkflowApprovalRequested(
                            Box::new(c::WorkflowApprovalRequested {
                                run_id: run_id.clone(),
                                step: step.as_str().to_owned(),
                            }),
                        ),
                        Next::Skip { step, because } => {
                            KnownEvent::WorkflowStepSkipped(Box::new(c::WorkflowStepSkipped {
                                run_id: run_id.clone(),
                                step: step.as_str().to_owned(),
                                because: because.as_str().to_owned(),
                            }))
                        }
                        Next::Finish { succeeded } => {
                            KnownEvent::WorkflowRunFinished(Box::new(c::WorkflowRunFinished {
                                run_id: run_id.clone(),
                                succeeded,
                            }))
                        }
                    })
                    .collect())
            }
            RunCommand::StepFinished {
                step,
                job_id,
                succeeded,
                reason,
            } => {
                let run_id = self.live()?.to_owned();
                let StepState::Running { attempt } = self.state(&step) else {
                    return Err(RunRefusal::NotRunning(step.as_str().to_owned(), job_id));
                };
                if self.jobs.get(&step).and_then(|j| j.last()) != Some(&job_id) {
                    return Err(RunRefusal::NotRunning(step.as_str().to_owned(), job_id));
                }
                Ok(vec![KnownEvent::WorkflowStepFinished(Box::new(
                    c::WorkflowStepFinished {
                        run_id,
                        step: step.as_str().to_owned(),
                        attempt: u64::from(attempt),
                        job_id,
                        succeeded,
                        reason,
                    },
                ))])
            }
            RunCommand::Answer {
                step,
                approver,
                grant,
                reason,
                mut refusals,
            } => {
                let run_id = self.live()?.to_owned();
                if self.state(&step) != StepState::AwaitingApproval {
                    return Err(RunRefusal::NotAwaitingApproval(step.as_str().to_owned()));
                }
                // Four eyes whatever the policy says: the submitter never approves
                // their own run's step.
                if self.submitted_by.as_ref().is_some_and(|s| s.id == approver) {
                    refusals.push("the run's submitter may not answer for its steps".into());
                }
                let (step, e) = (step.as_str().to_owned(), run_id);
                Ok(vec![if !refusals.is_empty() {
                    KnownEvent::WorkflowApprovalRefused(Box::new(c::WorkflowApprovalRefused {
                        run_id: e,
                        step,
                        approver,
                        reasons: refusals,
                    }))
                } else if grant {
                    KnownEvent::WorkflowApprovalGranted(Box::new(c::WorkflowApprovalGranted {
                        run_id: e,
                        step,
                        approver,
                        reason,
                    }))
                } else {
                    KnownEvent::WorkflowApprovalDenied(Box::new(c::WorkflowApprovalDenied {
                        run_id: e,
                        step,
                        approver,
                        reason,
                    }))
                }])
            }
            RunCommand::Cancel => {
                let run_id = self.live()?.to_owned();
                if self.cancel_requested {
                    return Ok(vec![]);
                }
                Ok(vec![KnownEvent::WorkflowCancelRequested(Box::new(
                    c::WorkflowCancelRequested { run_id },
                ))])
            }
        }
    }

    /// After a cancel: every step that has not started is skipped; the run
    /// finishes (failed) once no job of it runs. Running jobs are cancelled by
    /// the orchestrator; their `step_finished` comes back through `StepFinished`.
    fn wind_down(&self, run_id: &str, def: &WorkflowDefinition) -> Vec<KnownEvent> {
        let mut out = Vec::new();
        let mut running = false;
        for step in &def.steps {
            match self.state(&step.name) {
                StepState::Running { .. } => running = true,
                StepState::Waiting | StepState::AwaitingApproval | StepState::Approved => {
                    out.push(KnownEvent::WorkflowStepSkipped(Box::new(
                        c::WorkflowStepSkipped {
                            run_id: run_id.to_owned(),
                            step: step.name.as_str().to_owned(),
                            because: "cancelled".into(),
                        },
                    )));
                }
                _ => {}
            }
        }
        if !running {
            out.push(KnownEvent::WorkflowRunFinished(Box::new(
                c::WorkflowRunFinished {
                    run_id: run_id.to_owned(),
                    succeeded: false,
                },
            )));
        }
        out
    }

    /// The jobs of the run that are running now (to cancel them).
    pub fn running_jobs(&self) -> Vec<(StepName, String)> {
        self.steps
            .iter()
            .filter(|(_, s)| matches!(s, StepState::Running { .. }))
            .filter_map(|(n, _)| Some((n.clone(), self.jobs.get(n)?.last()?.clone())))
            .collect()
    }
}

impl Aggregate for WorkflowRun {
    fn apply(&mut self, record: &Record) {
        WorkflowRun::apply(self, record);
    }
    fn version(&self) -> u64 {
        self.version
    }
}

#[cfg(test)]
mod tests;
