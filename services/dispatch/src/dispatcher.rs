//! Assignment, shared by the `waybill_created` handler and the courier routes: find the
//! nearest courier with capacity for a pickup ([`reserve_nearest`]), or offer a courier the
//! waiting waybills around it ([`offer_courier`]). The search goes through the H3 cells stored
//! in the database; [`crate::domain`] decides with exact distances.

use chrono::{DateTime, Utc};
use jwl_events::{CourierAssigned, CourierId, Envelope, GeoPoint, WaybillId};
use jwl_outbox::Enqueued;
use jwl_service_kit::Settings;
use sqlx::PgConnection;

use crate::SERVICE;
use crate::domain::{
    self, BatchPicker, CourierPosition, CourierSearch, Pick, PlanarSearch, PlanePoint,
    RankedCourier, SearchArea,
};
use crate::error::DispatchError;
use crate::store::{self, Courier};

/// The configured capacity as stored (`integer`).
pub(crate) fn capacity(settings: &Settings) -> i32 {
    i32::try_from(settings.courier_capacity).unwrap_or(i32::MAX)
}

/// Couriers (or waybills) asked of a planar index first; each further batch is
/// [`BATCH_GROWTH`] times larger, up to [`MAX_BATCH`].
const FIRST_BATCH: i64 = 8;
const BATCH_GROWTH: i64 = 4;
/// The largest batch asked of a planar index. A batch this large is taken as final even if it
/// does not cover the radius (thousands of rows at the same distance to within a millionth):
/// the choice is then the nearest of those rows, not necessarily of all.
const MAX_BATCH: i64 = 1024;
/// Most couriers tried for one waybill (each one taken by another transaction in the
/// meantime) before giving up with [`DispatchError::Contended`], to be retried.
const MAX_TAKE_ATTEMPTS: usize = 32;

/// Takes one unit of capacity of the nearest courier within the radius of `pickup` that still
/// has some, trying the next nearest whenever one was taken concurrently; `None` if nobody is
/// available. Holds the pickup's matching areas (shared) until the transaction ends, so a
/// courier arriving meanwhile is either seen here or sees this waybill.
///
/// The search is a nearest-neighbour scan of the index of available couriers
/// ([`store::nearest_available`]), a few rows whatever the density; where the plane cannot
/// serve it ([`domain::planar_search`]: near the poles or the antimeridian, or a huge radius)
/// it reads every available courier in the radius's cells instead.
pub async fn reserve_nearest(
    conn: &mut PgConnection,
    pickup: &GeoPoint,
    settings: &Settings,
) -> Result<Option<RankedCourier>, DispatchError> {
    let search = domain::courier_search(pickup, settings.dispatch_radius_km)?;
    store::lock_areas_for_waybill(conn, &search.matching_areas).await?;
    let mut reserved = reserve_all_locked(conn, &[(pickup, &search)], settings).await?;
    Ok(reserved.pop().flatten())
}

/// [`reserve_nearest`] for a caller that already holds the matching areas of `search` (the
/// search of `pickup`), as a batch of waybills takes them all at once.
pub async fn reserve_nearest_locked(
    conn: &mut PgConnection,
    pickup: &GeoPoint,
    search: &CourierSearch,
    settings: &Settings,
) -> Result<Option<RankedCourier>, DispatchError> {
    match domain::planar_search(pickup, settings.dispatch_radius_km) {
        Some(planar) => reserve_by_plane(conn, pickup, &planar, settings).await,
        None => reserve_by_cells(conn, pickup, &search.area, settings).await,
    }
}

/// [`reserve_nearest_locked`] for the pickups of a batch, in their order, with the same outcome
/// as one after the other (each pickup the nearest courier with capacity left after the ones
/// before it took theirs) in two statements for the usual batch: one asks the planar index for
/// the nearest few available couriers of every pickup ([`store::nearest_available_to_each`]),
/// [`BatchPicker`] picks from them in turn, and one takes all the picked capacity
/// ([`store::take_capacities`]). A pickup those few couriers do not decide (a nearer courier
/// may not have been fetched, or the plane cannot serve it), or whose courier was taken or moved
/// by another transaction meanwhile, is then searched on its own, as if it came after the batch.
/// The caller holds the matching areas of every search.
pub async fn reserve_all_locked(
    conn: &mut PgConnection,
    pickups: &[(&GeoPoint, &CourierSearch)],
    settings: &Settings,
) -> Result<Vec<Option<RankedCourier>>, DispatchError> {
    let radius_km = settings.dispatch_radius_km;
    let capacity = capacity(settings);
    let planar: Vec<Option<PlanarSearch>> = pickups
        .iter()
        .map(|(pickup, _)| domain::planar_search(pickup, radius_km))
        .collect();
    let origins: Vec<PlanePoint> = planar
        .iter()
        .flatten()
        .map(|search| search.origin)
        .collect();
    let mut fetched = store::nearest_available_to_each(conn, &origins, capacity, FIRST_BATCH)
        .await?
        .into_iter();
    let mut picker = BatchPicker::default();
    let mut picks = Vec::with_capacity(pickups.len());
    for ((pickup, _), search) in pickups.iter().zip(&planar) {
        picks.push(match search {
            Some(search) => {
                let candidates = fetched.next().unwrap_or_default();
                let complete = i64::try_from(candidates.len()).unwrap_or(i64::MAX) < FIRST_BATCH;
                picker.pick(pickup, search, radius_km, &candidates, complete)
            }
            None => Pick::Unknown,
        });
    }
    let taken = store::take_capacities(conn, &picker.takes(), capacity).await?;
    let mut reserved = Vec::with_capacity(pickups.len());
    for ((pickup, search), pick) in pickups.iter().zip(picks) {
        reserved.push(match pick {
            Pick::Courier(courier) if taken.contains(&courier.courier_id) => Some(courier),
            Pick::Nobody => None,
            Pick::Courier(courier) => {
                tracing::debug!(courier_id = %courier.courier_id, "courier taken concurrently; searching again");
                reserve_nearest_locked(conn, pickup, search, settings).await?
            }
            Pick::Unknown => reserve_nearest_locked(conn, pickup, search, settings).await?,
        });
    }
    Ok(reserved)
}

/// [`reserve_nearest`] with the planar index: asks for the nearest few available couriers,
/// ranks them by exact distance, and tries them nearest first as long as
/// [`PlanarSearch::covers`] guarantees that no courier not yet fetched is nearer; otherwise
/// (or when all were taken meanwhile) asks again for more.
async fn reserve_by_plane(
    conn: &mut PgConnection,
    pickup: &GeoPoint,
    planar: &PlanarSearch,
    settings: &Settings,
) -> Result<Option<RankedCourier>, DispatchError> {
    let radius_km = settings.dispatch_radius_km;
    let capacity = capacity(settings);
    let mut tried: Vec<CourierId> = Vec::new();
    let mut limit = FIRST_BATCH;
    loop {
        let batch = store::nearest_available(conn, planar.origin, capacity, limit).await?;
        let last_batch = i64::try_from(batch.len()).unwrap_or(i64::MAX) < limit;
        let horizon = match batch.last() {
            Some(candidate) if !last_batch => candidate.planar_distance,
            _ => f64::INFINITY,
        };
        let final_batch = last_batch || limit >= MAX_BATCH;
        let couriers: Vec<CourierPosition> = batch
            .into_iter()
            .map(|candidate| candidate.courier)
            .collect();
        let mut covered = true;
        for courier in domain::rank_couriers(pickup, &couriers, radius_km) {
            if tried.contains(&courier.courier_id) {
                continue;
            }
            if !(final_batch || planar.covers(courier.distance_km, horizon)) {
                covered = false;
                break;
            }
            if store::take_capacity(conn, &courier, capacity).await? {
                return Ok(Some(courier));
            }
            tracing::debug!(courier_id = %courier.courier_id, "courier taken concurrently; trying the next");
            tried.push(courier.courier_id);
            if tried.len() >= MAX_TAKE_ATTEMPTS {
                return Err(DispatchError::Contended(tried.len()));
            }
        }
        // Every courier fetched within the radius was tried: done if nobody else can be in it.
        if covered && (final_batch || planar.covers(radius_km, horizon)) {
            return Ok(None);
        }
        // Not covered yet, or every courier fetched was taken meanwhile (the next query no
        // longer sees those as available): ask again for more. The batch grows every time, so
        // this ends by the time it reaches MAX_BATCH.
        limit = (limit * BATCH_GROWTH).min(MAX_BATCH);
    }
}

/// [`reserve_nearest`] by cells: every available courier in `area`, ranked.
async fn reserve_by_cells(
    conn: &mut PgConnection,
    pickup: &GeoPoint,
    area: &SearchArea,
    settings: &Settings,
) -> Result<Option<RankedCourier>, DispatchError> {
    let candidates = store::available_couriers(conn, area, capacity(settings)).await?;
    for courier in domain::rank_couriers(pickup, &candidates, settings.dispatch_radius_km) {
        if store::take_capacity(conn, &courier, capacity(settings)).await? {
            return Ok(Some(courier));
        }
        tracing::debug!(courier_id = %courier.courier_id, "courier taken concurrently; trying the next");
    }
    Ok(None)
}

/// Locks the matching area of a courier at `position` (the courier's stripe of it,
/// exclusively, until the transaction ends): a waybill created meanwhile nearby is either seen
/// by the offer or sees the courier.
pub async fn lock_courier_area(
    conn: &mut PgConnection,
    courier_id: &CourierId,
    position: &GeoPoint,
    settings: &Settings,
) -> Result<(), DispatchError> {
    let area = domain::matching_area_of(position, settings.dispatch_radius_km)?;
    store::lock_area_for_courier(conn, area, courier_id).await
}

/// Stores a courier's reported position and offers it the waiting waybills around it, in the
/// caller's transaction: locks the courier's matching area, then (one statement) upserts the
/// courier and measures how far the nearest waiting waybill is on the plane. When the plane
/// serves the radius and no waiting waybill is within [`PlanarSearch::reach`] of it, as in the
/// steady state of a city whose waybills find couriers on arrival, nothing can be offered and
/// the offer's search is skipped; otherwise [`offer_courier`].
pub async fn report_position(
    conn: &mut PgConnection,
    courier_id: &CourierId,
    position: &GeoPoint,
    settings: &Settings,
    now: DateTime<Utc>,
) -> Result<(Courier, Offer), DispatchError> {
    let radius_km = settings.dispatch_radius_km;
    let cell = domain::cell_of(position)?;
    lock_courier_area(conn, courier_id, position, settings).await?;
    let (courier, nearest_waiting) = store::upsert_courier(
        conn,
        courier_id,
        position,
        cell,
        capacity(settings),
        domain::plane_of(position),
        now,
    )
    .await?;
    let nothing_in_range = match (domain::planar_search(position, radius_km), nearest_waiting) {
        (Some(_), None) => true,
        (Some(planar), Some(planar_distance)) => planar.reach(radius_km) < planar_distance,
        (None, _) => false,
    };
    if nothing_in_range {
        let unchanged = Offer::unchanged(&courier);
        return Ok((courier, unchanged));
    }
    let offer = offer_courier(conn, &courier, settings, now).await?;
    Ok((courier, offer))
}

/// What a courier took when offered the waiting waybills around it.
#[derive(Debug)]
pub struct Offer {
    /// The courier's live waybills afterwards.
    pub live_waybills: i32,
    /// The waybills it was assigned, nearest first.
    pub assigned: Vec<WaybillId>,
    /// The outbox rows of their `courier_assigned` events: for
    /// [`RelaySignal::committed_rows`](jwl_outbox::RelaySignal::committed_rows) once the
    /// transaction has committed.
    pub emitted: Enqueued,
}

impl Offer {
    /// Nothing taken.
    fn unchanged(courier: &Courier) -> Self {
        Self {
            live_waybills: courier.live_waybills,
            assigned: Vec::new(),
            emitted: Enqueued::default(),
        }
    }
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
    let unchanged = Offer::unchanged(courier);
    let free = domain::free_slots(settings.courier_capacity, courier.live_waybills);
    if free == 0 {
        return Ok(unchanged);
    }
    let (waiting, picks) = waiting_picks(conn, &courier.position, free, settings, now).await?;

    let mut assigned = Vec::with_capacity(picks.len());
    let mut events = Vec::with_capacity(picks.len());
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
        events.push(event);
        assigned.push(pick.waybill_id);
    }
    if assigned.is_empty() {
        return Ok(unchanged);
    }
    let emitted = jwl_outbox::enqueue_all(conn, &events).await?;
    let count = i32::try_from(assigned.len()).unwrap_or(i32::MAX);
    let live_waybills =
        store::add_live_waybills(conn, &courier.courier_id, count, capacity(settings))
            .await?
            .ok_or_else(|| DispatchError::CapacityExceeded(courier.courier_id.clone()))?;
    Ok(Offer {
        live_waybills,
        assigned,
        emitted,
    })
}

/// The waiting waybills (locked) that a courier at `position` with `free` slots takes
/// ([`domain::pick_waybills`]), and the rows they come from.
///
/// With the planar index ([`store::nearest_waiting`]) when it serves the radius: asks for the
/// nearest few waiting waybills and, until [`PlanarSearch::covers`] the farthest pick (or the
/// whole radius when there are fewer picks than slots), for more. Otherwise every waiting
/// waybill in the radius's cells.
async fn waiting_picks(
    conn: &mut PgConnection,
    position: &GeoPoint,
    free: u32,
    settings: &Settings,
    now: DateTime<Utc>,
) -> Result<(Vec<store::WaitingRow>, Vec<domain::WaybillPick>), DispatchError> {
    let radius_km = settings.dispatch_radius_km;
    let Some(planar) = domain::planar_search(position, radius_km) else {
        let area = domain::search_area(position, radius_km)?;
        let waiting = store::waiting_in_area(conn, &area, now).await?;
        let candidates: Vec<domain::WaitingWaybill> =
            waiting.iter().map(|row| row.waybill.clone()).collect();
        let picks = domain::pick_waybills(position, &candidates, radius_km, free);
        return Ok((waiting, picks));
    };
    let wanted = usize::try_from(free).unwrap_or(usize::MAX);
    let mut limit = FIRST_BATCH.max(i64::from(free).saturating_mul(2));
    loop {
        let batch = store::nearest_waiting(conn, planar.origin, now, limit).await?;
        let last_batch = i64::try_from(batch.len()).unwrap_or(i64::MAX) < limit;
        let horizon = match batch.last() {
            Some((_, planar_distance)) if !last_batch => *planar_distance,
            _ => f64::INFINITY,
        };
        let waiting: Vec<store::WaitingRow> = batch.into_iter().map(|(row, _)| row).collect();
        let candidates: Vec<domain::WaitingWaybill> =
            waiting.iter().map(|row| row.waybill.clone()).collect();
        let picks = domain::pick_waybills(position, &candidates, radius_km, free);
        // the picks are nearest first: covering the last covers them all
        let needed_km = match picks.last() {
            Some(last) if picks.len() >= wanted => last.distance_km,
            _ => radius_km,
        };
        if last_batch || limit >= MAX_BATCH || planar.covers(needed_km, horizon) {
            return Ok((waiting, picks));
        }
        limit = limit.saturating_mul(BATCH_GROWTH).min(MAX_BATCH);
    }
}
