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

use std::fmt;
use std::io::IsTerminal;

use opentelemetry::trace::{SpanId, TraceContextExt, TraceId};
use tracing::span::Record;
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{Format, Full, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
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
                inner: tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(true),
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

/// The JSON line format with a leading `"service"` field.
struct ServiceJson {
    /// The service name, already JSON-encoded (quoted).
    service: String,
    inner: Format<Json>,
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
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let trace = current_trace_ids()
            .map(|(trace_id, span_id)| {
                format!(",\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"")
            })
            .unwrap_or_default();
        match line.strip_prefix('{') {
            Some(rest) if rest.starts_with('}') => {
                write!(writer, "{{\"service\":{}{trace}{rest}", self.service)
            }
            Some(rest) => write!(writer, "{{\"service\":{}{trace},{rest}", self.service),
            None => writer.write_str(&line),
        }
    }
}

/// A span's fields as one JSON object, like [`JsonFields`], but a field recorded after the span
/// was created (`span.record("outcome", …)`, once per handled message) is spliced into the
/// object's text instead of parsing the object and writing it again. A field recorded twice
/// appears twice in the text; whoever reads it as JSON (the line formatter, which embeds the
/// span's fields in each line) keeps the last value, as `JsonFields` would have.
struct SpanJsonFields;

impl<'writer> FormatFields<'writer> for SpanJsonFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        JsonFields::new().format_fields(writer, fields)
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &Record<'_>,
    ) -> fmt::Result {
        let mut added = String::new();
        JsonFields::new().format_fields(Writer::new(&mut added), fields)?;
        if current.fields.is_empty() {
            current.fields = added;
            return Ok(());
        }
        // both are objects: `{"a":1}` + `{"b":2}` → `{"a":1,"b":2}`
        let Some(members) = added.strip_prefix('{').filter(|rest| *rest != "}") else {
            return Ok(());
        };
        if !current.fields.ends_with('}') {
            // not an object this formatter wrote: left as it is
            return Err(fmt::Error);
        }
        current.fields.pop();
        if current.fields.len() > 1 {
            current.fields.push(',');
        }
        current.fields.push_str(members);
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
