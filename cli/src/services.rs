//! The table of the five services: name, schema and the entry points each service crate exports
//! (`migrate`, `router`, `run`), shared by `jwl serve`, `jwl up` and `jwl migrate`, and the
//! event types each consumes (for `jwl replay --to`).

use std::fmt;

use axum::Router;
use futures::future::BoxFuture;
use jwl_events::{EventType, Service};
use jwl_service_kit::ServiceContext;
use jwl_service_kit::openapi::OpenApi;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// A service as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum ServiceName {
    Order,
    Payment,
    Inventory,
    Fulfillment,
    Dispatch,
}

impl ServiceName {
    pub const ALL: [ServiceName; 5] = [
        ServiceName::Order,
        ServiceName::Payment,
        ServiceName::Inventory,
        ServiceName::Fulfillment,
        ServiceName::Dispatch,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ServiceName::Order => "order",
            ServiceName::Payment => "payment",
            ServiceName::Inventory => "inventory",
            ServiceName::Fulfillment => "fulfillment",
            ServiceName::Dispatch => "dispatch",
        }
    }

    /// The event types this service's handler consumes (its `Handler::subscriptions`).
    pub fn subscriptions(self) -> &'static [EventType] {
        match self {
            ServiceName::Order => jwl_order::SUBSCRIPTIONS,
            ServiceName::Payment => jwl_payment::SUBSCRIPTIONS,
            ServiceName::Inventory => jwl_inventory::SUBSCRIPTIONS,
            ServiceName::Fulfillment => jwl_fulfillment::SUBSCRIPTIONS,
            ServiceName::Dispatch => jwl_dispatch::SUBSCRIPTIONS,
        }
    }

    /// The entry points of this service's crate.
    pub fn entry(self) -> &'static ServiceEntry {
        match self {
            ServiceName::Order => &ORDER,
            ServiceName::Payment => &PAYMENT,
            ServiceName::Inventory => &INVENTORY,
            ServiceName::Fulfillment => &FULFILLMENT,
            ServiceName::Dispatch => &DISPATCH,
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the CLI needs from one service crate.
pub struct ServiceEntry {
    pub name: ServiceName,
    pub service: Service,
    /// Its Postgres schema (the `search_path` of its pool).
    pub schema: &'static str,
    /// Creates or updates its tables (outbox/inbox included).
    pub migrate: for<'a> fn(&'a PgPool) -> BoxFuture<'a, anyhow::Result<()>>,
    /// Its HTTP routes (without health/metrics, which the edge adds).
    pub router: fn(&ServiceContext) -> Router,
    /// The OpenAPI description of those routes (merged into `/openapi.json`).
    pub openapi: fn() -> OpenApi,
    /// Its messaging and background work, until the token is cancelled.
    pub run: fn(ServiceContext, CancellationToken) -> BoxFuture<'static, anyhow::Result<()>>,
}

/// Builds the [`ServiceEntry`] of a service crate from its exported items.
macro_rules! service_entry {
    ($krate:ident, $name:ident) => {{
        fn migrate(pool: &PgPool) -> BoxFuture<'_, anyhow::Result<()>> {
            Box::pin($krate::migrate(pool))
        }
        fn run(
            ctx: ServiceContext,
            shutdown: CancellationToken,
        ) -> BoxFuture<'static, anyhow::Result<()>> {
            Box::pin($krate::run(ctx, shutdown))
        }
        ServiceEntry {
            name: ServiceName::$name,
            service: $krate::SERVICE,
            schema: $krate::SCHEMA,
            migrate,
            router: $krate::router,
            openapi: $krate::openapi,
            run,
        }
    }};
}

static ORDER: ServiceEntry = service_entry!(jwl_order, Order);
static PAYMENT: ServiceEntry = service_entry!(jwl_payment, Payment);
static INVENTORY: ServiceEntry = service_entry!(jwl_inventory, Inventory);
static FULFILLMENT: ServiceEntry = service_entry!(jwl_fulfillment, Fulfillment);
static DISPATCH: ServiceEntry = service_entry!(jwl_dispatch, Dispatch);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_matches_the_crates() {
        for name in ServiceName::ALL {
            let entry = name.entry();
            assert_eq!(entry.name, name);
            assert_eq!(entry.service.as_str(), name.as_str());
            assert_eq!(entry.schema, format!("jwl_{name}"));
        }
    }

    #[test]
    fn subscriptions_come_from_the_handlers() {
        assert!(
            ServiceName::Payment
                .subscriptions()
                .contains(&EventType::OrderCreated)
        );
        assert!(
            ServiceName::Dispatch
                .subscriptions()
                .contains(&EventType::WaybillCreated)
        );
        assert!(
            !ServiceName::Inventory
                .subscriptions()
                .contains(&EventType::OrderCreated)
        );
    }

    /// The operator tools say who should act on an order's last event (`jwl saga stuck`) from
    /// the catalogue's table; every type a service's handler really consumes must name it
    /// (dispatch acting on `order.cancel_requested` was once missed).
    #[test]
    fn every_event_type_a_service_handles_names_it_as_next() {
        for name in ServiceName::ALL {
            let service = name.entry().service;
            assert_eq!(
                name.subscriptions(),
                service.subscriptions(),
                "{name}'s handler declares other subscriptions than the catalogue's table"
            );
            if service == Service::Order {
                // the read model records every event; it moves no saga on
                continue;
            }
            for &ty in name.subscriptions() {
                assert!(
                    jwl_ops::next_services(ty).contains(&service),
                    "{name} consumes {ty}, but `jwl saga stuck` would not name it"
                );
            }
        }
    }
}
