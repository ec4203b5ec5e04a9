//! The one way anything decides and writes: read a stream, fold it into an
//! [`Aggregate`], let a pure decision look at the state, append what it
//! decided at exactly the version it looked at — and if the stream moved
//! meanwhile, fold what was added and decide again, a bounded number of times.
//!
//! Why one loop: the API, the runner and MCP each had their own read–fold–
//! append–retry loops with different retry limits; a decision made on a stale
//! state could slip through one of them. Here every decision is appended
//! against the exact version it saw ([`ExpectedVersion::Exactly`], or
//! `NoStream` for a new stream), so a claim, a cancellation and a takeover
//! cannot interleave unseen. A writer that keeps the state it got back
//! ([`Decided::state`]) does not read the stream again for its next decision
//! ([`EventStore::decide_from`]): only a conflict makes it read, and then only
//! the records it has not seen.

use crate::store::{
    AppendOutcome, AppendRequest, EventStore, ExpectedVersion, Idempotency, NewEvent, StoreError,
};
use glassbox_domain::Aggregate;
use glassbox_verify::record::Actor;

/// How often a decision is retried when its stream changed under it.
pub const MAX_DECIDE_ATTEMPTS: usize = 8;

/// Records read per query when a stream is folded.
const PAGE: u64 = 5_000;

/// Who appends, and the envelope of what they append.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub tenant: String,
    pub actor: Actor,
    /// Defaults to a new UUID per append.
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub request_id: Option<String>,
    pub idempotency: Option<Idempotency>,
}

impl Envelope {
    pub fn new(tenant: impl Into<String>, actor: Actor) -> Envelope {
        Envelope {
            tenant: tenant.into(),
            actor,
            correlation_id: None,
            causation_id: None,
            request_id: None,
            idempotency: None,
        }
    }

    /// The append request for `events`.
    pub fn request(&self, events: Vec<NewEvent>) -> AppendRequest {
        let mut r = AppendRequest::new(self.tenant.clone(), self.actor.clone(), events);
        if let Some(c) = &self.correlation_id {
            r.correlation_id.clone_from(c);
        }
        r.causation_id.clone_from(&self.causation_id);
        r.request_id.clone_from(&self.request_id);
        r.idempotency.clone_from(&self.idempotency);
        r
    }
}

/// Why a decision did not land.
#[derive(Debug, thiserror::Error)]
pub enum DecideError<R> {
    /// The decision refused (nothing was appended).
    #[error("{0}")]
    Refused(R),
    #[error(transparent)]
    Store(StoreError),
    /// The stream changed on every try.
    #[error("stream {stream} kept changing ({attempts} tries)")]
    Contended { stream: String, attempts: usize },
}

/// A decision that landed (or decided nothing).
#[derive(Debug)]
pub struct Decided<A> {
    /// The state with the appended records folded in.
    pub state: A,
    /// `None` when the decision appended nothing.
    pub appended: Option<AppendOutcome>,
}

impl EventStore {
    /// Folds `stream` from the start.
    pub async fn load<A: Aggregate>(&self, stream: &str) -> Result<A, StoreError> {
        let mut state = A::default();
        self.catch_up(stream, &mut state).await?;
        Ok(state)
    }

    /// Folds the records of `stream` after `state`'s version into it.
    pub async fn catch_up<A: Aggregate>(
        &self,
        stream: &str,
        state: &mut A,
    ) -> Result<(), StoreError> {
        loop {
            let page = self.read_stream(stream, state.version() + 1, PAGE).await?;
            let n = page.len() as u64;
            for r in &page {
                state.apply(&r.record);
            }
            if n < PAGE {
                return Ok(());
            }
        }
    }

    /// Reads and folds `stream`, then decides and appends (see the module docs).
    pub async fn decide<A, R, F>(
        &self,
        stream: &str,
        envelope: &Envelope,
        decide: F,
    ) -> Result<Decided<A>, DecideError<R>>
    where
        A: Aggregate,
        F: FnMut(&A) -> Result<Vec<NewEvent>, R>,
    {
        let state = self.load(stream).await.map_err(DecideError::Store)?;
        self.decide_from(stream, state, envelope, decide).await
    }

    /// Decides on a state the caller carried forward (from an earlier
    /// [`Decided`]); reads only if the stream moved since.
    pub async fn decide_from<A, R, F>(
        &self,
        stream: &str,
        mut state: A,
        envelope: &Envelope,
        mut decide: F,
    ) -> Result<Decided<A>, DecideError<R>>
    where
        A: Aggregate,
        F: FnMut(&A) -> Result<Vec<NewEvent>, R>,
    {
        for attempt in 1..=MAX_DECIDE_ATTEMPTS {
            let events = decide(&state).map_err(DecideError::Refused)?;
            if events.is_empty() {
                return Ok(Decided {
                    state,
                    appended: None,
                });
            }
            let expected = match state.version() {
                0 => ExpectedVersion::NoStream,
                v => ExpectedVersion::Exactly(v),
            };
            let req = envelope.request(events).expect(stream, expected);
            match self.append(req).await {
                Ok(outcome) => {
                    for r in outcome.records.iter().filter(|r| r.stream == stream) {
                        state.apply(r);
                    }
                    return Ok(Decided {
                        state,
                        appended: Some(outcome),
                    });
                }
                Err(StoreError::Conflict(_)) => {
                    // Someone appended meanwhile: fold what was added, decide again.
                    if attempt < MAX_DECIDE_ATTEMPTS {
                        tokio::time::sleep(std::time::Duration::from_millis(5 * attempt as u64))
                            .await;
                    }
                    self.catch_up(stream, &mut state)
                        .await
                        .map_err(DecideError::Store)?;
                }
                Err(e) => return Err(DecideError::Store(e)),
            }
        }
        Err(DecideError::Contended {
            stream: stream.to_owned(),
            attempts: MAX_DECIDE_ATTEMPTS,
        })
    }
}
