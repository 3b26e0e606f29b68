//! Shared by the inventory integration tests: a migrated `jwl_inventory` schema in a fresh test
//! database, `payment.authorized` events to feed the handler, and delivery through the real
//! inbox path.

use jwl_events::{Envelope, GeoPoint, LineItem, OrderId, PaymentAuthorized, Service};
use jwl_inventory::{InventoryHandler, SCHEMA, SERVICE};
use jwl_outbox::{OutboxError, Processed};
use sqlx::PgPool;

/// A pool on a fresh database whose `search_path` is the inventory schema, migrated.
pub async fn migrated_pool() -> anyhow::Result<PgPool> {
    let pool = jwl_testkit::service::schema_pool(SCHEMA).await?;
    jwl_inventory::migrate(&pool).await?;
    Ok(pool)
}

/// An order line of `qty` × `sku` at 100 cents.
pub fn line(sku: &str, qty: u32) -> LineItem {
    LineItem {
        sku: sku.to_owned(),
        qty,
        unit_price_cents: 100,
    }
}

/// `payment.authorized` for a new order with these lines.
pub fn payment_authorized(items: Vec<LineItem>) -> Envelope {
    let amount_cents = LineItem::total_cents(&items).unwrap();
    Envelope::new(
        Service::Payment,
        PaymentAuthorized {
            order_id: OrderId::new(),
            amount_cents,
            items,
            pickup: GeoPoint::new(31.2304, 121.4737).unwrap(),
            dropoff: GeoPoint::new(31.2243, 121.4768).unwrap(),
        }
        .into(),
    )
}

/// Handles `event` with the inventory handler exactly as its consumer would.
pub async fn deliver(pool: &PgPool, event: &Envelope) -> Result<Processed, OutboxError> {
    jwl_testkit::service::deliver(pool, SERVICE, &InventoryHandler, event).await
}
