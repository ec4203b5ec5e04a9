//! A workflow's definitions (stream `workflow-def-<name>/<tenant>`): one
//! `workflow.defined` per version, each naming its definition by digest.
//! Defining the same document again is not a new version; defining another
//! is, so a run names exactly what it ran (`version` + `digest`).

use crate::aggregate::Aggregate;
use crate::catalogue::{self as c, KnownEvent};
use chrono::{DateTime, Utc};
use glassbox_verify::record::Record;

/// One stored version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub defined: c::WorkflowDefined,
    pub position: u64,
    pub defined_at: DateTime<Utc>,
    pub defined_by: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkflowVersions {
    pub version: u64,
    pub tenant: String,
    /// Oldest first; `versions[i].defined.version == i + 1`.
    pub versions: Vec<Version>,
}

impl WorkflowVersions {
    pub fn apply(&mut self, r: &Record) {
        self.version = r.stream_version;
        if self.tenant.is_empty() {
            self.tenant.clone_from(&r.tenant);
        }
        if let Ok(Some(KnownEvent::WorkflowDefined(e))) = KnownEvent::decode(&r.event_type, &r.data)
        {
            self.versions.push(Version {
                defined: *e,
                position: r.position,
                defined_at: r.occurred_at,
                defined_by: r.actor.id.clone(),
            });
        }
    }

    pub fn latest(&self) -> Option<&Version> {
        self.versions.last()
    }

    /// Version `n` (1-based).
    pub fn get(&self, n: u64) -> Option<&Version> {
        self.versions.iter().find(|v| v.defined.version == n)
    }

    /// The version that defining `digest` now would get: `Ok(existing)` when
    /// the latest version is that very document (nothing to record),
    /// `Err(next)` for a new version.
    pub fn version_for(&self, digest: &str) -> Result<&Version, u64> {
        match self.latest() {
            Some(v) if v.defined.digest == digest => Ok(v),
            _ => Err(self.versions.len() as u64 + 1),
        }
    }
}

impl Aggregate for WorkflowVersions {
    fn apply(&mut self, record: &Record) {
        WorkflowVersions::apply(self, record);
    }
    fn version(&self) -> u64 {
        self.version
    }
}
