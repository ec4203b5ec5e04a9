//! # glassbox-runner-api — the gRPC contract between the planes
//!
//! `proto/runner.proto`, compiled at build time (protox, no `protoc`), with
//! tonic's client and server. No logic: the runner serves it
//! (`glassbox-sandbox-runner`), the control plane calls it
//! (`glassbox-command-api`), and both take their token rules from
//! `glassbox-platform::runner_token`.

#![allow(clippy::derive_partial_eq_without_eq)]

/// Generated code of `glassbox.runner.v1`.
pub mod v1 {
    tonic::include_proto!("glassbox.runner.v1");
}

pub use v1::runner_client::RunnerClient;
pub use v1::runner_server::{Runner, RunnerServer};
