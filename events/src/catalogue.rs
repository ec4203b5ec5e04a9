//! The event catalogue (DESIGN.md §5): one typed struct per event type.
//!
//! Names are past tense, `domain.verb_past`. Each type has a schema version that is
//! written into the event data as `schema_version`, so a reader can upcast old
//! shapes; the record envelope itself stays fixed. Unknown types are not an error
//! anywhere: the ledger stores, verifies and shows any record, and
//! [`KnownEvent::decode`] simply returns `None` for a type it does not know.
//!
//! Code, stdin, outputs and artifacts never appear inline: events carry a
//! [`BlobRef`] (digest, size, blob key). Secret *names* appear; values never do.

use crate::hash::Digest;
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

/// A stored, encrypted blob referenced from an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobRef {
    /// SHA-256 of the plaintext.
    pub sha256: Digest,
    pub size_bytes: u64,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub path: String,
    pub blob: BlobRef,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    pub ecosystem: String,
    pub name: String,
    pub version: Option<String>,
}

/// Resource limits in integer units (the ledger refuses floats). The names are
/// the ones `glassbox.admission` and the sandbox core use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_time_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millicores: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmp_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_files: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    TimedOut,
    OomKilled,
    Crashed,
    Cancelled,
}

/// Captured output of one stream (stdout or stderr).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRef {
    pub blob: Option<BlobRef>,
    pub size_bytes: u64,
    pub truncated: bool,
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
    /// A client submitted a job; its code and stdin are blobs.
    JobSubmitted = "job.submitted" v 1 {
        job_id: String,
        language: String,
        code: BlobRef,
        stdin: Option<BlobRef>,
        args: Vec<String>,
        /// Names of the environment variables; their values are in the `env` blob.
        env_names: Vec<String>,
        env: Option<BlobRef>,
        files: Vec<FileRef>,
        dependencies: Vec<Dependency>,
        secrets: Vec<String>,
        /// The limits as requested (policy fills in the rest).
        limits: Limits,
        idempotency_key: Option<String>,
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
    SecretInjectionApproved = "secret.injection_approved" v 1 { name: String, mode: String }
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
    ExecutionFinished = "execution.finished" v 1 {
        attempt: u64,
        outcome: Outcome,
        exit_code: Option<i64>,
        signal: Option<i64>,
        wall_ms: u64,
        cpu_ms: Option<u64>,
        peak_memory_bytes: Option<u64>,
        stdout: OutputRef,
        stderr: OutputRef,
    }
    /// A later attempt finished after the first `execution.finished`: not a result.
    ExecutionSuperseded = "execution.superseded" v 1 { attempt: u64, winning_attempt: u64 }
    OutputRedacted = "output.redacted" v 1 { secret_name: String, target: String, count: u64 }
    ArtifactStored = "artifact.stored" v 1 { path: String, blob: BlobRef }
    WorkspaceDestroyed = "workspace.destroyed" v 1 { sandbox_id: String, method: String, bytes_scrubbed: u64 }
    /// Crypto-shredding: the job's data key is gone, its blobs unreadable.
    KeyDestroyed = "key.destroyed" v 1 { key_id: String, reason: String }
    JobCancelRequested = "job.cancel_requested" v 1 { job_id: String, reason: Option<String> }
    JobCompleted = "job.completed" v 1 { job_id: String, outcome: Outcome }
    JobFailed = "job.failed" v 1 { job_id: String, reason: String }
    JobCancelled = "job.cancelled" v 1 { job_id: String, reason: Option<String> }
    SessionOpened = "session.opened" v 1 { session_id: String, language: String, runner: Option<String>, expires_at: String }
    SessionCommandExecuted = "session.command_executed" v 1 { session_id: String, sequence: u64, code: BlobRef, outcome: Outcome }
    SessionClosed = "session.closed" v 1 { session_id: String, reason: String }
    AuthBypassEnabled = "auth.bypass_enabled" v 1 { plane: String, environment: String }
    /// A request was let through on an asserted identity without a token.
    AuthBypassed = "auth.bypassed" v 1 { plane: String, method: String, path: String, asserted: Map<String, Value> }
    PolicyBundleLoaded = "policy.bundle_loaded" v 1 { bundle_digest: Digest, blob_key: String, files: Vec<String> }
    /// The first request over a tenant's rate limit in a window (later ones in the
    /// same window are refused without another event, so a flood cannot fill the ledger).
    RateLimitExceeded = "rate_limit.exceeded" v 1 { subject: String, window_start: String, limit: u64 }
    /// An auditor read records of a tenant other than their own.
    AuditCrossTenantQueried = "audit.cross_tenant_queried" v 1 { query: Map<String, Value>, result_count: u64 }
    AuditExported = "audit.exported" v 1 { query: Map<String, Value>, bundle_digest: Digest, record_count: u64 }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert!(verb.ends_with("ed"), "{n} is not past tense");
        }
    }

    #[test]
    fn round_trip_with_schema_version() {
        let e = WorkspaceDestroyed {
            sandbox_id: "sb-1".into(),
            method: "overwrite+unlink".into(),
            bytes_scrubbed: 4096,
        };
        let data = e.to_data().expect("encode");
        assert_eq!(data.get("schema_version"), Some(&Value::from(1)));
        let back = KnownEvent::decode(WorkspaceDestroyed::TYPE, &data).expect("decode");
        assert_eq!(back, Some(KnownEvent::WorkspaceDestroyed(Box::new(e))));
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
