//! `jwl-dispatch`: couriers and the assignment of waybills to them.
//!
//! On `waybill_created` it assigns the nearest courier with capacity within
//! `dispatch_radius_km` of the pickup (`courier_assigned`), or lets the waybill wait until
//! `created + dispatch_deadline`; a timer fails waybills still waiting then (`dispatch.failed`,
//! `no_courier`). Couriers report their location (and are then offered the waiting waybills
//! around them) and their deliveries over HTTP. Dispatch alone decides cancellations
//! (`order.cancel_requested`): a waiting waybill fails at once, a cancellation before the
//! waybill leaves a tombstone that fails it on arrival, and after the assignment it is refused.
//!
//! Positions are indexed in the database, so any number of replicas agree: nearest-neighbour
//! searches use GiST indexes over a planar projection of each position (`ORDER BY plane <->
//! origin LIMIT k`, re-ranked by exact distance; see `domain::PlanarSearch`), so finding the
//! nearest courier costs the same with a thousand available couriers around a pickup as with a
//! hundred thousand; H3 cells serve the matching-area locks and the few searches the plane
//! cannot serve (near the poles and the antimeridian). Capacity is taken with a conditional
//! update under the courier's row lock, so it is never exceeded. A new waybill and a courier
//! reporting next to it at the same moment cannot miss each other: both sides lock the coarse
//! H3 cells where they could meet (matching areas: every stripe shared for the waybill's search,
//! one stripe exclusive for the courier's cell, so couriers rarely wait for each other), so the
//! second to commit sees the first.
//!
//! Entry points as the CLI expects them: [`SERVICE`], [`SCHEMA`], [`migrate`], [`router`],
//! [`run`]; [`DispatchHandler`] for tests and replay tools.

#[doc(hidden)]
pub mod bench;
mod dispatcher;
mod domain;
mod error;
mod handler;
mod http;
mod store;
mod timer;

use std::sync::Arc;

use anyhow::Context;
use jwl_events::Service;
use jwl_outbox::Messaging;
use jwl_service_kit::ServiceContext;
use jwl_service_kit::http::ListedRouter;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

pub use handler::{DispatchHandler, SUBSCRIPTIONS};

/// This bounded context.
pub const SERVICE: Service = Service::Dispatch;

/// Its Postgres schema (the `search_path` of its pool).
pub const SCHEMA: &str = "jwl_dispatch";

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
    http::routes(
        ctx.http_pool.clone(),
        ctx.settings.clone(),
        ctx.relay.clone(),
    )
    .merge(jwl_service_kit::http::holds::routes(
        SERVICE,
        ctx.http_pool.clone(),
    ))
}

/// Relay, consumers and the deadline timer until `shutdown`; if either stops on its own, the
/// other is stopped too and the failure is returned.
pub async fn run(ctx: ServiceContext, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Before consuming: the index of available couriers must hold every courier with spare
    // capacity under this replica's configuration.
    let raised =
        store::raise_stored_capacity(&ctx.pool, dispatcher::capacity(&ctx.settings)).await?;
    if raised > 0 {
        tracing::info!(
            couriers = raised,
            "raised the stored capacity to the configured one"
        );
    }
    let stop = shutdown.child_token();
    let mut timer = tokio::spawn(timer::run(
        ctx.pool.clone(),
        ctx.relay.clone(),
        ctx.settings.clone(),
        ctx.messaging.db_stall_timeout,
        stop.clone(),
    ));
    let handler = Arc::new(DispatchHandler::new(ctx.settings.clone()));
    let messaging = Messaging::new(SERVICE, ctx.pool, ctx.broker, ctx.messaging)
        .with_relay_signal(ctx.relay)
        .run(handler, stop.clone());
    tokio::pin!(messaging);
    tokio::select! {
        result = &mut messaging => {
            stop.cancel();
            timer.await.context("the deadline timer task failed")?;
            result?;
        }
        joined = &mut timer => {
            stop.cancel();
            messaging.await?;
            joined.context("the deadline timer task failed")?;
            if !shutdown.is_cancelled() {
                anyhow::bail!("the deadline timer stopped before shutdown");
            }
        }
    }
    Ok(())
}
