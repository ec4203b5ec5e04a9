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
use std::borrow::Cow;
use uuid::Uuid;

/// The only record format version this crate writes.
pub const FORMAT_VERSION: u64 = 1;

/// Who caused an event. Every member is required (`app` and `agent` may be null).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: String,
    #[serde(deserialize_with = "required_nullable")]
    pub app: Option<String>,
    #[serde(deserialize_with = "required_nullable")]
    pub agent: Option<String>,
    pub via: AuthVia,
}

/// A member that must be present but may be null.
fn required_nullable<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    Option::<T>::deserialize(d)
}

/// Accepts any JSON object and keeps nothing of it.
struct AnyObject;

impl<'de> Deserialize<'de> for AnyObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = AnyObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<AnyObject, A::Error> {
                while m
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(AnyObject)
            }
        }
        d.deserialize_map(V)
    }
}

/// The envelope exactly as v1 lays it out; `D` is how `data` is kept.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord<'a, D> {
    v: u64,
    position: u64,
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    stream: Cow<'a, str>,
    stream_version: u64,
    #[serde(rename = "type", borrow)]
    event_type: Cow<'a, str>,
    #[serde(borrow)]
    occurred_at: Cow<'a, str>,
    #[serde(borrow)]
    tenant: Cow<'a, str>,
    actor: Actor,
    #[serde(borrow)]
    correlation_id: Cow<'a, str>,
    #[serde(deserialize_with = "required_nullable")]
    causation_id: Option<String>,
    #[serde(deserialize_with = "required_nullable")]
    request_id: Option<String>,
    data: D,
    #[serde(borrow)]
    prev_hash: Cow<'a, str>,
}

/// What the chain verifier needs of a record, parsed strictly but without
/// materialising its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub position: u64,
    pub event_id: Uuid,
    pub stream: String,
    pub stream_version: u64,
    pub event_type: String,
    pub tenant: String,
    pub prev_hash: Digest,
}

impl<'a, D> RawRecord<'a, D> {
    /// Checks the members whose JSON type alone does not make them valid.
    fn check(&self) -> Result<(Uuid, DateTime<Utc>, Digest), RecordError> {
        if self.v != FORMAT_VERSION {
            return Err(RecordError::Version(self.v.to_string()));
        }
        if self.position == 0 {
            return Err(RecordError::Member("position"));
        }
        if self.stream_version == 0 {
            return Err(RecordError::Member("stream_version"));
        }
        let event_id = Uuid::parse_str(&self.event_id).map_err(|e| RecordError::Invalid {
            field: "event_id",
            reason: e.to_string(),
        })?;
        if event_id.hyphenated().to_string() != self.event_id {
            return Err(RecordError::Invalid {
                field: "event_id",
                reason: "not a lowercase hyphenated UUID".into(),
            });
        }
        let occurred_at = DateTime::parse_from_rfc3339(&self.occurred_at)
            .map_err(|e| RecordError::Invalid {
                field: "occurred_at",
                reason: e.to_string(),
            })?
            .with_timezone(&Utc);
        if chrono::Timelike::nanosecond(&occurred_at) >= 1_000_000_000 {
            return Err(RecordError::Invalid {
                field: "occurred_at",
                reason: "a leap second (:60) is never written".into(),
            });
        }
        if format_timestamp(&occurred_at) != self.occurred_at {
            return Err(RecordError::Invalid {
                field: "occurred_at",
                reason: "not UTC with microseconds and `Z`".into(),
            });
        }
        let prev_hash = Digest::from_hex(&self.prev_hash).ok_or(RecordError::Invalid {
            field: "prev_hash",
            reason: "not 64 lowercase hex digits".into(),
        })?;
        Ok((event_id, occurred_at, prev_hash))
    }
}

impl Header {
    /// Strictly validates canonical bytes as a v1 record (the same judgement as
    /// [`Record::from_canonical`]) and returns its envelope.
    pub fn from_canonical(bytes: &[u8]) -> Result<Header, RecordError> {
        canonical::check_canonical_integers(bytes).map_err(classify_not_canonical)?;
        let raw: RawRecord<'_, AnyObject> = serde_json::from_slice(bytes).map_err(shape_error)?;
        let (event_id, _, prev_hash) = raw.check()?;
        Ok(Header {
            position: raw.position,
            event_id,
            stream: raw.stream.into_owned(),
            stream_version: raw.stream_version,
            event_type: raw.event_type.into_owned(),
            tenant: raw.tenant.into_owned(),
            prev_hash,
        })
    }
}

fn classify_not_canonical(e: canonical::NotCanonical) -> RecordError {
    if e.what == "numbers must be integers" {
        RecordError::Float {
            path: format!("byte {}", e.at),
            value: "non-integer number".into(),
        }
    } else if e.what == "integer beyond 2^53 - 1" {
        RecordError::IntegerRange {
            path: format!("byte {}", e.at),
        }
    } else {
        RecordError::NotCanonical
    }
}

fn shape_error(e: serde_json::Error) -> RecordError {
    let msg = e.to_string();
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        RecordError::UnexpectedMember(rest.split('`').next().unwrap_or_default().to_owned())
    } else if let Some(rest) = msg.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or_default();
        RecordError::Member(MEMBERS.iter().find(|m| **m == name).copied().unwrap_or("?"))
    } else {
        RecordError::Json(msg)
    }
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
    #[error("event data at `{path}` is nested more than {MAX_DATA_DEPTH} levels deep")]
    TooDeep { path: String },
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

/// Arrays and objects `data` may nest (the record around it adds two levels,
/// well inside what every JSON parser of a verifier accepts).
pub const MAX_DATA_DEPTH: usize = 64;

/// Checks that event data holds only strings, booleans, null, arrays, objects and
/// integers with |n| < 2^53 — the ledger refuses floats (§4 of DESIGN.md) — and
/// nests at most [`MAX_DATA_DEPTH`] levels.
pub fn check_data(data: &Map<String, Value>) -> Result<(), RecordError> {
    fn walk(v: &Value, path: &mut String, depth: usize) -> Result<(), RecordError> {
        if depth > MAX_DATA_DEPTH {
            return Err(RecordError::TooDeep { path: path.clone() });
        }
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
                    walk(item, path, depth + 1)?;
                    path.truncate(len);
                }
            }
            Value::Object(map) => {
                for (k, item) in map {
                    let len = path.len();
                    path.push('.');
                    path.push_str(k);
                    walk(item, path, depth + 1)?;
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
        walk(v, &mut path, 2)?;
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

    /// Parses and strictly validates canonical bytes: they must be the RFC 8785
    /// form of an object with exactly the v1 members, each of the right type.
    pub fn from_canonical(bytes: &[u8]) -> Result<Record, RecordError> {
        canonical::check_canonical_integers(bytes).map_err(classify_not_canonical)?;
        let raw: RawRecord<'_, Map<String, Value>> =
            serde_json::from_slice(bytes).map_err(shape_error)?;
        let (event_id, occurred_at, prev_hash) = raw.check()?;
        Ok(Record {
            position: raw.position,
            event_id,
            stream: raw.stream.into_owned(),
            stream_version: raw.stream_version,
            event_type: raw.event_type.into_owned(),
            occurred_at,
            tenant: raw.tenant.into_owned(),
            actor: raw.actor,
            correlation_id: raw.correlation_id.into_owned(),
            causation_id: raw.causation_id,
            request_id: raw.request_id,
            data: raw.data,
            prev_hash,
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
    fn data_nested_too_deep_is_refused_before_it_reaches_the_ledger() {
        let nested = |n: usize| {
            let mut v = Value::from(1);
            for _ in 0..n {
                v = Value::Array(vec![v]);
            }
            let mut m = Map::new();
            m.insert("a".into(), v);
            m
        };
        // `data.a` is level 2; each array adds one.
        assert!(check_data(&nested(MAX_DATA_DEPTH - 2)).is_ok());
        assert!(matches!(
            check_data(&nested(MAX_DATA_DEPTH - 1)),
            Err(RecordError::TooDeep { .. })
        ));
        assert!(matches!(
            check_data(&nested(1_000)),
            Err(RecordError::TooDeep { .. })
        ));
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

    #[test]
    fn header_and_full_parse_judge_alike() {
        let r = sample(3, Digest::of(b"p"));
        let good = r.canonical_bytes().expect("bytes");
        let h = Header::from_canonical(&good).expect("header");
        assert_eq!(
            (h.position, h.stream.as_str(), h.prev_hash),
            (3, "job-1", r.prev_hash)
        );
        let mut variants: Vec<Vec<u8>> = Vec::new();
        for (path, replacement) in [
            (
                "actor",
                json!({"kind": "system", "id": "x", "via": "internal"}),
            ),
            (
                "actor",
                json!({"kind": "system", "id": "x", "app": null, "agent": null, "via": "internal", "extra": 1}),
            ),
            (
                "actor",
                json!({"kind": "robot", "id": "x", "app": null, "agent": null, "via": "internal"}),
            ),
            ("data", json!([1, 2])),
            ("data", json!({"f": 1.5})),
            ("causation_id", json!(7)),
            ("position", json!(0)),
            ("event_id", json!("0B7E3C9A-0C55-4D0E-9A48-5F0C1F7F3F0E")),
            ("occurred_at", json!("2026-11-26T07:12:47Z")),
            ("prev_hash", json!("00")),
            ("v", json!(2)),
        ] {
            let mut v = r.to_value();
            v.as_object_mut()
                .expect("object")
                .insert(path.into(), replacement);
            variants.push(canonical::to_canonical_bytes(&v).expect("bytes"));
        }
        let mut v = r.to_value();
        v.as_object_mut().expect("object").remove("request_id");
        variants.push(canonical::to_canonical_bytes(&v).expect("bytes"));
        for bad in variants {
            let text = String::from_utf8_lossy(&bad).into_owned();
            assert!(
                Header::from_canonical(&bad).is_err(),
                "header accepted {text}"
            );
            assert!(
                Record::from_canonical(&bad).is_err(),
                "record accepted {text}"
            );
        }
    }
}
