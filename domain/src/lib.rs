//! # glassbox-domain — what things are and what may happen to them
//!
//! Pure: no database, no async runtime, no I/O. The event catalogue
//! ([`catalogue`]), the job aggregate ([`job`]: fold with `apply`, decide with
//! `decide`), statuses as types ([`status`]), stream names as items
//! ([`stream`]), and requests parsed into validated types ([`request`]).
//! Every service builds on these, so a rule is written once: the API, MCP, the
//! runner, the projector and replay all agree because they run the same code.
//! Its dependency graph holds no database driver or runtime (checked by the
//! architecture test in `tests/`).

pub mod aggregate;
pub mod catalogue;
pub mod job;
pub mod page;
pub mod request;
pub mod session;
pub mod status;
pub mod stream;
pub mod workflow;

pub use aggregate::Aggregate;
pub use catalogue::{Event, KnownEvent};
pub use job::{Finish, Job, JobCommand, JobView, Refusal};
pub use page::Cursor;
pub use request::{JobRequest, JobSpec};
pub use session::{Session, SessionCommand, SessionRefusal, SessionView};
pub use status::{JobStatus, SessionStatus};
pub use stream::Stream;
