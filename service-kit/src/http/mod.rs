//! The HTTP edge every service's routes sit behind ([`edge`]): health, readiness and metrics
//! endpoints, request ids, body limit, timeout, panic catching, problem-details errors for
//! everything (including 404/405), per-request tracing spans and latency metrics; and [`serve`].
//!
//! `/metrics` is on the public listener unless the deployment gives it its own
//! (`JWL_METRICS_ADDR`): then [`edge_with`] leaves it out ([`MetricsOn::Separate`]) and
//! [`metrics_router`] serves it there, with a `/readyz` that says which check failed.
//!
//! [`holds`] is the one admin route every service mounts next to its own: what it holds back
//! of an order.

pub mod admission;
mod health;
pub mod holds;
mod ingest;
mod layers;
mod metrics;
mod routes;
mod serve;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tower::ServiceBuilder;
use tower_http::ServiceBuilderExt;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::MakeRequestUuid;

use crate::auth::JwtKeys;

pub use health::{Readiness, ReadinessProbe};
pub use ingest::{
    BREAKER_FAILURES, BREAKER_OPEN_FOR, INGEST_SHED_METRIC, IngestLimiter, IngestLimits,
    limit_ingest,
};
pub use metrics::{HTTP_DURATION_METRIC, install_metrics_recorder};
pub use routes::{ListedRoute, ListedRouter, RouteMethod};
pub use serve::{ServeError, serve, serve_on};

/// Largest request body accepted (64 KiB); larger → 413 problem.
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

/// Longest a request may take; slower → 503 problem.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Header carrying the request id (generated as a UUID when the client sent none).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Where `GET /metrics` is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetricsOn {
    /// On the public listener, next to the routes (no `JWL_METRICS_ADDR`).
    #[default]
    Public,
    /// Only on a listener of its own, serving [`metrics_router`] (`JWL_METRICS_ADDR`).
    Separate,
}

/// `routes` plus `GET /healthz`, `GET /readyz` (checked by `readiness`) and `GET /metrics`,
/// behind the edge layers. Every route handler can extract [`crate::auth::Caller`].
pub fn edge(routes: Router, keys: JwtKeys, readiness: Readiness) -> Router {
    edge_with(routes, keys, Arc::new(readiness), MetricsOn::Public)
}

/// [`edge`] with any readiness check.
pub fn edge_with_probe(
    routes: Router,
    keys: JwtKeys,
    readiness: Arc<dyn ReadinessProbe>,
) -> Router {
    edge_with(routes, keys, readiness, MetricsOn::Public)
}

/// [`edge`] with any readiness check, and `/metrics` only where `metrics` says. The public
/// `/readyz` answers only ready or not (the detail is logged).
pub fn edge_with(
    routes: Router,
    keys: JwtKeys,
    readiness: Arc<dyn ReadinessProbe>,
    metrics: MetricsOn,
) -> Router {
    let mut routes = routes.route("/healthz", get(health::healthz)).route(
        "/readyz",
        get(move || health::readyz(readiness.clone(), health::Detail::Hidden)),
    );
    if metrics == MetricsOn::Public {
        let prometheus = install_metrics_recorder().clone();
        routes = routes.route("/metrics", get(move || metrics::render(prometheus.clone())));
    }
    routes.fallback(layers::not_found).layer(
        // Outermost first: the request id exists before anything else runs and is copied
        // onto every response, including those produced by the inner layers.
        ServiceBuilder::new()
            .set_x_request_id(MakeRequestUuid)
            .propagate_x_request_id()
            .layer(layers::trace_layer())
            .layer(axum::middleware::from_fn(metrics::record_request))
            .layer(axum::middleware::from_fn(layers::problem_for_bare_errors))
            .layer(CatchPanicLayer::custom(layers::panic_response))
            .layer(axum::middleware::from_fn(layers::enforce_timeout))
            .layer(axum::Extension(keys))
            .layer(RequestBodyLimitLayer::new(BODY_LIMIT_BYTES)),
    )
}

/// The routes of the metrics listener (`JWL_METRICS_ADDR`), for Prometheus and operators only:
/// `GET /metrics`, `GET /healthz` and a `GET /readyz` whose `503` says which check failed and
/// why. Nothing else (problem-details 404), no authentication: bind it where only they reach.
pub fn metrics_router(readiness: Arc<dyn ReadinessProbe>) -> Router {
    let prometheus = install_metrics_recorder().clone();
    Router::new()
        .route("/metrics", get(move || metrics::render(prometheus.clone())))
        .route("/healthz", get(health::healthz))
        .route(
            "/readyz",
            get(move || health::readyz(readiness.clone(), health::Detail::Shown)),
        )
        .fallback(layers::not_found)
        .layer(
            ServiceBuilder::new()
                .layer(axum::middleware::from_fn(layers::problem_for_bare_errors))
                .layer(CatchPanicLayer::custom(layers::panic_response)),
        )
}
