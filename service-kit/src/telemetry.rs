//! Process-wide tracing setup: JSON lines when stdout is not a terminal (containers, files),
//! human-readable output when it is; level filter from `RUST_LOG` (default `info`), applied to
//! the output layer rather than globally so other layers (e.g. OpenTelemetry) still see spans.
//!
//! Every line carries the service name. JSON lines also carry the current span's fields and the
//! list of enclosing spans, so an event logged inside a handler span has its consumer, event
//! type, order id and event id even when the event itself does not name them.
//!
//! When the current span is part of an OpenTelemetry trace (traces are on, see [`traces`]),
//! JSON lines also carry its `trace_id` and `span_id`, so logs join up with the trace.
//!
//! Gauges sampled when `/metrics` is scraped (Tokio runtime, Postgres pools) are named below;
//! register pools with [`watch_pool`].

mod sampled;
pub mod traces;

pub(crate) use sampled::sample as sample_gauges;
pub use sampled::{
    DB_POOL_CONNECTIONS, DB_POOL_IDLE_CONNECTIONS, DB_POOL_MAX_CONNECTIONS, TOKIO_ALIVE_TASKS,
    TOKIO_GLOBAL_QUEUE_DEPTH, TOKIO_WORKERS, TOKIO_WORKERS_BUSY_RATIO, watch_pool,
};

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use opentelemetry::trace::{SpanId, TraceContextExt, TraceId};
use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::{LookupSpan, SpanRef};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (machines: containers, files, log shippers).
    Json,
    /// Plain human text (a person at a terminal).
    Human,
}

impl LogFormat {
    /// JSON unless stdout is a terminal.
    pub fn for_stdout() -> Self {
        if std::io::stdout().is_terminal() {
            Self::Human
        } else {
            Self::Json
        }
    }
}

/// The `RUST_LOG` filter, `info` when unset or invalid.
pub fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The output layer for `service` in `format`, writing to `writer` (unfiltered: add a filter).
pub fn output_layer<S, W>(
    service: &str,
    format: LogFormat,
    writer: W,
) -> Box<dyn Layer<S> + Send + Sync + 'static>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .fmt_fields(SpanJsonFields)
            .event_format(ServiceJson {
                service: serde_json::to_string(service).unwrap_or_else(|_| "\"?\"".to_owned()),
            })
            .with_writer(writer)
            .boxed(),
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .event_format(ServiceHuman {
                service: service.to_owned(),
                inner: tracing_subscriber::fmt::format().with_target(false),
            })
            .with_writer(writer)
            .boxed(),
    }
}

/// Installs the global subscriber for the process running `service` (`"order"`, `"jwl"` for
/// `jwl up`, …): log lines, and the trace exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
/// (call [`traces::shutdown`] before exiting). Call it on a Tokio runtime. A second call (or a
/// subscriber installed elsewhere) is left in place.
pub fn init(service: &str) {
    let output =
        output_layer(service, LogFormat::for_stdout(), std::io::stdout).with_filter(env_filter());
    let (trace_layer, trace_error) = match traces::layer(service) {
        Ok(layer) => (layer, None),
        Err(error) => (None, Some(error)),
    };
    let tracing_on = trace_layer.is_some();
    if tracing_subscriber::registry()
        .with(output)
        .with(trace_layer)
        .try_init()
        .is_ok()
    {
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            traces = tracing_on,
            "telemetry initialised"
        );
        if let Some(error) = trace_error {
            tracing::warn!(%error, "traces are off");
        }
    }
}

/// The JSON line format: `service`, the trace ids inside a trace, `timestamp`, `level`, the
/// event's fields, `target`, the current `span` and the `spans` from the root, each span as its
/// fields plus its `name` — the shape of `tracing-subscriber`'s JSON format with a flattened
/// event, current span and span list. Written directly: each span's fields are kept as JSON
/// text ([`SpanJsonFields`]) and spliced into every line, where `tracing-subscriber`'s format
/// parses them into values and writes them again for each span of each line (at saturation
/// that parsing was 5 % of `jwl up`'s CPU).
struct ServiceJson {
    /// The service name, already JSON-encoded (quoted).
    service: String,
}

impl<S, N> FormatEvent<S, N> for ServiceJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = String::with_capacity(512);
        line.push_str("{\"service\":");
        line.push_str(&self.service);
        if let Some((trace_id, span_id)) = current_trace_ids() {
            write!(
                line,
                ",\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\""
            )?;
        }
        write!(
            line,
            ",\"timestamp\":\"{}\",\"level\":\"{}\"",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ"),
            meta.level()
        )?;
        event.record(&mut JsonMembers::continuing(&mut line));
        line.push_str(",\"target\":");
        push_json_str(&mut line, meta.target());
        let current = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(current) = current {
            line.push_str(",\"span\":");
            push_span::<S, N>(&mut line, &current);
            line.push_str(",\"spans\":[");
            for (n, span) in current.scope().from_root().enumerate() {
                if n > 0 {
                    line.push(',');
                }
                push_span::<S, N>(&mut line, &span);
            }
            line.push(']');
        }
        line.push_str("}\n");
        writer.write_str(&line)
    }
}

/// One span as a JSON object: its fields (the text [`SpanJsonFields`] keeps) and its `name`.
fn push_span<S, N>(line: &mut String, span: &SpanRef<'_, S>)
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    let extensions = span.extensions();
    let members = extensions
        .get::<FormattedFields<N>>()
        .and_then(|fields| fields.fields.strip_prefix('{')?.strip_suffix('}'))
        .unwrap_or("");
    line.push('{');
    if !members.is_empty() {
        line.push_str(members);
        line.push(',');
    }
    line.push_str("\"name\":");
    push_json_str(line, span.name());
    line.push('}');
}

/// A span's fields as one JSON object, written directly (`{"consumer":"payment","attempt":2}`).
/// A field recorded after the span was created (`span.record("outcome", …)`, once per handled
/// message) is spliced into the object's text. A field recorded a second time replaces its
/// earlier value: the object is then parsed and written again (rare: a span's fields are
/// normally recorded once each).
struct SpanJsonFields;

impl<'writer> FormatFields<'writer> for SpanJsonFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut object = String::from("{");
        fields.record(&mut JsonMembers::first(&mut object));
        object.push('}');
        writer.write_str(&object)
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &Record<'_>,
    ) -> fmt::Result {
        let mut added = String::new();
        fields.record(&mut JsonMembers::first(&mut added));
        if added.is_empty() {
            return Ok(());
        }
        let Some(members) = current.fields.strip_suffix('}') else {
            // nothing yet (or not an object this formatter wrote): the added fields alone
            current.fields = format!("{{{added}}}");
            return Ok(());
        };
        let recorded_again = fields_named(fields)
            .iter()
            .any(|name| members.contains(&format!("\"{name}\":")));
        if recorded_again {
            current.fields = merged(&current.fields, &added).ok_or(fmt::Error)?;
            return Ok(());
        }
        current.fields.pop();
        if current.fields.len() > 1 {
            current.fields.push(',');
        }
        current.fields.push_str(&added);
        current.fields.push('}');
        Ok(())
    }
}

/// The names of the fields a record carries (as written: `r#type` as `type`).
fn fields_named(fields: &Record<'_>) -> Vec<&'static str> {
    struct Names(Vec<&'static str>);
    impl Visit for Names {
        fn record_debug(&mut self, field: &Field, _: &dyn fmt::Debug) {
            self.0.push(member_name(field.name()));
        }
    }
    let mut names = Names(Vec::new());
    fields.record(&mut names);
    names.0
}

/// `object` with the members `added` (comma-separated, as [`JsonMembers`] writes them) set,
/// replacing those already there; `None` if either is not valid JSON.
fn merged(object: &str, added: &str) -> Option<String> {
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(object).ok()?;
    let added: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&format!("{{{added}}}")).ok()?;
    object.extend(added);
    serde_json::to_string(&object).ok()
}

/// Writes the fields it visits as JSON object members, comma-separated, into a string: numbers
/// and booleans as such, everything else as a string (its `Debug` text; a message's text). As
/// `tracing-subscriber`'s JSON visitor: `log.` fields are left out and a raw identifier's `r#`
/// is dropped.
struct JsonMembers<'a> {
    out: &'a mut String,
    /// Whether a member is already written (or the string holds some before these).
    any: bool,
}

impl<'a> JsonMembers<'a> {
    /// Members starting a string (no comma before the first).
    fn first(out: &'a mut String) -> Self {
        Self { out, any: false }
    }

    /// Members after others already written (a comma before each).
    fn continuing(out: &'a mut String) -> Self {
        Self { out, any: true }
    }

    /// The member's name and colon, or `None` for a field left out.
    fn key(&mut self, field: &Field) -> Option<&mut String> {
        if field.name().starts_with("log.") {
            return None;
        }
        if self.any {
            self.out.push(',');
        }
        self.any = true;
        push_json_str(self.out, member_name(field.name()));
        self.out.push(':');
        Some(self.out)
    }
}

impl Visit for JsonMembers<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if let Some(out) = self.key(field) {
            if value.is_finite() {
                let _ = write!(out, "{value}");
            } else {
                out.push_str("null");
            }
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if let Some(out) = self.key(field) {
            let _ = write!(out, "{value}");
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if let Some(out) = self.key(field) {
            let _ = write!(out, "{value}");
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if let Some(out) = self.key(field) {
            out.push_str(if value { "true" } else { "false" });
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if let Some(out) = self.key(field) {
            push_json_str(out, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if let Some(out) = self.key(field) {
            out.push('"');
            let _ = write!(JsonEscaped(out), "{value:?}");
            out.push('"');
        }
    }
}

/// A field's name as a JSON member name: a raw identifier's `r#` dropped.
fn member_name(name: &'static str) -> &'static str {
    name.strip_prefix("r#").unwrap_or(name)
}

/// `value` as a JSON string.
fn push_json_str(out: &mut String, value: &str) {
    out.push('"');
    let _ = JsonEscaped(out).write_str(value);
    out.push('"');
}

/// Writes text into a JSON string's body, escaping quotes, backslashes and control characters.
struct JsonEscaped<'a>(&'a mut String);

impl fmt::Write for JsonEscaped<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut rest = text;
        while let Some(at) = rest.find(|c: char| c == '"' || c == '\\' || c < ' ') {
            self.0.push_str(&rest[..at]);
            let c = rest[at..].chars().next().unwrap_or(' ');
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                '\n' => self.0.push_str("\\n"),
                '\r' => self.0.push_str("\\r"),
                '\t' => self.0.push_str("\\t"),
                other => write!(self.0, "\\u{:04x}", u32::from(other))?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.push_str(rest);
        Ok(())
    }
}

/// The OpenTelemetry trace and span id of the current span, when it is in a trace: the
/// OpenTelemetry layer activates the context of each span it tracks while the span is entered
/// (looking the span up through the dispatcher is not possible while an event is dispatched).
fn current_trace_ids() -> Option<(TraceId, SpanId)> {
    let context = opentelemetry::Context::current();
    let span = context.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| (span_context.trace_id(), span_context.span_id()))
}

/// The human format prefixed with the service name and, inside a trace, its trace id
/// (`[order trace=4bf9…] …`), so a line can be followed to the trace view.
struct ServiceHuman {
    service: String,
    inner: Format<Full>,
}

impl<S, N> FormatEvent<S, N> for ServiceHuman
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        match current_trace_ids() {
            Some((trace_id, _)) => write!(writer, "[{} trace={trace_id}] ", self.service)?,
            None => write!(writer, "[{}] ", self.service)?,
        }
        self.inner.format_event(ctx, writer, event)
    }
}
