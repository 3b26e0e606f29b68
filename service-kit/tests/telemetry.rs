//! Log output and scrape-time gauges: JSON lines carry the service and the enclosing spans'
//! fields (and, with an OpenTelemetry layer, the trace and span id, continuing a request's W3C
//! `traceparent`), the human format names the service, no bearer token or JWT secret reaches the logs of
//! an authenticated request, and `/metrics` shows the Tokio runtime and registered pools.

mod common;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use axum::routing::get;
use jwl_service_kit::ApiResult;
use jwl_service_kit::auth::{Caller, Scope};
use jwl_service_kit::telemetry::{self, LogFormat};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::Value;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Everything the log layer wrote, shared with the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Routes this thread's logs (every level) to a capture, in `format`, until the guard drops.
fn capture_logs(format: LogFormat) -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let layer = telemetry::output_layer("order", format, move || writer.clone())
        .with_filter(EnvFilter::new("trace"));
    let guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
    (captured, guard)
}

/// [`capture_logs`] in `format` with an OpenTelemetry layer (spans get trace contexts; nothing
/// is exported).
fn capture_traced_logs(format: LogFormat) -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let layer = telemetry::output_layer("order", format, move || writer.clone())
        .with_filter(EnvFilter::new("trace"));
    let tracer = SdkTracerProvider::builder().build().tracer("test");
    let subscriber = tracing_subscriber::registry()
        .with(layer)
        .with(tracing_opentelemetry::layer().with_tracer(tracer));
    (captured, tracing::subscriber::set_default(subscriber))
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

#[test]
fn json_lines_carry_the_service_and_the_enclosing_spans_fields() {
    let (captured, _guard) = capture_logs(LogFormat::Json);
    let order_id = "0190c7a2-0000-7000-8000-000000000001";
    tracing::info_span!("handle_event", consumer = "payment.order-placed", order_id).in_scope(
        || {
            tracing::info_span!("inner", event_id = "e-1")
                .in_scope(|| tracing::warn!(attempt = 2, "handler failed"));
        },
    );

    let lines = json_lines(&captured.text());
    let line = lines
        .iter()
        .find(|line| line["message"] == "handler failed")
        .expect("the event was logged");
    assert_eq!(line["service"], "order");
    assert_eq!(line["level"], "WARN");
    assert_eq!(line["attempt"], 2);
    assert_eq!(line["span"]["name"], "inner");
    assert_eq!(line["span"]["event_id"], "e-1");
    let outer = &line["spans"][0];
    assert_eq!(outer["name"], "handle_event");
    assert_eq!(outer["order_id"], order_id);
    assert_eq!(outer["consumer"], "payment.order-placed");
}

#[test]
fn json_lines_carry_the_fields_recorded_after_a_span_began() {
    let (captured, _guard) = capture_logs(LogFormat::Json);
    let span = tracing::info_span!(
        "handle_event",
        consumer = "payment",
        outcome = tracing::field::Empty,
        attempt = tracing::field::Empty,
    );
    span.record("outcome", "retried");
    span.record("attempt", 2);
    span.record("outcome", "ok");
    span.in_scope(|| tracing::info!("handled"));
    let bare = tracing::info_span!("bare", later = tracing::field::Empty);
    bare.record("later", "set");
    bare.in_scope(|| tracing::info!("in the bare span"));

    let lines = json_lines(&captured.text());
    let handled = lines
        .iter()
        .find(|line| line["message"] == "handled")
        .expect("the event was logged");
    assert_eq!(handled["span"]["consumer"], "payment");
    assert_eq!(handled["span"]["attempt"], 2);
    assert_eq!(handled["span"]["outcome"], "ok", "the last value recorded");
    assert_eq!(handled["spans"][0]["outcome"], "ok");
    let bare = lines
        .iter()
        .find(|line| line["message"] == "in the bare span")
        .expect("the event was logged");
    assert_eq!(bare["span"]["later"], "set");
}

#[test]
fn json_lines_are_valid_json_whatever_the_fields_hold() {
    let (captured, _guard) = capture_logs(LogFormat::Json);
    let awkward = "quote \" backslash \\ newline \n tab \t bell \u{7} é";
    let span = tracing::info_span!(
        "handle_event",
        r#type = "order.created",
        attempt = tracing::field::Empty,
    );
    span.record("attempt", 1);
    span.record("attempt", 2);
    span.in_scope(|| {
        tracing::error!(
            text = awkward,
            debugged = ?awkward,
            count = 3u64,
            delta = -4i64,
            ratio = 0.5,
            nan = f64::NAN,
            flag = true,
            "a message with {} inside",
            "\"quotes\""
        )
    });

    let text = captured.text();
    let lines = json_lines(&text);
    let line = &lines[0];
    assert_eq!(line["text"], awkward);
    assert_eq!(line["debugged"], format!("{awkward:?}"));
    assert_eq!(line["count"], 3);
    assert_eq!(line["delta"], -4);
    assert_eq!(line["ratio"], 0.5);
    assert!(line["nan"].is_null(), "{line}");
    assert_eq!(line["flag"], true);
    assert_eq!(line["message"], "a message with \"quotes\" inside");
    assert_eq!(line["level"], "ERROR");
    assert_eq!(
        line["span"]["type"], "order.created",
        "a raw identifier's r# dropped"
    );
    assert_eq!(line["span"]["attempt"], 2, "the value recorded last");
    assert_eq!(
        text.matches("\"attempt\":").count(),
        2,
        "once in the span, once in the span list: {text}"
    );
}

#[test]
fn the_human_format_names_the_service() {
    let (captured, _guard) = capture_logs(LogFormat::Human);
    tracing::info!(order_id = "o-1", "order placed");
    let text = captured.text();
    let line = text.lines().next().expect("one line");
    assert!(line.starts_with("[order] "), "{line}");
    assert!(
        line.contains("order placed") && line.contains("order_id=\"o-1\""),
        "{line}"
    );
    assert!(serde_json::from_str::<Value>(line).is_err());
}

#[test]
fn the_human_format_shows_the_trace_id_inside_a_trace() {
    let (captured, _guard) = capture_traced_logs(LogFormat::Human);
    tracing::info!("outside any span");
    tracing::info_span!("handle_event").in_scope(|| tracing::info!("inside a span"));
    let text = captured.text();
    let mut lines = text.lines();
    let outside = lines.next().expect("two lines");
    assert!(outside.starts_with("[order] "), "{outside}");
    let inside = lines.next().expect("two lines");
    let trace_id = inside
        .strip_prefix("[order trace=")
        .and_then(|rest| rest.split(']').next())
        .unwrap_or_else(|| panic!("no trace id: {inside}"));
    assert_eq!(trace_id.len(), 32, "{inside}");
    assert!(trace_id.chars().all(|c| c.is_ascii_hexdigit()), "{inside}");
}

#[tokio::test]
async fn json_lines_carry_the_trace_the_request_continues() {
    let (captured, _guard) = capture_traced_logs(LogFormat::Json);
    tracing::info!("outside any span");
    let app = authenticated_app();
    let token = common::keys()
        .issue(
            "customer-7",
            &[Scope::OrdersRead],
            Duration::from_secs(3600),
        )
        .unwrap();
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut request = bearer(&token);
    request.headers_mut().insert(
        "traceparent",
        format!("00-{caller_trace}-{caller_span}-01")
            .parse()
            .unwrap(),
    );
    let (response, _) = common::send(&app, request).await;
    assert_eq!(response.status(), 200);

    let lines = json_lines(&captured.text());
    let line = |message: &str| {
        lines
            .iter()
            .find(|line| line["message"] == message)
            .unwrap_or_else(|| panic!("{message:?} was logged: {lines:?}"))
    };
    let outside = line("outside any span");
    assert!(outside.get("trace_id").is_none(), "{outside}");
    let listing = line("listing orders");
    assert_eq!(listing["trace_id"], caller_trace, "{listing}");
    let span_id = listing["span_id"].as_str().unwrap();
    assert_eq!(span_id.len(), 16, "{listing}");
    assert_ne!(
        span_id, caller_span,
        "the request's own span, a child of the caller's"
    );
}

fn authenticated_app() -> Router {
    common::edge(Router::new().route(
        "/orders/mine",
        get(|caller: Caller| async move {
            caller.require(Scope::OrdersRead)?;
            tracing::info!(subject = %caller.subject, "listing orders");
            ApiResult::Ok(caller.subject)
        }),
    ))
}

fn bearer(token: &str) -> Request<Body> {
    Request::get("/orders/mine")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn no_token_or_secret_reaches_the_logs() {
    let secret = std::str::from_utf8(common::SECRET).unwrap();
    for format in [LogFormat::Json, LogFormat::Human] {
        let (captured, _guard) = capture_logs(format);
        let app = authenticated_app();
        let token = common::keys()
            .issue(
                "customer-7",
                &[Scope::OrdersRead],
                Duration::from_secs(3600),
            )
            .unwrap();
        let (accepted, _) = common::send(&app, bearer(&token)).await;
        assert_eq!(accepted.status(), 200);
        let forged = format!("{}x", &token[..token.len() - 1]);
        let (refused, _) = common::send(&app, bearer(&forged)).await;
        assert_eq!(refused.status(), 401);

        let text = captured.text();
        assert!(
            text.contains("listing orders"),
            "the request was logged: {text}"
        );
        assert!(text.contains("customer-7"));
        for leaked in [token.as_str(), forged.as_str(), secret, "Bearer "] {
            assert!(!text.contains(leaked), "{leaked:?} in logs:\n{text}");
        }
        // no part of the token either: its signature and its claims segment
        for segment in token.split('.') {
            assert!(
                !text.contains(segment),
                "token segment {segment:?} in logs:\n{text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_runtime_and_watched_pools() {
    let database = jwl_testkit::database().await.unwrap();
    let pool = jwl_service_kit::db::connect(database.url(), "jwl_sampled")
        .await
        .unwrap();
    sqlx::query("SELECT 1").execute(&pool).await.unwrap();
    telemetry::watch_pool("jwl_sampled", pool.clone());

    let edge = common::edge(Router::new());
    // the busy ratio is measured between two scrapes
    common::get(&edge, "/metrics").await;
    let (response, body) = common::get(&edge, "/metrics").await;
    assert_eq!(response.status(), 200);
    let text = String::from_utf8(body).unwrap();
    let busy: f64 = text
        .lines()
        .find_map(|line| line.strip_prefix("jwl_tokio_workers_busy_ratio "))
        .unwrap_or_else(|| panic!("no busy ratio:\n{text}"))
        .parse()
        .unwrap();
    assert!((0.0..=1.0).contains(&busy), "{busy}");
    for gauge in [
        telemetry::TOKIO_WORKERS_BUSY_RATIO,
        telemetry::TOKIO_WORKERS,
        telemetry::TOKIO_ALIVE_TASKS,
        telemetry::TOKIO_GLOBAL_QUEUE_DEPTH,
        telemetry::DB_POOL_CONNECTIONS,
        telemetry::DB_POOL_IDLE_CONNECTIONS,
        telemetry::DB_POOL_MAX_CONNECTIONS,
    ] {
        assert!(
            text.contains(&format!("# TYPE {gauge} gauge")),
            "{gauge}:\n{text}"
        );
    }
    assert!(text.contains("jwl_tokio_workers 2"), "{text}");
    assert!(
        text.contains("jwl_db_pool_connections{pool=\"jwl_sampled\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "jwl_db_pool_max_connections{{pool=\"jwl_sampled\"}} {}",
            pool.options().get_max_connections()
        )),
        "{text}"
    );
}
