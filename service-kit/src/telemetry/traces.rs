//! OpenTelemetry traces. When `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the spans of the Jiangwanli
//! crates (`http_request`, `handle_event`, `relay_publish`, …) at INFO and above are exported over
//! OTLP/HTTP (JSON) to `<endpoint>/v1/traces`, batched on the Tokio runtime (the standard
//! `OTEL_BSP_*` variables tune the batching), with `service.name` set to the service. When it
//! is unset there is no OpenTelemetry layer and no exporter: span contexts are invalid, events
//! carry no new `traceparent`, and nothing is exported.
//!
//! How trace context crosses services is in `jwl_outbox::trace_context`.

use std::sync::{Mutex, PoisonError};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::runtime::Tokio;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing::{Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

/// The standard variable naming the OTLP endpoint (`http://collector:4318`); unset: no traces.
pub const ENDPOINT_VARIABLE: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Crates whose spans are exported (a prefix of the span's target).
const EXPORTED_TARGETS: &str = "jwl";

/// The provider exporting this process's spans, kept to flush it at [`shutdown`].
static PROVIDER: Mutex<Option<SdkTracerProvider>> = Mutex::new(None);

/// Why traces could not be set up (the process then runs without them).
#[derive(Debug, thiserror::Error)]
pub enum TraceSetupError {
    #[error("building the OTLP span exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The layer exporting `service`'s spans, or `None` when [`ENDPOINT_VARIABLE`] is unset or
/// empty. Call it on a Tokio runtime (the exporter's batches run there).
pub(crate) fn layer<S>(
    service: &str,
) -> Result<Option<Box<dyn Layer<S> + Send + Sync + 'static>>, TraceSetupError>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let configured = std::env::var(ENDPOINT_VARIABLE).is_ok_and(|endpoint| !endpoint.is_empty());
    if !configured {
        return Ok(None);
    }
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter, Tokio).build())
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build();
    let tracer = provider.tracer("jwl");
    *PROVIDER.lock().unwrap_or_else(PoisonError::into_inner) = Some(provider);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(Targets::new().with_target(EXPORTED_TARGETS, Level::INFO));
    Ok(Some(layer.boxed()))
}

/// Exports the spans still buffered and stops the exporter; call it once, before the process
/// exits. Does nothing when traces are off.
pub async fn shutdown() {
    let provider = PROVIDER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let Some(provider) = provider else {
        return;
    };
    // the provider's shutdown blocks until the batch task on the runtime has exported
    let stopped = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    match stopped {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "stopping the trace exporter failed"),
        Err(error) => tracing::warn!(%error, "stopping the trace exporter panicked"),
    }
}
