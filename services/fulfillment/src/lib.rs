//! `jwl-fulfillment`: the waybill (运单) bounded context.
//!
//! It turns `inventory.reserved` into a waybill (`waybill_created`), cancels the waybill when
//! dispatch fails it (`waybill_cancelled`), and follows dispatch's `courier_assigned` and
//! `delivered`. A `dispatch.failed` that overtakes the reservation leaves a cancelled tombstone
//! under the failed waybill's id, so the late `inventory.reserved` creates no live waybill and
//! emits nothing.
//!
//! Entry points as the CLI expects them: [`SERVICE`], [`SCHEMA`], [`migrate`], [`router`],
//! [`run`]; [`FulfillmentHandler`] for tests and replay tools.

mod domain;
mod handler;
mod http;
mod store;

use std::sync::Arc;

use jwl_events::Service;
use jwl_outbox::Messaging;
use jwl_service_kit::ServiceContext;
use jwl_service_kit::http::ListedRouter;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

pub use handler::{FulfillmentHandler, SUBSCRIPTIONS};

/// This bounded context.
pub const SERVICE: Service = Service::Fulfillment;

/// Its Postgres schema (the `search_path` of its pool).
pub const SCHEMA: &str = "jwl_fulfillment";

/// The service's own migrations (14-digit versions).
static MIGRATOR: Migrator = sqlx::migrate!();

/// Creates or updates the outbox/inbox tables and the service's tables in the pool's schema.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    jwl_outbox::migrate_with(pool, &MIGRATOR).await?;
    Ok(())
}

/// The service's HTTP routes (without health and metrics, which the edge adds).
pub fn router(ctx: &ServiceContext) -> axum::Router {
    routes(ctx).into_router()
}

/// The OpenAPI description of [`routes`] (served in `/openapi.json`).
pub fn openapi() -> jwl_service_kit::openapi::OpenApi {
    let mut doc = http::openapi();
    doc.merge(jwl_service_kit::http::holds::openapi(SERVICE));
    doc
}

/// [`router`], with the list of its routes.
pub fn routes(ctx: &ServiceContext) -> ListedRouter {
    http::routes(ctx.http_pool.clone()).merge(jwl_service_kit::http::holds::routes(
        SERVICE,
        ctx.http_pool.clone(),
    ))
}

/// Relay and consumers until `shutdown`.
pub async fn run(ctx: ServiceContext, shutdown: CancellationToken) -> anyhow::Result<()> {
    Messaging::new(SERVICE, ctx.pool, ctx.broker, ctx.messaging)
        .with_relay_signal(ctx.relay)
        .run(Arc::new(FulfillmentHandler), shutdown)
        .await?;
    Ok(())
}
