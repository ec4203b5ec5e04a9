//! # glassbox-session-agent — the process inside a session's sandbox
//!
//! A session's sandbox stays up between calls and its code contexts keep
//! their state. The runner talks to this small program (the only process it
//! starts in the sandbox) over the sandbox's stdin and stdout ([`protocol`]);
//! the agent keeps an interpreter kernel alive ([`kernels`]), runs shell
//! commands, and reads and writes files in the workspace ([`agent`]).
//!
//! Why a crate of its own: the binary is bound read-only into every session's
//! sandbox, so it stays small — the standard library, serde and rustix, and
//! none of the service's dependencies.

pub mod agent;
pub mod forward;
pub mod kernels;
pub mod protocol;

pub use agent::main;
