//! The core's interface: [`SandboxBackend`], one method per thing a sandbox
//! backend does (execute, execute while reporting progress, sweep), typed
//! results out. The ledger-driven runner service, the benchmarks and the debug
//! CLI call it; none of them touches runsc or cgroups directly.

use crate::error::SandboxError;
use crate::result::{ExecutionResult, SweepReport};
use crate::spec::ExecutionSpec;
use std::future::Future;
use tokio_util::sync::CancellationToken;

/// Milestones of one execution, reported while it runs (the runner service
/// records them as `sandbox.provisioned` and `execution.started`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Bundle, workspace and cgroups exist; the sandbox is about to start.
    Provisioned {
        sandbox_id: String,
        runtime: String,
        /// The digest of the image the sandbox's root is.
        image_digest: Option<String>,
    },
    /// The sandboxed process was started.
    Started { sandbox_id: String },
}

/// A place code can run: gVisor via runsc locally, or a gVisor pod on Kubernetes.
pub trait SandboxBackend: Send + Sync {
    /// Short backend name recorded in `sandbox.provisioned` (e.g. `runsc`).
    fn name(&self) -> &'static str;

    fn execute(
        &self,
        spec: ExecutionSpec,
        cancel: CancellationToken,
    ) -> impl Future<Output = Result<ExecutionResult, SandboxError>> + Send;

    /// Like `execute`, reporting [`Progress`] on `progress` as it happens.
    fn execute_observed(
        &self,
        spec: ExecutionSpec,
        cancel: CancellationToken,
        progress: Option<tokio::sync::mpsc::UnboundedSender<Progress>>,
    ) -> impl Future<Output = Result<ExecutionResult, SandboxError>> + Send;

    fn sweep(&self) -> impl Future<Output = Result<SweepReport, SandboxError>> + Send;
}
