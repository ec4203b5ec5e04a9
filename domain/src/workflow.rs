//! Workflows: named, versioned documents of steps — each step a job — with the
//! rules that make a run one auditable unit (issue 18).
//!
//! Pure, no I/O: the definition a client sends
//! ([`WorkflowRequest`]) parsed into a checked [`WorkflowDefinition`] — unique
//! step names, known `needs`, no cycle, artifact inputs that name an ancestor's
//! `out/` file, each step's job spec parsed by the same rules as `POST /v1/jobs`
//! — named by the SHA-256 of its canonical JSON; and the scheduler
//! ([`plan`]): given the definition and what has happened to each step, which
//! steps to schedule (or retry), which wait for approval, which are skipped
//! because a step they need failed, and whether the run is over.
//!
//! The run aggregate ([`run::WorkflowRun`]: fold with `apply`, decide with
//! `decide`) turns the scheduler's answers into the run's events;
//! [`versions::WorkflowVersions`] is a workflow's definitions by version. The
//! control plane (`command-api/src/workflows.rs`) does the I/O around these
//! decisions: storing definitions, starting runs, submitting steps as jobs,
//! approvals (docs/workflows.md).

pub mod run;
pub mod versions;

use crate::request::{Invalid, JobRequest, JobSpec, WorkspacePath};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Most steps a workflow may have.
pub const MAX_STEPS: usize = 64;
/// Most retries a step may ask for.
pub const MAX_RETRIES: u32 = 5;
/// Most artifact inputs per step.
pub const MAX_INPUTS: usize = 32;
/// The names of workflows and steps (JSON Schema; [`StepName::parse`] is the rule).
pub const NAME_PATTERN: &str = "^[a-z0-9][a-z0-9_-]{0,63}$";

/// A workflow as a client defines it (`POST /v1/workflows`, `glassbox workflow
/// apply FILE`; JSON, or YAML turned into the same value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowRequest {
    /// `[a-z0-9][a-z0-9_-]{0,63}`.
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// The steps, in any order (`needs` orders them).
    #[schemars(length(min = 1, max = MAX_STEPS))]
    pub steps: Vec<StepRequest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepRequest {
    /// `[a-z0-9][a-z0-9_-]{0,63}`, unique in the workflow.
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// Steps that must succeed before this one runs.
    #[serde(default)]
    #[schemars(inner(regex(pattern = NAME_PATTERN)))]
    pub needs: Vec<String>,
    /// Artifacts of earlier steps, copied into this step's workspace before it runs.
    #[serde(default)]
    #[schemars(length(max = MAX_INPUTS))]
    pub inputs: Vec<StepInput>,
    /// The job this step runs (as for `POST /v1/jobs`).
    pub job: JobRequest,
    /// Further attempts after a failure (0–5).
    #[serde(default)]
    #[schemars(range(max = MAX_RETRIES))]
    pub retries: u32,
    /// Ask for approval before running, whatever the policy says.
    #[serde(default)]
    pub approval: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepInput {
    /// `STEP:out/PATH`: a file an ancestor step wrote under `/workspace/out`.
    pub from: String,
    /// Where it appears in this step's workspace.
    pub path: String,
}

/// How a client starts a run (`POST /v1/workflows/{name}/runs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The definition version to run (default: the latest).
    #[serde(default)]
    #[schemars(range(min = 1, max = crate::request::MAX_INTEGER))]
    pub version: Option<u64>,
    /// Files every step finds in its workspace (as a job's `files`; checked
    /// against each step's own files and inputs).
    #[serde(default)]
    #[schemars(length(max = crate::request::MAX_FILES))]
    pub inputs: Vec<crate::request::FileInput>,
}

impl RunRequest {
    /// The input files on their own, by the rules of a job's `files` (paths,
    /// encodings, no path twice, the file limit).
    pub fn check(&self) -> Result<(), Invalid> {
        let probe = JobRequest {
            language: "bash".into(),
            code: "true".into(),
            stdin: None,
            args: Vec::new(),
            env: BTreeMap::new(),
            files: self.inputs.clone(),
            dependencies: Vec::new(),
            secrets: Vec::new(),
            limits: Default::default(),
            egress: Vec::new(),
        };
        probe.parse().map(|_| ()).map_err(|e| Invalid {
            member: e.member.replacen("files", "inputs", 1),
            reason: e.reason,
        })
    }
}

impl WorkflowDefinition {
    /// Checks a run's input files against every step: each step's job, with
    /// its artifact inputs and the run's inputs added, must still be a valid
    /// job (paths, no path twice, the file limit). A refusal names the step.
    pub fn check_inputs(&self, inputs: &[crate::request::FileInput]) -> Result<(), Invalid> {
        for step in &self.steps {
            let mut request = step.job.request.clone();
            for input in &step.inputs {
                request.files.push(crate::request::FileInput {
                    path: input.path.as_str().to_owned(),
                    content: String::new(),
                    encoding: crate::request::Encoding::Utf8,
                });
            }
            request.files.extend(inputs.iter().cloned());
            request.parse().map_err(|e| Invalid {
                member: "inputs".into(),
                reason: format!("clash with step {}: {}", step.name, e.reason),
            })?;
        }
        Ok(())
    }
}

/// A step name (and a workflow name): `[a-z0-9][a-z0-9_-]{0,63}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct StepName(String);

impl StepName {
    pub fn parse(s: &str) -> Result<StepName, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(StepName(s.to_owned()))
        } else {
            Err("1-64 characters: a-z, 0-9, '_' or '-', starting with a letter or digit".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for StepName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An artifact input, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub step: StepName,
    /// The path under `/workspace` the producing step wrote (starts with `out/`).
    pub artifact: WorkspacePath,
    /// Where it is mounted in the consuming step's workspace.
    pub path: WorkspacePath,
}

/// One step, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: StepName,
    pub needs: BTreeSet<StepName>,
    pub inputs: Vec<Input>,
    pub job: JobSpec,
    pub retries: u32,
    pub approval: bool,
}

/// A checked workflow: steps in an order where every step comes after what it
/// needs, and the digest that names exactly this definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowDefinition {
    pub name: StepName,
    /// Topological order (ties broken by name, so the order is deterministic).
    pub steps: Vec<Step>,
    /// `sha256:<hex>` of the request's canonical JSON.
    pub digest: String,
    pub request: WorkflowRequest,
}

impl WorkflowDefinition {
    pub fn step(&self, name: &StepName) -> Option<&Step> {
        self.steps.iter().find(|s| &s.name == name)
    }
}

/// An artifact a step's input names was not written by the step that should have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("step {step} needs {artifact} from step {from}, which did not write it")]
pub struct MissingArtifact {
    pub step: String,
    pub from: String,
    pub artifact: String,
}

impl Step {
    /// The job this step submits: its own job, with each artifact input added as
    /// an input file (base64) at its path. `artifact(step, path)` gives the bytes
    /// an earlier step wrote, or `None` — then the step cannot run.
    pub fn job_request(
        &self,
        mut artifact: impl FnMut(&StepName, &WorkspacePath) -> Option<Vec<u8>>,
    ) -> Result<JobRequest, MissingArtifact> {
        use base64::Engine as _;
        let mut request = self.job.request.clone();
        for input in &self.inputs {
            let bytes = artifact(&input.step, &input.artifact).ok_or_else(|| MissingArtifact {
                step: self.name.to_string(),
                from: input.step.to_string(),
                artifact: input.artifact.as_str().to_owned(),
            })?;
            request.files.push(crate::request::FileInput {
                path: input.path.as_str().to_owned(),
                content: base64::engine::general_purpose::STANDARD.encode(bytes),
                encoding: crate::request::Encoding::Base64,
            });
        }
        Ok(request)
    }
}

fn member<T>(m: String, r: Result<T, String>) -> Result<T, Invalid> {
    r.map_err(|reason| Invalid { member: m, reason })
}

impl WorkflowRequest {
    /// Parses and checks the whole definition; a refusal names the member.
    pub fn parse(self) -> Result<WorkflowDefinition, Invalid> {
        let name = member("name".into(), StepName::parse(&self.name))?;
        if self.steps.is_empty() || self.steps.len() > MAX_STEPS {
            return member("steps".into(), Err(format!("1-{MAX_STEPS} steps")));
        }
        let mut names = BTreeSet::new();
        for (i, s) in self.steps.iter().enumerate() {
            let n = member(format!("steps[{i}].name"), StepName::parse(&s.name))?;
            if !names.insert(n) {
                return member(
                    format!("steps[{i}].name"),
                    Err(format!("{} is named twice", s.name)),
                );
            }
        }
        let mut parsed: BTreeMap<StepName, Step> = BTreeMap::new();
        for (i, s) in self.steps.iter().enumerate() {
            let name = StepName(s.name.clone());
            let mut needs = BTreeSet::new();
            for (k, n) in s.needs.iter().enumerate() {
                let m = format!("steps[{i}].needs[{k}]");
                let n = member(m.clone(), StepName::parse(n))?;
                if !names.contains(&n) {
                    return member(m, Err(format!("no step is named {n}")));
                }
                if n == name {
                    return member(m, Err(format!("{n} cannot need itself")));
                }
                needs.insert(n);
            }
            if s.retries > MAX_RETRIES {
                return member(
                    format!("steps[{i}].retries"),
                    Err(format!("at most {MAX_RETRIES}")),
                );
            }
            if s.inputs.len() > MAX_INPUTS {
                return member(
                    format!("steps[{i}].inputs"),
                    Err(format!("at most {MAX_INPUTS}")),
                );
            }
            let job = s.job.clone().parse().map_err(|e| Invalid {
                member: format!("steps[{i}].job.{}", e.member),
                reason: e.reason,
            })?;
            if job.files.len() + s.inputs.len() > crate::request::MAX_FILES {
                return member(
                    format!("steps[{i}].inputs"),
                    Err(format!(
                        "the job's files and the inputs together: at most {}",
                        crate::request::MAX_FILES
                    )),
                );
            }
            let mut inputs = Vec::new();
            for (k, input) in s.inputs.iter().enumerate() {
                let m = format!("steps[{i}].inputs[{k}]");
                let (from, artifact) = input.from.split_once(':').ok_or_else(|| Invalid {
                    member: format!("{m}.from"),
                    reason: "must be STEP:out/PATH".into(),
                })?;
                let step = member(format!("{m}.from"), StepName::parse(from))?;
                if !names.contains(&step) {
                    return member(format!("{m}.from"), Err(format!("no step is named {step}")));
                }
                let artifact = member(format!("{m}.from"), WorkspacePath::parse(artifact))?;
                if !artifact.as_str().starts_with("out/") {
                    return member(
                        format!("{m}.from"),
                        Err("artifacts are files a step wrote under out/".into()),
                    );
                }
                let path = member(format!("{m}.path"), WorkspacePath::parse_input(&input.path))?;
                if job.files.iter().any(|f| f.path == path)
                    || inputs.iter().any(|x: &Input| x.path == path)
                {
                    return member(
                        format!("{m}.path"),
                        Err(format!("{} is used twice", input.path)),
                    );
                }
                inputs.push(Input {
                    step,
                    artifact,
                    path,
                });
            }
            parsed.insert(
                name.clone(),
                Step {
                    name,
                    needs,
                    inputs,
                    job,
                    retries: s.retries,
                    approval: s.approval,
                },
            );
        }
        let order = topological(&parsed)?;
        // An input must come from a step that has certainly run before: an ancestor.
        for (i, s) in self.steps.iter().enumerate() {
            let step = &parsed[&StepName(s.name.clone())];
            let ancestors = ancestors(&parsed, &step.name);
            for (k, input) in step.inputs.iter().enumerate() {
                if !ancestors.contains(&input.step) {
                    return member(
                        format!("steps[{i}].inputs[{k}].from"),
                        Err(format!(
                            "{} does not run before {} (add it to needs)",
                            input.step, step.name
                        )),
                    );
                }
            }
        }
        let canonical = serde_json::to_vec(&self).map_err(|e| Invalid {
            member: "".into(),
            reason: e.to_string(),
        })?;
        let digest = format!("sha256:{}", glassbox_verify::hash::Digest::of(&canonical));
        let mut by_name = parsed;
        let steps = order
            .into_iter()
            .filter_map(|n| by_name.remove(&n))
            .collect();
        Ok(WorkflowDefinition {
            name,
            steps,
            digest,
            request: self,
        })
    }
}

/// Kahn's algorithm; a cycle is refused naming the steps on it.
fn topological(steps: &BTreeMap<StepName, Step>) -> Result<Vec<StepName>, Invalid> {
    let mut indegree: BTreeMap<&StepName, usize> =
        steps.iter().map(|(n, s)| (n, s.needs.len())).collect();
    let mut ready: BTreeSet<&StepName> = indegree
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(n, _)| *n)
        .collect();
    let mut order = Vec::with_capacity(steps.len());
    while let Some(n) = ready.pop_first() {
        order.push(n.clone());
        for (m, s) in steps {
            if s.needs.contains(n)
                && let Some(d) = indegree.get_mut(m)
            {
                *d -= 1;
                if *d == 0 {
                    ready.insert(m);
                }
            }
        }
    }
    if order.len() == steps.len() {
        return Ok(order);
    }
    let on_cycle: Vec<&str> = indegree
        .iter()
        .filter(|(_, d)| **d > 0)
        .map(|(n, _)| n.as_str())
        .collect();
    Err(Invalid {
        member: "steps".into(),
        reason: format!("the needs form a cycle through {}", on_cycle.join(", ")),
    })
}

/// Every step `name` needs, directly or not.
fn ancestors(steps: &BTreeMap<StepName, Step>, name: &StepName) -> BTreeSet<StepName> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<&StepName> = steps[name].needs.iter().collect();
    while let Some(n) = todo.pop() {
        if seen.insert(n.clone()) {
            todo.extend(steps[n].needs.iter());
        }
    }
    seen
}

/// What has happened to one step of a run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StepState {
    /// Nothing yet.
    #[default]
    Waiting,
    /// Needs approval; asked, not yet answered.
    AwaitingApproval,
    /// Its approval was granted: may be scheduled.
    Approved,
    /// Attempt `attempt` (1-based) runs as a job.
    Running {
        attempt: u32,
    },
    /// Attempt `attempt` failed (retried if the step allows more).
    Failed {
        attempt: u32,
    },
    Succeeded,
    /// Approval denied or timed out.
    Denied,
    /// Not run: a step it needs did not succeed.
    Skipped,
    /// Cancelled with the run.
    Cancelled,
}

impl StepState {
    /// The status clients see.
    pub fn status(&self) -> crate::status::StepStatus {
        use crate::status::StepStatus as S;
        match self {
            StepState::Waiting => S::Waiting,
            StepState::AwaitingApproval => S::AwaitingApproval,
            StepState::Approved => S::Approved,
            StepState::Running { .. } => S::Running,
            StepState::Failed { .. } => S::Failed,
            StepState::Succeeded => S::Succeeded,
            StepState::Denied => S::Denied,
            StepState::Skipped => S::Skipped,
            StepState::Cancelled => S::Cancelled,
        }
    }
}

/// What the scheduler wants done next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Start `step` as a job (attempt number).
    Schedule { step: StepName, attempt: u32 },
    /// Ask for approval before `step` may run.
    RequestApproval { step: StepName },
    /// `step` will not run: `because` did not succeed.
    Skip { step: StepName, because: StepName },
    /// Every step is done; the run succeeded or failed.
    Finish { succeeded: bool },
}

/// The scheduler: from the definition, each step's state and whether each step
/// needs approval (the policy's answer, or the step's own `approval`), what to
/// do next. Pure and total: the same inputs give the same answer, so any
/// orchestrator instance continuing a run decides as the first one would.
pub fn plan(
    def: &WorkflowDefinition,
    states: &BTreeMap<StepName, StepState>,
    needs_approval: &BTreeSet<StepName>,
) -> Vec<Next> {
    let state = |n: &StepName| states.get(n).cloned().unwrap_or_default();
    let mut out = Vec::new();
    // Skips propagate in one pass because steps are in topological order.
    let mut effective: BTreeMap<&StepName, StepState> = BTreeMap::new();
    for step in &def.steps {
        let mut s = state(&step.name);
        let blocked = step.needs.iter().find(|n| {
            matches!(
                effective.get(n),
                Some(StepState::Skipped | StepState::Denied | StepState::Cancelled)
            ) || matches!(effective.get(n), Some(StepState::Failed { attempt }) if !retryable(def, n, *attempt))
        });
        match (&s, blocked) {
            (StepState::Waiting | StepState::AwaitingApproval | StepState::Approved, Some(b)) => {
                out.push(Next::Skip {
                    step: step.name.clone(),
                    because: b.clone(),
                });
                s = StepState::Skipped;
            }
            (StepState::Waiting | StepState::Approved, None) => {
                let ready = step
                    .needs
                    .iter()
                    .all(|n| effective.get(n) == Some(&StepState::Succeeded));
                if ready {
                    if s == StepState::Waiting && needs_approval.contains(&step.name) {
                        out.push(Next::RequestApproval {
                            step: step.name.clone(),
                        });
                    } else {
                        out.push(Next::Schedule {
                            step: step.name.clone(),
                            attempt: 1,
                        });
                    }
                }
            }
            (StepState::Failed { attempt }, _) if retryable(def, &step.name, *attempt) => {
                out.push(Next::Schedule {
                    step: step.name.clone(),
                    attempt: attempt + 1,
                });
            }
            _ => {}
        }
        effective.insert(&step.name, s);
    }
    let done = |s: &StepState| {
        matches!(
            s,
            StepState::Succeeded
                | StepState::Skipped
                | StepState::Denied
                | StepState::Cancelled
                | StepState::Failed { .. }
        )
    };
    // Nothing to schedule or ask (a pending retry is a Schedule) and every step
    // settled: the run is over.
    if out.iter().all(|n| matches!(n, Next::Skip { .. })) && effective.values().all(done) {
        let succeeded = effective.values().all(|s| *s == StepState::Succeeded);
        out.push(Next::Finish { succeeded });
    }
    out
}

fn retryable(def: &WorkflowDefinition, step: &StepName, attempt: u32) -> bool {
    def.step(step).is_some_and(|s| attempt <= s.retries)
}

#[cfg(test)]
mod tests;
