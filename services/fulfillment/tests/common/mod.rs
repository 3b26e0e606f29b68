//! What the fulfillment tests share: a migrated pool, handling an event as the consumer loop
//! would, and the events fulfillment consumes.

#![allow(dead_code)]

use jwl_events::{
    CourierAssigned, CourierId, Delivered, DispatchFailed, DispatchFailureReason, Envelope,
    EventData, GeoPoint, InventoryReserved, LineItem, OrderId, WaybillCreated, WaybillId,
};
use jwl_fulfillment::{FulfillmentHandler, SCHEMA, SERVICE};
use jwl_outbox::{OutboxError, Processed};
use sqlx::PgPool;

pub async fn pool() -> anyhow::Result<PgPool> {
    let pool = jwl_testkit::service::schema_pool(SCHEMA).await?;
    jwl_fulfillment::migrate(&pool).await?;
    Ok(pool)
}

/// Handles `env` exactly as the consumer loop would (inbox, handler, outbox).
pub async fn handle(pool: &PgPool, env: &Envelope) -> Result<Processed, OutboxError> {
    jwl_testkit::service::deliver(pool, SERVICE, &FulfillmentHandler, env).await
}

pub async fn emitted(pool: &PgPool, env: &Envelope) -> anyhow::Result<Vec<EventData>> {
    match handle(pool, env).await? {
        Processed::Handled { emitted } => Ok(emitted.into_iter().map(|e| e.data).collect()),
        Processed::Duplicate => anyhow::bail!("unexpected duplicate"),
    }
}

pub fn event(data: impl Into<EventData>) -> Envelope {
    let data = data.into();
    Envelope::new(data.event_type().emitter(), data)
}

pub fn point(lat: f64, lon: f64) -> GeoPoint {
    GeoPoint::new(lat, lon).unwrap()
}

pub fn reserved(order_id: OrderId) -> Envelope {
    event(InventoryReserved {
        order_id,
        items: vec![LineItem {
            sku: "TEA".into(),
            qty: 1,
            unit_price_cents: 100,
        }],
        pickup: point(31.2304, 121.4737),
        dropoff: point(31.2243, 121.4768),
    })
}

pub fn courier() -> CourierId {
    CourierId::parse("courier-07").unwrap()
}

pub fn assigned(order_id: OrderId, waybill_id: WaybillId) -> Envelope {
    event(CourierAssigned {
        order_id,
        waybill_id,
        courier_id: courier(),
        distance_km: 1.0,
    })
}

pub fn delivered(order_id: OrderId, waybill_id: WaybillId) -> Envelope {
    event(Delivered {
        order_id,
        waybill_id,
        courier_id: courier(),
    })
}

pub fn failed(order_id: OrderId, waybill_id: WaybillId) -> Envelope {
    event(DispatchFailed {
        order_id,
        waybill_id,
        reason: DispatchFailureReason::NoCourier,
    })
}

/// Creates the order's waybill and returns its id.
pub async fn create(pool: &PgPool, order_id: OrderId) -> anyhow::Result<WaybillId> {
    let events = emitted(pool, &reserved(order_id)).await?;
    match events.as_slice() {
        [EventData::WaybillCreated(WaybillCreated { waybill_id, .. })] => Ok(*waybill_id),
        other => anyhow::bail!("expected one waybill_created, got {other:?}"),
    }
}
