//! `jwl-inventory`: the inventory bounded context. It reserves an order's lines all or nothing
//! on `payment.authorized`, releases them when dispatch fails and ships (commits) them when the
//! payment is captured. Its stock lives in the `jwl_inventory` schema; admins set and read it
//! with `PUT`/`GET /v1/stock/{sku}`.

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

pub use handler::{InventoryHandler, InventoryHandlingError, SUBSCRIPTIONS};

/// This bounded context.
pub const SERVICE: Service = Service::Inventory;

/// Its Postgres schema (the `search_path` of its pool).
pub const SCHEMA: &str = "jwl_inventory";

/// The service's own migrations (14-digit versions, beside the outbox's 1..=999).
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Creates or updates the outbox/inbox tables and the inventory tables in the pool's schema.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    jwl_outbox::migrate_with(pool, &MIGRATOR).await?;
    Ok(())
}

/// The service's HTTP routes (the edge adds health, metrics and the fallback).
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

/// Runs the outbox relay and the inventory handler's consumers until `shutdown`.
pub async fn run(ctx: ServiceContext, shutdown: CancellationToken) -> anyhow::Result<()> {
    Messaging::new(SERVICE, ctx.pool, ctx.broker, ctx.messaging)
        .with_relay_signal(ctx.relay)
        .run(Arc::new(InventoryHandler), shutdown)
        .await?;
    Ok(())
}
