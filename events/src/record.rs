//! The record envelope of ledger format v1 (docs/ledger-format.md).
//!
//! A [`Record`] is what gets hashed: its canonical bytes (RFC 8785) are the exact
//! bytes stored and chained. [`Record::from_canonical`] is strict — it refuses any
//! byte string that is not the canonical form of a well-formed v1 record — because
//! verification must not accept two different byte strings for one record.

use crate::canonical::{self, MAX_SAFE_INTEGER};
use crate::hash::Digest;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The only record format version this crate writes.
pub const FORMAT_VERSION: u64 = 1;

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: String,
    pub app: Option<String>,
    pub agent: Option<String>,
    pub via: AuthVia,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    User,
    Agent,
    Service,
    System,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthVia {
    Jwt,
    Bypass,
    Internal,
}

impl Actor {
    /// The service itself acting (projector, runner, migrations …).
    pub fn system(id: impl Into<String>) -> Actor {
        Actor {
            kind: ActorKind::System,
            id: id.into(),
            app: None,
            agent: None,
            via: AuthVia::Internal,
        }
    }
}

/// One ledger record, format v1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub position: u64,
    pub event_id: Uuid,
    pub stream: String,
    pub stream_version: u64,
    pub event_type: String,
    /// Always UTC with microsecond precision.
    pub occurred_at: DateTime<Utc>,
    pub tenant: String,
    pub actor: Actor,
    pub correlation_id: String,
    pub causation_id: Option<String>,
    pub request_id: Option<String>,
    pub data: Map<String, Value>,
    pub prev_hash: Digest,
}

/// Why bytes or values do not form a valid v1 record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record is not valid JSON: {0}")]
    Json(String),
    #[error("record member `{0}` is missing or has the wrong type")]
    Member(&'static str),
    #[error("record has unexpected member `{0}`")]
    UnexpectedMember(String),
    #[error("record format version {0} is not supported")]
    Version(String),
    #[error("record bytes are not in RFC 8785 canonical form")]
    NotCanonical,
    #[error("event data at `{path}` holds a float ({value}); use integers (ms, bytes)")]
    Float { path: String, value: String },
    #[error("event data at `{path}` holds an integer outside ±(2^53-1)")]
    IntegerRange { path: String },
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

const MEMBERS: [&str; 14] = [
    "v",
    "position",
    "event_id",
    "stream",
    "stream_version",
    "type",
    "occurred_at",
    "tenant",
    "actor",
    "correlation_id",
    "causation_id",
    "request_id",
    "data",
    "prev_hash",
];

/// Formats a timestamp the way records carry it: RFC 3339, UTC, microseconds, `Z`.
pub fn format_timestamp(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Truncates a timestamp to the microsecond precision records keep.
pub fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// Checks that event data holds only strings, booleans, null, arrays, objects and
/// integers with |n| < 2^53 — the ledger refuses floats (§4 of DESIGN.md).
pub fn check_data(data: &Map<String, Value>) -> Result<(), RecordError> {
    fn walk(v: &Value, path: &mut String) -> Result<(), RecordError> {
        match v {
            Value::Number(n) => {
                if n.is_f64() {
                    return Err(RecordError::Float {
                        path: path.clone(),
                        value: n.to_string(),
                    });
                }
                let ok = match (n.as_i64(), n.as_u64()) {
                    (Some(i), _) => i.unsigned_abs() <= MAX_SAFE_INTEGER,
                    (None, Some(u)) => u <= MAX_SAFE_INTEGER,
                    _ => false,
                };
                if !ok {
                    return Err(RecordError::IntegerRange { path: path.clone() });
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    walk(item, path)?;
                    path.truncate(len);
                }
            }
            Value::Object(map) => {
                for (k, item) in map {
                    let len = path.len();
                    path.push('.');
                    path.push_str(k);
                    walk(item, path)?;
                    path.truncate(len);
                }
            }
            _ => {}
        }
        Ok(())
    }
    let mut path = String::from("data");
    for (k, v) in data {
        let len = path.len();
        path.push('.');
        path.push_str(k);
        walk(v, &mut path)?;
        path.truncate(len);
    }
    Ok(())
}

impl Record {
    /// The record as a JSON object with exactly the v1 members.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("v".into(), Value::from(FORMAT_VERSION));
        m.insert("position".into(), Value::from(self.position));
        m.insert("event_id".into(), Value::from(self.event_id.to_string()));
        m.insert("stream".into(), Value::from(self.stream.clone()));
        m.insert("stream_version".into(), Value::from(self.stream_version));
        m.insert("type".into(), Value::from(self.event_type.clone()));
        m.insert(
            "occurred_at".into(),
            Value::from(format_timestamp(&self.occurred_at)),
        );
        m.insert("tenant".into(), Value::from(self.tenant.clone()));
        m.insert(
            "actor".into(),
            serde_json::to_value(&self.actor).unwrap_or(Value::Null),
        );
        m.insert(
            "correlation_id".into(),
            Value::from(self.correlation_id.clone()),
        );
        m.insert("causation_id".into(), opt_str(&self.causation_id));
        m.insert("request_id".into(), opt_str(&self.request_id));
        m.insert("data".into(), Value::Object(self.data.clone()));
        m.insert("prev_hash".into(), Value::from(self.prev_hash.to_hex()));
        Value::Object(m)
    }

    /// Canonical bytes (RFC 8785) — what is stored, hashed and chained.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, RecordError> {
        check_data(&self.data)?;
        canonical::to_canonical_bytes(&self.to_value())
            .map_err(|e| RecordError::Json(e.to_string()))
    }

    /// Parses and strictly validates canonical bytes.
    ///
    /// The parsed value itself is re-serialized and compared with the input (no
    /// deep copies): verification runs this once per record.
    pub fn from_canonical(bytes: &[u8]) -> Result<Record, RecordError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| RecordError::Json(e.to_string()))?;
        let Value::Object(obj) = &value else {
            return Err(RecordError::Json("not an object".into()));
        };
        for k in obj.keys() {
            if !MEMBERS.contains(&k.as_str()) {
                return Err(RecordError::UnexpectedMember(k.clone()));
            }
        }
        match obj.get("v").and_then(Value::as_u64) {
            Some(FORMAT_VERSION) => {}
            Some(other) => return Err(RecordError::Version(other.to_string())),
            None => return Err(RecordError::Member("v")),
        }
        match obj.get("data") {
            Some(Value::Object(data)) => check_data(data)?,
            _ => return Err(RecordError::Member("data")),
        }
        if canonical::to_canonical_bytes(&value).map_err(|e| RecordError::Json(e.to_string()))?
            != bytes
        {
            return Err(RecordError::NotCanonical);
        }
        let Value::Object(mut obj) = value else {
            return Err(RecordError::Json("not an object".into()));
        };
        let mut take_string = |k: &'static str| match obj.remove(k) {
            Some(Value::String(s)) => Ok(s),
            _ => Err(RecordError::Member(k)),
        };
        let event_id_text = take_string("event_id")?;
        let stream = take_string("stream")?;
        let event_type = take_string("type")?;
        let occurred_text = take_string("occurred_at")?;
        let tenant = take_string("tenant")?;
        let correlation_id = take_string("correlation_id")?;
        let prev_text = take_string("prev_hash")?;
        let event_id = Uuid::parse_str(&event_id_text).map_err(|e| RecordError::Invalid {
            field: "event_id",
            reason: e.to_string(),
        })?;
        if event_id.hyphenated().to_string() != event_id_text {
            return Err(RecordError::Invalid {
                field: "event_id",
                reason: "not a lowercase hyphenated UUID".into(),
            });
        }
        let occurred_at = DateTime::parse_from_rfc3339(&occurred_text)
            .map_err(|e| RecordError::Invalid {
                field: "occurred_at",
                reason: e.to_string(),
            })?
            .with_timezone(&Utc);
        if format_timestamp(&occurred_at) != occurred_text {
            return Err(RecordError::Invalid {
                field: "occurred_at",
                reason: "not UTC with microseconds and `Z`".into(),
            });
        }
        Ok(Record {
            position: positive(&obj, "position")?,
            stream_version: positive(&obj, "stream_version")?,
            event_id,
            stream,
            event_type,
            occurred_at,
            tenant,
            actor: serde_json::from_value(obj.remove("actor").unwrap_or(Value::Null))
                .map_err(|_| RecordError::Member("actor"))?,
            correlation_id,
            causation_id: nullable_string(&obj, "causation_id")?,
            request_id: nullable_string(&obj, "request_id")?,
            data: match obj.remove("data") {
                Some(Value::Object(m)) => m,
                _ => return Err(RecordError::Member("data")),
            },
            prev_hash: Digest::from_hex(&prev_text).ok_or(RecordError::Invalid {
                field: "prev_hash",
                reason: "not 64 lowercase hex digits".into(),
            })?,
        })
    }

    /// SHA-256 of the canonical bytes.
    pub fn entry_hash(&self) -> Result<Digest, RecordError> {
        Ok(Digest::of(&self.canonical_bytes()?))
    }
}

fn opt_str(s: &Option<String>) -> Value {
    s.as_ref().map_or(Value::Null, |s| Value::from(s.clone()))
}

fn nullable_string(
    obj: &Map<String, Value>,
    k: &'static str,
) -> Result<Option<String>, RecordError> {
    match obj.get(k) {
        Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        _ => Err(RecordError::Member(k)),
    }
}

fn positive(obj: &Map<String, Value>, k: &'static str) -> Result<u64, RecordError> {
    match obj.get(k).and_then(Value::as_u64) {
        Some(n) if n >= 1 => Ok(n),
        _ => Err(RecordError::Member(k)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn sample(position: u64, prev: Digest) -> Record {
        Record {
            position,
            event_id: Uuid::new_v4(),
            stream: "job-1".into(),
            stream_version: position,
            event_type: "job.submitted".into(),
            occurred_at: truncate_to_micros(Utc::now()),
            tenant: "acme".into(),
            actor: Actor::system("test"),
            correlation_id: "c-1".into(),
            causation_id: None,
            request_id: Some("r-1".into()),
            data: json!({"language": "python", "size": 12, "nested": {"é": [true, null]}})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            prev_hash: prev,
        }
    }

    #[test]
    fn canonical_round_trip() {
        let r = sample(1, Digest::ZERO);
        let bytes = r.canonical_bytes().expect("bytes");
        let back = Record::from_canonical(&bytes).expect("parse");
        assert_eq!(back, r);
        let text = String::from_utf8(bytes).expect("utf8");
        assert!(text.starts_with("{\"actor\":{\"agent\":null,\"app\":null,\"id\":\"test\",\"kind\":\"system\",\"via\":\"internal\"}"));
        assert!(text.contains(&format!("\"prev_hash\":\"{}\"", "0".repeat(64))));
    }

    #[test]
    fn floats_are_rejected_with_their_path() {
        let mut r = sample(1, Digest::ZERO);
        r.data.insert("cpu".into(), json!({"load": [1, 0.5]}));
        match r.canonical_bytes() {
            Err(RecordError::Float { path, .. }) => assert_eq!(path, "data.cpu.load[1]"),
            other => panic!("expected float error, got {other:?}"),
        }
    }

    #[test]
    fn integers_beyond_2_pow_53_are_rejected() {
        let mut r = sample(1, Digest::ZERO);
        r.data.insert("big".into(), json!(9007199254740992_u64));
        assert!(matches!(
            r.canonical_bytes(),
            Err(RecordError::IntegerRange { .. })
        ));
    }

    #[test]
    fn non_canonical_bytes_are_refused() {
        let r = sample(1, Digest::ZERO);
        let pretty = serde_json::to_vec_pretty(&r.to_value()).expect("json");
        assert_eq!(
            Record::from_canonical(&pretty),
            Err(RecordError::NotCanonical)
        );
    }

    #[test]
    fn extra_and_missing_members_are_refused() {
        let r = sample(1, Digest::ZERO);
        let mut v = r.to_value();
        let obj = v.as_object_mut().expect("object");
        obj.insert("extra".into(), json!(1));
        let bytes = canonical::to_canonical_bytes(&v).expect("bytes");
        assert!(
            matches!(Record::from_canonical(&bytes), Err(RecordError::UnexpectedMember(m)) if m == "extra")
        );
        let mut v = r.to_value();
        v.as_object_mut().expect("object").remove("tenant");
        let bytes = canonical::to_canonical_bytes(&v).expect("bytes");
        assert_eq!(
            Record::from_canonical(&bytes),
            Err(RecordError::Member("tenant"))
        );
    }
}
