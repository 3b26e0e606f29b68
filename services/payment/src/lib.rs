//! `jwl-payment`: the payment bounded context. It authorises an order's amount with the card
//! processor on `order.created`, captures it once a courier is assigned and voids it when the
//! saga compensates (`inventory.rejected`, `dispatch.failed`). Its state lives in the
//! `jwl_payment` schema; `GET /v1/payments/{order_id}` shows it to admins.

mod domain;
mod handler;
mod http;
mod processor;
mod store;

use std::sync::Arc;

use jwl_events::Service;
use jwl_outbox::Messaging;
use jwl_service_kit::ServiceContext;
use jwl_service_kit::http::ListedRouter;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

pub use handler::{PaymentHandler, PaymentHandlingError, SUBSCRIPTIONS};
pub use processor::{
    Authorization, CardProcessor, DECLINED_REASON, DECLINED_TOKEN, IdempotencyKey,
    SIMULATOR_REMEMBERED_KEYS, SimulatedProcessor,
};

/// This bounded context.
pub const SERVICE: Service = Service::Payment;

/// Its Postgres schema (the `search_path` of its pool).
pub const SCHEMA: &str = "jwl_payment";

/// The service's own migrations (14-digit versions, beside the outbox's 1..=999).
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Creates or updates the outbox/inbox tables and the payment tables in the pool's schema.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    jwl_outbox::migrate_with(pool, &MIGRATOR).await?;
    Ok(())
}

/// The service's HTTP routes (the edge adds health, metrics and the fallback).
pub fn router(ctx: &ServiceContext) -> axum::Router {
    routes(ctx).into_router()
}

/// [`router`], with the list of its routes.
pub fn routes(ctx: &ServiceContext) -> ListedRouter {
    http::routes(ctx.http_pool.clone())
}

/// Runs the outbox relay and the consumers of the payment handler (with the simulated card
/// processor) until `shutdown`.
pub async fn run(ctx: ServiceContext, shutdown: CancellationToken) -> anyhow::Result<()> {
    let handler = PaymentHandler::new(Arc::new(SimulatedProcessor::new()));
    Messaging::new(SERVICE, ctx.pool, ctx.broker, ctx.messaging)
        .with_relay_signal(ctx.relay)
        .run(Arc::new(handler), shutdown)
        .await?;
    Ok(())
}
