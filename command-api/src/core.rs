//! The control plane's core: the operations on jobs, each decided by the
//! domain (`glassbox_domain::Job::decide`) and recorded through the ledger's
//! one decide loop. [`crate::command`] is the single door to it: HTTP and MCP
//! parse into a `Command`, the dispatcher authorizes it, and only then does a
//! function here run — there is no path around a policy.
//!
//! Submission is one atomic append: `job.submitted`, one `policy.evaluated` per
//! policy consulted (with its input and the bundle digest), a secret decision
//! per named secret, then `job.accepted` or `job.rejected`. Code, stdin, args,
//! the environment and input files (with their paths) are encrypted into the
//! blob store under the job's data key before that append; only keyed digests,
//! sizes and counts enter the ledger.
//!
//! Idempotency: the reply to a keyed submission is always rebuilt from the
//! records the key produced, so a retry — or 50 concurrent copies — get the
//! same reply byte for byte; work done by a losing copy (its data key) is
//! shredded.

use crate::error::ApiError;
use glassbox_domain::catalogue::{self, BlobRef, Decision as Verdict, KnownEvent, Limits};
use glassbox_domain::request::EgressTarget;
use glassbox_domain::status::CancelState;
use glassbox_domain::{Job, JobCommand, JobSpec, JobStatus, Refusal, Stream};
use glassbox_events::store::{AppendRequest, EventStore, NewEvent, StoreError};
use glassbox_events::{Actor, ActorKind, AuthVia, DecideError, Digest, Envelope};
use glassbox_platform::Identity;
use glassbox_platform::blob::{BlobStore, StoredBlob};
use glassbox_policies::{Decision, Policy, PolicyEngine};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sqlx::postgres::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

pub use glassbox_domain::request::{
    DependencyInput, Encoding, FileInput, JobRequest, MAX_ARGS, MAX_DEPENDENCIES, MAX_ENV,
    MAX_FILES, MAX_INTEGER, MAX_SECRETS, SecretInput, SecretMode, SecretSpec,
};

/// Who is asking, and how they proved it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Identity,
    pub via: AuthVia,
    pub request_id: String,
}

impl Caller {
    /// The service itself acting for `tenant` (e.g. the retention timer).
    pub fn system(tenant: &str, who: &str) -> Caller {
        Caller {
            identity: Identity {
                tenant: tenant.to_owned(),
                subject: who.to_owned(),
                app: None,
                agent: None,
                roles: Vec::new(),
            },
            via: AuthVia::Internal,
            request_id: Uuid::new_v4().to_string(),
        }
    }

    pub fn actor(&self) -> Actor {
        Actor {
            kind: if self.via == AuthVia::Internal {
                ActorKind::System
            } else if self.identity.agent.is_some() {
                ActorKind::Agent
            } else {
                ActorKind::User
            },
            id: self.identity.subject.clone(),
            app: self.identity.app.clone(),
            agent: self.identity.agent.clone(),
            via: self.via,
        }
    }

    /// An append of `events` on behalf of this caller (its tenant and actor, the
    /// request ID as correlation) — how everything a request causes is recorded.
    pub(crate) fn append(&self, events: Vec<NewEvent>) -> AppendRequest {
        self.envelope().request(events)
    }

    /// The envelope of everything this caller's request appends.
    pub(crate) fn envelope(&self) -> Envelope {
        let mut e = Envelope::new(self.identity.tenant.clone(), self.actor());
        e.correlation_id = Some(self.request_id.clone());
        e.request_id = Some(self.request_id.clone());
        e
    }

    /// The envelope of a request that may carry an `Idempotency-Key`: the key
    /// and the request's digest are stored with what it appends.
    pub(crate) fn keyed_envelope(&self, key: Option<&String>, digest: Digest) -> Envelope {
        let mut e = self.envelope();
        e.idempotency = key.map(|key| glassbox_events::store::Idempotency {
            key: key.clone(),
            request_digest: digest,
        });
        e
    }
}

// ---------------------------------------------------------------- replies

/// One policy's answer, as shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DecisionView {
    pub policy: String,
    pub decision: Verdict,
    pub reasons: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The reply to a submission, rebuilt from the records it produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Receipt {
    pub job_id: String,
    /// `accepted` or `rejected`.
    pub status: JobStatus,
    pub stream: String,
    /// Position of the first and last record of the submission; pass
    /// `min_position=position` to a read to see this job in the read models.
    pub submitted_position: u64,
    pub position: u64,
    pub decisions: Vec<DecisionView>,
    pub effective_limits: Option<Limits>,
    pub reasons: Vec<String>,
    /// True when the caller's role was refused (authz), not the job (admission).
    #[serde(skip)]
    pub unauthorized: bool,
}

#[derive(Debug, Clone)]
pub struct SubmitReply {
    pub receipt: Receipt,
    /// An identical earlier submission (same idempotency key) answered this.
    pub replayed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CancelReply {
    pub job_id: String,
    pub status: CancelState,
    pub position: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeleteReply {
    pub job_id: String,
    /// Position of the `key.destroyed` record.
    pub position: u64,
}

/// A job's result as stored: the first `execution.finished` and the artifacts
/// stored with that attempt.
#[derive(Debug, Clone)]
pub struct JobResult {
    pub finished: catalogue::ExecutionFinished,
    /// The winning attempt's `artifact.stored`, in index order.
    pub artifacts: Vec<catalogue::ArtifactStored>,
    pub destroyed: bool,
}

/// One file a job left in `/workspace/out`, with its path (decrypted from the
/// attempt's artifact index — the ledger never holds it in clear).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Artifact {
    pub path: String,
    pub size_bytes: u64,
    pub truncated: bool,
    #[serde(skip)]
    #[schemars(skip)]
    pub blob: BlobRef,
}

// ---------------------------------------------------------------- the core

/// Everything the commands need. Cheap to clone.
#[derive(Clone)]
pub struct Core {
    pub store: EventStore,
    pub pool: PgPool,
    pub blobs: BlobStore,
    pub engine: Arc<PolicyEngine>,
    /// The projector's position as last notified (see [`crate::projection_watch`]).
    pub projected: watch::Receiver<u64>,
    /// The ledger's checkpoint verifier key, when GLASSBOX_LEDGER_KEY_FILE is set.
    pub verifier_key: Option<Arc<glassbox_events::VerifierKey>>,
    /// The checkpoint key itself, used only to sign evidence bundle manifests.
    pub signing_key: Option<Arc<glassbox_events::SigningKey>>,
    /// The runners' data-plane API and the hot session state (sessions are
    /// refused without it).
    pub data_plane: Option<Arc<crate::sessions::DataPlane>>,
    /// Per-tenant rates in Redis (service mode counts against it).
    pub limiter: Option<crate::ratelimit::RateLimiter>,
    /// Workflow definitions already read, by digest.
    pub definitions: Arc<crate::workflows::DefinitionCache>,
    /// How long a workflow step's approval may wait before it is denied.
    pub approval_timeout: Duration,
}

pub(crate) fn evaluated(d: &Decision, input: &Value) -> catalogue::PolicyEvaluated {
    catalogue::PolicyEvaluated {
        policy: d.policy.to_owned(),
        decision: if d.allow {
            Verdict::Allow
        } else {
            Verdict::Deny
        },
        reasons: d.reasons.clone(),
        bundle_digest: d.bundle_digest,
        input: input.as_object().cloned().unwrap_or_default(),
        input_digest: d.input_digest,
        error: d.error.clone(),
    }
}

/// The `policy.evaluated` event of a decision.
pub(crate) fn evaluated_event(d: &Decision, input: &Value) -> KnownEvent {
    KnownEvent::PolicyEvaluated(Box::new(evaluated(d, input)))
}

pub(crate) fn identity_input(id: &Identity) -> Value {
    json!({
        "tenant": id.tenant, "subject": id.subject, "roles": id.roles,
        "app": id.app, "agent": id.agent,
    })
}

/// The job's data key and blob prefix are its ID.
pub fn blob_path(job_id: &str, name: &str) -> String {
    format!("jobs/{job_id}/{name}")
}

fn blob_ref(b: StoredBlob) -> BlobRef {
    BlobRef {
        hmac: b.hmac,
        size_bytes: b.size_bytes,
        key: b.key,
    }
}

/// The ledger events of a decision, on `stream`.
pub(crate) fn on_stream(
    stream: &Stream,
    events: Vec<KnownEvent>,
) -> Result<Vec<NewEvent>, Refusal> {
    events
        .iter()
        .map(|e| NewEvent::known(stream.as_str(), e))
        .collect::<Result<_, _>>()
        .map_err(|e| Refusal::Invalid(e.to_string()))
}

/// How a refused or failed job decision reaches the client.
fn decided(job_id: &str, step: &'static str) -> impl FnOnce(DecideError<Refusal>) -> ApiError {
    let job_id = job_id.to_owned();
    move |e| match e {
        DecideError::Refused(Refusal::NoJob) => ApiError::NotFound(format!("job {job_id}")),
        DecideError::Refused(Refusal::Ended(s)) => {
            ApiError::Conflict(format!("job {job_id} is already {s}"))
        }
        DecideError::Refused(Refusal::NotEnded(_)) => {
            ApiError::Conflict(format!("job {job_id} has not finished; cancel it first"))
        }
        DecideError::Refused(r) => ApiError::Conflict(format!("job {job_id}: {r}")),
        DecideError::Contended { .. } => {
            ApiError::Conflict(format!("job {job_id} kept changing; try again"))
        }
        DecideError::Store(StoreError::IdempotencyConflict { .. }) => ApiError::IdempotencyConflict,
        DecideError::Store(s) => ApiError::store(step)(s),
    }
}

/// Requested limits as admission's input: the members that were given.
pub(crate) fn requested_limits<T: Serialize>(limits: &T) -> Map<String, Value> {
    match serde_json::to_value(limits) {
        Ok(Value::Object(m)) => m.into_iter().filter(|(_, v)| !v.is_null()).collect(),
        _ => Map::new(),
    }
}

impl Core {
    /// Admission of a job or a session: `glassbox.admission` on `input`, then
    /// `glassbox.secrets` for each named secret, every decision into `events`.
    /// Returns the reasons it is refused (none: admitted) and the effective
    /// limits the policy granted.
    pub(crate) fn admit<L: serde::de::DeserializeOwned>(
        &self,
        tenant: &str,
        language: &str,
        input: &Value,
        secrets: &[glassbox_domain::request::SecretRequest],
        egress: &[EgressTarget],
        events: &mut Vec<KnownEvent>,
    ) -> (Vec<String>, Option<L>) {
        let admission = self.engine.evaluate(Policy::Admission, input);
        events.push(evaluated_event(&admission, input));
        let mut reasons: Vec<String> = Vec::new();
        if !admission.allow {
            reasons.extend(admission.reasons.iter().cloned());
        }
        self.decide_secrets(tenant, language, secrets, events, &mut reasons);
        self.decide_egress(tenant, egress, events, &mut reasons);
        let effective: Option<L> = admission
            .effective_limits
            .and_then(|m| serde_json::from_value(Value::Object(m)).ok());
        if admission.allow && effective.is_none() {
            reasons.push("the admission policy returned limits this service does not know".into());
        }
        (reasons, effective)
    }

    /// `glassbox.secrets` for each named secret (a job's or a session's):
    /// each decision and its approval or denial go into `events`, a denial's
    /// reasons into `reasons`.
    pub(crate) fn decide_secrets(
        &self,
        tenant: &str,
        language: &str,
        secrets: &[glassbox_domain::request::SecretRequest],
        events: &mut Vec<KnownEvent>,
        reasons: &mut Vec<String>,
    ) {
        for s in secrets {
            let mut input =
                json!({"tenant": tenant, "secret": s.name.as_str(), "language": language});
            if s.mode == glassbox_domain::request::SecretMode::Brokered {
                // Asked only for brokered ones: the input of other decisions
                // stays what it always was.
                input["mode"] = s.mode.as_str().into();
            }
            let d = self.engine.evaluate(Policy::Secrets, &input);
            events.push(evaluated_event(&d, &input));
            if d.allow {
                events.push(KnownEvent::SecretInjectionApproved(Box::new(
                    catalogue::SecretInjectionApproved {
                        name: s.name.to_string(),
                        mode: s.mode.as_str().into(),
                        hosts: d.hosts.clone(),
                    },
                )));
            } else {
                reasons.extend(d.reasons.iter().cloned());
                events.push(KnownEvent::SecretInjectionDenied(Box::new(
                    catalogue::SecretInjectionDenied {
                        name: s.name.to_string(),
                        reasons: d.reasons.clone(),
                    },
                )));
            }
        }
    }

    /// `glassbox.egress` for each destination asked for (a job's or a
    /// session's): every decision into `events`, a denial's reasons into
    /// `reasons` (one denied destination refuses the whole request: fail closed).
    pub(crate) fn decide_egress(
        &self,
        tenant: &str,
        egress: &[EgressTarget],
        events: &mut Vec<KnownEvent>,
        reasons: &mut Vec<String>,
    ) {
        for t in egress {
            let input = json!({"tenant": tenant, "host": t.host, "port": t.port});
            let d = self.engine.evaluate(Policy::Egress, &input);
            events.push(evaluated_event(&d, &input));
            if !d.allow {
                reasons.extend(d.reasons.iter().cloned());
            }
        }
    }

    pub(crate) fn authz_input(caller: &Caller, action: &str, tenant: &str) -> Value {
        json!({
            "identity": identity_input(&caller.identity),
            "action": action,
            "resource": {"tenant": tenant},
        })
    }

    /// Evaluates `glassbox.authz` for `action` on a resource of `tenant`. A deny
    /// is recorded (stream `access-<caller tenant>`) and returned as 403.
    pub async fn authorize(
        &self,
        caller: &Caller,
        action: &str,
        tenant: &str,
    ) -> Result<(), ApiError> {
        let input = Self::authz_input(caller, action, tenant);
        let d = self.engine.evaluate(Policy::Authz, &input);
        if d.allow {
            return Ok(());
        }
        let stream = Stream::access(&caller.identity.tenant);
        let e = NewEvent::typed(stream.as_str(), &evaluated(&d, &input))
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        self.store
            .append(caller.append(vec![e]))
            .await
            .map_err(ApiError::store("record an authorization denial"))?;
        Err(ApiError::Forbidden(d.reasons))
    }

    /// Evaluates `glassbox.authz` without recording (for deciding between 404
    /// and a result; a refusal there is not a decision about the caller's request).
    pub fn authorize_quietly(
        &self,
        caller: &Caller,
        action: &str,
        tenant: &str,
    ) -> Result<(), Vec<String>> {
        let input = Self::authz_input(caller, action, tenant);
        let d = self.engine.evaluate(Policy::Authz, &input);
        if d.allow { Ok(()) } else { Err(d.reasons) }
    }

    /// The positions of the records an earlier request with this
    /// `Idempotency-Key` appended (`None`: no such request); a conflict when
    /// the key was used for another request (another digest).
    pub(crate) async fn earlier_answer(
        &self,
        tenant: &str,
        key: Option<&String>,
        digest: Digest,
    ) -> Result<Option<(u64, u64)>, ApiError> {
        let Some(key) = key else {
            return Ok(None);
        };
        match self
            .store
            .idempotency_lookup(tenant, key)
            .await
            .map_err(ApiError::store("look up the idempotency key"))?
        {
            Some((stored, _, _)) if stored != digest => Err(ApiError::IdempotencyConflict),
            Some((_, first, last)) => Ok(Some((first, last))),
            None => Ok(None),
        }
    }

    /// Submits a job (see the module docs). Its authorization is one of the
    /// decisions recorded with it, in the same append.
    pub async fn submit(
        &self,
        caller: &Caller,
        request: JobRequest,
        idempotency_key: Option<String>,
    ) -> Result<SubmitReply, ApiError> {
        let spec = request
            .parse()
            .map_err(|e| ApiError::Invalid(e.to_string()))?;
        let tenant = caller.identity.tenant.clone();
        let digest = request_digest(&spec.request, &caller.identity);
        if let Some((first, last)) = self
            .earlier_answer(&tenant, idempotency_key.as_ref(), digest)
            .await?
        {
            return Ok(SubmitReply {
                receipt: self.receipt(first, last).await?,
                replayed: true,
            });
        }
        let job_id = Uuid::new_v4().to_string();
        let envelope = caller.keyed_envelope(idempotency_key.as_ref(), digest);
        self.submit_as(caller, spec, idempotency_key, job_id, envelope)
            .await
    }

    /// Records a submission of `spec` as job `job_id` under `envelope` (a
    /// client's submission, or a workflow step's job: its derived ID, the run's
    /// correlation ID). The stream must not exist yet.
    pub(crate) async fn submit_as(
        &self,
        caller: &Caller,
        spec: JobSpec,
        idempotency_key: Option<String>,
        job_id: String,
        envelope: glassbox_events::Envelope,
    ) -> Result<SubmitReply, ApiError> {
        let tenant = caller.identity.tenant.clone();
        let stream = Stream::job(&job_id);
        let authz_input = Self::authz_input(caller, "job.submit", &tenant);
        let authz = self.engine.evaluate(Policy::Authz, &authz_input);
        let mut events: Vec<KnownEvent> = Vec::new();
        let mut created_key = false;
        if !authz.allow {
            // Refused before anything of the caller's is stored.
            events.push(evaluated_event(&authz, &authz_input));
            events.push(KnownEvent::JobRejected(Box::new(catalogue::JobRejected {
                job_id: job_id.clone(),
                reasons: authz.reasons.clone(),
            })));
        } else {
            created_key = true;
            let submitted = match self.store_inputs(&job_id, &tenant, &spec).await {
                Ok(s) => s,
                Err(e) => {
                    self.shred(&job_id).await;
                    return Err(e);
                }
            };
            let submitted = catalogue::JobSubmitted {
                idempotency_key: idempotency_key.clone(),
                ..submitted
            };
            let limits_in = requested_limits(&spec.limits);
            let admission_input = json!({
                "tenant": tenant,
                "language": spec.language.as_str(),
                "limits": limits_in,
                "dependencies": submitted.dependencies,
                "secrets": submitted.secrets,
            });
            events.push(KnownEvent::JobSubmitted(Box::new(submitted)));
            events.push(evaluated_event(&authz, &authz_input));
            let (reasons, effective) = self.admit::<Limits>(
                &tenant,
                spec.language.as_str(),
                &admission_input,
                &spec.secrets,
                &spec.egress,
                &mut events,
            );
            events.push(match (reasons.is_empty(), effective) {
                (true, Some(effective_limits)) => {
                    KnownEvent::JobAccepted(Box::new(catalogue::JobAccepted {
                        job_id: job_id.clone(),
                        effective_limits,
                    }))
                }
                _ => KnownEvent::JobRejected(Box::new(catalogue::JobRejected {
                    job_id: job_id.clone(),
                    reasons,
                })),
            });
        }
        let command = JobCommand::Submit { events };
        let outcome = self
            .store
            .decide_from(stream.as_str(), Job::default(), &envelope, |j: &Job| {
                on_stream(&stream, j.decide(command.clone())?)
            })
            .await;
        match outcome {
            Ok(d) => {
                let o = d
                    .appended
                    .ok_or_else(|| ApiError::Internal("the submission appended nothing".into()))?;
                if o.replayed && created_key {
                    // Another copy of this request won; our blobs are unreferenced.
                    self.shred(&job_id).await;
                }
                Ok(SubmitReply {
                    receipt: self.receipt(o.first_position(), o.last_position()).await?,
                    replayed: o.replayed,
                })
            }
            Err(e) => {
                if created_key {
                    self.shred(&job_id).await;
                }
                Err(decided(&job_id, "append the submission")(e))
            }
        }
    }

    async fn shred(&self, job_id: &str) {
        if let Err(e) = self.blobs.destroy_key(job_id).await {
            tracing::warn!(job_id, error = %e, "could not destroy an unused data key");
        }
    }

    async fn store_inputs(
        &self,
        job_id: &str,
        tenant: &str,
        r: &JobSpec,
    ) -> Result<catalogue::JobSubmitted, ApiError> {
        let blob_err = |e: glassbox_platform::blob::BlobError| ApiError::Internal(e.to_string());
        self.blobs
            .create_data_key(job_id, tenant)
            .await
            .map_err(blob_err)?;
        let put = |name: String, bytes: Vec<u8>| async move {
            self.blobs
                .put(job_id, &blob_path(job_id, &name), &bytes)
                .await
                .map(blob_ref)
                .map_err(blob_err)
        };
        let json = |v: Value| serde_json::to_vec(&v).map_err(|e| ApiError::Internal(e.to_string()));
        let code = put("code".into(), r.code.clone().into_bytes()).await?;
        let stdin = match &r.stdin {
            Some(s) => Some(put("stdin".into(), s.clone().into_bytes()).await?),
            None => None,
        };
        let args = if r.args.is_empty() {
            None
        } else {
            Some(put("args".into(), json(json!(r.args))?).await?)
        };
        let env = if r.env.is_empty() {
            None
        } else {
            Some(put("env".into(), json(json!(r.env))?).await?)
        };
        let mut files = Vec::with_capacity(r.files.len());
        for (i, f) in r.files.iter().enumerate() {
            files.push(put(format!("files/{i}"), f.content.clone()).await?);
        }
        let file_paths = if r.files.is_empty() {
            None
        } else {
            let paths: Vec<&str> = r.files.iter().map(|f| f.path.as_str()).collect();
            Some(put("file_paths".into(), json(json!(paths))?).await?)
        };
        Ok(catalogue::JobSubmitted {
            job_id: job_id.to_owned(),
            language: r.language.to_string(),
            code,
            stdin,
            args,
            arg_count: r.args.len() as u64,
            env,
            env_count: r.env.len() as u64,
            files,
            file_paths,
            dependencies: r.dependencies.iter().map(|d| d.dependency()).collect(),
            secrets: r.secrets.iter().map(|s| s.name.to_string()).collect(),
            limits: r.limits.clone(),
            idempotency_key: None,
            egress: r.egress.iter().map(ToString::to_string).collect(),
        })
    }

    /// Rebuilds a submission's reply from its records.
    pub async fn receipt(&self, first: u64, last: u64) -> Result<Receipt, ApiError> {
        let records = self
            .store
            .read_all(first, last.saturating_sub(first) + 1)
            .await
            .map_err(ApiError::store("read the submission"))?;
        let mut r = Receipt {
            job_id: String::new(),
            status: JobStatus::Submitted,
            stream: String::new(),
            submitted_position: first,
            position: last,
            decisions: Vec::new(),
            effective_limits: None,
            reasons: Vec::new(),
            unauthorized: false,
        };
        for s in records.iter().filter(|s| s.record.position <= last) {
            r.stream.clone_from(&s.record.stream);
            match KnownEvent::decode(&s.record.event_type, &s.record.data) {
                Ok(Some(KnownEvent::PolicyEvaluated(e))) => {
                    if e.policy == Policy::Authz.name() && e.decision == Verdict::Deny {
                        r.unauthorized = true;
                    }
                    r.decisions.push(DecisionView {
                        policy: e.policy,
                        decision: e.decision,
                        reasons: e.reasons,
                        error: e.error,
                    });
                }
                Ok(Some(KnownEvent::JobAccepted(e))) => {
                    r.job_id = e.job_id;
                    r.status = JobStatus::Accepted;
                    r.effective_limits = Some(e.effective_limits);
                }
                Ok(Some(KnownEvent::JobRejected(e))) => {
                    r.job_id = e.job_id;
                    r.status = JobStatus::Rejected;
                    r.reasons = e.reasons;
                }
                _ => {}
            }
        }
        if r.status == JobStatus::Submitted {
            return Err(ApiError::Internal(format!(
                "records {first}..={last} are not a job submission"
            )));
        }
        Ok(r)
    }

    /// Waits until the read models include `position`: a 409 for a position the
    /// ledger has not reached (no answer can be that fresh yet), a 503 when the
    /// projection does not get there within `timeout`.
    pub async fn await_projection(&self, position: u64, timeout: Duration) -> Result<(), ApiError> {
        if *self.projected.borrow() >= position {
            return Ok(());
        }
        let (head, _) = self
            .store
            .head()
            .await
            .map_err(ApiError::store("read the ledger head"))?;
        if position > head {
            return Err(ApiError::Conflict(format!(
                "min_position: {position} is beyond the ledger head ({head})"
            )));
        }
        let mut rx = self.projected.clone();
        let wait = rx.wait_for(|p| *p >= position);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ApiError::Unavailable(format!(
                "the read models have not reached position {position} yet"
            ))),
        }
    }

    /// The job's ledger records, if the job exists and belongs to `tenant`.
    pub async fn job_records(
        &self,
        tenant: &str,
        job_id: &str,
    ) -> Result<Vec<glassbox_events::store::StoredRecord>, ApiError> {
        if Uuid::parse_str(job_id).is_err() {
            return Err(ApiError::NotFound(format!("job {job_id}")));
        }
        let records = self
            .store
            .read_stream(Stream::job(job_id).as_str(), 1, 10_000)
            .await
            .map_err(ApiError::store("read the job's stream"))?;
        // 404, not 403: another tenant's job does not exist for this caller.
        if records.is_empty() || records.iter().any(|r| r.record.tenant != tenant) {
            return Err(ApiError::NotFound(format!("job {job_id}")));
        }
        Ok(records)
    }

    /// The job folded from its stream, if it exists and belongs to `tenant`.
    pub async fn job(&self, tenant: &str, job_id: &str) -> Result<Job, ApiError> {
        if Uuid::parse_str(job_id).is_err() {
            return Err(ApiError::NotFound(format!("job {job_id}")));
        }
        let job: Job = self
            .store
            .load(Stream::job(job_id).as_str())
            .await
            .map_err(ApiError::store("read the job's stream"))?;
        // 404, not 403: another tenant's job does not exist for this caller.
        if job.version == 0 || job.tenant != tenant {
            return Err(ApiError::NotFound(format!("job {job_id}")));
        }
        Ok(job)
    }

    /// Asks for a job to be cancelled (`Job::decide` says how: at once when no
    /// runner has claimed it, else a request its runner acts on; asking again
    /// answers with the first request).
    pub async fn cancel(
        &self,
        caller: &Caller,
        job_id: &str,
        reason: Option<String>,
    ) -> Result<CancelReply, ApiError> {
        let job = self.job(&caller.identity.tenant, job_id).await?;
        let stream = Stream::job(job_id);
        let d = self
            .store
            .decide_from(stream.as_str(), job, &caller.envelope(), |j: &Job| {
                on_stream(
                    &stream,
                    j.decide(JobCommand::Cancel {
                        reason: reason.clone(),
                    })?,
                )
            })
            .await
            .map_err(decided(job_id, "append the cancellation"))?;
        let s = d.state;
        Ok(CancelReply {
            job_id: job_id.to_owned(),
            status: if s.cancelled.is_some() {
                CancelState::Cancelled
            } else {
                CancelState::CancelRequested
            },
            position: s.cancel_requested.unwrap_or(0),
        })
    }

    /// The job's recorded result (409 while it has none).
    pub async fn result(&self, tenant: &str, job_id: &str) -> Result<JobResult, ApiError> {
        let job = self.job(tenant, job_id).await?;
        let finished = job
            .finished
            .clone()
            .ok_or_else(|| ApiError::Conflict(format!("job {job_id} has not finished")))?;
        let mut artifacts: Vec<_> = job
            .artifacts
            .iter()
            .filter(|a| a.attempt == finished.attempt)
            .cloned()
            .collect();
        artifacts.sort_by_key(|a| a.index);
        Ok(JobResult {
            finished,
            artifacts,
            destroyed: job.destroyed.is_some(),
        })
    }

    /// The artifacts of a result with their paths (410 once the data was destroyed).
    pub async fn artifacts(&self, job_id: &str, r: &JobResult) -> Result<Vec<Artifact>, ApiError> {
        if r.destroyed {
            return Err(ApiError::Gone(format!(
                "the data of job {job_id} was destroyed"
            )));
        }
        let Some(index) = &r.finished.artifact_index else {
            return Ok(Vec::new());
        };
        let paths: Vec<String> = serde_json::from_slice(&self.read_blob(job_id, index).await?)
            .map_err(|e| ApiError::Internal(format!("artifact index of job {job_id}: {e}")))?;
        Ok(r.artifacts
            .iter()
            .filter_map(|a| {
                paths.get(a.index as usize).map(|p| Artifact {
                    path: p.clone(),
                    size_bytes: a.blob.size_bytes,
                    truncated: a.truncated,
                    blob: a.blob.clone(),
                })
            })
            .collect())
    }

    /// Decrypts one of the job's blobs (410 once its data key is destroyed).
    pub async fn read_blob(&self, job_id: &str, blob: &BlobRef) -> Result<Vec<u8>, ApiError> {
        match self.blobs.get_checked(job_id, &blob.key, &blob.hmac).await {
            Ok(b) => Ok(b),
            Err(glassbox_platform::blob::BlobError::KeyDestroyed { .. }) => Err(ApiError::Gone(
                format!("the data of job {job_id} was destroyed"),
            )),
            Err(e) => Err(ApiError::Internal(e.to_string())),
        }
    }

    /// Crypto-shreds the data of jobs that finished more than `retention` ago.
    /// Returns how many were shredded.
    pub async fn enforce_retention(&self, retention: Duration) -> Result<usize, ApiError> {
        let due =
            glassbox_projector::queries::jobs_past_retention(&self.pool, retention.as_secs(), 500)
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut n = 0;
        for (job, tenant) in due {
            let caller = Caller::system(&tenant, "retention");
            let reason = format!("retention period of {} s elapsed", retention.as_secs());
            match self.delete_data(&caller, &job, reason).await {
                Ok(_) => n += 1,
                Err(e) => tracing::warn!(job, error = %e, "retention: could not shred"),
            }
        }
        Ok(n)
    }

    /// Crypto-shreds a finished job's data: appends `key.destroyed`, then
    /// destroys the job's data key and deletes its blobs, after which its code,
    /// inputs, output and artifacts are gone (410) while the ledger still
    /// verifies. Recorded first, so a destruction is never unrecorded; asking
    /// again re-attempts the destruction and answers with the first record.
    pub async fn delete_data(
        &self,
        caller: &Caller,
        job_id: &str,
        reason: String,
    ) -> Result<DeleteReply, ApiError> {
        let job = self.job(&caller.identity.tenant, job_id).await?;
        let stream = Stream::job(job_id);
        let d = self
            .store
            .decide_from(stream.as_str(), job, &caller.envelope(), |j: &Job| {
                on_stream(
                    &stream,
                    j.decide(JobCommand::Shred {
                        reason: reason.clone(),
                    })?,
                )
            })
            .await
            .map_err(decided(job_id, "record the key destruction"))?;
        let position = d.state.destroyed.unwrap_or(0);
        self.blobs
            .destroy_key(job_id)
            .await
            .map_err(|e| ApiError::Internal(format!("destroy data key of {job_id}: {e}")))?;
        // The ciphertext is unreadable now; remove it too, so nothing of
        // the job's data is left anywhere (its names say nothing either).
        self.blobs
            .delete_prefix(&blob_path(job_id, ""))
            .await
            .map_err(|e| ApiError::Internal(format!("delete blobs of {job_id}: {e}")))?;
        Ok(DeleteReply {
            job_id: job_id.to_owned(),
            position,
        })
    }
}

/// What the ledger's idempotency check compares: the request and who made it.
pub fn request_digest(request: &JobRequest, identity: &Identity) -> Digest {
    let bytes = serde_json::to_vec(&(&identity.subject, request)).unwrap_or_default();
    Digest::of(&bytes)
}
