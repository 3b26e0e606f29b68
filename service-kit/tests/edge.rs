//! The edge: request ids on every response, health/readiness/metrics, body limit, panics,
//! timeouts and problem bodies for framework errors.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use axum::routing::{get, post};
use jwl_service_kit::extract::Json;
use jwl_service_kit::http::{MetricsOn, edge_with, edge_with_probe, metrics_router};
use serde_json::{Value, json};

fn app() -> Router {
    common::edge(
        Router::new()
            .route("/hello", get(|| async { "hello" }))
            .route("/echo", post(|Json(v): Json<Value>| async move { Json(v) }))
            .route("/panic", get(panicking_handler))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    "late"
                }),
            ),
    )
}

async fn panicking_handler() -> &'static str {
    panic!("handler bug with secret 42")
}

fn uuid_like(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok()
}

#[tokio::test]
async fn request_id_is_generated_when_missing() {
    let (response, body) = common::get(&app(), "/hello").await;
    assert_eq!(response.status(), 200);
    assert_eq!(body, b"hello");
    let id = common::request_id(&response).expect("x-request-id on 200");
    assert!(uuid_like(&id), "{id}");

    let (second, _) = common::get(&app(), "/hello").await;
    assert_ne!(
        common::request_id(&second),
        Some(id),
        "each request gets its own id"
    );
}

#[tokio::test]
async fn request_id_is_echoed_on_success_and_errors() {
    for (method, uri) in [
        ("GET", "/hello"),
        ("GET", "/nowhere"),
        ("DELETE", "/hello"),
        ("GET", "/panic"),
    ] {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("x-request-id", "req-abc-123")
            .body(Body::empty())
            .unwrap();
        let (response, _) = common::send(&app(), request).await;
        assert_eq!(
            common::request_id(&response).as_deref(),
            Some("req-abc-123"),
            "{method} {uri}"
        );
    }
}

#[tokio::test]
async fn unknown_path_is_a_404_problem_with_a_request_id() {
    let (response, body) = common::get(&app(), "/nowhere").await;
    common::problem(&response, &body, 404);
    assert!(common::request_id(&response).is_some_and(|id| uuid_like(&id)));
}

#[tokio::test]
async fn wrong_method_is_a_405_problem_keeping_allow() {
    let request = Request::delete("/hello").body(Body::empty()).unwrap();
    let (response, body) = common::send(&app(), request).await;
    common::problem(&response, &body, 405);
    let allow = response
        .headers()
        .get(header::ALLOW)
        .unwrap()
        .to_str()
        .unwrap();
    assert!(allow.contains("GET"), "{allow}");
    assert!(common::request_id(&response).is_some());
}

#[tokio::test]
async fn oversized_body_with_content_length_is_413() {
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(70 * 1024));
    let request = Request::post("/echo")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, big.len())
        .body(Body::from(big))
        .unwrap();
    let (response, body) = common::send(&app(), request).await;
    common::problem(&response, &body, 413);
    assert!(common::request_id(&response).is_some());
}

#[tokio::test]
async fn oversized_streamed_body_is_413() {
    let chunks: Vec<Result<String, std::io::Error>> =
        (0..70).map(|_| Ok("x".repeat(1024))).collect();
    let request = Request::post("/echo")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    let (response, body) = common::send(&app(), request).await;
    common::problem(&response, &body, 413);
}

#[tokio::test]
async fn body_just_under_the_limit_is_accepted() {
    let payload = json!({"pad": "x".repeat(60 * 1024)}).to_string();
    let (response, _) = common::send(&app(), common::post_json("/echo", payload)).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn panics_become_500_problems_without_the_message() {
    let (response, body) = common::get(&app(), "/panic").await;
    let problem = common::problem(&response, &body, 500);
    assert!(!problem.to_string().contains("secret 42"));
}

#[tokio::test(start_paused = true)]
async fn slow_requests_time_out_with_503() {
    let (response, body) = common::get(&app(), "/slow").await;
    common::problem(&response, &body, 503);
    assert!(response.headers().contains_key(header::RETRY_AFTER));
}

#[tokio::test]
async fn healthz_is_ok() {
    let (response, body) = common::get(&app(), "/healthz").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"status": "ok"})
    );
}

#[tokio::test]
async fn readyz_follows_the_probe_and_tells_the_public_nothing_more() {
    let switch = Arc::new(common::Switch(AtomicBool::new(false)));
    let app = edge_with_probe(Router::new(), common::keys(), switch.clone());
    let (response, body) = common::get(&app, "/readyz").await;
    let problem = common::problem(&response, &body, 503);
    assert_eq!(problem["detail"], "not ready", "{problem}");
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains("database"), "{text}");
    assert!(response.headers().contains_key(header::RETRY_AFTER));

    // the metrics listener says which check failed
    let admin = metrics_router(switch.clone());
    let (response, body) = common::get(&admin, "/readyz").await;
    let problem = common::problem(&response, &body, 503);
    assert_eq!(problem["detail"], "not ready: database pool 0: down");

    switch.0.store(true, Ordering::SeqCst);
    let (response, _) = common::get(&app, "/readyz").await;
    assert_eq!(response.status(), 200);
    let (response, _) = common::get(&admin, "/readyz").await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn metrics_move_to_their_own_listener_when_asked() {
    let switch = Arc::new(common::Switch(AtomicBool::new(true)));
    let public = edge_with(
        Router::new().route("/hello", get(|| async { "hello" })),
        common::keys(),
        switch.clone(),
        MetricsOn::Separate,
    );
    let admin = metrics_router(switch);
    let (response, _) = common::get(&public, "/hello").await;
    assert_eq!(response.status(), 200);

    let (response, body) = common::get(&public, "/metrics").await;
    common::problem(&response, &body, 404);
    let (response, body) = common::get(&admin, "/metrics").await;
    assert_eq!(response.status(), 200);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("jwl_http_request_duration_seconds"),
        "the public listener's requests are counted: {text}"
    );
    // the metrics listener serves nothing else
    let (response, body) = common::get(&admin, "/hello").await;
    common::problem(&response, &body, 404);
}

#[tokio::test]
async fn metrics_record_requests_by_route_template() {
    let app = app();
    let (response, _) = common::get(&app, "/hello").await;
    assert_eq!(response.status(), 200);
    let _ = common::get(&app, "/no/such/thing").await;
    let (response, body) = common::get(&app, "/metrics").await;
    assert_eq!(response.status(), 200);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.lines().any(
            |l| l.starts_with("jwl_http_request_duration_seconds_bucket")
                && l.contains("route=\"/hello\"")
                && l.contains("method=\"GET\"")
                && l.contains("status=\"200\"")
        ),
        "{text}"
    );
    assert!(text.contains("route=\"unmatched\""), "{text}");
    assert!(
        !text.contains("/no/such/thing"),
        "raw paths must not become labels"
    );
}
