//! Typed errors: each names the step that failed and the sandbox it was for.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid execution spec: {0}")]
    InvalidSpec(String),
    #[error("unknown language {0:?} (known: {1})")]
    UnknownLanguage(String, String),
    #[error("runtime registry {path}: {reason}")]
    Registry { path: PathBuf, reason: String },
    #[error("{step} [{sandbox_id}]: runsc not found or not runnable at {path:?}: {detail}")]
    RunscMissing {
        step: &'static str,
        sandbox_id: String,
        path: PathBuf,
        detail: String,
    },
    #[error("{step} [{sandbox_id}]: runsc failed: {detail}")]
    Runsc {
        step: &'static str,
        sandbox_id: String,
        detail: String,
    },
    #[error("{step} [{sandbox_id}]: cgroup {path}: {source}")]
    Cgroup {
        step: &'static str,
        sandbox_id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{step} [{sandbox_id}]: mount {path}: {detail}")]
    Mount {
        step: &'static str,
        sandbox_id: String,
        path: PathBuf,
        detail: String,
    },
    #[error("{step} [{sandbox_id}]: {path}: {source}")]
    Io {
        step: &'static str,
        sandbox_id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{step}: {source}")]
    Image {
        step: &'static str,
        #[source]
        source: glassbox_images::ImageError,
    },
    #[error("{step}: this host is not supported: {detail}")]
    Unsupported { step: &'static str, detail: String },
}
