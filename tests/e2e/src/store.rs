//! Every SQL query of the harness, in one place: the outboxes of the five schemas and the
//! service tables the invariant checker reads (read-only; column names follow each service's
//! `migrations/`).

use std::collections::BTreeMap;

use anyhow::Context;
use jwl_events::Service;
use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

/// The Postgres schema of a service (`jwl_<name>`).
pub fn schema_of(service: Service) -> String {
    format!("jwl_{}", service.as_str())
}

/// One row of a service's outbox.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OutboxRow {
    pub seq: i64,
    pub event_id: Uuid,
    pub subject: String,
    pub published: bool,
    pub parked: bool,
    pub last_error: Option<String>,
}

/// A row of `jwl_payment.payments`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PaymentRow {
    pub order_id: Uuid,
    pub status: String,
    pub amount_cents: Option<i64>,
    pub captured: bool,
    pub voided: bool,
}

/// A row of `jwl_fulfillment.waybills`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct WaybillRow {
    pub waybill_id: Uuid,
    pub order_id: Uuid,
    pub status: String,
    pub courier_id: Option<String>,
}

/// A row of `jwl_inventory.stock`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StockRow {
    pub sku: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub shipped: i64,
}

/// A row of `jwl_inventory.order_reservations`: what inventory did for one order.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OrderReservationRow {
    pub order_id: Uuid,
    /// `release_requested` (tombstone), `reserved`, `rejected`, `released` or `committed`.
    pub state: String,
}

/// A row of `jwl_inventory.reservations`: one SKU's quantity held for one order.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ReservationRow {
    pub order_id: Uuid,
    pub sku: String,
    pub qty: i64,
    /// `reserved`, `released` or `committed`.
    pub state: String,
}

/// A row of `jwl_dispatch.couriers`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CourierRow {
    pub courier_id: String,
    pub live_waybills: i32,
}

/// A row of `jwl_dispatch.waybills`: dispatch's view of a waybill.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DispatchWaybillRow {
    pub waybill_id: Uuid,
    pub order_id: Uuid,
    /// `waiting`, `assigned`, `failed` or `delivered`.
    pub status: String,
    pub courier_id: Option<String>,
    pub failure_reason: Option<String>,
}

/// Read-only access to the services' schemas: all five in one database, or each in a database
/// of its own.
#[derive(Debug, Clone)]
pub struct Store {
    pools: BTreeMap<Service, PgPool>,
}

impl Store {
    /// Every service's schema through `pool` (one database holds them all).
    pub fn shared(pool: PgPool) -> Self {
        Self {
            pools: Service::ALL.map(|service| (service, pool.clone())).into(),
        }
    }

    /// Each service's schema through its own pool (a database per service).
    pub fn per_service(pools: BTreeMap<Service, PgPool>) -> anyhow::Result<Self> {
        for service in Service::ALL {
            anyhow::ensure!(pools.contains_key(&service), "no database for {service}");
        }
        Ok(Self { pools })
    }

    /// The pool that reaches `service`'s schema.
    fn pool(&self, service: Service) -> &PgPool {
        // every service has a pool: both constructors make sure of it
        &self.pools[&service]
    }

    /// The outbox of `service`, in `seq` order.
    pub async fn outbox(&self, service: Service) -> anyhow::Result<Vec<OutboxRow>> {
        // The schema name is built from a fixed enum, so it is safe to splice in.
        let sql = format!(
            "SELECT seq, event_id, subject, published_at IS NOT NULL AS published,
                    parked_at IS NOT NULL AS parked, last_error
             FROM {}.outbox ORDER BY seq",
            schema_of(service)
        );
        sqlx::query_as(AssertSqlSafe(sql))
            .fetch_all(self.pool(service))
            .await
            .with_context(|| format!("reading the {service} outbox"))
    }

    /// How many outbox rows of `service` are not published yet (parked rows included).
    pub async fn unpublished_count(&self, service: Service) -> anyhow::Result<i64> {
        let sql = format!(
            "SELECT count(*) FROM {}.outbox WHERE published_at IS NULL",
            schema_of(service)
        );
        sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_one(self.pool(service))
            .await
            .with_context(|| format!("counting the unpublished rows of the {service} outbox"))
    }

    /// Every payment.
    pub async fn payments(&self) -> anyhow::Result<Vec<PaymentRow>> {
        sqlx::query_as(
            "SELECT order_id, status, amount_cents,
                    captured_at IS NOT NULL AS captured, voided_at IS NOT NULL AS voided
             FROM jwl_payment.payments",
        )
        .fetch_all(self.pool(Service::Payment))
        .await
        .context("reading jwl_payment.payments")
    }

    /// Every waybill.
    pub async fn waybills(&self) -> anyhow::Result<Vec<WaybillRow>> {
        sqlx::query_as(
            "SELECT waybill_id, order_id, status, courier_id FROM jwl_fulfillment.waybills",
        )
        .fetch_all(self.pool(Service::Fulfillment))
        .await
        .context("reading jwl_fulfillment.waybills")
    }

    /// Every stock row.
    pub async fn stock(&self) -> anyhow::Result<Vec<StockRow>> {
        sqlx::query_as("SELECT sku, on_hand, reserved, shipped FROM jwl_inventory.stock")
            .fetch_all(self.pool(Service::Inventory))
            .await
            .context("reading jwl_inventory.stock")
    }

    /// Every order inventory has heard of.
    pub async fn order_reservations(&self) -> anyhow::Result<Vec<OrderReservationRow>> {
        sqlx::query_as("SELECT order_id, state FROM jwl_inventory.order_reservations")
            .fetch_all(self.pool(Service::Inventory))
            .await
            .context("reading jwl_inventory.order_reservations")
    }

    /// Every per-SKU reservation line.
    pub async fn reservations(&self) -> anyhow::Result<Vec<ReservationRow>> {
        sqlx::query_as("SELECT order_id, sku, qty, state FROM jwl_inventory.reservations")
            .fetch_all(self.pool(Service::Inventory))
            .await
            .context("reading jwl_inventory.reservations")
    }

    /// Every courier dispatch knows.
    pub async fn couriers(&self) -> anyhow::Result<Vec<CourierRow>> {
        sqlx::query_as("SELECT courier_id, live_waybills FROM jwl_dispatch.couriers")
            .fetch_all(self.pool(Service::Dispatch))
            .await
            .context("reading jwl_dispatch.couriers")
    }

    /// Every waybill dispatch knows.
    pub async fn dispatch_waybills(&self) -> anyhow::Result<Vec<DispatchWaybillRow>> {
        sqlx::query_as(
            "SELECT waybill_id, order_id, status, courier_id, failure_reason FROM jwl_dispatch.waybills",
        )
        .fetch_all(self.pool(Service::Dispatch))
        .await
        .context("reading jwl_dispatch.waybills")
    }
}
