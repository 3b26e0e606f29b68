//! What a JSON log line costs the process that writes it, the way the services log: a
//! message's span (`handle_event`, its fields given when it begins and its `outcome` recorded
//! later) inside a request span, and one INFO line inside both. Against the same work through
//! `tracing-subscriber`'s own JSON format (flattened event, current span and span list: the
//! shape [`telemetry::output_layer`] writes), measured in the same run; the lines go to
//! `io::sink`.
//!
//! ```text
//! cargo bench -p jwl-service-kit --bench log_line
//! ```

use criterion::{Criterion, criterion_group, criterion_main};
use jwl_service_kit::telemetry::{self, LogFormat};
use tracing::Subscriber;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer};

/// One handled message's logging: two spans, a field recorded later, one line.
fn handled_message() {
    let request = tracing::info_span!(
        "request",
        method = "POST",
        uri = "/v1/orders",
        request_id = "0193a9a4-94cf-7a35-9d2c-6a3f1d0c2b11",
    );
    let _request = request.enter();
    let span = tracing::info_span!(
        "handle_event",
        consumer = "payment",
        event_type = "jwl.order.created",
        order_id = "0193a9a4-94cf-7a35-9d2c-6a3f1d0c2b12",
        event_id = "0193a9a4-94cf-7a35-9d2c-6a3f1d0c2b13",
        outcome = tracing::field::Empty,
    );
    span.record("outcome", "handled");
    span.in_scope(|| tracing::info!(status = 201, latency_ms = 3, "finished processing request"));
}

fn bench_with<S>(c: &mut Criterion, name: &str, subscriber: S)
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync + 'static,
{
    tracing::subscriber::with_default(subscriber, || {
        c.bench_function(name, |b| b.iter(handled_message));
    });
}

fn log_line(c: &mut Criterion) {
    let ours = telemetry::output_layer("order", LogFormat::Json, std::io::sink)
        .with_filter(EnvFilter::new("info"));
    bench_with(
        c,
        "log_line_service_json",
        tracing_subscriber::registry().with(ours),
    );
    let stock = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(true)
        .with_writer(std::io::sink)
        .with_filter(EnvFilter::new("info"));
    bench_with(
        c,
        "log_line_tracing_subscriber_json",
        tracing_subscriber::registry().with(stock),
    );
}

criterion_group!(benches, log_line);
criterion_main!(benches);
