//! `jwl-payment`: the payment bounded context. It authorises an order's amount with the card
//! processor on `order.created`, captures it once a courier is assigned and voids it when the
//! saga compensates (`inventory.rejected`, `dispatch.failed`). Its state lives in the
//! `jwl_payment` schema; `GET /v1/payments/{order_id}` shows it to admins.
//!
//! The card processor (a simulator that can stage errors, timeouts and slowness) is called
//! through a timeout and a circuit breaker with dynamic thresholds ([`guard`]); while the
//! breaker is open, payment stops handing messages to its handler and holds what it has, so an
//! outage of the processor costs no delivery attempt and fails no saga. Admins see the breaker
//! and stage faults with `GET`/`PUT /v1/payment-processor`.

mod domain;
pub mod guard;
mod handler;
mod http;
mod processor;
mod store;

use std::sync::Arc;

use jwl_events::Service;
use jwl_outbox::Messaging;
use jwl_service_kit::ServiceContext;
use jwl_service_kit::breaker::Breaker;
use jwl_service_kit::config::ProcessorSettings;
use jwl_service_kit::http::ListedRouter;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

pub use guard::GuardedProcessor;
pub use handler::{PaymentHandler, PaymentHandlingError, SUBSCRIPTIONS};
pub use processor::{
    Authorization, CardProcessor, DECLINED_REASON, DECLINED_TOKEN, Faults, IdempotencyKey,
    InvalidFaults, MAX_SIMULATED_LATENCY, ProcessorError, SIMULATOR_REMEMBERED_KEYS,
    SimulatedProcessor,
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

/// The OpenAPI description of [`routes`] (served in `/openapi.json`).
pub fn openapi() -> jwl_service_kit::openapi::OpenApi {
    let mut doc = http::openapi();
    doc.merge(jwl_service_kit::http::holds::openapi(SERVICE));
    doc
}

/// [`router`], with the list of its routes.
pub fn routes(ctx: &ServiceContext) -> ListedRouter {
    http::routes(ctx.http_pool.clone(), processor(ctx)).merge(jwl_service_kit::http::holds::routes(
        SERVICE,
        ctx.http_pool.clone(),
    ))
}

/// The card processor of one payment service: the simulator, and the same behind its timeout
/// and breaker (what the handler calls). One per [`ServiceContext`], shared by the routes and
/// the consumers.
pub struct Processor {
    pub simulator: Arc<SimulatedProcessor>,
    pub guarded: Arc<GuardedProcessor>,
}

impl Processor {
    /// The simulator staging the configured faults, behind the configured timeout and breaker.
    pub fn new(settings: &ProcessorSettings) -> Self {
        let faults = Faults {
            error_rate: settings.error_rate,
            timeout_rate: settings.timeout_rate,
            latency_ms: u64::try_from(settings.latency.as_millis()).unwrap_or(u64::MAX),
            slowdown: settings.slowdown,
        };
        let simulator = Arc::new(match faults.validated() {
            Ok(faults) => SimulatedProcessor::with_faults(faults),
            Err(error) => {
                tracing::warn!(%error, "card processor faults out of range; simulating none");
                SimulatedProcessor::new()
            }
        });
        let breaker = Breaker::new(guard::BREAKER_NAME, settings.breaker.clone());
        let guarded = Arc::new(GuardedProcessor::new(
            simulator.clone(),
            breaker,
            settings.timeout,
        ));
        Self { simulator, guarded }
    }
}

/// The [`Processor`] of `ctx`.
pub fn processor(ctx: &ServiceContext) -> Arc<Processor> {
    ctx.shared(|| Processor::new(&ctx.settings.processor))
}

/// Runs the outbox relay and the consumers of the payment handler (with the simulated card
/// processor behind its breaker) until `shutdown`.
pub async fn run(ctx: ServiceContext, shutdown: CancellationToken) -> anyhow::Result<()> {
    let handler = PaymentHandler::new(processor(&ctx).guarded.clone());
    Messaging::new(SERVICE, ctx.pool, ctx.broker, ctx.messaging)
        .with_relay_signal(ctx.relay)
        .run(Arc::new(handler), shutdown)
        .await?;
    Ok(())
}
