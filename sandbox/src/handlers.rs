//! The handlers a sandbox run feeds ([`Handlers`]): the current build's by default
//! ([`Handlers::current`]), or any others (a test wraps one to change a decision).

use std::sync::Arc;

use futures::future::BoxFuture;
use jwl_events::Service;
use jwl_outbox::Handler;
use jwl_service_kit::Settings;
use sqlx::PgPool;

/// The five services, in the order a recorded event is fed to its consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SandboxService {
    Order,
    Payment,
    Inventory,
    Fulfillment,
    Dispatch,
}

impl SandboxService {
    pub const ALL: [SandboxService; 5] = [
        SandboxService::Order,
        SandboxService::Payment,
        SandboxService::Inventory,
        SandboxService::Fulfillment,
        SandboxService::Dispatch,
    ];

    pub fn service(self) -> Service {
        match self {
            SandboxService::Order => jwl_order::SERVICE,
            SandboxService::Payment => jwl_payment::SERVICE,
            SandboxService::Inventory => jwl_inventory::SERVICE,
            SandboxService::Fulfillment => jwl_fulfillment::SERVICE,
            SandboxService::Dispatch => jwl_dispatch::SERVICE,
        }
    }

    pub fn name(self) -> &'static str {
        self.service().as_str()
    }

    pub fn schema(self) -> &'static str {
        match self {
            SandboxService::Order => jwl_order::SCHEMA,
            SandboxService::Payment => jwl_payment::SCHEMA,
            SandboxService::Inventory => jwl_inventory::SCHEMA,
            SandboxService::Fulfillment => jwl_fulfillment::SCHEMA,
            SandboxService::Dispatch => jwl_dispatch::SCHEMA,
        }
    }

    /// The current build's migrations of the service's schema.
    pub fn migrate(self, pool: &PgPool) -> BoxFuture<'_, anyhow::Result<()>> {
        match self {
            SandboxService::Order => Box::pin(jwl_order::migrate(pool)),
            SandboxService::Payment => Box::pin(jwl_payment::migrate(pool)),
            SandboxService::Inventory => Box::pin(jwl_inventory::migrate(pool)),
            SandboxService::Fulfillment => Box::pin(jwl_fulfillment::migrate(pool)),
            SandboxService::Dispatch => Box::pin(jwl_dispatch::migrate(pool)),
        }
    }
}

/// One handler per service: what the sandbox feeds each service's recorded inputs to.
#[derive(Clone)]
pub struct Handlers {
    pub order: Arc<dyn Handler>,
    pub payment: Arc<dyn Handler>,
    pub inventory: Arc<dyn Handler>,
    pub fulfillment: Arc<dyn Handler>,
    pub dispatch: Arc<dyn Handler>,
}

impl Handlers {
    /// The handlers of this build, as `jwl serve` runs them: dispatch with `settings`' radius,
    /// capacity and dispatch deadline; payment with the card processor simulator staging no
    /// faults (no breaker: nothing is retried in the sandbox).
    pub fn current(settings: Arc<Settings>) -> Handlers {
        Handlers {
            order: Arc::new(jwl_order::OrderReadModel),
            payment: Arc::new(jwl_payment::PaymentHandler::new(Arc::new(
                jwl_payment::SimulatedProcessor::new(),
            ))),
            inventory: Arc::new(jwl_inventory::InventoryHandler),
            fulfillment: Arc::new(jwl_fulfillment::FulfillmentHandler),
            dispatch: Arc::new(jwl_dispatch::DispatchHandler::new(settings)),
        }
    }

    pub(crate) fn of(&self, service: SandboxService) -> &dyn Handler {
        match service {
            SandboxService::Order => self.order.as_ref(),
            SandboxService::Payment => self.payment.as_ref(),
            SandboxService::Inventory => self.inventory.as_ref(),
            SandboxService::Fulfillment => self.fulfillment.as_ref(),
            SandboxService::Dispatch => self.dispatch.as_ref(),
        }
    }
}
