//! Shared by the payment integration tests: a migrated `jwl_payment` schema in a fresh test
//! database, saga events to feed the handler, and delivery through the real inbox path.

#![allow(dead_code)]

use chrono::Utc;
use jwl_events::{
    CourierAssigned, CourierId, Envelope, GeoPoint, InventoryRejected, LineItem, OrderCreated,
    OrderId, Service, WaybillId,
};
use jwl_outbox::Processed;
use jwl_payment::{PaymentHandler, SCHEMA, SERVICE, SimulatedProcessor};
use sqlx::PgPool;

/// A pool on a fresh database whose `search_path` is the payment schema, migrated.
pub async fn migrated_pool() -> anyhow::Result<PgPool> {
    let pool = jwl_testkit::service::schema_pool(SCHEMA).await?;
    jwl_payment::migrate(&pool).await?;
    Ok(pool)
}

/// `order.created` for a new order of 2 × 12 800 + 1 × 6 600 cents paid with `payment_token`.
pub fn order_created(payment_token: &str) -> Envelope {
    let items = vec![
        LineItem {
            sku: "TEA-LONGJING-250G".to_owned(),
            qty: 2,
            unit_price_cents: 12_800,
        },
        LineItem {
            sku: "MOONCAKE-6".to_owned(),
            qty: 1,
            unit_price_cents: 6_600,
        },
    ];
    Envelope::new(
        Service::Order,
        OrderCreated {
            order_id: OrderId::new(),
            customer_id: "cust-42".to_owned(),
            items,
            amount_cents: 32_200,
            pickup: GeoPoint::new(31.2304, 121.4737).unwrap(),
            dropoff: GeoPoint::new(31.2243, 121.4768).unwrap(),
            payment_token: payment_token.to_owned(),
            deadline: Utc::now() + chrono::Duration::minutes(5),
        }
        .into(),
    )
}

/// Handles `event` with the payment handler exactly as its consumer would.
pub async fn deliver(
    pool: &PgPool,
    event: &Envelope,
) -> Result<Processed, jwl_outbox::OutboxError> {
    let handler = PaymentHandler::new(std::sync::Arc::new(SimulatedProcessor::new()));
    jwl_testkit::service::deliver(pool, SERVICE, &handler, event).await
}

/// `dispatch.courier_assigned` of `order_id` (courier-07, 1.25 km away).
pub fn courier_assigned(order_id: OrderId) -> Envelope {
    Envelope::new(
        Service::Dispatch,
        CourierAssigned {
            order_id,
            waybill_id: WaybillId::new(),
            courier_id: CourierId::parse("courier-07").unwrap(),
            distance_km: 1.25,
        }
        .into(),
    )
}

/// `inventory.rejected` of `order_id` (the mooncakes are out of stock).
pub fn inventory_rejected(order_id: OrderId) -> Envelope {
    Envelope::new(
        Service::Inventory,
        InventoryRejected {
            order_id,
            unavailable_skus: vec!["MOONCAKE-6".to_owned()],
        }
        .into(),
    )
}
