//! Prometheus metrics: the process-wide recorder (installed once, with its upkeep thread), the
//! `GET /metrics` handler and the per-request latency histogram
//! `jwl_http_request_duration_seconds{route, method, status}`; gauges sampled at each scrape
//! (Tokio runtime, Postgres pools) live in [`crate::telemetry`].

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Name of the request latency histogram.
pub const HTTP_DURATION_METRIC: &str = "jwl_http_request_duration_seconds";

/// Histogram buckets (seconds) for every `*_duration_seconds` metric.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often histograms are compacted (the exporter does not do it by itself).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder as the process's global `metrics` recorder (first call
/// only) and returns its handle. Call it early so metrics recorded before the edge is built are
/// kept. If another recorder is already installed, the returned handle renders nothing.
pub fn install_metrics_recorder() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_duration_seconds".to_owned()), DURATION_BUCKETS);
        let handle = match builder.and_then(PrometheusBuilder::install_recorder) {
            Ok(handle) => handle,
            Err(error) => {
                tracing::warn!(%error, "could not install the Prometheus recorder; /metrics will be empty");
                PrometheusBuilder::new().build_recorder().handle()
            }
        };
        spawn_upkeep(handle.clone());
        handle
    })
}

fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                handle.run_upkeep();
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "could not start the metrics upkeep thread");
    }
}

pub(super) async fn render(handle: PrometheusHandle) -> Response {
    crate::telemetry::sample_gauges();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        handle.render(),
    )
        .into_response()
}

/// Records the latency of every request under its matched route template (bounded cardinality;
/// requests no route matched share `route="unmatched"`).
pub(super) async fn record_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = method_label(request.method());
    let response = next.run(request).await;
    metrics::histogram!(
        HTTP_DURATION_METRIC,
        "route" => route,
        "method" => method,
        "status" => response.status().as_str().to_owned(),
    )
    .record(started.elapsed().as_secs_f64());
    response
}

/// Standard methods by name; anything else as `OTHER` so clients cannot grow the label set.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}
