//! # glassbox-events — the ledger
//!
//! Everything Glassbox does becomes a record in one append-only ledger that an
//! outside auditor can verify without trusting the database (format:
//! `docs/ledger-format.md`). The pure modules — [`canonical`], [`hash`],
//! [`record`], [`catalogue`], [`merkle`], [`checkpoint`], [`verify`] — do no I/O,
//! so an offline verifier can use them on exported records. [`store`] is the only
//! code in the workspace that reads or writes the `ledger` schema, and it never
//! updates or deletes a record.

pub mod canonical;
pub mod catalogue;
pub mod checkpoint;
pub mod hash;
pub mod merkle;
pub mod pg;
pub mod record;
pub mod store;
pub mod testing;
pub mod verify;

pub use catalogue::{Event, KnownEvent};
pub use checkpoint::{Checkpoint, SigningKey, VerifierKey};
pub use hash::Digest;
pub use record::{Actor, ActorKind, AuthVia, Record};
pub use store::{
    AppendOutcome, AppendRequest, Conflict, EventStore, ExpectedVersion, NewEvent, StoreError,
    StoredRecord, Subscription, migrate,
};
pub use verify::{Failure, Problem, Report};
