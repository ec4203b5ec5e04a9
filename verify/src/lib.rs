//! # glassbox-verify — what an auditor runs, and nothing else
//!
//! The ledger format v1 and everything needed to check it offline:
//! [`canonical`] (RFC 8785), [`hash`], [`record`] (the strict v1 envelope),
//! [`merkle`] (RFC 9162 trees and proofs), [`checkpoint`] (C2SP signed notes),
//! [`chain`] (the hash chain verifier every ledger check uses), [`tarball`] and
//! [`bundle`] (evidence bundles: renderings and the offline verifier).
//!
//! Why a crate of its own: an auditor must be able to build and run the
//! verifier without trusting, or even compiling, the service. This crate does
//! no I/O beyond reading the file it is given, and its dependency graph holds
//! no database driver, server or async runtime (an architecture test checks
//! it); the `glassbox-verify` binary is built from it alone.

pub mod bundle;
pub mod canonical;
pub mod chain;
pub mod checkpoint;
pub mod cli;
pub mod hash;
pub mod merkle;
pub mod record;
pub mod tarball;

pub use checkpoint::{Checkpoint, SigningKey, VerifierKey};
pub use hash::Digest;
pub use record::{Actor, ActorKind, AuthVia, Record};
