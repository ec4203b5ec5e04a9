//! The event catalogue (DESIGN.md §5): one typed struct per event type.
//! (It lives in the pure domain crate so every part — the store included —
//! shares one definition without linking a database.)
//!
//! Names are past tense, `domain.verb_past`. Each type has a schema version that is
//! written into the event data as `schema_version`, so a reader can upcast old
//! shapes; the record envelope itself stays fixed. Unknown types are not an error
//! anywhere: the ledger stores, verifies and shows any record, and
//! [`KnownEvent::decode`] simply returns `None` for a type it does not know.
//!
//! Code, stdin, outputs and artifacts never appear inline: events carry a
//! [`BlobRef`] (digest, size, blob key). Secret *names* appear; values never do.

use glassbox_verify::Digest;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Member of the event data that carries the event's schema version.
pub const SCHEMA_VERSION_MEMBER: &str = "schema_version";

/// A typed event with its ledger type name and schema version.
pub trait Event: Serialize + DeserializeOwned {
    const TYPE: &'static str;
    const VERSION: u64;

    /// The event as record `data` (with `schema_version`).
    fn to_data(&self) -> Result<Map<String, Value>, EventError> {
        match serde_json::to_value(self)
            .map_err(|e| EventError::Encode(Self::TYPE, e.to_string()))?
        {
            Value::Object(mut m) => {
                m.insert(SCHEMA_VERSION_MEMBER.into(), Value::from(Self::VERSION));
                Ok(m)
            }
            _ => Err(EventError::Encode(Self::TYPE, "not an object".into())),
        }
    }

    /// Decodes record data written by this or an older schema version.
    fn from_data(data: &Map<String, Value>) -> Result<Self, EventError> {
        let version = data
            .get(SCHEMA_VERSION_MEMBER)
            .and_then(Value::as_u64)
            .unwrap_or(1);
        if version > Self::VERSION {
            return Err(EventError::FutureVersion(Self::TYPE, version));
        }
        let mut m = data.clone();
        m.remove(SCHEMA_VERSION_MEMBER);
        upcast(Self::TYPE, version, &mut m);
        serde_json::from_value(Value::Object(m))
            .map_err(|e| EventError::Decode(Self::TYPE, e.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("encoding {0}: {1}")]
    Encode(&'static str, String),
    #[error("decoding {0}: {1}")]
    Decode(&'static str, String),
    #[error("{0} schema version {1} is newer than this build understands")]
    FutureVersion(&'static str, u64),
}

/// Rewrites the data of an older schema version into the current shape where
/// that can be done without inventing anything (called by [`Event::from_data`]).
///
/// `job.submitted` v1 carried args, env names and file paths in clear; v2 keeps
/// them only in encrypted blobs. A v1 record reads as v2 with those blobs
/// absent and the counts kept, so a consumer can tell (and the runner refuses
/// to run such a job rather than run it without its args or files).
fn upcast(event_type: &str, version: u64, m: &mut Map<String, Value>) {
    if event_type == JobSubmitted::TYPE && version < 2 {
        let count = |v: Option<Value>| v.and_then(|v| v.as_array().map(Vec::len)).unwrap_or(0);
        let args = count(m.remove("args"));
        m.insert("args".into(), Value::Null);
        m.insert("arg_count".into(), Value::from(args as u64));
        let envs = count(m.remove("env_names"));
        m.insert("env_count".into(), Value::from(envs as u64));
        let files: Vec<Value> = m
            .remove("files")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|f| f.get("blob").cloned())
            .collect();
        m.insert("files".into(), Value::Array(files));
        m.insert("file_paths".into(), Value::Null);
    }
}

/// A stored, encrypted blob referenced from an event.
///
/// The digest is **keyed**: HMAC-SHA-256 of the plaintext under a key derived
/// from the blob's data key. Anyone can see that two records name the same
/// blob, nobody without the key can confirm a guess of a short input, and once
/// the data key is destroyed the digest links to nothing (crypto-shredding).
/// Records written before schema v2 of their event hold a plain SHA-256 under
/// the member name `sha256`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobRef {
    #[serde(alias = "sha256")]
    pub hmac: Digest,
    pub size_bytes: u64,
    /// The blob's name in the store: chosen by Glassbox, never by a program.
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Dependency {
    pub ecosystem: String,
    pub name: String,
    pub version: Option<String>,
}

/// Resource limits in integer units (the ledger refuses floats). The names are
/// the ones `glassbox.admission` and the sandbox core use. The schema states
/// the floors and ceilings [`Limits::check_floor`] and the request parser apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock time in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::request::MAX_INTEGER))]
    pub wall_time_ms: Option<u64>,
    /// CPU in thousandths of a core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = Limits::MIN_CPU_MILLICORES, max = crate::request::MAX_INTEGER))]
    pub cpu_millicores: Option<u64>,
    /// Memory in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = Limits::MIN_MEMORY_BYTES, max = crate::request::MAX_INTEGER))]
    pub memory_bytes: Option<u64>,
    /// Processes and threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = Limits::MAX_PROCESSES))]
    pub processes: Option<u64>,
    /// Bytes the program may write under /workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = Limits::MIN_WORKSPACE_BYTES, max = crate::request::MAX_INTEGER))]
    pub workspace_bytes: Option<u64>,
    /// Bytes the program may write under /tmp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = Limits::MIN_TMP_BYTES, max = crate::request::MAX_INTEGER))]
    pub tmp_bytes: Option<u64>,
    /// Standard output kept, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::request::MAX_INTEGER))]
    pub stdout_bytes: Option<u64>,
    /// Standard error kept, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::request::MAX_INTEGER))]
    pub stderr_bytes: Option<u64>,
    /// Bytes of artifacts kept from /workspace/out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::request::MAX_INTEGER))]
    pub output_bytes: Option<u64>,
    /// Number of artifacts kept from /workspace/out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::request::MAX_INTEGER))]
    pub output_files: Option<u64>,
}

impl Limits {
    /// Below these no sandbox can start; the sandbox core and every entry
    /// point refuse them (one set of rules).
    pub const MIN_CPU_MILLICORES: u64 = 10;
    pub const MIN_MEMORY_BYTES: u64 = 16 << 20;
    pub const MAX_PROCESSES: u64 = 4096;
    pub const MIN_WORKSPACE_BYTES: u64 = 1 << 20;
    pub const MIN_TMP_BYTES: u64 = 1 << 20;

    /// Refuses a requested limit no sandbox can honour, naming the member.
    pub fn check_floor(&self) -> Result<(), String> {
        let low = |name: &str, v: Option<u64>, min: u64| match v {
            Some(n) if n < min => Err(format!("limits.{name}: at least {min}")),
            _ => Ok(()),
        };
        low(
            "cpu_millicores",
            self.cpu_millicores,
            Self::MIN_CPU_MILLICORES,
        )?;
        low("memory_bytes", self.memory_bytes, Self::MIN_MEMORY_BYTES)?;
        low(
            "workspace_bytes",
            self.workspace_bytes,
            Self::MIN_WORKSPACE_BYTES,
        )?;
        low("tmp_bytes", self.tmp_bytes, Self::MIN_TMP_BYTES)?;
        if let Some(p) = self.processes
            && p > Self::MAX_PROCESSES
        {
            return Err(format!("limits.processes: at most {}", Self::MAX_PROCESSES));
        }
        Ok(())
    }
}

/// A session's limits: the sandbox's resources for its whole life, caps per
/// exec, and how long it may sit idle or live at all. Integer units only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionLimits {
    /// CPU in thousandths of a core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = Limits::MIN_CPU_MILLICORES, max = crate::request::MAX_INTEGER))]
    pub cpu_millicores: Option<u64>,
    /// Memory in bytes (the OOM killer ends the session beyond it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = Limits::MIN_MEMORY_BYTES, max = crate::request::MAX_INTEGER))]
    pub memory_bytes: Option<u64>,
    /// Processes and threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = Limits::MAX_PROCESSES))]
    pub processes: Option<u64>,
    /// Bytes the session may keep under /workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = Limits::MIN_WORKSPACE_BYTES, max = crate::request::MAX_INTEGER))]
    pub workspace_bytes: Option<u64>,
    /// Bytes under /tmp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = Limits::MIN_TMP_BYTES, max = crate::request::MAX_INTEGER))]
    pub tmp_bytes: Option<u64>,
    /// Standard output kept per exec, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::request::MAX_INTEGER))]
    pub stdout_bytes: Option<u64>,
    /// Standard error kept per exec, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::request::MAX_INTEGER))]
    pub stderr_bytes: Option<u64>,
    /// The longest one exec may run (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::request::MAX_INTEGER))]
    pub exec_timeout_ms: Option<u64>,
    /// Closed after this long without a call (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::request::MAX_INTEGER))]
    pub idle_timeout_secs: Option<u64>,
    /// Closed this long after it opened, whatever happens (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::request::MAX_INTEGER))]
    pub max_lifetime_secs: Option<u64>,
}

impl SessionLimits {
    /// Refuses a requested limit no sandbox can honour, naming the member.
    pub fn check_floor(&self) -> Result<(), String> {
        Limits {
            cpu_millicores: self.cpu_millicores,
            memory_bytes: self.memory_bytes,
            processes: self.processes,
            workspace_bytes: self.workspace_bytes,
            tmp_bytes: self.tmp_bytes,
            ..Limits::default()
        }
        .check_floor()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    TimedOut,
    OomKilled,
    Crashed,
    Cancelled,
}

impl Outcome {
    /// The recorded (snake_case) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::OomKilled => "oom_killed",
            Outcome::Crashed => "crashed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// Captured output of one stream (stdout or stderr).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRef {
    pub blob: Option<BlobRef>,
    pub size_bytes: u64,
    pub truncated: bool,
}

/// A leftover a runner's sweep could not remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepFailure {
    pub sandbox_id: String,
    pub step: String,
    pub detail: String,
}

fn yes() -> bool {
    true
}

macro_rules! catalogue {
    ($( $(#[$doc:meta])* $name:ident = $ty:literal v $ver:literal { $($(#[$fdoc:meta])* $field:ident : $fty:ty),* $(,)? } )*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
            pub struct $name { $( $(#[$fdoc])* pub $field: $fty ),* }
            impl Event for $name {
                const TYPE: &'static str = $ty;
                const VERSION: u64 = $ver;
            }
        )*

        /// Any event of the catalogue (boxed: the variants differ a lot in size).
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum KnownEvent { $( $name(Box<$name>) ),* }

        /// Every type name in the catalogue with its current schema version.
        pub const EVENT_TYPES: &[(&str, u64)] = &[ $( ($ty, $ver) ),* ];

        impl KnownEvent {
            /// Decodes record data; `Ok(None)` for a type not in the catalogue.
            pub fn decode(event_type: &str, data: &Map<String, Value>) -> Result<Option<KnownEvent>, EventError> {
                Ok(match event_type {
                    $( $ty => Some(KnownEvent::$name(Box::new($name::from_data(data)?))), )*
                    _ => None,
                })
            }
            pub fn event_type(&self) -> &'static str {
                match self { $( KnownEvent::$name(_) => $ty ),* }
            }
            pub fn to_data(&self) -> Result<Map<String, Value>, EventError> {
                match self { $( KnownEvent::$name(e) => e.to_data() ),* }
            }
        }
    };
}

catalogue! {
    /// A client submitted a job. Everything that is the caller's data — code,
    /// stdin, args, environment (names and values), input files and their
    /// paths — is an encrypted blob; the record keeps keyed digests and counts.
    JobSubmitted = "job.submitted" v 2 {
        job_id: String,
        language: String,
        code: BlobRef,
        stdin: Option<BlobRef>,
        /// JSON array of strings.
        args: Option<BlobRef>,
        arg_count: u64,
        /// JSON object name → value.
        env: Option<BlobRef>,
        env_count: u64,
        /// Contents of the input files, in request order.
        files: Vec<BlobRef>,
        /// JSON array of the files' workspace paths, in the same order.
        file_paths: Option<BlobRef>,
        dependencies: Vec<Dependency>,
        secrets: Vec<String>,
        /// The limits as requested (policy fills in the rest).
        limits: Limits,
        idempotency_key: Option<String>,
        /// Destinations asked for (`host:port`, `*.domain:port`; the
        /// submitter's words, each decided by `glassbox.egress`). Absent: none.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        egress: Vec<String>,
    }
    /// One policy was consulted: what it was asked and what it answered, so the
    /// decision can be re-evaluated later against the bundle kept by digest.
    PolicyEvaluated = "policy.evaluated" v 1 {
        policy: String,
        decision: Decision,
        reasons: Vec<String>,
        bundle_digest: Digest,
        /// The exact input (no secret values, no code).
        input: Map<String, Value>,
        input_digest: Digest,
        /// Set when evaluation failed (which is a deny).
        error: Option<String>,
    }
    JobAccepted = "job.accepted" v 1 { job_id: String, effective_limits: Limits }
    JobRejected = "job.rejected" v 1 { job_id: String, reasons: Vec<String> }
    /// `hosts`: for a brokered secret, the destinations the policy lets the
    /// proxy put its value in requests to (absent otherwise).
    SecretInjectionApproved = "secret.injection_approved" v 1 {
        name: String,
        mode: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        hosts: Vec<String>,
    }
    SecretInjectionDenied = "secret.injection_denied" v 1 { name: String, reasons: Vec<String> }
    /// A runner took an attempt; the lease is the job timeout plus a grace period.
    ExecutionClaimed = "execution.claimed" v 1 { runner: String, attempt: u64, lease_expires_at: String }
    DependencyChecked = "dependency.checked" v 1 {
        ecosystem: String, name: String, version: Option<String>, decision: Decision, rule: Option<String>,
    }
    SecretMaterialized = "secret.materialized" v 1 { name: String, mode: String }
    SandboxProvisioned = "sandbox.provisioned" v 1 {
        attempt: u64, sandbox_id: String, backend: String, runtime: String, image_digest: Option<String>,
    }
    ExecutionStarted = "execution.started" v 1 { attempt: u64, sandbox_id: String }
    ExecutionFinished = "execution.finished" v 2 {
        attempt: u64,
        outcome: Outcome,
        exit_code: Option<i64>,
        signal: Option<i64>,
        wall_ms: u64,
        cpu_ms: Option<u64>,
        peak_memory_bytes: Option<u64>,
        stdout: OutputRef,
        stderr: OutputRef,
        /// JSON array of the artifacts' paths under `/workspace/out` (with
        /// secret values redacted), in the order of their `artifact.stored`
        /// indexes. Absent when the attempt left no files.
        #[serde(default)]
        artifact_index: Option<BlobRef>,
        /// Things in `/workspace/out` that were not collected (links, limits).
        #[serde(default)]
        artifacts_skipped: u64,
    }
    /// A later attempt finished after the first `execution.finished`: not a result.
    ExecutionSuperseded = "execution.superseded" v 1 { attempt: u64, winning_attempt: u64 }
    OutputRedacted = "output.redacted" v 1 { secret_name: String, target: String, count: u64 }
    /// One file of `/workspace/out`; its path is entry `index` of the
    /// attempt's `artifact_index` blob, never in clear here.
    ArtifactStored = "artifact.stored" v 2 { attempt: u64, index: u64, blob: BlobRef, truncated: bool }
    WorkspaceDestroyed = "workspace.destroyed" v 2 {
        sandbox_id: String,
        method: String,
        bytes_scrubbed: u64,
        #[serde(default)]
        files_scrubbed: u64,
        /// Everything was scrubbed, unmounted and removed (v1 wrote the
        /// event only then).
        #[serde(default = "yes")]
        complete: bool,
        /// What could not be done (a step, never a program's file name).
        #[serde(default)]
        error: Option<String>,
    }
    /// A runner removed what an earlier run of it left behind (at start-up);
    /// leftovers it could not remove are listed, and it started anyway.
    RunnerSweepFinished = "runner.sweep_finished" v 1 {
        runner: String,
        sandboxes: u64,
        workspaces: u64,
        bytes_scrubbed: u64,
        failures: Vec<SweepFailure>,
    }
    /// Crypto-shredding: the job's data key is gone, its blobs unreadable.
    KeyDestroyed = "key.destroyed" v 1 { key_id: String, reason: String }
    /// The sandbox's egress proxy let connection `connection` through.
    /// `target`: the destination asked for that it matched (the submitter's
    /// words). The host the program named is program data: a keyed digest
    /// (HMAC under the job's or session's data key), in clear only when it is
    /// exactly `target`'s host. `address`: where the proxy connected (it
    /// resolved the name and pinned the answer).
    EgressAllowed = "egress.allowed" v 1 {
        connection: u64,
        target: String,
        host: Option<String>,
        host_hmac: Digest,
        port: u64,
        address: String,
        rule: String,
        /// `glassbox.egress@sha256:<bundle digest>`.
        decided_by: Option<String>,
    }
    /// The proxy refused a connection (the program got a 403 naming this
    /// record's position). `reason`: `bad_request`, `not_requested`, `policy`,
    /// `ip_literal`, `non_public:<class>`, `unresolved`, `sni_mismatch` or
    /// `connection_limit`. Hosts as in `egress.allowed`; absent when the
    /// request could not be read.
    EgressDenied = "egress.denied" v 1 {
        connection: u64,
        reason: String,
        target: Option<String>,
        host: Option<String>,
        host_hmac: Option<Digest>,
        port: Option<u64>,
        rule: Option<String>,
        decided_by: Option<String>,
    }
    /// The proxy saw a brokered secret's placeholder in a request header on
    /// connection `connection`: `substituted` when `target` is one of the
    /// secret's hosts (the value went in its place, TLS re-originated and
    /// verified), else the placeholder went as it was. Never the value.
    SecretBrokered = "secret.brokered" v 1 { name: String, connection: u64, target: Option<String>, host_hmac: Digest, header: String, substituted: bool }
    /// Connection `connection` ended: bytes each way and how long it lasted.
    EgressClosed = "egress.closed" v 1 { connection: u64, bytes_out: u64, bytes_in: u64, duration_ms: u64 }
    /// A per-sandbox egress limit was reached: `bytes` ended connection
    /// `connection`; `connections` refused `refused` connections after the
    /// first one recorded (summed when the sandbox ends, not one record each).
    EgressLimitReached = "egress.limit_reached" v 1 { limit: String, max: u64, connection: Option<u64>, refused: u64 }
    JobCancelRequested = "job.cancel_requested" v 1 { job_id: String, reason: Option<String> }
    JobCompleted = "job.completed" v 1 { job_id: String, outcome: Outcome }
    JobFailed = "job.failed" v 1 { job_id: String, reason: String }
    JobCancelled = "job.cancelled" v 1 { job_id: String, reason: Option<String> }
    /// A client asked for a session. As with a job, the caller's data (the
    /// environment) is an encrypted blob; the record keeps a count.
    SessionRequested = "session.requested" v 1 {
        session_id: String,
        language: String,
        /// JSON object name → value.
        env: Option<BlobRef>,
        env_count: u64,
        dependencies: Vec<Dependency>,
        secrets: Vec<String>,
        /// As requested (policy fills in the rest).
        limits: SessionLimits,
        idempotency_key: Option<String>,
        /// Destinations asked for, as for a job.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        egress: Vec<String>,
    }
    /// Every policy allowed the session; it is placed on `runner`. It ends at
    /// `expires_at` at the latest (its maximum lifetime).
    SessionOpened = "session.opened" v 2 {
        session_id: String,
        language: String,
        runner: String,
        effective_limits: SessionLimits,
        expires_at: String,
    }
    /// A session's egress allowlist was replaced (every destination decided
    /// by `glassbox.egress` just before); its proxy uses it from the next
    /// connection on.
    SessionEgressChanged = "session.egress_changed" v 1 { session_id: String, egress: Vec<String> }
    /// Service mode: port `port` on the session's loopback may be reached
    /// through the control plane (`/v1/sessions/{id}/ports/{port}/…`) by the
    /// callers `glassbox.services` lets through (of the session's tenant; with
    /// any of `roles`, or one of `subjects` or `apps`; all empty: any caller
    /// of the tenant).
    ServiceExposed = "service.exposed" v 1 { session_id: String, port: u64, roles: Vec<String>, subjects: Vec<String>, apps: Vec<String> }
    /// One request to an exposed port: who asked, what (the path as a keyed
    /// digest: it may carry the caller's data), the decision and the answer.
    ServiceRequest = "service.request" v 1 { session_id: String, port: u64, caller: String, method: String, path_hmac: Digest, decision: Decision, status: u64, bytes_in: u64, bytes_out: u64 }
    SessionRejected = "session.rejected" v 1 { session_id: String, reasons: Vec<String> }
    /// The session's sandbox is up (its packages installed): it takes calls.
    /// `image_digest` names the root filesystem (absent in records written before
    /// runtime images existed).
    SessionStarted = "session.started" v 1 { session_id: String, runner: String, sandbox_id: String, backend: String, runtime: String, image_digest: Option<String> }
    /// The sandbox could not be started; nothing ran.
    SessionFailed = "session.failed" v 1 { session_id: String, reason: String }
    /// A workflow definition was stored (stream `workflow-def-<name>/<tenant>`): the
    /// steps' jobs are in the encrypted `definition` blob; the record names the
    /// definition by digest and lists its step names.
    WorkflowDefined = "workflow.defined" v 1 { name: String, version: u64, digest: String, definition: BlobRef, steps: Vec<String> }
    /// A run of a definition began (stream `workflow-run-<id>`); its jobs share
    /// the run's correlation ID (the run ID). `gated`: the steps that wait for
    /// an approval (the `glassbox.workflows` decisions recorded just before);
    /// `submitter_roles`: the roles the steps' jobs are submitted with.
    WorkflowRunStarted = "workflow.run_started" v 1 { run_id: String, name: String, version: u64, digest: String, inputs: Option<BlobRef>, input_count: u64, idempotency_key: Option<String>, gated: Vec<String>, submitter_roles: Vec<String> }
    /// Attempt `attempt` of `step` became job `job_id` (derived from run, step and attempt).
    WorkflowStepScheduled = "workflow.step_scheduled" v 1 { run_id: String, step: String, attempt: u64, job_id: String }
    WorkflowStepFinished = "workflow.step_finished" v 1 { run_id: String, step: String, attempt: u64, job_id: String, succeeded: bool, reason: Option<String> }
    /// `step` will not run: `because` (a step that did not succeed, or `cancelled`).
    WorkflowStepSkipped = "workflow.step_skipped" v 1 { run_id: String, step: String, because: String }
    WorkflowApprovalRequested = "workflow.approval_requested" v 1 { run_id: String, step: String }
    WorkflowApprovalGranted = "workflow.approval_granted" v 1 { run_id: String, step: String, approver: String, reason: Option<String> }
    WorkflowApprovalDenied = "workflow.approval_denied" v 1 { run_id: String, step: String, approver: String, reason: Option<String> }
    /// Someone who may not answer for `step` tried to (e.g. the run's submitter).
    WorkflowApprovalRefused = "workflow.approval_refused" v 1 { run_id: String, step: String, approver: String, reasons: Vec<String> }
    WorkflowCancelRequested = "workflow.cancel_requested" v 1 { run_id: String }
    WorkflowRunFinished = "workflow.run_finished" v 1 { run_id: String, succeeded: bool }
    /// Exec number `exec` began: `source` is the code or command (encrypted).
    SessionExecStarted = "session.exec_started" v 1 {
        session_id: String,
        exec: u64,
        /// `code` or `command`.
        kind: String,
        source: BlobRef,
        stdin: Option<BlobRef>,
        timeout_ms: u64,
    }
    SessionExecFinished = "session.exec_finished" v 1 {
        session_id: String,
        exec: u64,
        outcome: Outcome,
        exit_code: Option<i64>,
        signal: Option<i64>,
        wall_ms: u64,
        stdout: OutputRef,
        stderr: OutputRef,
        /// The interpreter was restarted: earlier state is gone.
        context_reset: bool,
        /// Secret values replaced in the stored output.
        redactions: u64,
    }
    /// A client wrote a file: its name is an encrypted blob, its content is
    /// known by size and keyed digest (DESIGN §5: file names are user data).
    SessionFileWritten = "session.file_written" v 1 { session_id: String, name: BlobRef, size_bytes: u64, content_hmac: Digest }
    SessionFileRead = "session.file_read" v 1 { session_id: String, name: BlobRef, size_bytes: u64, content_hmac: Digest, truncated: bool }
    SessionFileDeleted = "session.file_deleted" v 1 { session_id: String, name: BlobRef }
    /// A directory of the workspace was listed (the entries are not recorded).
    SessionFilesListed = "session.files_listed" v 1 { session_id: String, name: BlobRef, entries: u64 }
    /// Past its idle timeout or its maximum lifetime.
    SessionExpired = "session.expired" v 1 { session_id: String, reason: String }
    /// Its runner is gone (or its sandbox ended on its own): the session cannot go on.
    SessionLost = "session.lost" v 1 { session_id: String, reason: String }
    SessionClosed = "session.closed" v 1 { session_id: String, reason: String }
    AuthBypassEnabled = "auth.bypass_enabled" v 1 { plane: String, environment: String }
    /// A request was let through on an asserted identity without a token.
    AuthBypassed = "auth.bypassed" v 1 { plane: String, method: String, path: String, asserted: Map<String, Value> }
    PolicyBundleLoaded = "policy.bundle_loaded" v 1 { bundle_digest: Digest, blob_key: String, files: Vec<String> }
    /// The first request over a tenant's rate limit in a window (later ones in the
    /// same window are refused without another event, so a flood cannot fill the ledger).
    RateLimitExceeded = "rate_limit.exceeded" v 1 { subject: String, window_start: String, limit: u64 }
    /// A request was refused by a check that is not a policy: it named
    /// something bound to another identity (e.g. an MCP session).
    AccessRefused = "access.refused" v 1 { action: String, reason: String }
    /// An auditor read records of a tenant other than their own.
    AuditCrossTenantQueried = "audit.cross_tenant_queried" v 1 { query: Map<String, Value>, result_count: u64 }
    AuditExported = "audit.exported" v 1 { query: Map<String, Value>, bundle_digest: Digest, record_count: u64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_names_are_the_recorded_ones() {
        for o in [
            Outcome::Succeeded,
            Outcome::Failed,
            Outcome::TimedOut,
            Outcome::OomKilled,
            Outcome::Crashed,
            Outcome::Cancelled,
        ] {
            assert_eq!(
                serde_json::to_value(o).expect("json"),
                serde_json::Value::from(o.as_str())
            );
        }
    }

    #[test]
    fn type_names_are_unique_and_past_tense_dotted() {
        let mut names: Vec<&str> = EVENT_TYPES.iter().map(|(n, _)| *n).collect();
        names.sort();
        let len = names.len();
        names.dedup();
        assert_eq!(names.len(), len, "duplicate type names");
        for n in names {
            let (domain, verb) = n.split_once('.').expect("domain.verb");
            assert!(!domain.is_empty() && !verb.is_empty(), "{n}");
            // Past tense, regular or one of the catalogue's irregular verbs
            // — except `service.request`, the one name DESIGN §5 fixes
            // otherwise (a record of one request and its answer).
            let last = verb.rsplit('_').next().unwrap_or(verb);
            assert!(
                verb.ends_with("ed")
                    || ["read", "written", "lost"].contains(&last)
                    || n == "service.request",
                "{n} is not past tense"
            );
        }
    }

    #[test]
    fn round_trip_with_schema_version() {
        let e = WorkspaceDestroyed {
            sandbox_id: "sb-1".into(),
            method: "overwrite+unlink".into(),
            bytes_scrubbed: 4096,
            files_scrubbed: 2,
            complete: true,
            error: None,
        };
        let data = e.to_data().expect("encode");
        assert_eq!(data.get("schema_version"), Some(&Value::from(2)));
        let back = KnownEvent::decode(WorkspaceDestroyed::TYPE, &data).expect("decode");
        assert_eq!(back, Some(KnownEvent::WorkspaceDestroyed(Box::new(e))));
    }

    #[test]
    fn job_submitted_v1_reads_as_v2_without_its_clear_inputs() {
        let blob =
            serde_json::json!({"sha256": "00".repeat(32), "size_bytes": 3, "key": "jobs/j/code"});
        let v1 = serde_json::json!({
            "schema_version": 1, "job_id": "j", "language": "python", "code": blob,
            "stdin": null, "args": ["--secret-flag", "x"], "env_names": ["MODE"],
            "env": null, "files": [{"path": "in/data.csv", "blob": blob}],
            "dependencies": [], "secrets": [], "limits": {}, "idempotency_key": null,
        });
        let Value::Object(m) = v1 else {
            panic!("object")
        };
        let Some(KnownEvent::JobSubmitted(e)) =
            KnownEvent::decode("job.submitted", &m).expect("decodes")
        else {
            panic!("job.submitted")
        };
        assert_eq!((e.arg_count, e.env_count), (2, 1));
        assert!(e.args.is_none() && e.file_paths.is_none());
        assert_eq!(e.files.len(), 1);
        assert_eq!(e.code.size_bytes, 3);
        // The v2 encoding names none of it.
        let data = Value::Object(e.to_data().expect("encode")).to_string();
        assert!(
            !data.contains("secret-flag") && !data.contains("data.csv") && !data.contains("MODE")
        );
    }

    #[test]
    fn unknown_types_decode_to_none_and_future_versions_are_errors() {
        let mut data = Map::new();
        data.insert("x".into(), Value::from(1));
        assert!(
            KnownEvent::decode("vendor.thing_happened", &data)
                .expect("ok")
                .is_none()
        );
        let mut d = JobFailed {
            job_id: "j".into(),
            reason: "r".into(),
        }
        .to_data()
        .expect("encode");
        d.insert("schema_version".into(), Value::from(9));
        assert!(matches!(
            KnownEvent::decode("job.failed", &d),
            Err(EventError::FutureVersion(..))
        ));
    }
}
