//! # glassbox-events — the ledger store
//!
//! Everything Glassbox does becomes a record in one append-only ledger that an
//! outside auditor can verify without trusting the database (format:
//! `docs/ledger-format.md`). The format itself — [`canonical`], [`hash`],
//! [`record`], [`merkle`], [`checkpoint`], the chain [`verify`]er — lives in the
//! pure `glassbox-verify` crate (the auditor's tool) and the event [`catalogue`]
//! in `glassbox-domain`; both are re-exported here. [`store`] is the only code
//! in the workspace that reads or writes the `ledger` schema, and it never
//! updates or deletes a record; its `decide` is the one read–fold–decide–append
//! loop every writer uses.

pub use glassbox_domain::catalogue;
pub use glassbox_verify::chain as verify;
pub use glassbox_verify::{canonical, checkpoint, hash, merkle, record};

pub mod decide;
pub mod pg;
pub mod store;
pub mod testing;

pub use catalogue::{Event, KnownEvent};
pub use checkpoint::{Checkpoint, SigningKey, VerifierKey};
pub use decide::{DecideError, Decided, Envelope};
pub use hash::Digest;
pub use record::{Actor, ActorKind, AuthVia, Record};
pub use store::{
    AppendOutcome, AppendRequest, Conflict, EventStore, ExpectedVersion, NewEvent, StoreError,
    StoredRecord, Subscription, migrate,
};
pub use verify::{Failure, Problem, Report};
