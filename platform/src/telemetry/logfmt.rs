//! The log line format: one flat JSON object per event with the fields of
//! every span it happened in (outermost first, inner ones win), the event's
//! own fields, and `trace_id` / `span_id`.

use serde_json::{Map, Value};
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

pub(crate) struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut obj = Map::new();
        obj.insert(
            "timestamp".into(),
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        obj.insert("level".into(), Value::String(meta.level().to_string()));
        obj.insert("target".into(), Value::String(meta.target().to_owned()));
        let mut span_name = None;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(f) = ext.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(m)) = serde_json::from_str::<Value>(f.as_str())
                {
                    // `otel.*` fields steer the trace exporter (span name,
                    // kind, status); they say nothing a log reader needs.
                    obj.extend(m.into_iter().filter(|(k, _)| !k.starts_with("otel.")));
                }
                span_name = Some(span.name());
            }
        }
        event.record(&mut Fields(&mut obj));
        if let Some(n) = span_name {
            obj.insert("span".into(), Value::String(n.to_owned()));
        }
        match super::current_ids() {
            Some((trace, span)) => {
                obj.insert("trace_id".into(), Value::String(trace));
                obj.insert("span_id".into(), Value::String(span));
            }
            None => {
                if let Some(Value::String(c)) = obj.get("correlation_id") {
                    let t = super::trace_id_for(c).to_string();
                    obj.insert("trace_id".into(), Value::String(t));
                }
            }
        }
        writeln!(writer, "{}", Value::Object(obj))
    }
}

struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::Bool(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().into(), Value::String(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
}

/// The process-wide filter: Glassbox's own spans at INFO and above always
/// (so every log line carries its request's fields and traces keep their
/// spans), events and everything else as `RUST_LOG` says.
///
/// Why one global filter and no per-layer filters: with a per-layer filter
/// on both the log and the trace layer, some request spans ended up disabled
/// for both (lines without their fields, policy spans without a parent) —
/// seen in the end-to-end telemetry test; a single global decision has no
/// such state to get wrong.
pub(crate) struct SpansAndEnv(pub tracing_subscriber::EnvFilter);

fn own_span(meta: &Metadata<'_>) -> bool {
    meta.is_span() && meta.target().starts_with("glassbox") && *meta.level() <= tracing::Level::INFO
}

impl<S> Layer<S> for SpansAndEnv
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        if own_span(meta) {
            tracing::subscriber::Interest::always()
        } else {
            Layer::<S>::register_callsite(&self.0, meta)
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        own_span(meta) || Layer::enabled(&self.0, meta, ctx)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        let env = Layer::<S>::max_level_hint(&self.0)?;
        Some(env.max(tracing::level_filters::LevelFilter::INFO))
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        Layer::on_new_span(&self.0, attrs, id, ctx)
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        Layer::on_record(&self.0, id, values, ctx)
    }

    fn on_enter(&self, id: &tracing::span::Id, ctx: Context<'_, S>) {
        Layer::on_enter(&self.0, id, ctx)
    }

    fn on_exit(&self, id: &tracing::span::Id, ctx: Context<'_, S>) {
        Layer::on_exit(&self.0, id, ctx)
    }

    fn on_close(&self, id: tracing::span::Id, ctx: Context<'_, S>) {
        Layer::on_close(&self.0, id, ctx)
    }
}
