//! The control plane's core: what a caller may ask ([`Command`]) and how each is
//! decided and recorded. HTTP (and MCP) only parse into these commands and render
//! their replies, so both transports pass the same checks and leave the same
//! events — there is no path around a policy.
//!
//! Submission is one atomic append: `job.submitted`, one `policy.evaluated` per
//! policy consulted (with its input and the bundle digest), a secret decision
//! per named secret, then `job.accepted` or `job.rejected`. Code, stdin, env
//! values and files are encrypted into the blob store under the job's data key
//! before that append; only their digests enter the ledger.
//!
//! Idempotency: the reply to a keyed submission is always rebuilt from the
//! records the key produced, so a retry — or 50 concurrent copies — get the
//! same reply byte for byte; work done by a losing copy (its data key) is
//! shredded.

use crate::error::ApiError;
use glassbox_events::catalogue::{
    self, BlobRef, Decision as Verdict, Event as _, KnownEvent, Limits,
};
use glassbox_events::store::{AppendRequest, EventStore, ExpectedVersion, NewEvent, StoreError};
use glassbox_events::{Actor, ActorKind, AuthVia, Digest};
use glassbox_platform::Identity;
use glassbox_platform::blob::{BlobStore, StoredBlob};
use glassbox_policies::{Decision, Policy, PolicyEngine};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sqlx::postgres::PgPool;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

/// Largest integer the ledger stores exactly (2^53 - 1).
pub const MAX_INTEGER: u64 = 9_007_199_254_740_991;
pub const MAX_FILES: usize = 64;
pub const MAX_ARGS: usize = 256;
pub const MAX_ENV: usize = 128;
pub const MAX_DEPENDENCIES: usize = 64;
pub const MAX_SECRETS: usize = 32;

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
        let mut r = AppendRequest::new(self.identity.tenant.clone(), self.actor(), events);
        r.correlation_id = self.request_id.clone();
        r.request_id = Some(self.request_id.clone());
        r
    }
}

// ---------------------------------------------------------------- requests

/// `POST /v1/jobs` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub language: String,
    pub code: String,
    #[serde(default)]
    pub stdin: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub files: Vec<FileInput>,
    #[serde(default)]
    pub dependencies: Vec<DependencyInput>,
    #[serde(default)]
    pub secrets: Vec<SecretInput>,
    #[serde(default)]
    pub limits: Limits,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileInput {
    /// Relative path under `/workspace`.
    pub path: String,
    pub content: String,
    #[serde(default)]
    pub encoding: Encoding,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Utf8,
    Base64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DependencyInput {
    #[serde(default = "pypi")]
    pub ecosystem: String,
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
}

fn pypi() -> String {
    "pypi".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SecretInput {
    Name(String),
    Spec(SecretSpec),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSpec {
    pub name: String,
    #[serde(default)]
    pub mode: SecretMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretMode {
    #[default]
    Env,
    File,
}

impl SecretInput {
    fn name(&self) -> &str {
        match self {
            SecretInput::Name(n) => n,
            SecretInput::Spec(s) => &s.name,
        }
    }
    fn mode(&self) -> SecretMode {
        match self {
            SecretInput::Name(_) => SecretMode::Env,
            SecretInput::Spec(s) => s.mode,
        }
    }
}

fn is_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && matches!(b, b'-' | b'.'))
        })
}

fn env_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.as_bytes()[0].is_ascii_digit()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Why an input file may not be at `path` (a safe relative path): the places
/// the runner itself writes — the program (`main`, `main.<ext>`), the output
/// directory `out/`, secrets (`.secrets/`), dependency installs (`.deps/`) and
/// its own files (`.glassbox/`).
pub fn reserved_path(path: &str) -> Option<String> {
    let top = path.split('/').next().unwrap_or(path);
    let reserved = matches!(top, "out" | ".secrets" | ".deps" | ".glassbox")
        || (path == top && (top == "main" || top.starts_with("main.")));
    reserved.then(|| format!("{top} is reserved for the runner"))
}

/// A safe relative path: no `..`, no absolute path, no empty or odd components.
pub fn workspace_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 255
        && !p.starts_with('/')
        && p.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && !c.chars().any(|ch| ch.is_control() || ch == '\\')
        })
}

impl JobRequest {
    /// Checks everything the policies do not: shapes the rest of the system
    /// relies on. Each refusal names the member.
    pub fn validate(&self) -> Result<(), ApiError> {
        let bad = |m: String| Err(ApiError::Invalid(m));
        if !is_name(&self.language, 32) {
            return bad("language: 1-32 letters, digits, '_', '-' or '.'".into());
        }
        if self.code.is_empty() {
            return bad("code: must not be empty".into());
        }
        if self.args.len() > MAX_ARGS {
            return bad(format!("args: at most {MAX_ARGS}"));
        }
        if let Some(i) = self.args.iter().position(|a| a.contains('\0')) {
            return bad(format!("args[{i}]: contains a NUL character"));
        }
        if self.env.len() > MAX_ENV {
            return bad(format!("env: at most {MAX_ENV} variables"));
        }
        for (k, v) in &self.env {
            if !env_name(k) {
                return bad(format!(
                    "env: {k:?} is not a variable name (letters, digits, '_')"
                ));
            }
            if k.starts_with("GLASSBOX_") {
                return bad(format!("env: {k} is reserved"));
            }
            if v.contains('\0') {
                return bad(format!("env.{k}: contains a NUL character"));
            }
        }
        if self.files.len() > MAX_FILES {
            return bad(format!("files: at most {MAX_FILES}"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, f) in self.files.iter().enumerate() {
            if !workspace_path(&f.path) {
                return bad(format!(
                    "files[{i}].path: must be a relative path without '..' or empty components"
                ));
            }
            if let Some(why) = reserved_path(&f.path) {
                return bad(format!("files[{i}].path: {why}"));
            }
            if !seen.insert(f.path.as_str()) {
                return bad(format!("files[{i}].path: {} appears twice", f.path));
            }
        }
        // A path cannot be both a file and a directory of another file.
        for (i, f) in self.files.iter().enumerate() {
            let mut dir = f.path.as_str();
            while let Some((parent, _)) = dir.rsplit_once('/') {
                if seen.contains(parent) {
                    return bad(format!(
                        "files[{i}].path: {parent} is a file, so it cannot be a directory"
                    ));
                }
                dir = parent;
            }
        }
        for (i, f) in self.files.iter().enumerate() {
            if f.encoding == Encoding::Base64 && f.decoded().is_err() {
                return bad(format!("files[{i}].content: not valid base64"));
            }
        }
        if self.dependencies.len() > MAX_DEPENDENCIES {
            return bad(format!("dependencies: at most {MAX_DEPENDENCIES}"));
        }
        for (i, d) in self.dependencies.iter().enumerate() {
            if !is_name(&d.ecosystem, 32) {
                return bad(format!("dependencies[{i}].ecosystem: not a name"));
            }
            if !is_name(&d.name, 128) {
                return bad(format!("dependencies[{i}].name: not a package name"));
            }
            if let Some(v) = &d.version
                && (v.is_empty()
                    || v.len() > 64
                    || !v.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+' | b'!')
                    }))
            {
                return bad(format!("dependencies[{i}].version: not a version"));
            }
        }
        if self.secrets.len() > MAX_SECRETS {
            return bad(format!("secrets: at most {MAX_SECRETS}"));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, s) in self.secrets.iter().enumerate() {
            if !env_name(s.name()) {
                return bad(format!(
                    "secrets[{i}]: not a secret name (letters, digits, '_')"
                ));
            }
            if !names.insert(s.name()) {
                return bad(format!("secrets[{i}]: {} appears twice", s.name()));
            }
        }
        self.limits.check_floor().map_err(ApiError::Invalid)?;
        let limits = serde_json::to_value(&self.limits).unwrap_or(Value::Null);
        if let Value::Object(m) = limits {
            for (k, v) in m {
                if let Some(n) = v.as_u64()
                    && (n == 0 || n > MAX_INTEGER)
                {
                    return bad(format!("limits.{k}: must be between 1 and {MAX_INTEGER}"));
                }
            }
        }
        Ok(())
    }

    /// What the ledger's idempotency check compares: the request and who made it.
    pub fn digest(&self, identity: &Identity) -> Digest {
        let bytes = serde_json::to_vec(&(&identity.subject, self)).unwrap_or_default();
        Digest::of(&bytes)
    }
}

impl FileInput {
    fn decoded(&self) -> Result<Vec<u8>, base64::DecodeError> {
        use base64::Engine as _;
        match self.encoding {
            Encoding::Utf8 => Ok(self.content.as_bytes().to_vec()),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD.decode(&self.content),
        }
    }
}

// ---------------------------------------------------------------- replies

/// One policy's answer, as shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionView {
    pub policy: String,
    pub decision: Verdict,
    pub reasons: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The reply to a submission, rebuilt from the records it produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub job_id: String,
    /// `accepted` or `rejected`.
    pub status: String,
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
}

fn typed<E: catalogue::Event>(stream: &str, e: &E) -> Result<NewEvent, ApiError> {
    NewEvent::typed(stream, e).map_err(|e| ApiError::Internal(e.to_string()))
}

fn evaluated(d: &Decision, input: &Value) -> catalogue::PolicyEvaluated {
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

fn identity_input(id: &Identity) -> Value {
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

impl Core {
    /// Evaluates `glassbox.authz` for `action` on a resource of `tenant`. A deny
    /// is recorded (stream `access-<caller tenant>`) and returned as 403.
    pub async fn authorize(
        &self,
        caller: &Caller,
        action: &str,
        tenant: &str,
    ) -> Result<(), ApiError> {
        let input = json!({
            "identity": identity_input(&caller.identity),
            "action": action,
            "resource": {"tenant": tenant},
        });
        let d = self.engine.evaluate(Policy::Authz, &input);
        if d.allow {
            return Ok(());
        }
        let stream = format!("access-{}", caller.identity.tenant);
        let e = typed(&stream, &evaluated(&d, &input))?;
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
        let input = json!({
            "identity": identity_input(&caller.identity),
            "action": action,
            "resource": {"tenant": tenant},
        });
        let d = self.engine.evaluate(Policy::Authz, &input);
        if d.allow { Ok(()) } else { Err(d.reasons) }
    }

    /// Submits a job (see the module docs).
    pub async fn submit(
        &self,
        caller: &Caller,
        request: JobRequest,
        idempotency_key: Option<String>,
    ) -> Result<SubmitReply, ApiError> {
        request.validate()?;
        let tenant = caller.identity.tenant.clone();
        let digest = request.digest(&caller.identity);
        if let Some(key) = &idempotency_key
            && let Some((stored, first, last)) =
                self.store
                    .idempotency_lookup(&tenant, key)
                    .await
                    .map_err(ApiError::store("look up the idempotency key"))?
        {
            if stored != digest {
                return Err(ApiError::IdempotencyConflict);
            }
            return Ok(SubmitReply {
                receipt: self.receipt(first, last).await?,
                replayed: true,
            });
        }

        let job_id = Uuid::new_v4().to_string();
        let stream = format!("job-{job_id}");
        let authz_input = json!({
            "identity": identity_input(&caller.identity),
            "action": "job.submit",
            "resource": {"tenant": tenant},
        });
        let authz = self.engine.evaluate(Policy::Authz, &authz_input);
        let mut events = Vec::new();
        let mut created_key = false;
        if !authz.allow {
            // Refused before anything of the caller's is stored.
            events.push(typed(&stream, &evaluated(&authz, &authz_input))?);
            events.push(typed(
                &stream,
                &catalogue::JobRejected {
                    job_id: job_id.clone(),
                    reasons: authz.reasons.clone(),
                },
            )?);
        } else {
            created_key = true;
            let submitted = match self.store_inputs(&job_id, &tenant, &request).await {
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
            events.push(typed(&stream, &submitted)?);
            events.push(typed(&stream, &evaluated(&authz, &authz_input))?);
            let limits_in: Map<String, Value> = match serde_json::to_value(&request.limits) {
                Ok(Value::Object(m)) => m.into_iter().filter(|(_, v)| !v.is_null()).collect(),
                _ => Map::new(),
            };
            let admission_input = json!({
                "tenant": tenant,
                "language": request.language,
                "limits": limits_in,
                "dependencies": submitted.dependencies,
                "secrets": submitted.secrets,
            });
            let admission = self.engine.evaluate(Policy::Admission, &admission_input);
            events.push(typed(&stream, &evaluated(&admission, &admission_input))?);
            let mut reasons: Vec<String> = Vec::new();
            if !admission.allow {
                reasons.extend(admission.reasons.iter().cloned());
            }
            for s in &request.secrets {
                let input = json!({
                    "tenant": tenant, "secret": s.name(), "language": request.language,
                });
                let d = self.engine.evaluate(Policy::Secrets, &input);
                events.push(typed(&stream, &evaluated(&d, &input))?);
                if d.allow {
                    events.push(typed(
                        &stream,
                        &catalogue::SecretInjectionApproved {
                            name: s.name().to_owned(),
                            mode: match s.mode() {
                                SecretMode::Env => "env".into(),
                                SecretMode::File => "file".into(),
                            },
                        },
                    )?);
                } else {
                    reasons.extend(d.reasons.iter().cloned());
                    events.push(typed(
                        &stream,
                        &catalogue::SecretInjectionDenied {
                            name: s.name().to_owned(),
                            reasons: d.reasons.clone(),
                        },
                    )?);
                }
            }
            let effective: Option<Limits> = admission
                .effective_limits
                .clone()
                .and_then(|m| serde_json::from_value(Value::Object(m)).ok());
            if admission.allow && effective.is_none() {
                reasons
                    .push("the admission policy returned limits this service does not know".into());
            }
            match (reasons.is_empty(), effective) {
                (true, Some(effective_limits)) => events.push(typed(
                    &stream,
                    &catalogue::JobAccepted {
                        job_id: job_id.clone(),
                        effective_limits,
                    },
                )?),
                _ => events.push(typed(
                    &stream,
                    &catalogue::JobRejected {
                        job_id: job_id.clone(),
                        reasons,
                    },
                )?),
            }
        }
        let mut req = caller
            .append(events)
            .expect(stream.clone(), ExpectedVersion::NoStream);
        if let Some(key) = &idempotency_key {
            req = req.idempotent(key.clone(), digest);
        }
        let outcome = self.store.append(req).await;
        match outcome {
            Ok(o) => {
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
                Err(match e {
                    StoreError::IdempotencyConflict { .. } => ApiError::IdempotencyConflict,
                    other => ApiError::store("append the submission")(other),
                })
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
        r: &JobRequest,
    ) -> Result<catalogue::JobSubmitted, ApiError> {
        let blob_err = |e: glassbox_platform::blob::BlobError| ApiError::Internal(e.to_string());
        self.blobs
            .create_data_key(job_id, tenant)
            .await
            .map_err(blob_err)?;
        let code = self
            .blobs
            .put(job_id, &blob_path(job_id, "code"), r.code.as_bytes())
            .await
            .map_err(blob_err)?;
        let stdin = match &r.stdin {
            Some(s) => Some(blob_ref(
                self.blobs
                    .put(job_id, &blob_path(job_id, "stdin"), s.as_bytes())
                    .await
                    .map_err(blob_err)?,
            )),
            None => None,
        };
        let json_blob = |name: &'static str, v: Value| async move {
            let bytes = serde_json::to_vec(&v).map_err(|e| ApiError::Internal(e.to_string()))?;
            self.blobs
                .put(job_id, &blob_path(job_id, name), &bytes)
                .await
                .map(blob_ref)
                .map_err(blob_err)
        };
        let args = if r.args.is_empty() {
            None
        } else {
            Some(json_blob("args", json!(r.args)).await?)
        };
        let env = if r.env.is_empty() {
            None
        } else {
            Some(json_blob("env", json!(r.env)).await?)
        };
        let mut files = Vec::with_capacity(r.files.len());
        for (i, f) in r.files.iter().enumerate() {
            let bytes = f
                .decoded()
                .map_err(|_| ApiError::Invalid(format!("files[{i}].content: not valid base64")))?;
            let b = self
                .blobs
                .put(job_id, &blob_path(job_id, &format!("files/{i}")), &bytes)
                .await
                .map_err(blob_err)?;
            files.push(blob_ref(b));
        }
        let file_paths = if r.files.is_empty() {
            None
        } else {
            let paths: Vec<&str> = r.files.iter().map(|f| f.path.as_str()).collect();
            Some(json_blob("file_paths", json!(paths)).await?)
        };
        Ok(catalogue::JobSubmitted {
            job_id: job_id.to_owned(),
            language: r.language.clone(),
            code: blob_ref(code),
            stdin,
            args,
            arg_count: r.args.len() as u64,
            env,
            env_count: r.env.len() as u64,
            files,
            file_paths,
            dependencies: r
                .dependencies
                .iter()
                .map(|d| catalogue::Dependency {
                    ecosystem: d.ecosystem.clone(),
                    name: d.name.clone(),
                    version: d.version.clone(),
                })
                .collect(),
            secrets: r.secrets.iter().map(|s| s.name().to_owned()).collect(),
            limits: r.limits.clone(),
            idempotency_key: None,
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
            status: String::new(),
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
                    r.status = "accepted".into();
                    r.effective_limits = Some(e.effective_limits);
                }
                Ok(Some(KnownEvent::JobRejected(e))) => {
                    r.job_id = e.job_id;
                    r.status = "rejected".into();
                    r.reasons = e.reasons;
                }
                _ => {}
            }
        }
        if r.status.is_empty() {
            return Err(ApiError::Internal(format!(
                "records {first}..={last} are not a job submission"
            )));
        }
        Ok(r)
    }

    /// Waits until the read models include `position`: a 400 for a position the
    /// ledger has not reached (it cannot come from this ledger), a 503 when the
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
            return Err(ApiError::Invalid(format!(
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
            .read_stream(&format!("job-{job_id}"), 1, 10_000)
            .await
            .map_err(ApiError::store("read the job's stream"))?;
        // 404, not 403: another tenant's job does not exist for this caller.
        if records.is_empty() || records.iter().any(|r| r.record.tenant != tenant) {
            return Err(ApiError::NotFound(format!("job {job_id}")));
        }
        Ok(records)
    }

    /// Asks for a job to be cancelled. A job no runner has claimed yet is
    /// cancelled at once (`job.cancel_requested` + `job.cancelled`, appended at
    /// the stream version read, so a racing claim and the cancel cannot both win);
    /// a claimed job gets `job.cancel_requested`, which its runner acts on.
    pub async fn cancel(
        &self,
        caller: &Caller,
        job_id: &str,
        reason: Option<String>,
    ) -> Result<CancelReply, ApiError> {
        for _ in 0..5 {
            let records = self.job_records(&caller.identity.tenant, job_id).await?;
            let version = records.last().map_or(0, |r| r.record.stream_version);
            let mut state = "submitted";
            let mut claimed = false;
            let mut requested_at = None;
            for r in &records {
                match r.record.event_type.as_str() {
                    t if t == catalogue::JobAccepted::TYPE => state = "accepted",
                    t if t == catalogue::JobRejected::TYPE => state = "rejected",
                    t if t == catalogue::JobCompleted::TYPE => state = "completed",
                    t if t == catalogue::JobFailed::TYPE => state = "failed",
                    t if t == catalogue::JobCancelled::TYPE => {
                        state = "cancelled";
                        requested_at.get_or_insert(r.record.position);
                    }
                    t if t == catalogue::ExecutionClaimed::TYPE => claimed = true,
                    t if t == catalogue::JobCancelRequested::TYPE => {
                        requested_at.get_or_insert(r.record.position);
                    }
                    _ => {}
                }
            }
            if let Some(position) = requested_at {
                // Asking twice is not an error: the first request stands.
                return Ok(CancelReply {
                    job_id: job_id.to_owned(),
                    status: if state == "cancelled" {
                        "cancelled"
                    } else {
                        "cancel_requested"
                    }
                    .into(),
                    position,
                });
            }
            if matches!(state, "rejected" | "completed" | "failed") {
                return Err(ApiError::Conflict(format!(
                    "job {job_id} is already {state}"
                )));
            }
            let stream = format!("job-{job_id}");
            let mut events = vec![typed(
                &stream,
                &catalogue::JobCancelRequested {
                    job_id: job_id.to_owned(),
                    reason: reason.clone(),
                },
            )?];
            if !claimed {
                events.push(typed(
                    &stream,
                    &catalogue::JobCancelled {
                        job_id: job_id.to_owned(),
                        reason: reason.clone(),
                    },
                )?);
            }
            let req = caller
                .append(events)
                .expect(stream, ExpectedVersion::Exactly(version));
            match self.store.append(req).await {
                Ok(o) => {
                    return Ok(CancelReply {
                        job_id: job_id.to_owned(),
                        status: if claimed {
                            "cancel_requested"
                        } else {
                            "cancelled"
                        }
                        .into(),
                        position: o.first_position(),
                    });
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(ApiError::store("append the cancellation")(e)),
            }
        }
        Err(ApiError::Conflict(format!(
            "job {job_id} kept changing; try again"
        )))
    }
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Artifact {
    pub path: String,
    pub size_bytes: u64,
    pub truncated: bool,
    #[serde(skip)]
    pub blob: BlobRef,
}

impl Core {
    /// The job's recorded result (409 while it has none).
    pub async fn result(&self, tenant: &str, job_id: &str) -> Result<JobResult, ApiError> {
        let records = self.job_records(tenant, job_id).await?;
        let mut finished: Option<catalogue::ExecutionFinished> = None;
        let mut artifacts = Vec::new();
        let mut destroyed = false;
        for r in &records {
            match KnownEvent::decode(&r.record.event_type, &r.record.data) {
                Ok(Some(KnownEvent::ExecutionFinished(e))) if finished.is_none() => {
                    finished = Some(*e);
                }
                Ok(Some(KnownEvent::ArtifactStored(e))) => artifacts.push(*e),
                Ok(Some(KnownEvent::KeyDestroyed(_))) => destroyed = true,
                _ => {}
            }
        }
        let finished =
            finished.ok_or_else(|| ApiError::Conflict(format!("job {job_id} has not finished")))?;
        artifacts.retain(|a| a.attempt == finished.attempt);
        artifacts.sort_by_key(|a| a.index);
        Ok(JobResult {
            finished,
            artifacts,
            destroyed,
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
}

impl Core {
    /// Crypto-shreds the data of jobs that finished more than `retention` ago.
    /// Returns how many were shredded.
    pub async fn enforce_retention(&self, retention: Duration) -> Result<usize, ApiError> {
        let due: Vec<(String, String)> = sqlx::query_as(
            "SELECT job_id, tenant FROM projections.jobs \
             WHERE status = ANY($1) AND NOT data_destroyed \
             AND updated_at < now() - make_interval(secs => $2) ORDER BY updated_at LIMIT 500",
        )
        .bind(
            glassbox_projector::TERMINAL
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>(),
        )
        .bind(retention.as_secs_f64())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| ApiError::Internal(format!("find jobs past retention: {e}")))?;
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteReply {
    pub job_id: String,
    /// Position of the `key.destroyed` record.
    pub position: u64,
}

impl Core {
    /// Crypto-shreds a finished job's data: appends `key.destroyed`, then
    /// destroys the job's data key, after which its code, inputs, output and
    /// artifacts are unreadable (410) while the ledger still verifies. Recorded
    /// first, so a destruction is never unrecorded; asking again re-attempts the
    /// destruction and answers with the first record.
    pub async fn delete_data(
        &self,
        caller: &Caller,
        job_id: &str,
        reason: String,
    ) -> Result<DeleteReply, ApiError> {
        for _ in 0..5 {
            let records = self.job_records(&caller.identity.tenant, job_id).await?;
            let version = records.last().map_or(0, |r| r.record.stream_version);
            let mut terminal = false;
            let mut destroyed_at = None;
            for r in &records {
                match r.record.event_type.as_str() {
                    t if t == catalogue::KeyDestroyed::TYPE => {
                        destroyed_at.get_or_insert(r.record.position);
                    }
                    t if [
                        catalogue::JobRejected::TYPE,
                        catalogue::JobCompleted::TYPE,
                        catalogue::JobFailed::TYPE,
                        catalogue::JobCancelled::TYPE,
                    ]
                    .contains(&t) =>
                    {
                        terminal = true;
                    }
                    _ => {}
                }
            }
            let position = match destroyed_at {
                Some(p) => p,
                None => {
                    if !terminal {
                        return Err(ApiError::Conflict(format!(
                            "job {job_id} has not finished; cancel it first"
                        )));
                    }
                    let stream = format!("job-{job_id}");
                    let e = typed(
                        &stream,
                        &catalogue::KeyDestroyed {
                            key_id: job_id.to_owned(),
                            reason: reason.clone(),
                        },
                    )?;
                    let req = caller
                        .append(vec![e])
                        .expect(stream, ExpectedVersion::Exactly(version));
                    match self.store.append(req).await {
                        Ok(o) => o.first_position(),
                        Err(StoreError::Conflict(_)) => continue,
                        Err(e) => return Err(ApiError::store("record the key destruction")(e)),
                    }
                }
            };
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
            return Ok(DeleteReply {
                job_id: job_id.to_owned(),
                position,
            });
        }
        Err(ApiError::Conflict(format!(
            "job {job_id} kept changing; try again"
        )))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CancelReply {
    pub job_id: String,
    /// `cancelled` (it never ran) or `cancel_requested` (its runner will stop it).
    pub status: String,
    pub position: u64,
}
