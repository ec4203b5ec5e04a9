//! Trace and span IDs derived from the ledger's correlation IDs.
//!
//! Why: a job's work crosses the ledger — the command API appends
//! `job.accepted`, a runner (maybe another process on another machine) reads it
//! later. No header travels with a record, and the record format is the
//! auditors' contract, so nothing is added to it. Instead both sides compute
//! the same IDs from what the record already carries, its `correlation_id`
//! (128 bits, like a trace ID):
//!
//! - trace ID = the correlation ID's 16 bytes when it is a UUID, else the first
//!   16 bytes of SHA-256 of it (a caller's own `X-Request-Id`);
//! - the request's root span ID = 8 bytes of SHA-256 of a fixed label and the
//!   correlation ID, so a runner can name that span as its parent without being
//!   told.
//!
//! So a ledger record leads to its trace (`trace_id_for(record.correlation_id)`)
//! and a trace to its records (`/v1/audit/events?correlation_id=…`).

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::trace::IdGenerator;
use std::cell::Cell;

/// The trace ID of everything correlated by `correlation`.
pub fn trace_id_for(correlation: &str) -> TraceId {
    let bytes: [u8; 16] = match uuid::Uuid::parse_str(correlation) {
        Ok(u) if !u.is_nil() => *u.as_bytes(),
        _ => {
            let d = ring::digest::digest(&ring::digest::SHA256, correlation.as_bytes());
            let mut b = [0u8; 16];
            b.copy_from_slice(&d.as_ref()[..16]);
            b
        }
    };
    if bytes == [0; 16] {
        // Not a valid trace ID; cannot come from SHA-256 in practice.
        return TraceId::from_bytes([1; 16]);
    }
    TraceId::from_bytes(bytes)
}

/// The span ID of the root span of the request that `correlation` names.
pub fn root_span_id_for(correlation: &str) -> SpanId {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"glassbox root span\0");
    ctx.update(correlation.as_bytes());
    let d = ctx.finish();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    if b == [0; 8] {
        b[7] = 1;
    }
    SpanId::from_bytes(b)
}

/// The correlation ID a W3C `traceparent` header implies: its trace ID written
/// as a UUID, so `trace_id_for` of it gives that trace ID back. `None` for a
/// malformed header.
pub fn correlation_from_traceparent(header: &str) -> Option<String> {
    let mut parts = header.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
        || !(trace
            .bytes()
            .chain(span.bytes())
            .chain(version.bytes())
            .chain(flags.bytes()))
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let id = u128::from_str_radix(trace, 16).ok()?;
    if id == 0 || u64::from_str_radix(span, 16).ok()? == 0 {
        return None;
    }
    Some(uuid::Uuid::from_u128(id).to_string())
}

/// The remote span context of the root span of `correlation` — the parent a
/// runner gives the work it does for that request. Sampled as the root was
/// (the sampler is a ratio over trace IDs, so both planes agree).
pub fn root_context(correlation: &str) -> SpanContext {
    let trace_id = trace_id_for(correlation);
    let flags = if super::root_sampled(trace_id) {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanContext::new(
        trace_id,
        root_span_id_for(correlation),
        flags,
        true,
        TraceState::default(),
    )
}

thread_local! {
    static FORCED_TRACE: Cell<Option<TraceId>> = const { Cell::new(None) };
    static FORCED_SPAN: Cell<Option<SpanId>> = const { Cell::new(None) };
}

/// Random IDs, except while [`with_forced_ids`] runs on this thread: then the
/// next span started gets the forced IDs (the SDK asks for a span ID on every
/// start and a trace ID only for a root).
#[derive(Debug, Default)]
pub(crate) struct CorrelatedIds {
    random: opentelemetry_sdk::trace::RandomIdGenerator,
}

impl IdGenerator for CorrelatedIds {
    fn new_trace_id(&self) -> TraceId {
        FORCED_TRACE
            .with(Cell::take)
            .unwrap_or_else(|| self.random.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        FORCED_SPAN
            .with(Cell::take)
            .unwrap_or_else(|| self.random.new_span_id())
    }
}

/// Runs `f` (which must start exactly one root span) with the IDs forced;
/// whatever `f` leaves unused is cleared.
pub(crate) fn with_forced_ids<T>(trace: TraceId, span: SpanId, f: impl FnOnce() -> T) -> T {
    FORCED_TRACE.with(|c| c.set(Some(trace)));
    FORCED_SPAN.with(|c| c.set(Some(span)));
    let out = f();
    FORCED_TRACE.with(|c| c.set(None));
    FORCED_SPAN.with(|c| c.set(None));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uuid_correlation_is_its_own_trace_id() {
        let u = uuid::Uuid::new_v4();
        assert_eq!(trace_id_for(&u.to_string()).to_bytes(), *u.as_bytes());
    }

    #[test]
    fn other_correlations_hash_and_differ() {
        let a = trace_id_for("client-request-1");
        let b = trace_id_for("client-request-2");
        assert_ne!(a, b);
        assert_ne!(a, TraceId::INVALID);
        assert_eq!(a, trace_id_for("client-request-1"));
        assert_ne!(root_span_id_for("x"), root_span_id_for("y"));
        assert_ne!(root_span_id_for("x"), SpanId::INVALID);
    }

    #[test]
    fn traceparent_round_trips_to_its_trace_id() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = correlation_from_traceparent(tp).expect("valid");
        assert_eq!(
            trace_id_for(&c),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex")
        );
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(correlation_from_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn forced_ids_are_used_once() {
        let g = CorrelatedIds::default();
        let t = trace_id_for("c");
        let s = root_span_id_for("c");
        with_forced_ids(t, s, || {
            assert_eq!(g.new_span_id(), s);
            assert_eq!(g.new_trace_id(), t);
            assert_ne!(g.new_span_id(), s);
        });
        assert_ne!(g.new_trace_id(), t);
    }
}
