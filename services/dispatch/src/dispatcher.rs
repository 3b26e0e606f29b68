//! Assignment, shared by the `waybill_created` handler and the courier routes: find the
//! nearest courier with capacity for a pickup ([`reserve_nearest`]), or offer a courier the
//! waiting waybills around it ([`offer_courier`]). The search goes through the H3 cells stored
//! in the database; [`crate::domain`] decides with exact distances.

use chrono::{DateTime, Utc};
use jwl_events::{CourierAssigned, Envelope, GeoPoint, WaybillId};
use jwl_service_kit::Settings;
use sqlx::PgConnection;

use crate::SERVICE;
use crate::domain::{self, RankedCourier};
use crate::error::DispatchError;
use crate::store::{self, Courier};

/// The configured capacity as stored (`integer`).
pub(crate) fn capacity(settings: &Settings) -> i32 {
    i32::try_from(settings.courier_capacity).unwrap_or(i32::MAX)
}

/// Takes one unit of capacity of the nearest courier within the radius of `pickup` that still
/// has some, trying the next nearest whenever one was taken concurrently; `None` if nobody is
/// available. Holds the pickup's matching areas (shared) until the transaction ends, so a
/// courier arriving meanwhile is either seen here or sees this waybill.
pub async fn reserve_nearest(
    conn: &mut PgConnection,
    pickup: &GeoPoint,
    settings: &Settings,
) -> Result<Option<RankedCourier>, DispatchError> {
    let radius_km = settings.dispatch_radius_km;
    let search = domain::courier_search(pickup, radius_km)?;
    store::lock_areas_for_waybill(conn, &search.matching_areas).await?;
    let candidates = store::available_couriers(conn, &search.area, capacity(settings)).await?;
    for courier in domain::rank_couriers(pickup, &candidates, radius_km) {
        if store::take_capacity(conn, &courier, capacity(settings)).await? {
            return Ok(Some(courier));
        }
        tracing::debug!(courier_id = %courier.courier_id, "courier taken concurrently; trying the next");
    }
    Ok(None)
}

/// Locks the matching area of a courier at `position` (exclusively, until the transaction
/// ends): a waybill created meanwhile nearby is either seen by the offer or sees the courier.
pub async fn lock_courier_area(
    conn: &mut PgConnection,
    position: &GeoPoint,
    settings: &Settings,
) -> Result<(), DispatchError> {
    let area = domain::matching_area_of(position, settings.dispatch_radius_km)?;
    store::lock_area_for_courier(conn, area).await
}

/// What a courier took when offered the waiting waybills around it.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// The courier's live waybills afterwards.
    pub live_waybills: i32,
    /// The waybills it was assigned, nearest first.
    pub assigned: Vec<WaybillId>,
}

/// Assigns `courier` the nearest waiting waybills within the radius (oldest deadline first on
/// ties) while it has capacity, emitting `courier_assigned` for each in the same transaction.
/// The caller must hold the courier's matching area ([`lock_courier_area`], taken before the
/// courier's row) and its row lock (it just upserted or updated the row).
pub async fn offer_courier(
    conn: &mut PgConnection,
    courier: &Courier,
    settings: &Settings,
    now: DateTime<Utc>,
) -> Result<Offer, DispatchError> {
    let unchanged = Offer {
        live_waybills: courier.live_waybills,
        assigned: Vec::new(),
    };
    let free = domain::free_slots(settings.courier_capacity, courier.live_waybills);
    if free == 0 {
        return Ok(unchanged);
    }
    let radius_km = settings.dispatch_radius_km;
    let area = domain::search_area(&courier.position, radius_km)?;
    let waiting = store::waiting_in_area(conn, &area, now).await?;
    let candidates: Vec<domain::WaitingWaybill> =
        waiting.iter().map(|row| row.waybill.clone()).collect();
    let picks = domain::pick_waybills(&courier.position, &candidates, radius_km, free);

    let mut assigned = Vec::with_capacity(picks.len());
    for pick in picks {
        let Some(row) = waiting
            .iter()
            .find(|row| row.waybill.waybill_id == pick.waybill_id)
        else {
            continue;
        };
        if !store::assign_waiting(conn, pick.waybill_id, &courier.courier_id, pick.distance_km)
            .await?
        {
            continue;
        }
        let mut event = Envelope::new(
            SERVICE,
            CourierAssigned {
                order_id: row.order_id,
                waybill_id: pick.waybill_id,
                courier_id: courier.courier_id.clone(),
                distance_km: pick.distance_km,
            }
            .into(),
        );
        // Born from a courier's request, not from an event: no causation, but the order's
        // trace continues.
        event.traceparent.clone_from(&row.cause_traceparent);
        jwl_outbox::enqueue(conn, &event).await?;
        assigned.push(pick.waybill_id);
    }
    if assigned.is_empty() {
        return Ok(unchanged);
    }
    let count = i32::try_from(assigned.len()).unwrap_or(i32::MAX);
    let live_waybills =
        store::add_live_waybills(conn, &courier.courier_id, count, capacity(settings))
            .await?
            .ok_or_else(|| DispatchError::CapacityExceeded(courier.courier_id.clone()))?;
    Ok(Offer {
        live_waybills,
        assigned,
    })
}
