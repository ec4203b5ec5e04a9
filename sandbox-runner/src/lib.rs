//! # glassbox-sandbox-runner — the data plane
//!
//! Only this crate runs untrusted code. Its core is one interface: an [`Action`]
//! goes in (execute a [`spec::ExecutionSpec`], or sweep what a previous run of this
//! runner left behind) and a typed result comes out, through the
//! [`backend::SandboxBackend`] trait. The local backend ([`local::LocalRunsc`])
//! drives gVisor's `runsc run` with one OCI bundle per execution; a Kubernetes
//! backend can implement the same trait.
//!
//! Why so much care with cleanup: a sandbox that outlives its job keeps host
//! resources and, worse, a workspace with the job's data. Every path — success,
//! timeout, cancel, OOM, crash, panic, a dropped future, a restarted runner — ends
//! with the workspace scrubbed and unmounted, the cgroups removed and no runsc state.

pub mod backend;
pub mod egress;
pub mod error;
pub mod local;
pub mod metrics;
pub mod ports;
pub mod result;
pub mod runtime;
pub mod service;
pub mod sessions;
pub mod spec;

pub use backend::SandboxBackend;
pub use error::SandboxError;
pub use local::{LocalConfig, LocalRunsc, Roots, SandboxRoot};
pub use result::ExecutionResult;
pub use runtime::RuntimeRegistry;
pub use spec::{ExecutionSpec, InputFile, Limits};
pub use tokio_util::sync::CancellationToken;
