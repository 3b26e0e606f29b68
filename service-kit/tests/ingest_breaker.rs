//! The ingest breaker: after a run of requests failing for want of the database (the real
//! `ApiError` mapping of a pool timeout), order intake is refused at once with `503` and
//! `Retry-After` without running the handler; once the open time is over a request goes through
//! again, and a success closes the breaker. Refused requests (no token) do not move it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use axum::middleware::from_fn_with_state;
use axum::routing::post;
use jwl_service_kit::ApiError;
use jwl_service_kit::auth::Scope;
use jwl_service_kit::http::{
    BREAKER_FAILURES, BREAKER_OPEN_FOR, IngestLimiter, IngestLimits, limit_ingest,
};

/// A route whose handler fails like a pool that cannot reach the database while `database_down`.
fn app(database_down: Arc<AtomicBool>, calls: Arc<AtomicU32>) -> Router {
    let handler = move || {
        let (database_down, calls) = (database_down.clone(), calls.clone());
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            if database_down.load(Ordering::SeqCst) {
                Err(ApiError::from(sqlx::Error::PoolTimedOut))
            } else {
                Ok("accepted")
            }
        }
    };
    common::edge(Router::new().route(
        "/v1/orders",
        post(handler).route_layer(from_fn_with_state(
            IngestLimiter::new(&IngestLimits::default()),
            limit_ingest,
        )),
    ))
}

#[tokio::test]
async fn a_failing_database_opens_the_breaker_and_a_success_closes_it() {
    let database_down = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicU32::new(0));
    let app = app(database_down.clone(), calls.clone());
    let token = common::keys()
        .issue("cust-1", &[Scope::OrdersWrite], Duration::from_secs(600))
        .unwrap();
    let order = || -> Request<Body> {
        let mut request = common::post_json("/v1/orders", "{}");
        request.headers_mut().insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        request
    };

    for _ in 0..BREAKER_FAILURES {
        let (response, body) = common::send(&app, order()).await;
        common::problem(&response, &body, 503);
        assert_eq!(response.headers()["retry-after"], "1");
        // an anonymous request in between is refused and says nothing about the database
        let (response, body) = common::send(&app, common::post_json("/v1/orders", "{}")).await;
        common::problem(&response, &body, 401);
    }
    assert_eq!(calls.load(Ordering::SeqCst), BREAKER_FAILURES);

    let (response, body) = common::send(&app, order()).await;
    let problem = common::problem(&response, &body, 503);
    assert_eq!(
        response.headers()["retry-after"],
        BREAKER_OPEN_FOR.as_secs().to_string().as_str()
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("not taking orders"),
        "{problem}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        BREAKER_FAILURES,
        "refused without running the handler"
    );

    database_down.store(false, Ordering::SeqCst);
    // the open time is the fault's own length, not a wait for a condition
    tokio::time::sleep(BREAKER_OPEN_FOR + BREAKER_OPEN_FOR / 4).await;
    for _ in 0..3 {
        let (response, _) = common::send(&app, order()).await;
        assert_eq!(response.status(), 200, "closed again after a success");
    }
    assert_eq!(calls.load(Ordering::SeqCst), BREAKER_FAILURES + 3);
}
