//! The one interface between a stream's records and what they mean.

use glassbox_verify::record::Record;

/// State folded from a stream's records, in stream order. The ledger store's
/// `decide` loop reads a stream, folds it with `apply`, lets a pure decision
/// look at it, and appends at `version()` — so every decision is made on the
/// exact state it was appended against.
pub trait Aggregate: Default {
    /// Applies the stream's next record.
    fn apply(&mut self, record: &Record);
    /// The stream version of the last record applied (0: none).
    fn version(&self) -> u64;

    /// The state after `records`, applied in order to the empty state.
    fn fold<'a>(records: impl IntoIterator<Item = &'a Record>) -> Self {
        let mut state = Self::default();
        for r in records {
            state.apply(r);
        }
        state
    }
}
