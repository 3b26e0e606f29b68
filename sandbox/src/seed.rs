//! The scratch state a handler needs that no event carries, set from what was recorded just
//! before the handler runs, and the dispatch state that changed outside the handler.
//!
//! - **Stock** (set over HTTP): before inventory handles `payment.authorized`, each SKU of the
//!   order gets exactly the quantity it asks for available, or one less for the SKUs the
//!   recorded `inventory.rejected` named. A build that reserves or rejects differently, or
//!   names other SKUs, shows; whether yesterday's stock levels were right cannot.
//! - **Couriers** (their positions come over HTTP): before dispatch handles `waybill_created`,
//!   the courier of the recorded `courier_assigned` caused by it is placed due north of the
//!   pickup at the recorded distance, alone (every courier is removed after each
//!   `waybill_created`); with no recorded assignment there is no courier. A build that does
//!   not assign a courier it should, assigns one too far, or assigns when it should wait
//!   shows; the choice among several couriers cannot be judged.
//! - **Orders** (accepted over HTTP): when the recorded `order.created` comes by, the order's
//!   row is inserted as `POST /v1/orders` does (its read model needs it), and a recorded
//!   `order.cancel_requested` marks it as the cancel route or the deadline timer did.
//! - **Dispatch's own non-handler events** (the deadline timer's `dispatch.failed` with
//!   `no_courier`, an assignment when a courier reports its position, a delivery): they are not
//!   compared, but their effect on the waybill is applied to the scratch state, so the later
//!   cancellations meet the waybill as it was: a failure or an assignment that ended the wait
//!   right after dispatch handled the `waybill_created` (the stream may hold them after a
//!   cancellation dispatch handled later; a cancellation handled while the waybill waited
//!   would have prevented them), a delivery when it comes by.

use std::collections::BTreeMap;

use jwl_events::{
    CourierAssigned, DispatchFailed, DispatchFailureReason, Envelope, EventData, GeoPoint, LineItem,
};
use jwl_service_kit::Settings;
use sqlx::PgPool;

use crate::SandboxError;

/// Earth's mean radius as `jwl_events::GeoPoint::distance_km` uses it.
const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Before inventory handles `payment.authorized` for `items`: every SKU available exactly as
/// needed, or one less for `short_skus`.
pub(crate) async fn stock_for(
    pool: &PgPool,
    items: &[LineItem],
    short_skus: &[String],
) -> Result<(), SandboxError> {
    let mut needed: BTreeMap<&str, i64> = BTreeMap::new();
    for item in items {
        *needed.entry(item.sku.as_str()).or_default() += i64::from(item.qty);
    }
    for (sku, qty) in needed {
        let available = if short_skus.iter().any(|short| short == sku) {
            qty - 1
        } else {
            qty
        };
        sqlx::query("INSERT INTO stock (sku, on_hand) VALUES ($1, 0) ON CONFLICT (sku) DO NOTHING")
            .bind(sku)
            .execute(pool)
            .await
            .map_err(SandboxError::Database)?;
        sqlx::query("UPDATE stock SET on_hand = reserved + $2 WHERE sku = $1")
            .bind(sku)
            .bind(available)
            .execute(pool)
            .await
            .map_err(SandboxError::Database)?;
    }
    Ok(())
}

/// Before dispatch handles a `waybill_created` picked up at `pickup`: the recorded assignment's
/// courier, if any, at its recorded distance due north (south near the pole).
pub(crate) async fn courier_for(
    pool: &PgPool,
    pickup: &GeoPoint,
    assigned: Option<&CourierAssigned>,
    settings: &Settings,
) -> Result<(), SandboxError> {
    let Some(assigned) = assigned else {
        return Ok(());
    };
    let degrees = (assigned.distance_km / EARTH_RADIUS_KM).to_degrees();
    let lat = if pickup.lat + degrees <= 90.0 {
        pickup.lat + degrees
    } else {
        pickup.lat - degrees
    };
    let position = GeoPoint::new(lat, pickup.lon).map_err(|error| {
        SandboxError::Seed(format!(
            "courier {} cannot be placed {} km from {pickup:?}: {error}",
            assigned.courier_id, assigned.distance_km
        ))
    })?;
    jwl_dispatch::bench::put_couriers(pool, &[(assigned.courier_id.clone(), position)], settings)
        .await
        .map_err(|error| SandboxError::Seed(format!("placing a courier: {error:#}")))
}

/// After dispatch handled a `waybill_created`: no courier is left for the next one.
pub(crate) async fn clear_couriers(pool: &PgPool) -> Result<(), SandboxError> {
    sqlx::query("DELETE FROM couriers")
        .execute(pool)
        .await
        .map_err(SandboxError::Database)?;
    Ok(())
}

/// Whether a recorded dispatch event was born outside the handler (timer, HTTP).
pub(crate) fn outside_dispatch_handler(data: &EventData, caused: bool) -> bool {
    match data {
        EventData::DispatchFailed(DispatchFailed { reason, .. }) => {
            *reason == DispatchFailureReason::NoCourier
        }
        EventData::CourierAssigned(_) => !caused,
        EventData::Delivered(_) => true,
        _ => false,
    }
}

/// Applies a dispatch event born outside the handler (`data` in the sandbox's ids) to the
/// scratch waybill, as the timer or route that emitted it did.
pub(crate) async fn apply_dispatch_event(
    pool: &PgPool,
    data: &EventData,
) -> Result<(), SandboxError> {
    let query = match data {
        EventData::DispatchFailed(failed) => sqlx::query(
            "UPDATE waybills SET status = 'failed', failure_reason = 'no_courier'
             WHERE waybill_id = $1 AND status = 'waiting'",
        )
        .bind(failed.waybill_id.0),
        EventData::CourierAssigned(assigned) => sqlx::query(
            "UPDATE waybills SET status = 'assigned', courier_id = $2, distance_km = $3
             WHERE waybill_id = $1 AND status = 'waiting'",
        )
        .bind(assigned.waybill_id.0)
        .bind(assigned.courier_id.as_str())
        .bind(assigned.distance_km),
        EventData::Delivered(delivered) => sqlx::query(
            "UPDATE waybills SET status = 'delivered' WHERE waybill_id = $1 AND status = 'assigned'",
        )
        .bind(delivered.waybill_id.0),
        _ => return Ok(()),
    };
    query.execute(pool).await.map_err(SandboxError::Database)?;
    Ok(())
}

/// Applies an order-service event (born from HTTP or the deadline timer, never from a
/// handler) to the scratch order rows, as the route or timer that emitted it did (through the
/// order service's own code: [`jwl_order::record_emitted`]).
pub(crate) async fn apply_order_event(pool: &PgPool, event: &Envelope) -> Result<(), SandboxError> {
    let mut conn = pool.acquire().await.map_err(SandboxError::Database)?;
    jwl_order::record_emitted(&mut conn, event)
        .await
        .map_err(SandboxError::Database)?;
    Ok(())
}
