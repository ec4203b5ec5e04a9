//! Stream names as items. Every record belongs to a stream; its name says
//! what the stream is about. Built and recognised here only, never with
//! `format!` elsewhere.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A ledger stream name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Stream(String);

/// What a stream is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind<'a> {
    /// `job-<id>`: one job's life.
    Job(&'a str),
    /// `session-<id>`: one session's life, every call in it.
    Session(&'a str),
    /// `workflow-run-<id>`: one workflow run.
    WorkflowRun(&'a str),
    /// `workflow-<tenant>-<name>`: a workflow's definitions.
    Workflow(&'a str),
    /// `access-<tenant>`: refusals of a tenant's callers.
    Access(&'a str),
    /// `auth-<tenant>`: bypassed requests (and `auth-system`).
    Auth(&'a str),
    /// `tenant-<tenant>`: tenant-wide events (rate limits).
    Tenant(&'a str),
    /// `audit-<tenant>`: audit reads and exports.
    Audit(&'a str),
    /// `runner-<id>`: a runner's own events (sweeps).
    Runner(&'a str),
    /// `policy-bundles`: bundles kept by digest.
    PolicyBundles,
    Other(&'a str),
}

impl Stream {
    pub const JOB_PREFIX: &'static str = "job-";
    pub const SESSION_PREFIX: &'static str = "session-";
    pub const WORKFLOW_RUN_PREFIX: &'static str = "workflow-run-";
    pub const WORKFLOW_PREFIX: &'static str = "workflow-def-";
    pub const POLICY_BUNDLES: &'static str = "policy-bundles";

    pub fn job(id: impl fmt::Display) -> Stream {
        Stream(format!("{}{id}", Self::JOB_PREFIX))
    }
    pub fn session(id: impl fmt::Display) -> Stream {
        Stream(format!("{}{id}", Self::SESSION_PREFIX))
    }
    /// `workflow-run-<id>`: one workflow run's life.
    pub fn workflow_run(id: impl fmt::Display) -> Stream {
        Stream(format!("{}{id}", Self::WORKFLOW_RUN_PREFIX))
    }
    /// `workflow-def-<name>/<tenant>`: a workflow's definitions, one version
    /// each. The name (`[a-z0-9_-]`, no `/`) comes first, so no pair of tenant
    /// and name shares a stream with another, nor with a run's stream.
    pub fn workflow(tenant: &str, name: &str) -> Stream {
        Stream(format!("{}{name}/{tenant}", Self::WORKFLOW_PREFIX))
    }
    pub fn access(tenant: &str) -> Stream {
        Stream(format!("access-{tenant}"))
    }
    pub fn auth(tenant: &str) -> Stream {
        Stream(format!("auth-{tenant}"))
    }
    pub fn tenant(tenant: &str) -> Stream {
        Stream(format!("tenant-{tenant}"))
    }
    pub fn audit(tenant: &str) -> Stream {
        Stream(format!("audit-{tenant}"))
    }
    pub fn runner(id: &str) -> Stream {
        Stream(format!("runner-{id}"))
    }
    pub fn policy_bundles() -> Stream {
        Stream(Self::POLICY_BUNDLES.into())
    }
    /// Where a session's blobs live (under its own data key, the session ID).
    pub fn session_blob_prefix(session_id: &str) -> String {
        format!("sessions/{session_id}")
    }
    /// A stream name as recorded (any text).
    pub fn named(name: impl Into<String>) -> Stream {
        Stream(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn kind(&self) -> StreamKind<'_> {
        kind_of(&self.0)
    }
}

/// What the stream named `name` is about.
pub fn kind_of(name: &str) -> StreamKind<'_> {
    let prefixed = |p: &str| name.strip_prefix(p);
    if name == Stream::POLICY_BUNDLES {
        return StreamKind::PolicyBundles;
    }
    if let Some(id) = prefixed(Stream::JOB_PREFIX) {
        return StreamKind::Job(id);
    }
    if let Some(id) = prefixed(Stream::SESSION_PREFIX) {
        return StreamKind::Session(id);
    }
    if let Some(id) = prefixed(Stream::WORKFLOW_RUN_PREFIX) {
        return StreamKind::WorkflowRun(id);
    }
    if let Some(rest) = prefixed(Stream::WORKFLOW_PREFIX) {
        return StreamKind::Workflow(rest);
    }
    if let Some(rest) = prefixed("access-") {
        return StreamKind::Access(rest);
    }
    if let Some(rest) = prefixed("auth-") {
        return StreamKind::Auth(rest);
    }
    if let Some(rest) = prefixed("tenant-") {
        return StreamKind::Tenant(rest);
    }
    if let Some(rest) = prefixed("audit-") {
        return StreamKind::Audit(rest);
    }
    if let Some(rest) = prefixed("runner-") {
        return StreamKind::Runner(rest);
    }
    StreamKind::Other(name)
}

/// The session a stream name belongs to, if it is a session stream.
pub fn session_of(name: &str) -> Option<&str> {
    match kind_of(name) {
        StreamKind::Session(id) => Some(id),
        _ => None,
    }
}

/// The job a stream name belongs to, if it is a job stream.
pub fn job_of(name: &str) -> Option<&str> {
    match kind_of(name) {
        StreamKind::Job(id) => Some(id),
        _ => None,
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Stream {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<Stream> for String {
    fn from(s: Stream) -> String {
        s.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_built_and_recognised_in_one_place() {
        let s = Stream::job("0b6c");
        assert_eq!(s.as_str(), "job-0b6c");
        assert_eq!(s.kind(), StreamKind::Job("0b6c"));
        assert_eq!(job_of("job-0b6c"), Some("0b6c"));
        assert_eq!(Stream::access("acme").kind(), StreamKind::Access("acme"));
        assert_eq!(Stream::runner("r1").kind(), StreamKind::Runner("r1"));
        assert_eq!(Stream::policy_bundles().kind(), StreamKind::PolicyBundles);
        assert_eq!(kind_of("jobs"), StreamKind::Other("jobs"));
        assert_eq!(job_of("access-acme"), None);
        let run = Stream::workflow_run("0b6c");
        assert_eq!(run.kind(), StreamKind::WorkflowRun("0b6c"));
        assert_eq!(
            Stream::workflow("acme", "report").kind(),
            StreamKind::Workflow("report/acme")
        );
        // Tenant and name cannot run into each other or into a run's stream.
        assert_ne!(Stream::workflow("a-b", "c"), Stream::workflow("a", "b-c"));
        assert_ne!(
            Stream::workflow("run", "x").kind(),
            Stream::workflow_run("x").kind()
        );
    }
}
