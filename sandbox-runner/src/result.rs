//! What happened: the result of one execution and of a sweep.

use glassbox_events::catalogue::Outcome;
use serde::Serialize;

/// Captured stdout or stderr, capped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Captured {
    /// The first `limit` bytes.
    #[serde(skip)]
    pub bytes: Vec<u8>,
    /// Everything the program wrote, counted even past the cap.
    pub total_bytes: u64,
    pub truncated: bool,
}

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// A file collected from `/workspace/out`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CollectedFile {
    /// Relative to `/workspace/out`.
    pub path: String,
    #[serde(skip)]
    pub content: Vec<u8>,
    pub size_bytes: u64,
    pub truncated: bool,
}

/// Something in `/workspace/out` that was not collected, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// How the workspace was destroyed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Teardown {
    pub method: String,
    pub bytes_scrubbed: u64,
    pub files_scrubbed: u64,
    /// Everything was scrubbed, unmounted and removed.
    pub complete: bool,
    /// What could not be done (steps only, never a program's file name).
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecutionResult {
    pub sandbox_id: String,
    pub backend: &'static str,
    pub runtime: String,
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Why the outcome is `crashed` (runsc's own error), if known.
    pub detail: Option<String>,
    pub wall_ms: u64,
    pub cpu_ms: Option<u64>,
    pub peak_memory_bytes: Option<u64>,
    pub stdout: Captured,
    pub stderr: Captured,
    pub files: Vec<CollectedFile>,
    /// More files or bytes were in `/workspace/out` than the limits allow.
    pub files_truncated: bool,
    /// Up to 256 things in `/workspace/out` that were not collected.
    pub skipped: Vec<Skipped>,
    /// How many things were not collected in all.
    pub skipped_total: u64,
    pub teardown: Teardown,
}

/// What a sweep removed, and what it could not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    pub sandboxes: Vec<String>,
    pub workspaces: Vec<String>,
    pub bundles: Vec<String>,
    pub cgroups: Vec<String>,
    pub bytes_scrubbed: u64,
    /// One entry per sandbox whose leftovers could not all be removed; the
    /// sweep goes on with the others.
    pub failures: Vec<SweepFailure>,
}

/// A leftover a sweep could not remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SweepFailure {
    pub sandbox_id: String,
    pub step: String,
    pub detail: String,
}
