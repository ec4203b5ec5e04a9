//! Ledger verification, pure: feed rows in position order, get the first bad
//! position and why. The store (and the offline verifier) only supply rows,
//! checkpoints and the head; every judgement is made here.
//!
//! What each layer catches: the entry hash catches a changed payload or stored
//! hash; the chain (`prev_hash`) and dense positions catch removed, inserted or
//! swapped rows; only a signed checkpoint catches a cut tail or a tail rewritten
//! with a recomputed, self-consistent chain — the database alone cannot.

use crate::checkpoint::Checkpoint;
use crate::hash::Digest;
use crate::merkle::{Frontier, leaf_hash};
use crate::record::Header;
use std::collections::HashMap;
use std::fmt;

/// One stored row as read from `ledger.records`.
#[derive(Debug, Clone)]
pub struct RawRow {
    pub position: u64,
    pub event_id: uuid::Uuid,
    pub stream: String,
    pub stream_version: u64,
    pub event_type: String,
    pub tenant: String,
    pub canonical: Vec<u8>,
    pub entry_hash: Vec<u8>,
}

/// What is wrong at the first bad position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// No row holds this position although a later one exists (or a checkpoint covers it).
    Missing,
    /// Rows are not in strictly increasing position order.
    OutOfOrder { found: u64 },
    /// The stored entry hash is not SHA-256 of the stored bytes.
    EntryHashMismatch { stored: String, computed: Digest },
    /// The bytes are not a canonical v1 record.
    Malformed(String),
    /// The record's own `position` member differs from where it is stored.
    PositionMismatch { in_record: u64 },
    /// `prev_hash` is not the entry hash of the previous position.
    ChainBroken { prev_hash: Digest, expected: Digest },
    /// An indexed column disagrees with the record bytes.
    ColumnMismatch(&'static str),
    /// The stream version is not the next one for its stream.
    StreamVersion {
        stream: String,
        found: u64,
        expected: u64,
    },
    /// The Merkle root of the records up to a signed checkpoint's size differs from
    /// the signed root: something in (last matching checkpoint, size] was rewritten.
    CheckpointMismatch { size: u64 },
    /// A signed checkpoint covers records that are no longer there.
    TailMissing {
        checkpoint_size: u64,
        ledger_size: u64,
    },
    /// The head row disagrees with the records.
    HeadMismatch(String),
    /// A stored checkpoint's signature or body does not verify.
    BadCheckpoint { size: u64, reason: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing => write!(f, "record is missing"),
            Problem::OutOfOrder { found } => write!(f, "found position {found} out of order"),
            Problem::EntryHashMismatch { stored, computed } => write!(
                f,
                "stored entry hash {stored} is not SHA-256 of the stored bytes ({computed})"
            ),
            Problem::Malformed(why) => write!(f, "record bytes are not a valid v1 record: {why}"),
            Problem::PositionMismatch { in_record } => {
                write!(f, "record says it is at position {in_record}")
            }
            Problem::ChainBroken {
                prev_hash,
                expected,
            } => write!(
                f,
                "prev_hash {prev_hash} does not link to the previous record (entry hash {expected})"
            ),
            Problem::ColumnMismatch(col) => {
                write!(f, "column `{col}` disagrees with the record bytes")
            }
            Problem::StreamVersion {
                stream,
                found,
                expected,
            } => write!(
                f,
                "stream {stream} has version {found} where {expected} was expected"
            ),
            Problem::CheckpointMismatch { size } => write!(
                f,
                "records from here up to {size} do not match the signed checkpoint of size {size} (rewritten history)"
            ),
            Problem::TailMissing {
                checkpoint_size,
                ledger_size,
            } => write!(
                f,
                "ledger ends at {ledger_size} but a signed checkpoint covers {checkpoint_size} records (tail removed)"
            ),
            Problem::HeadMismatch(why) => write!(f, "head row: {why}"),
            Problem::BadCheckpoint { size, reason } => {
                write!(f, "checkpoint of size {size} does not verify: {reason}")
            }
        }
    }
}

/// The first bad position and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("position {position}: {problem}")]
pub struct Failure {
    pub position: u64,
    pub problem: Problem,
}

/// The part of checking a row that does not depend on other rows: hashing and
/// strict parsing. It is most of the work, so it can run in parallel.
pub struct Prechecked {
    computed: Digest,
    leaf: Digest,
    record: Result<Header, crate::record::RecordError>,
}

pub fn precheck(row: &RawRow) -> Prechecked {
    Prechecked {
        computed: Digest::of(&row.canonical),
        leaf: leaf_hash(&row.canonical),
        record: Header::from_canonical(&row.canonical),
    }
}

/// Where verification starts: the beginning, or a point authenticated by a
/// signed checkpoint (incremental verification).
#[derive(Debug, Clone)]
pub struct StartState {
    pub size: u64,
    pub last_entry_hash: Digest,
    pub frontier: Frontier,
}

impl StartState {
    pub fn genesis() -> StartState {
        StartState {
            size: 0,
            last_entry_hash: Digest::ZERO,
            frontier: Frontier::new(),
        }
    }
}

/// A summary of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub from: u64,
    pub to: u64,
    pub records: u64,
    pub root: Digest,
    pub last_entry_hash: Digest,
    pub checkpoints_checked: Vec<u64>,
    /// Streams that first appear in the range above version 1 (incremental runs):
    /// (stream, first version seen, position) — the store confirms their history.
    #[serde(skip)]
    pub streams_continued: Vec<(String, u64, u64)>,
}

/// Verifies rows one at a time, in position order.
pub struct ChainVerifier {
    start: u64,
    next: u64,
    prev: Digest,
    frontier: Frontier,
    versions: HashMap<String, u64>,
    continued: Vec<(String, u64, u64)>,
    /// Checkpoints by size (already signature-checked), ascending.
    checkpoints: Vec<Checkpoint>,
    cp_next: usize,
    last_good_checkpoint: u64,
    checked: Vec<u64>,
}

impl ChainVerifier {
    /// `checkpoints` must already have verified signatures.
    pub fn new(start: StartState, mut checkpoints: Vec<Checkpoint>) -> ChainVerifier {
        // Two checkpoints of one size with different roots are both kept: the
        // second fails at that size (a split view is never silently ignored).
        checkpoints.sort_by_key(|a| (a.size, a.root.0));
        checkpoints.dedup_by(|a, b| a.size == b.size && a.root == b.root);
        let cp_next = checkpoints.partition_point(|c| c.size <= start.size);
        ChainVerifier {
            start: start.size + 1,
            next: start.size + 1,
            prev: start.last_entry_hash,
            frontier: start.frontier,
            versions: HashMap::new(),
            continued: Vec::new(),
            last_good_checkpoint: start.size,
            checkpoints,
            cp_next,
            checked: Vec::new(),
        }
    }

    /// The next position this verifier expects.
    pub fn next_position(&self) -> u64 {
        self.next
    }

    fn fail(&self, position: u64, problem: Problem) -> Failure {
        Failure { position, problem }
    }

    /// Checks one row.
    pub fn push(&mut self, row: &RawRow) -> Result<(), Failure> {
        let pre = precheck(row);
        self.push_prechecked(row, pre)
    }

    /// Checks one row whose independent part was done by [`precheck`] (possibly on
    /// another thread): this part follows the chain and must run in order.
    pub fn push_prechecked(&mut self, row: &RawRow, pre: Prechecked) -> Result<(), Failure> {
        let p = self.next;
        let Prechecked {
            computed,
            leaf,
            record,
        } = pre;
        if row.position > p {
            return Err(self.fail(p, Problem::Missing));
        }
        if row.position < p {
            return Err(self.fail(
                p,
                Problem::OutOfOrder {
                    found: row.position,
                },
            ));
        }
        if row.entry_hash.as_slice() != computed.as_bytes() {
            return Err(self.fail(
                p,
                Problem::EntryHashMismatch {
                    stored: hex::encode(&row.entry_hash),
                    computed,
                },
            ));
        }
        let record = record.map_err(|e| self.fail(p, Problem::Malformed(e.to_string())))?;
        if record.position != p {
            return Err(self.fail(
                p,
                Problem::PositionMismatch {
                    in_record: record.position,
                },
            ));
        }
        if record.prev_hash != self.prev {
            return Err(self.fail(
                p,
                Problem::ChainBroken {
                    prev_hash: record.prev_hash,
                    expected: self.prev,
                },
            ));
        }
        let column = if record.event_id != row.event_id {
            Some("event_id")
        } else if record.stream != row.stream {
            Some("stream")
        } else if record.stream_version != row.stream_version {
            Some("stream_version")
        } else if record.event_type != row.event_type {
            Some("event_type")
        } else if record.tenant != row.tenant {
            Some("tenant")
        } else {
            None
        };
        if let Some(col) = column {
            return Err(self.fail(p, Problem::ColumnMismatch(col)));
        }
        match self.versions.get(&record.stream) {
            Some(v) if record.stream_version != v + 1 => {
                return Err(self.fail(
                    p,
                    Problem::StreamVersion {
                        stream: record.stream.clone(),
                        found: record.stream_version,
                        expected: v + 1,
                    },
                ));
            }
            None if record.stream_version != 1 => {
                if self.start == 1 {
                    return Err(self.fail(
                        p,
                        Problem::StreamVersion {
                            stream: record.stream.clone(),
                            found: record.stream_version,
                            expected: 1,
                        },
                    ));
                }
                self.continued
                    .push((record.stream.clone(), record.stream_version, p));
            }
            _ => {}
        }
        self.versions.insert(record.stream, record.stream_version);
        self.frontier.push(leaf);
        self.prev = computed;
        self.next += 1;
        // Every checkpoint of this size must match (two that disagree are a
        // split view); the first bad position is reported after the last
        // checkpoint that held before this size.
        let base = self.last_good_checkpoint;
        let mut matched = false;
        while let Some(cp) = self.checkpoints.get(self.cp_next) {
            if cp.size != p {
                break;
            }
            if cp.root != self.frontier.root() {
                return Err(self.fail(base + 1, Problem::CheckpointMismatch { size: cp.size }));
            }
            matched = true;
            self.checked.push(p);
            self.cp_next += 1;
        }
        if matched {
            self.last_good_checkpoint = p;
        }
        Ok(())
    }

    /// Completes a verification. With `head` (a full run to the end of the
    /// ledger) also checks the head row and that no checkpoint reaches beyond the
    /// last record.
    pub fn finish(self, head: Option<(u64, Digest)>) -> Result<Report, Failure> {
        let last = self.next - 1;
        if let Some((head_pos, head_hash)) = head {
            if let Some(cp) = self.checkpoints.iter().rev().find(|c| c.size > last) {
                return Err(self.fail(
                    last + 1,
                    Problem::TailMissing {
                        checkpoint_size: cp.size,
                        ledger_size: last,
                    },
                ));
            }
            if head_pos != last {
                return Err(self.fail(
                    last.min(head_pos) + 1,
                    Problem::HeadMismatch(format!("head says {head_pos} records, found {last}")),
                ));
            }
            if head_hash != self.prev {
                return Err(self.fail(
                    last,
                    Problem::HeadMismatch("head entry hash differs from the last record's".into()),
                ));
            }
        }
        Ok(Report {
            from: self.start,
            to: last,
            records: last + 1 - self.start,
            root: self.frontier.root(),
            last_entry_hash: self.prev,
            checkpoints_checked: self.checked,
            streams_continued: self.continued,
        })
    }
}
