//! Replay for incident review: a stream's state at a point in the past, the
//! timeline of what happened and who did it, and re-evaluation of every
//! recorded policy decision against the bundle that made it.
//!
//! The state of a job stream is folded by the projector's own code (see
//! `glassbox_projector::job_as_of`: the domain's `Job::apply`), so replay at position N equals the read
//! model as it stood at N — not a second interpretation of the events.

use chrono::{DateTime, Utc};
use glassbox_events::catalogue::{Decision as Verdict, Event as _, KnownEvent, PolicyEvaluated};
use glassbox_events::store::{EventStore, StoreError, StoredRecord};
use glassbox_platform::blob::BlobStore;
use glassbox_policies::{Policy, PolicyEngine};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashMap;

/// Where to stop: a ledger position or a time (the last record at or before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    Position(u64),
    Time(DateTime<Utc>),
}

impl std::str::FromStr for At {
    type Err = String;
    /// Digits only (at most 2^53 - 1, what the ledger stores exactly), or an
    /// RFC 3339 time.
    fn from_str(s: &str) -> Result<At, String> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse::<u64>()
                .ok()
                .filter(|p| *p <= glassbox_domain::request::MAX_INTEGER)
                .map(At::Position)
                .ok_or_else(|| {
                    format!(
                        "at: a position is at most {}",
                        glassbox_domain::request::MAX_INTEGER
                    )
                });
        }
        DateTime::parse_from_rfc3339(s)
            .map(|t| At::Time(t.with_timezone(&Utc)))
            .map_err(|_| {
                let shown: String = s.chars().take(64).collect();
                format!("at: {shown:?} is neither a ledger position nor an RFC 3339 time")
            })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("replay: {0}")]
    Store(#[from] StoreError),
    #[error("replay: {0}")]
    Projector(#[from] glassbox_projector::ProjectorError),
    #[error("replay: stream {0} has no records")]
    NoStream(String),
}

/// One recorded decision, evaluated again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reevaluation {
    pub position: u64,
    pub policy: String,
    pub bundle_digest: String,
    pub recorded: Value,
    pub now: Value,
    pub reproduces: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Replay {
    pub stream: String,
    pub tenant: String,
    /// The last record of the stream at or before the requested point.
    pub at_position: u64,
    /// The folded state (the job's read-model row for job streams).
    pub state: Value,
    pub timeline: Vec<Value>,
}

fn timeline_entry(r: &StoredRecord) -> Value {
    let d = &r.record.data;
    let summary = d
        .get("policy")
        .or_else(|| d.get("outcome"))
        .or_else(|| d.get("reason"))
        .or_else(|| d.get("name"))
        .or_else(|| d.get("runner"))
        .cloned()
        .unwrap_or(Value::Null);
    json!({
        "position": r.record.position,
        "occurred_at": glassbox_events::record::format_timestamp(&r.record.occurred_at),
        "type": r.record.event_type,
        "actor": r.record.actor,
        "decision": d.get("decision"),
        "summary": summary,
        "entry_hash": r.entry_hash.to_hex(),
    })
}

/// The stream's records up to `at` (all of them when `at` is `None`).
pub async fn records_until(
    store: &EventStore,
    stream: &str,
    at: Option<At>,
) -> Result<Vec<StoredRecord>, ReplayError> {
    let all = store.read_stream(stream, 1, 1_000_000).await?;
    if all.is_empty() {
        return Err(ReplayError::NoStream(stream.to_owned()));
    }
    Ok(all
        .into_iter()
        .filter(|r| match at {
            None => true,
            Some(At::Position(p)) => r.record.position <= p,
            Some(At::Time(t)) => r.record.occurred_at <= t,
        })
        .collect())
}

/// Folds `stream` up to `at` (default: now) into its state and timeline.
pub async fn replay(
    store: &EventStore,
    stream: &str,
    at: Option<At>,
) -> Result<Replay, ReplayError> {
    let records = records_until(store, stream, at).await?;
    let tenant = store
        .read_stream(stream, 1, 1)
        .await?
        .first()
        .map(|r| r.record.tenant.clone())
        .unwrap_or_default();
    let at_position = records.last().map_or(0, |r| r.record.position);
    let state = match glassbox_domain::stream::job_of(stream) {
        Some(job) if at_position > 0 => glassbox_projector::job_as_of(store, job, at_position)
            .await?
            .unwrap_or(Value::Null),
        _ => Value::Null,
    };
    Ok(Replay {
        stream: stream.to_owned(),
        tenant,
        at_position,
        state,
        timeline: records.iter().map(timeline_entry).collect(),
    })
}

/// Re-runs every `policy.evaluated` in `records` with its recorded input
/// against the recorded bundle (fetched by digest) and says whether the
/// decision, its reasons and the input digest come out the same.
pub async fn reevaluate(blobs: &BlobStore, records: &[StoredRecord]) -> Vec<Reevaluation> {
    let mut engines: HashMap<String, Result<PolicyEngine, String>> = HashMap::new();
    let mut out = Vec::new();
    for r in records {
        if r.record.event_type != PolicyEvaluated::TYPE {
            continue;
        }
        let Ok(Some(KnownEvent::PolicyEvaluated(e))) =
            KnownEvent::decode(&r.record.event_type, &r.record.data)
        else {
            continue;
        };
        let digest = e.bundle_digest.to_hex();
        if !engines.contains_key(&digest) {
            let engine = match crate::policy_bundles::load(blobs, &e.bundle_digest).await {
                Ok(b) => PolicyEngine::new(&b).map_err(|err| err.to_string()),
                Err(err) => Err(err.to_string()),
            };
            engines.insert(digest.clone(), engine);
        }
        let recorded = json!({"decision": e.decision, "reasons": e.reasons, "input_digest": e.input_digest.to_hex()});
        let policy = Policy::ALL.iter().find(|p| p.name() == e.policy).copied();
        let now = match (engines.get(&digest), policy) {
            (Some(Ok(engine)), Some(p)) => {
                let d = engine.evaluate(p, &Value::Object(e.input.clone()));
                json!({
                    "decision": if d.allow { Verdict::Allow } else { Verdict::Deny },
                    "reasons": d.reasons,
                    "input_digest": d.input_digest.to_hex(),
                })
            }
            (Some(Err(err)), _) => json!({"error": format!("bundle {digest} unavailable: {err}")}),
            (_, None) => json!({"error": format!("unknown policy {}", e.policy)}),
            (None, _) => json!({"error": "no engine"}),
        };
        out.push(Reevaluation {
            position: r.record.position,
            policy: e.policy.clone(),
            bundle_digest: digest,
            reproduces: now == recorded,
            recorded,
            now,
        });
    }
    out
}
