//! The edge's middleware pieces: fallback 404, problem bodies for framework-made errors,
//! panic → 500, request timeout → 503, and the per-request tracing span.

use std::any::Any;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::classify::{ServerErrorsAsFailures, ServerErrorsFailureClass, SharedClassifier};
use tower_http::trace::{DefaultOnResponse, MakeSpan, TraceLayer};
use tracing::Level;

use super::{BODY_LIMIT_BYTES, REQUEST_ID_HEADER, REQUEST_TIMEOUT};
use crate::problem::{ApiError, PROBLEM_JSON, Problem};

/// Longest framework error text kept as a problem's `detail`.
const MAX_DETAIL_BYTES: usize = 1024;

pub(super) async fn not_found() -> ApiError {
    ApiError::NotFound("there is nothing at this path".to_owned())
}

/// Rewrites error responses that are not problem details (axum's 405, tower-http's 413, the
/// rejections of axum's own extractors) into problem details, keeping their headers (`Allow`…).
pub(super) async fn problem_for_bare_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_problem(response.headers()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let is_text = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    let original_text = if is_text {
        axum::body::to_bytes(body, MAX_DETAIL_BYTES)
            .await
            .ok()
            .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
            .filter(|text| !text.trim().is_empty())
    } else {
        None
    };
    let detail = original_text.unwrap_or_else(|| default_detail(status));
    let problem = Problem::new(status, detail).into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    Response::from_parts(parts, problem.into_body())
}

fn is_problem(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()))
}

fn default_detail(status: StatusCode) -> String {
    match status {
        StatusCode::NOT_FOUND => "there is nothing at this path".to_owned(),
        StatusCode::METHOD_NOT_ALLOWED => {
            "this method is not allowed here (see the Allow header)".to_owned()
        }
        StatusCode::PAYLOAD_TOO_LARGE => {
            format!("the request body is larger than {BODY_LIMIT_BYTES} bytes")
        }
        _ => status.canonical_reason().unwrap_or("error").to_owned(),
    }
}

/// A panicking handler becomes a 500 problem; the panic message is logged, not sent.
pub(super) fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("<non-string panic payload>");
    tracing::error!(panic = message, "handler panicked");
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "an internal error occurred",
    )
    .into_response()
}

/// Requests running longer than [`REQUEST_TIMEOUT`] are answered 503 and their handler dropped.
pub(super) async fn enforce_timeout(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(timeout = ?REQUEST_TIMEOUT, "request timed out");
            ApiError::unavailable(
                1,
                format!(
                    "the request took longer than {} s",
                    REQUEST_TIMEOUT.as_secs()
                ),
            )
            .into_response()
        }
    }
}

/// The W3C Trace Context request header.
const TRACEPARENT_HEADER: &str = "traceparent";

/// One `http_request` span per request, carrying method, path and request id (and the order
/// id, when a route records it), a child of the
/// request's `traceparent` if it has one; the response is logged at INFO with its latency,
/// server errors at ERROR.
/// What the edge does with a failed response ([`log_failure`]).
type OnFailure = fn(ServerErrorsFailureClass, Duration, &tracing::Span);

/// The edge's [`TraceLayer`]: its span, an INFO line per response, [`log_failure`].
type EdgeTrace = TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    RequestSpan,
    tower_http::trace::DefaultOnRequest,
    DefaultOnResponse,
    tower_http::trace::DefaultOnBodyChunk,
    tower_http::trace::DefaultOnEos,
    OnFailure,
>;

pub(super) fn trace_layer() -> EdgeTrace {
    TraceLayer::new_for_http()
        .make_span_with(RequestSpan)
        .on_response(DefaultOnResponse::new().level(Level::INFO))
        .on_failure(log_failure as OnFailure)
}

/// A `5xx` answer is logged as an error, except `503`: a request shed by backpressure or refused
/// while a dependency is down is the system protecting itself (counted in
/// `jwl_ingest_shed_total` and the HTTP metrics), and an error line for each one would flood the
/// logs exactly when an operator reads them.
fn log_failure(class: ServerErrorsFailureClass, latency: Duration, _span: &tracing::Span) {
    let latency_ms = latency.as_millis();
    match class {
        ServerErrorsFailureClass::StatusCode(StatusCode::SERVICE_UNAVAILABLE) => {
            tracing::debug!(latency_ms, "service unavailable (503)");
        }
        class => tracing::error!(classification = %class, latency_ms, "response failed"),
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &axum::http::Request<B>) -> tracing::Span {
        let request_id = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let span = tracing::info_span!(
            "http_request",
            method = %request.method(),
            path = %request.uri().path(),
            request_id = %request_id,
            order_id = tracing::field::Empty,
            otel.kind = "server",
        );
        // continue the caller's trace (W3C Trace Context), else this span starts one
        if let Some(traceparent) = request
            .headers()
            .get(TRACEPARENT_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            jwl_outbox::trace_context::set_parent(&span, traceparent);
        }
        span
    }
}
