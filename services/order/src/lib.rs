//! `jwl-order`: the order service. It accepts orders over HTTP (`POST /v1/orders`, emitting
//! `order.created`), lets customers ask to cancel them (`order.cancel_requested`), requests the
//! cancellation of orders that miss their deadline (timer), and keeps the order status read model
//! and timeline (`GET /v1/orders/{id}`) from every other saga event.
//!
//! The entry points are those every service crate exports (see `cli/src/services.rs`):
//! [`SERVICE`], [`SCHEMA`], [`migrate`], [`router`] and [`run`]; [`OrderReadModel`] is the
//! event handler `run` feeds.

mod admission;
mod console;
mod deadline;
mod domain;
mod handler;
mod http;
mod intake;
mod recorded;
mod retention;
mod store;

use std::sync::Arc;

use jwl_events::Service;
use jwl_outbox::Messaging;
use jwl_service_kit::ServiceContext;
use jwl_service_kit::http::ListedRouter;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

pub use console::{StuckError, StuckOrder, stuck_orders};
pub use handler::{OrderReadModel, SUBSCRIPTIONS};
pub use recorded::record_emitted;
pub use retention::prune_expired_idempotency_keys;

/// Reads a `POST /v1/orders` body as order intake does before any database work — the JSON,
/// naming the field at fault, then the order rules — and returns its canonical form (what a
/// repeated idempotency key is compared against), or the problem the client is answered with.
/// Public for the fuzz target `order_body` (`fuzz/`) and its smoke test.
pub fn check_order_body(body: &[u8]) -> Result<String, jwl_service_kit::ApiError> {
    let request: domain::OrderRequest = jwl_service_kit::extract::parse_json(body)?;
    domain::validate_order(&request).map_err(http::bad_field)?;
    Ok(domain::canonical_request(&request))
}

/// This bounded context.
pub const SERVICE: Service = Service::Order;

/// The Postgres schema of the order service's tables (its pool's `search_path`).
pub const SCHEMA: &str = "jwl_order";

/// The service's own migrations (14-digit versions), next to the outbox's.
static MIGRATOR: Migrator = sqlx::migrate!();

/// Creates or updates the outbox/inbox tables and the order tables in the pool's schema.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    jwl_outbox::migrate_with(pool, &MIGRATOR).await?;
    Ok(())
}

/// `POST /v1/orders`, `GET /v1/orders/{id}`, `POST /v1/orders/{id}/cancel`, the console's
/// admin API (`/v1/console/…`) and its page (`GET /console`, outside [`routes`] and the OpenAPI
/// document: static, no data, no token).
pub fn router(ctx: &ServiceContext) -> axum::Router {
    routes(ctx).into_router().merge(console::page())
}

/// The OpenAPI description of [`routes`] (served in `/openapi.json`).
pub fn openapi() -> jwl_service_kit::openapi::OpenApi {
    let mut doc = http::openapi();
    doc.merge(jwl_service_kit::http::holds::openapi(SERVICE));
    doc
}

/// [`router`], with the list of its routes.
pub fn routes(ctx: &ServiceContext) -> ListedRouter {
    http::routes(ctx).merge(jwl_service_kit::http::holds::routes(
        SERVICE,
        ctx.http_pool.clone(),
    ))
}

/// The relay, the read model's consumers, the deadline timer and the pruning of expired
/// idempotency keys, until `shutdown`. If the
/// messaging stops with an error, the timer is stopped too and the error returned.
pub async fn run(ctx: ServiceContext, shutdown: CancellationToken) -> anyhow::Result<()> {
    let stop = shutdown.child_token();
    let timer = tokio::spawn(deadline::run(
        ctx.pool.clone(),
        ctx.relay.clone(),
        ctx.settings.order_deadline,
        ctx.messaging.db_stall_timeout,
        stop.clone(),
    ));
    let retention = tokio::spawn(retention::run(
        ctx.pool.clone(),
        ctx.settings.idempotency_ttl,
        stop.clone(),
    ));
    let messaging = Messaging::new(SERVICE, ctx.pool, ctx.broker, ctx.messaging)
        .with_relay_signal(ctx.relay)
        .run(Arc::new(OrderReadModel), stop.clone())
        .await;
    stop.cancel();
    timer.await?;
    retention.await?;
    messaging?;
    Ok(())
}
