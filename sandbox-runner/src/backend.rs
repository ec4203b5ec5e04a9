//! The core's interface: one enum of actions in, typed results out.
//!
//! HTTP, gRPC, the ledger-driven runner service and the debug CLI all parse into
//! [`Action`]; none of them touches runsc or cgroups directly.

use crate::error::SandboxError;
use crate::result::{ExecutionResult, SweepReport};
use crate::spec::ExecutionSpec;
use std::future::Future;
use tokio_util::sync::CancellationToken;

/// What a backend can be asked to do.
#[derive(Debug)]
pub enum Action {
    /// Run one execution to completion (or until `cancel` fires).
    Execute {
        spec: Box<ExecutionSpec>,
        cancel: CancellationToken,
    },
    /// Remove every sandbox, bundle, cgroup and mount this runner owns that is not
    /// part of a live execution (done automatically at start-up).
    Sweep,
}

/// What an [`Action`] produced.
#[derive(Debug)]
pub enum ActionOutput {
    Executed(Box<ExecutionResult>),
    Swept(SweepReport),
}

/// Milestones of one execution, reported while it runs (the runner service
/// records them as `sandbox.provisioned` and `execution.started`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Bundle, workspace and cgroups exist; the sandbox is about to start.
    Provisioned { sandbox_id: String, runtime: String },
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

    /// Dispatches an [`Action`].
    fn handle(
        &self,
        action: Action,
    ) -> impl Future<Output = Result<ActionOutput, SandboxError>> + Send {
        async move {
            match action {
                Action::Execute { spec, cancel } => Ok(ActionOutput::Executed(Box::new(
                    self.execute(*spec, cancel).await?,
                ))),
                Action::Sweep => Ok(ActionOutput::Swept(self.sweep().await?)),
            }
        }
    }
}
