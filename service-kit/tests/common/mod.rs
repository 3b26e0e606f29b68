//! Helpers shared by the service-kit integration tests: building the edge, sending requests
//! through it in-process, and reading problem bodies.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, Response, header};
use futures::future::BoxFuture;
use jwl_service_kit::auth::JwtKeys;
use jwl_service_kit::http::{ReadinessProbe, edge_with_probe};
use serde_json::Value;
use tower::ServiceExt;

pub const SECRET: &[u8] = b"test-secret-with-enough-bytes-0123456789";

/// A readiness answer the test controls (the real probe needs Postgres and NATS).
#[derive(Default)]
pub struct Switch(pub AtomicBool);

impl ReadinessProbe for Switch {
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        let ready = self.0.load(Ordering::SeqCst);
        Box::pin(async move {
            if ready {
                Ok(())
            } else {
                Err("database pool 0: down".to_owned())
            }
        })
    }
}

pub fn keys() -> JwtKeys {
    JwtKeys::new(SECRET)
}

pub fn edge(routes: Router) -> Router {
    edge_with_probe(routes, keys(), Arc::new(Switch(AtomicBool::new(true))))
}

pub async fn send(app: &Router, request: Request<Body>) -> (Response<()>, Vec<u8>) {
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("router is infallible");
    let (parts, body) = response.into_parts();
    let bytes = to_bytes(body, 1 << 20).await.expect("body readable");
    (Response::from_parts(parts, ()), bytes.to_vec())
}

pub async fn get(app: &Router, uri: &str) -> (Response<()>, Vec<u8>) {
    send(app, Request::get(uri).body(Body::empty()).unwrap()).await
}

pub fn post_json(uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap()
}

/// Asserts the response is a problem with `status` and returns its JSON body.
pub fn problem(response: &Response<()>, body: &[u8], status: u16) -> Value {
    assert_eq!(
        response.status().as_u16(),
        status,
        "body: {}",
        String::from_utf8_lossy(body)
    );
    assert_eq!(
        response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let json: Value = serde_json::from_slice(body).expect("problem body is JSON");
    assert_eq!(json["status"], status);
    assert!(
        json["type"]
            .as_str()
            .unwrap()
            .starts_with("https://jiangwanli.dev/problems/")
    );
    assert!(json["title"].is_string());
    assert!(json["detail"].is_string());
    json
}

pub fn request_id(response: &Response<()>) -> Option<String> {
    response
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned())
}
