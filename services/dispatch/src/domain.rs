//! Dispatch's decisions as pure functions: the spatial index (H3 cells and the `grid_disk` that
//! covers the dispatch radius), who is nearest, which waiting waybills a courier takes, the
//! waybill status machine, cancellation, delivery and who may act for a courier.
//!
//! Positions are indexed by their H3 cell at [`CELL_RESOLUTION`] (stored as `bigint`). A search
//! around a point asks the database for the cells of the `grid_disk` whose `k`
//! ([`disk_k_for_radius`]) is large enough that every point within the radius lies in it; the
//! exact great-circle distance ([`GeoPoint::distance_km`]) then decides. Because the cells are
//! in the database, every replica sees the same candidates.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use h3o::{CellIndex, LatLng, Resolution};
use jwl_events::{CancelReason, CourierId, DispatchFailureReason, GeoPoint, WaybillId};
use jwl_service_kit::auth::{Caller, Scope};

/// The H3 resolution of stored cells: average hexagon edge ≈ 0.53 km, so the default 5 km
/// radius is a disk of a few hundred cells.
pub const CELL_RESOLUTION: Resolution = Resolution::Eight;

/// The largest `k` searched cell by cell (3·k·(k+1)+1 = 10 981 cells); a radius that needs
/// more is searched without the cell filter (see [`SearchArea::Everywhere`]).
pub const MAX_DISK_K: u32 = 60;

/// A lower bound on how far one grid step advances, in average edges of the resolution. H3
/// hexagons at one resolution are neither equal nor regular (edges range from about 0.74 to
/// 1.1 times the average, worst near the 12 pentagons), so a step can be shorter than the
/// regular grid's 1.5 edges; 0.8 holds everywhere with margin (see the tests).
const MIN_STEP_IN_EDGES: f64 = 0.8;

/// Rings added for the offsets of the two points from their cells' centres.
const CENTRE_OFFSET_RINGS: u32 = 2;

/// A position that H3 cannot index (a non-finite coordinate).
#[derive(Debug, Clone, thiserror::Error)]
#[error("position ({lat}, {lon}) cannot be indexed: {source}")]
pub struct InvalidPosition {
    lat: f64,
    lon: f64,
    source: h3o::error::InvalidLatLng,
}

/// The H3 cell of `point` at [`CELL_RESOLUTION`], as stored (`bigint`).
pub fn cell_of(point: &GeoPoint) -> Result<i64, InvalidPosition> {
    cell_index(point).map(cell_key)
}

/// The H3 cell of `point` at [`CELL_RESOLUTION`].
fn cell_index(point: &GeoPoint) -> Result<CellIndex, InvalidPosition> {
    let position = LatLng::new(point.lat, point.lon).map_err(|source| InvalidPosition {
        lat: point.lat,
        lon: point.lon,
        source,
    })?;
    Ok(position.to_cell(CELL_RESOLUTION))
}

/// A cell as stored: H3 indexes keep their top bit zero, so they fit a signed 64-bit integer
/// unchanged.
fn cell_key(cell: CellIndex) -> i64 {
    (u64::from(cell) & (i64::MAX as u64)) as i64
}

/// The `k` of a `grid_disk` at `resolution` that contains the cell of every point within
/// `radius_km` of any point of the centre cell: the radius in grid steps (each at least
/// [`MIN_STEP_IN_EDGES`] average edges long), plus [`CENTRE_OFFSET_RINGS`].
pub fn disk_k_for_radius(radius_km: f64, resolution: Resolution) -> u32 {
    let step_km = MIN_STEP_IN_EDGES * resolution.edge_length_km();
    let steps = (radius_km.max(0.0) / step_km).ceil();
    // Saturating float → int conversion: an absurd radius becomes u32::MAX steps.
    (steps as u32).saturating_add(CENTRE_OFFSET_RINGS)
}

/// Where to look for things within the radius of a point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchArea {
    /// Only these cells (stored keys) can hold a point within the radius.
    Cells(Vec<i64>),
    /// The radius is too large for a cell list; consider every row (distance still decides).
    Everywhere,
}

/// The cells to search for points within `radius_km` of `center`.
pub fn search_area(center: &GeoPoint, radius_km: f64) -> Result<SearchArea, InvalidPosition> {
    Ok(match search_disk(center, radius_km)? {
        Some(disk) => SearchArea::Cells(disk.into_iter().map(cell_key).collect()),
        None => SearchArea::Everywhere,
    })
}

/// The `grid_disk` at [`CELL_RESOLUTION`] holding every point within `radius_km` of `center`;
/// `None` when it would exceed [`MAX_DISK_K`] (search everywhere).
fn search_disk(
    center: &GeoPoint,
    radius_km: f64,
) -> Result<Option<Vec<CellIndex>>, InvalidPosition> {
    if searches_everywhere(radius_km) {
        return Ok(None);
    }
    let k = disk_k_for_radius(radius_km, CELL_RESOLUTION);
    Ok(Some(cell_index(center)?.grid_disk(k)))
}

fn searches_everywhere(radius_km: f64) -> bool {
    disk_k_for_radius(radius_km, CELL_RESOLUTION) > MAX_DISK_K
}

/// A matching area: a coarse H3 cell that serializes the two sides of matching where they could
/// meet. A waybill looking for couriers locks, shared, every area its search touches
/// ([`courier_search`]); a courier looking for waybills locks, exclusively, the one area
/// it is in ([`matching_area_of`]). A courier within the radius of a pickup is always in one of
/// the pickup's areas, so of two transactions that could match each other the second waits for
/// the first to commit, then sees it. (Under READ COMMITTED alone both could read before either
/// commits, and the waybill would wait beside an idle courier.)
///
/// Each area is locked in [`AREA_STRIPES`] stripes: a waybill takes every stripe of its areas
/// (shared), a courier one stripe of its area (exclusively), any one ([`courier_stripe`]
/// spreads couriers over them). A courier and a waybill in the same area still exclude each
/// other, whichever stripe the courier took; two couriers in the same area wait for each other
/// only when they take the same stripe, not on every location update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MatchingArea(i64);

/// Stripes of each matching area (at most 8: see [`MatchingArea::stripe_key`]).
pub const AREA_STRIPES: u8 = 8;

impl MatchingArea {
    /// The whole world: the one area when the radius is searched without cells. Zero is not an
    /// H3 index, so it is no cell's key.
    pub const WHOLE_WORLD: Self = Self(0);

    /// The advisory-lock key of one stripe of the area: the H3 index of the area's cell with
    /// the stripe in its lowest three bits. Those are the index's 15th resolution digit, always
    /// 7 (unused) in a cell as coarse as a matching area, so no two areas share a key, and
    /// [`WHOLE_WORLD`](Self::WHOLE_WORLD)'s keys (0..8) are no cell's.
    pub fn stripe_key(self, stripe: u8) -> i64 {
        (self.0 & !0b111) | i64::from(stripe % AREA_STRIPES)
    }

    /// The keys of all the area's stripes, ascending.
    pub fn stripe_keys(self) -> impl Iterator<Item = i64> {
        (0..AREA_STRIPES).map(move |stripe| self.stripe_key(stripe))
    }
}

/// The stripe of its matching area that a courier locks: a stable hash (FNV-1a) of its id.
/// Correctness does not depend on it (a waybill locks every stripe); spreading couriers evenly
/// keeps their location updates from waiting for each other.
pub fn courier_stripe(courier_id: &CourierId) -> u8 {
    let hash = courier_id
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    // the stripe count is a power of two: the low bits of the hash
    (hash % u64::from(AREA_STRIPES)) as u8
}

/// The finest resolution of matching areas: one coarser than the stored cells, since even a
/// tiny radius searches a disk of a few rings of them.
const FINEST_MATCHING_RESOLUTION: Resolution = Resolution::Seven;

/// The resolution of matching areas for `radius_km`: the finest (at most
/// [`FINEST_MATCHING_RESOLUTION`]) whose average edge is at least half the radius, so that a
/// search touches only a handful of areas and an area is no larger than it needs to be.
pub fn matching_resolution(radius_km: f64) -> Resolution {
    Resolution::range(Resolution::Zero, FINEST_MATCHING_RESOLUTION)
        .rev()
        .find(|resolution| resolution.edge_length_km() >= radius_km / 2.0)
        .unwrap_or(Resolution::Zero)
}

/// The matching area of a courier at `point`: the parent of its stored cell (not the coarse cell
/// holding the point: H3 children do not tile their parent exactly).
pub fn matching_area_of(point: &GeoPoint, radius_km: f64) -> Result<MatchingArea, InvalidPosition> {
    if searches_everywhere(radius_km) {
        return Ok(MatchingArea::WHOLE_WORLD);
    }
    Ok(area_of_cell(
        cell_index(point)?,
        matching_resolution(radius_km),
    ))
}

/// A search for couriers around a pickup: where to look, and the matching areas to lock first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CourierSearch {
    pub area: SearchArea,
    /// The parents of the area's cells, sorted (the order to lock them in), without repeats.
    pub matching_areas: Vec<MatchingArea>,
}

/// The search for couriers within `radius_km` of `center` (one `grid_disk` for both parts).
pub fn courier_search(center: &GeoPoint, radius_km: f64) -> Result<CourierSearch, InvalidPosition> {
    let Some(disk) = search_disk(center, radius_km)? else {
        return Ok(CourierSearch {
            area: SearchArea::Everywhere,
            matching_areas: vec![MatchingArea::WHOLE_WORLD],
        });
    };
    let resolution = matching_resolution(radius_km);
    let mut matching_areas: Vec<MatchingArea> = disk
        .iter()
        .map(|cell| area_of_cell(*cell, resolution))
        .collect();
    matching_areas.sort_unstable();
    matching_areas.dedup();
    Ok(CourierSearch {
        area: SearchArea::Cells(disk.into_iter().map(cell_key).collect()),
        matching_areas,
    })
}

fn area_of_cell(cell: CellIndex, resolution: Resolution) -> MatchingArea {
    // `resolution` is never finer than the cell's, so the parent exists
    MatchingArea(cell_key(cell.parent(resolution).unwrap_or(cell)))
}

/// The sphere radius of [`GeoPoint::distance_km`] (the mean Earth radius).
const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Latitudes are clamped to ±this many degrees before projection, so that the poles get finite
/// coordinates. No planar search reaches that far ([`PLANAR_MAX_LATITUDE`]).
const PLANE_MAX_LATITUDE: f64 = 89.0;

/// A planar search whose disk would reach beyond this latitude (degrees) is done by cells
/// instead ([`planar_search`]): the projection's scale grows without bound towards the poles.
const PLANAR_MAX_LATITUDE: f64 = 80.0;

/// Slack on planar bounds, relative and absolute (radians): far above the rounding of the
/// projection (computed by PostgreSQL for stored rows, here for search origins) and of the
/// distance.
const PLANAR_RELATIVE_SLACK: f64 = 1e-6;
const PLANAR_ABSOLUTE_SLACK: f64 = 1e-12;

/// A position on the plane of the nearest-neighbour indexes: the spherical Mercator projection
/// in radians, `x = lon`, `y = asinh(tan(lat))`, latitude clamped to ±[`PLANE_MAX_LATITUDE`].
///
/// The database computes the same for every stored position (generated columns `plane` and
/// `pickup_plane`, see the migrations) and orders rows by Euclidean distance to a search origin
/// with a GiST index (`ORDER BY plane <-> origin LIMIT k`). Mercator is conformal: near a point
/// at latitude φ a planar distance is the ground distance times sec φ / R in every direction, so
/// planar order is ground order up to a scale that varies by a fraction of a per cent across a
/// city. [`PlanarSearch::reach`] bounds it exactly, which is what makes the search exact.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanePoint {
    pub x: f64,
    pub y: f64,
}

/// The projection of `point` ([`PlanePoint`]).
pub fn plane_of(point: &GeoPoint) -> PlanePoint {
    let lat = point
        .lat
        .clamp(-PLANE_MAX_LATITUDE, PLANE_MAX_LATITUDE)
        .to_radians();
    PlanePoint {
        x: point.lon.to_radians(),
        y: lat.tan().asinh(),
    }
}

/// A nearest-neighbour search on the plane around a point, within a radius: rows come from the
/// index nearest first by planar distance, and [`PlanarSearch::covers`] says when every row
/// within a ground distance has come.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanarSearch {
    /// The centre, projected.
    pub origin: PlanePoint,
    /// |latitude| of the centre, radians.
    abs_lat: f64,
    radius_km: f64,
}

/// The planar search within `radius_km` of `center`, or `None` where the plane cannot serve it
/// exactly and the caller must search by cells: when the disk reaches beyond
/// ±[`PLANAR_MAX_LATITUDE`] or across the antimeridian (where the plane is cut), or for a radius
/// that is not a finite non-negative number.
pub fn planar_search(center: &GeoPoint, radius_km: f64) -> Option<PlanarSearch> {
    if !(radius_km.is_finite() && radius_km >= 0.0) {
        return None;
    }
    let angle = radius_km / EARTH_RADIUS_KM;
    let abs_lat = center.lat.abs().to_radians();
    let highest = abs_lat + angle;
    let below_the_limit = highest < PLANAR_MAX_LATITUDE.to_radians(); // false for NaN
    if !below_the_limit {
        return None;
    }
    // Along a path of length d, the longitude changes by at most d / (R cos φ_max).
    let lon_reach = angle / highest.cos();
    if center.lon.to_radians().abs() + lon_reach >= std::f64::consts::PI {
        return None;
    }
    Some(PlanarSearch {
        origin: plane_of(center),
        abs_lat,
        radius_km,
    })
}

impl PlanarSearch {
    /// An upper bound of the planar distance from the origin to any point within `ground_km`
    /// (at most the radius) of the centre; infinite beyond the radius.
    ///
    /// The great-circle path to such a point stays within `ground_km` of the centre, so below
    /// latitude |φ| + d/R, where the projection stretches lengths by at most sec(|φ| + d/R) / R;
    /// it does not cross the antimeridian ([`planar_search`]), so its image is one curve, and
    /// the straight planar segment is no longer than that curve.
    pub fn reach(&self, ground_km: f64) -> f64 {
        let within_the_radius = ground_km <= self.radius_km; // false for NaN
        if !within_the_radius {
            return f64::INFINITY;
        }
        let angle = ground_km.max(0.0) / EARTH_RADIUS_KM;
        let highest = self.abs_lat + angle;
        angle / highest.cos() * (1.0 + PLANAR_RELATIVE_SLACK) + PLANAR_ABSOLUTE_SLACK
    }

    /// Whether rows fetched nearest first on the plane, the last of them at planar distance
    /// `horizon` (infinite if the index had no more), include every row within `ground_km` of
    /// the centre: any row not fetched is at least `horizon` away on the plane, so farther than
    /// `ground_km` on the ground when [`reach`](Self::reach)`(ground_km) < horizon`.
    pub fn covers(&self, ground_km: f64, horizon: f64) -> bool {
        self.reach(ground_km) < horizon
    }
}

/// A courier with free capacity, where it last reported.
#[derive(Debug, Clone, PartialEq)]
pub struct CourierPosition {
    pub courier_id: CourierId,
    pub position: GeoPoint,
}

/// A courier within the radius of a pickup, and how far it is.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedCourier {
    pub courier_id: CourierId,
    pub position: GeoPoint,
    pub distance_km: f64,
}

/// The couriers within `radius_km` of `pickup`, nearest first (ties broken by courier id), in
/// the order in which assignment should try them.
pub fn rank_couriers(
    pickup: &GeoPoint,
    couriers: &[CourierPosition],
    radius_km: f64,
) -> Vec<RankedCourier> {
    let mut ranked: Vec<RankedCourier> = couriers
        .iter()
        .map(|courier| RankedCourier {
            courier_id: courier.courier_id.clone(),
            position: courier.position,
            distance_km: pickup.distance_km(&courier.position),
        })
        .filter(|courier| courier.distance_km <= radius_km)
        .collect();
    ranked.sort_by(|a, b| {
        a.distance_km
            .total_cmp(&b.distance_km)
            .then_with(|| a.courier_id.cmp(&b.courier_id))
    });
    ranked
}

/// A courier a planar search fetched for a pickup: where it is, how far it is on the plane, and
/// how many waybills it could still take when it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub courier: CourierPosition,
    pub planar_distance: f64,
    pub free_slots: i32,
}

/// What the couriers fetched for a pickup decide.
#[derive(Debug, Clone, PartialEq)]
pub enum Pick {
    /// This courier, the nearest with capacity.
    Courier(RankedCourier),
    /// Nobody within the radius has capacity.
    Nobody,
    /// The fetched couriers do not say: a nearer courier may not have been fetched (the search
    /// must go on, one pickup at a time).
    Unknown,
}

/// Picks couriers for the pickups of a batch in turn from what one planar search per pickup
/// fetched, as one by one would: each pickup the nearest courier with capacity left after the
/// pickups before it took theirs. Takes nothing: the caller takes [`takes`](Self::takes)
/// afterwards, all together.
#[derive(Debug, Default)]
pub struct BatchPicker {
    /// Slots picked so far, by courier, with the courier as ranked (where it was read).
    picked: HashMap<CourierId, (RankedCourier, i32)>,
}

impl BatchPicker {
    /// The courier `pickup` takes among `candidates` (fetched nearest first on the plane; all
    /// the index had if `complete`): the nearest one within `radius_km` with a slot the pickups
    /// before it did not take. [`Pick::Unknown`] when a courier not fetched could be nearer
    /// than every fetched one left.
    pub fn pick(
        &mut self,
        pickup: &GeoPoint,
        planar: &PlanarSearch,
        radius_km: f64,
        candidates: &[Candidate],
        complete: bool,
    ) -> Pick {
        let horizon = if complete {
            f64::INFINITY
        } else {
            candidates
                .iter()
                .map(|candidate| candidate.planar_distance)
                .fold(f64::NEG_INFINITY, f64::max)
        };
        let positions: Vec<CourierPosition> = candidates
            .iter()
            .map(|candidate| candidate.courier.clone())
            .collect();
        for courier in rank_couriers(pickup, &positions, radius_km) {
            let free = candidates
                .iter()
                .find(|candidate| candidate.courier.courier_id == courier.courier_id)
                .map_or(0, |candidate| candidate.free_slots);
            let picked = self
                .picked
                .get(&courier.courier_id)
                .map_or(0, |(_, count)| *count);
            if free <= picked {
                continue;
            }
            if !planar.covers(courier.distance_km, horizon) {
                return Pick::Unknown;
            }
            self.picked
                .entry(courier.courier_id.clone())
                .or_insert_with(|| (courier.clone(), 0))
                .1 += 1;
            return Pick::Courier(courier);
        }
        if planar.covers(radius_km, horizon) {
            Pick::Nobody
        } else {
            Pick::Unknown
        }
    }

    /// The couriers picked, each with its number of slots, sorted by courier id.
    pub fn takes(&self) -> Vec<(&RankedCourier, i32)> {
        let mut takes: Vec<(&RankedCourier, i32)> = self
            .picked
            .values()
            .map(|(courier, count)| (courier, *count))
            .collect();
        takes.sort_unstable_by(|a, b| a.0.courier_id.cmp(&b.0.courier_id));
        takes
    }
}

/// A waybill waiting for a courier.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitingWaybill {
    pub waybill_id: WaybillId,
    pub pickup: GeoPoint,
    pub deadline: DateTime<Utc>,
}

/// A waiting waybill a courier takes, and the courier's distance to its pickup.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WaybillPick {
    pub waybill_id: WaybillId,
    pub distance_km: f64,
}

/// The waiting waybills a courier at `courier` takes with `free_slots` of capacity: those whose
/// pickup is within `radius_km`, nearest first, the oldest deadline breaking ties (then the
/// waybill id, for determinism).
pub fn pick_waybills(
    courier: &GeoPoint,
    waiting: &[WaitingWaybill],
    radius_km: f64,
    free_slots: u32,
) -> Vec<WaybillPick> {
    let mut in_range: Vec<(f64, &WaitingWaybill)> = waiting
        .iter()
        .map(|waybill| (courier.distance_km(&waybill.pickup), waybill))
        .filter(|(distance, _)| *distance <= radius_km)
        .collect();
    in_range.sort_by(|(da, a), (db, b)| {
        da.total_cmp(db)
            .then_with(|| a.deadline.cmp(&b.deadline))
            .then_with(|| a.waybill_id.cmp(&b.waybill_id))
    });
    in_range
        .into_iter()
        .take(usize::try_from(free_slots).unwrap_or(usize::MAX))
        .map(|(distance_km, waybill)| WaybillPick {
            waybill_id: waybill.waybill_id,
            distance_km,
        })
        .collect()
}

/// Free capacity of a courier holding `live_waybills` of at most `capacity`.
pub fn free_slots(capacity: u32, live_waybills: i32) -> u32 {
    let live = u32::try_from(live_waybills).unwrap_or(0);
    capacity.saturating_sub(live)
}

/// When a waybill created at `created` stops waiting: `created + dispatch_deadline` (the far
/// future if that does not fit).
pub fn waiting_deadline(created: DateTime<Utc>, dispatch_deadline: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(dispatch_deadline)
        .ok()
        .and_then(|delta| created.checked_add_signed(delta))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Fastest and slowest tick of the deadline timer.
const TIMER_MIN_INTERVAL: Duration = Duration::from_millis(20);
const TIMER_MAX_INTERVAL: Duration = Duration::from_secs(1);

/// How often the deadline timer looks for overdue waybills: a quarter of the dispatch deadline
/// (so a waybill fails at most 25 % late), at most once a second and at least every 20 ms.
pub fn timer_interval(dispatch_deadline: Duration) -> Duration {
    (dispatch_deadline / 4).clamp(TIMER_MIN_INTERVAL, TIMER_MAX_INTERVAL)
}

/// The life cycle of a waybill in dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaybillStatus {
    /// No courier yet; waits until its deadline.
    Waiting,
    /// A courier has it (the point of no return for cancellation).
    Assigned,
    /// No courier in time, or cancelled before one was assigned. Terminal.
    Failed,
    /// The courier delivered it. Terminal.
    Delivered,
}

impl WaybillStatus {
    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            WaybillStatus::Waiting => "waiting",
            WaybillStatus::Assigned => "assigned",
            WaybillStatus::Failed => "failed",
            WaybillStatus::Delivered => "delivered",
        }
    }

    /// The status stored as `name`.
    pub fn parse(name: &str) -> Option<WaybillStatus> {
        [
            WaybillStatus::Waiting,
            WaybillStatus::Assigned,
            WaybillStatus::Failed,
            WaybillStatus::Delivered,
        ]
        .into_iter()
        .find(|status| status.as_str() == name)
    }
}

impl fmt::Display for WaybillStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The stored (and wire) name of a failure reason.
pub const fn failure_reason_name(reason: DispatchFailureReason) -> &'static str {
    match reason {
        DispatchFailureReason::NoCourier => "no_courier",
        DispatchFailureReason::Customer => "customer",
        DispatchFailureReason::Deadline => "deadline",
    }
}

/// The failure reason stored as `name`.
pub fn parse_failure_reason(name: &str) -> Option<DispatchFailureReason> {
    [
        DispatchFailureReason::NoCourier,
        DispatchFailureReason::Customer,
        DispatchFailureReason::Deadline,
    ]
    .into_iter()
    .find(|reason| failure_reason_name(*reason) == name)
}

/// What `waybill_created` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnWaybillCreated {
    /// New waybill: assign the nearest available courier, or wait.
    Dispatch,
    /// The order was cancelled before its waybill existed: record the waybill as failed with
    /// the cancellation's reason and emit `dispatch.failed` at once.
    FailAtOnce(DispatchFailureReason),
    /// This waybill is already known (a repeated event): nothing to do.
    AlreadyKnown,
    /// The order already has another waybill: the event contradicts dispatch's state.
    Conflict(WaybillId),
}

/// Decides `waybill_created` for `incoming`, given the order's known waybill and tombstone.
pub fn on_waybill_created(
    incoming: WaybillId,
    known: Option<WaybillId>,
    tombstone: Option<DispatchFailureReason>,
) -> OnWaybillCreated {
    match (known, tombstone) {
        (Some(known), _) if known == incoming => OnWaybillCreated::AlreadyKnown,
        (Some(known), _) => OnWaybillCreated::Conflict(known),
        (None, Some(reason)) => OnWaybillCreated::FailAtOnce(reason),
        (None, None) => OnWaybillCreated::Dispatch,
    }
}

/// What `order.cancel_requested` does, given the order's waybill status (if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCancel {
    /// The waybill is waiting: fail it now with this reason.
    FailNow(WaybillId, DispatchFailureReason),
    /// No waybill yet: remember the cancellation; the waybill fails the moment it arrives.
    Tombstone(DispatchFailureReason),
    /// A courier is (or was) assigned: past the point of no return, the cancel is refused.
    Refuse,
    /// Already failed: nothing to do.
    AlreadyFailed,
}

/// Decides `order.cancel_requested`, given the order's waybill (if any).
pub fn on_cancel_requested(
    current: Option<(WaybillId, WaybillStatus)>,
    reason: CancelReason,
) -> OnCancel {
    let reason = DispatchFailureReason::from(reason);
    match current {
        None => OnCancel::Tombstone(reason),
        Some((waybill_id, WaybillStatus::Waiting)) => OnCancel::FailNow(waybill_id, reason),
        Some((_, WaybillStatus::Assigned | WaybillStatus::Delivered)) => OnCancel::Refuse,
        Some((_, WaybillStatus::Failed)) => OnCancel::AlreadyFailed,
    }
}

/// Why a courier may not confirm a delivery (each is a 409).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryRefusal {
    #[error("waybill {0} is already delivered")]
    AlreadyDelivered(WaybillId),
    #[error("waybill {waybill_id} is not assigned to courier {courier_id}")]
    OtherCourier {
        waybill_id: WaybillId,
        courier_id: CourierId,
    },
    #[error("waybill {waybill_id} is {status}, not assigned to a courier")]
    NotAssigned {
        waybill_id: WaybillId,
        status: WaybillStatus,
    },
}

/// Whether `courier_id` may confirm delivery of `waybill_id` (status `status`, assigned to
/// `assigned_to`).
pub fn check_delivery(
    waybill_id: WaybillId,
    status: WaybillStatus,
    assigned_to: Option<&CourierId>,
    courier_id: &CourierId,
) -> Result<(), DeliveryRefusal> {
    match status {
        WaybillStatus::Delivered => Err(DeliveryRefusal::AlreadyDelivered(waybill_id)),
        WaybillStatus::Assigned if assigned_to == Some(courier_id) => Ok(()),
        WaybillStatus::Assigned => Err(DeliveryRefusal::OtherCourier {
            waybill_id,
            courier_id: courier_id.clone(),
        }),
        WaybillStatus::Waiting | WaybillStatus::Failed => {
            Err(DeliveryRefusal::NotAssigned { waybill_id, status })
        }
    }
}

/// Whether `caller` may report for `courier_id` (location, deliveries): the courier itself
/// with the `couriers:write` scope, or an admin.
pub fn may_act_for_courier(caller: &Caller, courier_id: &CourierId) -> bool {
    caller.is_admin()
        || (caller.scopes.contains(&Scope::CouriersWrite) && caller.subject == courier_id.as_str())
}

/// Whether `caller` may read `courier_id`: the courier itself or an admin.
pub fn may_read_courier(caller: &Caller, courier_id: &CourierId) -> bool {
    caller.is_admin() || caller.subject == courier_id.as_str()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn point(lat: f64, lon: f64) -> GeoPoint {
        GeoPoint::new(lat, lon).unwrap()
    }

    fn courier(id: &str, lat: f64, lon: f64) -> CourierPosition {
        CourierPosition {
            courier_id: CourierId::parse(id).unwrap(),
            position: point(lat, lon),
        }
    }

    /// The point `distance_km` from `from` along `bearing_deg` on the haversine sphere.
    fn destination(from: &GeoPoint, bearing_deg: f64, distance_km: f64) -> GeoPoint {
        let earth_radius_km = 6371.0088;
        let angular = distance_km / earth_radius_km;
        let (lat1, lon1, bearing) = (
            from.lat.to_radians(),
            from.lon.to_radians(),
            bearing_deg.to_radians(),
        );
        let lat2 = (lat1.sin() * angular.cos() + lat1.cos() * angular.sin() * bearing.cos()).asin();
        let lon2 = lon1
            + (bearing.sin() * angular.sin() * lat1.cos())
                .atan2(angular.cos() - lat1.sin() * lat2.sin());
        let lon2 = (lon2.to_degrees() + 540.0).rem_euclid(360.0) - 180.0;
        point(lat2.to_degrees().clamp(-90.0, 90.0), lon2)
    }

    /// Origins all over the globe (a Fibonacci lattice) plus every pentagon's centre, where the
    /// H3 grid is most distorted.
    fn origins(resolution: Resolution, lattice: usize) -> Vec<GeoPoint> {
        let mut points: Vec<GeoPoint> = resolution
            .pentagons()
            .map(|cell| {
                let centre = LatLng::from(cell);
                point(centre.lat(), centre.lng())
            })
            .collect();
        let golden = (1.0 + 5f64.sqrt()) / 2.0;
        for i in 0..lattice {
            let lat = (1.0 - 2.0 * (i as f64 + 0.5) / lattice as f64)
                .asin()
                .to_degrees();
            let lon = ((i as f64 / golden).fract() * 360.0) - 180.0;
            points.push(point(lat, lon));
        }
        points
    }

    #[test]
    fn matching_areas_are_a_few_cells_at_least_half_the_radius_wide() {
        assert_eq!(matching_resolution(5.0), Resolution::Six);
        assert_eq!(matching_resolution(2.0), Resolution::Seven);
        assert_eq!(matching_resolution(0.1), Resolution::Seven);
        assert_eq!(matching_resolution(1.0e6), Resolution::Zero);
        let shanghai = point(31.2304, 121.4737);
        for radius_km in [0.3, 1.0, 5.0, 12.0] {
            let areas = courier_search(&shanghai, radius_km).unwrap().matching_areas;
            assert!(
                (1..=24).contains(&areas.len()),
                "r={radius_km}: {} areas",
                areas.len()
            );
            assert!(
                areas.windows(2).all(|pair| pair[0] < pair[1]),
                "sorted, no repeats"
            );
        }
        // beyond a cell search, one area for everything
        let radius_km = 100.0;
        assert_eq!(
            courier_search(&shanghai, radius_km).unwrap().matching_areas,
            [MatchingArea::WHOLE_WORLD]
        );
        assert_eq!(
            matching_area_of(&shanghai, radius_km).unwrap(),
            MatchingArea::WHOLE_WORLD
        );
    }

    #[test]
    fn stripes_of_different_areas_never_share_a_key() {
        let shanghai = point(31.2304, 121.4737);
        let mut keys = Vec::new();
        for radius_km in [0.3, 5.0, 12.0] {
            let search = courier_search(&shanghai, radius_km).unwrap();
            for area in &search.matching_areas {
                let stripes: Vec<i64> = area.stripe_keys().collect();
                assert_eq!(stripes.len(), usize::from(AREA_STRIPES));
                assert!(stripes.windows(2).all(|pair| pair[0] < pair[1]));
                assert!(stripes.iter().all(|key| *key >= 8), "not the whole world's");
                keys.extend(stripes.into_iter().map(|key| (key, *area)));
            }
        }
        keys.sort_unstable();
        keys.dedup();
        assert!(keys.windows(2).all(|pair| pair[0].0 != pair[1].0));
        let world: Vec<i64> = MatchingArea::WHOLE_WORLD.stripe_keys().collect();
        assert_eq!(world, (0..8).collect::<Vec<i64>>());
        // couriers spread over the stripes
        let mut seen = [0usize; AREA_STRIPES as usize];
        for i in 0..800 {
            let id = CourierId::parse(&format!("courier-{i}")).unwrap();
            seen[usize::from(courier_stripe(&id))] += 1;
        }
        assert!(seen.iter().all(|count| *count > 50), "{seen:?}");
    }

    /// What makes the area locks work: a courier within the radius of a pickup is in one of the
    /// pickup's areas, everywhere on the globe.
    #[test]
    fn a_courier_within_the_radius_is_in_one_of_the_pickups_areas() {
        for radius_km in [0.3, 2.5, 5.0, 12.0] {
            for origin in origins(CELL_RESOLUTION, 40) {
                let areas = courier_search(&origin, radius_km).unwrap().matching_areas;
                for step in 0..24 {
                    let bearing = f64::from(step) * 15.0 + 7.0;
                    for fraction in [1.0, 0.8, 0.5, 0.1] {
                        let courier = destination(&origin, bearing, radius_km * fraction);
                        let area = matching_area_of(&courier, radius_km).unwrap();
                        assert!(
                            areas.binary_search(&area).is_ok(),
                            "r={radius_km}: courier {courier:?} outside the areas of {origin:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_point_within_the_radius_is_in_the_disk() {
        for resolution in [Resolution::Seven, CELL_RESOLUTION, Resolution::Nine] {
            for radius_km in [0.05, 0.3, 1.0, 2.5, 5.0, 12.0] {
                let k = disk_k_for_radius(radius_km, resolution);
                if k > MAX_DISK_K {
                    continue;
                }
                for origin in origins(resolution, 60) {
                    let centre = LatLng::new(origin.lat, origin.lon)
                        .unwrap()
                        .to_cell(resolution);
                    let disk: HashSet<CellIndex> = centre.grid_disk(k);
                    for step in 0..36 {
                        let bearing = f64::from(step) * 10.0 + 3.0;
                        for fraction in [1.0, 0.999, 0.7, 0.4] {
                            let target = destination(&origin, bearing, radius_km * fraction);
                            assert!(origin.distance_km(&target) <= radius_km * 1.000_001);
                            let cell = LatLng::new(target.lat, target.lon)
                                .unwrap()
                                .to_cell(resolution);
                            assert!(
                                disk.contains(&cell),
                                "{resolution:?} r={radius_km} k={k}: {target:?} from {origin:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn disk_k_grows_with_the_radius_and_stays_small_for_city_radii() {
        let edge = CELL_RESOLUTION.edge_length_km();
        assert_eq!(disk_k_for_radius(0.0, CELL_RESOLUTION), CENTRE_OFFSET_RINGS);
        assert_eq!(
            disk_k_for_radius(-1.0, CELL_RESOLUTION),
            CENTRE_OFFSET_RINGS
        );
        let mut previous = 0;
        for radius_km in [0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0] {
            let k = disk_k_for_radius(radius_km, CELL_RESOLUTION);
            assert!(k >= previous, "monotonic");
            assert!(
                f64::from(k) >= radius_km / edge,
                "at least the radius in edges"
            );
            previous = k;
        }
        // The default 5 km radius: a disk of a few hundred cells.
        assert_eq!(disk_k_for_radius(5.0, CELL_RESOLUTION), 14);
        assert_eq!(disk_k_for_radius(f64::INFINITY, CELL_RESOLUTION), u32::MAX);
    }

    #[test]
    fn search_area_is_the_disk_or_everywhere_for_huge_radii() {
        let shanghai = point(31.2304, 121.4737);
        let SearchArea::Cells(cells) = search_area(&shanghai, 5.0).unwrap() else {
            panic!("5 km is searched by cells");
        };
        assert_eq!(cells.len(), 3 * 14 * 15 + 1);
        assert!(cells.contains(&cell_of(&shanghai).unwrap()));
        assert!(cells.iter().all(|cell| *cell > 0));
        assert_eq!(
            search_area(&shanghai, 500.0).unwrap(),
            SearchArea::Everywhere
        );
    }

    #[test]
    fn cells_are_stable_positive_keys_at_the_fixed_resolution() {
        let a = cell_of(&point(31.2304, 121.4737)).unwrap();
        assert_eq!(a, cell_of(&point(31.2304, 121.4737)).unwrap());
        let cell = CellIndex::try_from(u64::try_from(a).unwrap()).unwrap();
        assert_eq!(cell.resolution(), CELL_RESOLUTION);
        assert_ne!(a, cell_of(&point(31.30, 121.4737)).unwrap());
        let bad = GeoPoint {
            lat: f64::NAN,
            lon: 0.0,
        };
        assert!(cell_of(&bad).is_err());
    }

    fn planar_distance(a: PlanePoint, b: PlanePoint) -> f64 {
        (a.x - b.x).hypot(a.y - b.y)
    }

    #[test]
    fn the_plane_is_spherical_mercator_in_radians() {
        let origin = plane_of(&point(0.0, 0.0));
        assert_eq!((origin.x, origin.y), (0.0, 0.0));
        let p = plane_of(&point(45.0, -90.0));
        assert!((p.x + std::f64::consts::FRAC_PI_2).abs() < 1e-15);
        // y = ln tan(π/4 + φ/2)
        let expected = (std::f64::consts::FRAC_PI_4 + 45f64.to_radians() / 2.0)
            .tan()
            .ln();
        assert!((p.y - expected).abs() < 1e-12);
        // the poles are clamped to finite coordinates
        assert!(plane_of(&point(90.0, 0.0)).y.is_finite());
        assert_eq!(plane_of(&point(90.0, 0.0)), plane_of(&point(89.0, 0.0)));
    }

    #[test]
    fn planar_searches_avoid_the_poles_and_the_antimeridian() {
        let shanghai = point(31.2304, 121.4737);
        assert!(planar_search(&shanghai, 5.0).is_some());
        assert!(planar_search(&shanghai, 0.0).is_some());
        assert!(planar_search(&shanghai, f64::INFINITY).is_none());
        assert!(planar_search(&shanghai, f64::NAN).is_none());
        assert!(planar_search(&shanghai, -1.0).is_none());
        // Longyearbyen (78.2° N): a 5 km disk stays below 80°, a 500 km one does not
        assert!(planar_search(&point(78.2, 15.6), 5.0).is_some());
        assert!(planar_search(&point(78.2, 15.6), 500.0).is_none());
        // Suva (178.4° E) is 170 km from the antimeridian; Taveuni's east coast is not
        assert!(planar_search(&point(-18.14, 178.44), 5.0).is_some());
        assert!(planar_search(&point(-16.8, 179.99), 5.0).is_none());
        assert!(planar_search(&point(-16.8, -179.99), 5.0).is_none());
    }

    /// What makes the planar search exact: no point within d of the centre is farther than
    /// `reach(d)` on the plane, everywhere the plane serves; and the bound is tight at city
    /// scale, so the index is not asked for many more rows than needed.
    #[test]
    fn reach_bounds_the_planar_distance_of_everything_within_a_ground_distance() {
        for radius_km in [0.3, 5.0, 12.0, 200.0] {
            for origin in origins(CELL_RESOLUTION, 200) {
                let Some(search) = planar_search(&origin, radius_km) else {
                    continue;
                };
                for step in 0..36 {
                    let bearing = f64::from(step) * 10.0 + 3.0;
                    for fraction in [1.0, 0.999, 0.7, 0.4, 0.01, 0.0] {
                        let target = destination(&origin, bearing, radius_km * fraction);
                        let ground = origin.distance_km(&target);
                        let planar = planar_distance(search.origin, plane_of(&target));
                        assert!(
                            planar <= search.reach(ground),
                            "r={radius_km}: {target:?} from {origin:?}: {planar} > {}",
                            search.reach(ground)
                        );
                        let city = radius_km <= 12.0 && origin.lat.abs() < 60.0;
                        if city && ground > 0.01 && ground <= radius_km {
                            assert!(
                                search.reach(ground) < planar * 1.01,
                                "tight: r={radius_km} {target:?} from {origin:?}: {planar} vs {}",
                                search.reach(ground)
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn covers_needs_a_horizon_beyond_the_reach() {
        let search = planar_search(&point(31.2304, 121.4737), 5.0).unwrap();
        let reach = search.reach(1.0);
        assert!(reach > 1.0 / 6371.0088);
        assert!(search.covers(1.0, reach * 1.0001));
        assert!(!search.covers(1.0, reach));
        assert!(search.covers(5.0, f64::INFINITY));
        // beyond the radius nothing is vouched for
        assert_eq!(search.reach(5.001), f64::INFINITY);
        assert!(!search.covers(5.001, f64::INFINITY));
    }

    /// Candidates as a planar search fetches them for `pickup`: nearest first on the plane.
    fn fetched(pickup: &GeoPoint, couriers: &[(CourierPosition, i32)]) -> Vec<Candidate> {
        let origin = plane_of(pickup);
        let mut candidates: Vec<Candidate> = couriers
            .iter()
            .map(|(courier, free_slots)| Candidate {
                courier: courier.clone(),
                planar_distance: planar_distance(origin, plane_of(&courier.position)),
                free_slots: *free_slots,
            })
            .collect();
        candidates.sort_by(|a, b| a.planar_distance.total_cmp(&b.planar_distance));
        candidates
    }

    fn picked(pick: &Pick) -> Option<&str> {
        match pick {
            Pick::Courier(courier) => Some(courier.courier_id.as_str()),
            _ => None,
        }
    }

    #[test]
    fn a_batch_picks_in_turn_from_the_slots_the_earlier_pickups_left() {
        let pickup = point(31.2304, 121.4737);
        let search = planar_search(&pickup, 5.0).unwrap();
        let candidates = fetched(
            &pickup,
            &[
                (courier("near", 31.2310, 121.474), 2), // ≈ 0.07 km, two slots
                (courier("mid", 31.2304, 121.49), 1),   // ≈ 1.6 km
                (courier("far", 31.2304, 121.60), 1),   // ≈ 12 km: outside the radius
            ],
        );
        let mut picker = BatchPicker::default();
        let picks: Vec<Pick> = (0..4)
            .map(|_| picker.pick(&pickup, &search, 5.0, &candidates, true))
            .collect();
        let names: Vec<Option<&str>> = picks.iter().map(picked).collect();
        assert_eq!(names, [Some("near"), Some("near"), Some("mid"), None]);
        // everything there was was fetched: nobody, for sure
        assert_eq!(picks[3], Pick::Nobody);
        let takes: Vec<(String, i32)> = picker
            .takes()
            .into_iter()
            .map(|(courier, count)| (courier.courier_id.as_str().to_owned(), count))
            .collect();
        assert_eq!(takes, [("mid".to_owned(), 1), ("near".to_owned(), 2)]);
    }

    #[test]
    fn a_batch_pick_the_fetched_couriers_cannot_vouch_for_is_unknown() {
        let pickup = point(31.2304, 121.4737);
        let search = planar_search(&pickup, 5.0).unwrap();
        let candidates = fetched(
            &pickup,
            &[
                (courier("near", 31.2310, 121.474), 1),
                (courier("mid", 31.2304, 121.49), 1),
            ],
        );
        // the index had more than these: one not fetched may be nearer than `mid` itself
        let mut picker = BatchPicker::default();
        assert_eq!(
            picked(&picker.pick(&pickup, &search, 5.0, &candidates, false)),
            Some("near")
        );
        assert_eq!(
            picker.pick(&pickup, &search, 5.0, &candidates, false),
            Pick::Unknown
        );
        // slots nobody has: skipped like taken ones
        let full = fetched(&pickup, &[(courier("near", 31.2310, 121.474), 0)]);
        let mut picker = BatchPicker::default();
        assert_eq!(
            picker.pick(&pickup, &search, 5.0, &full, true),
            Pick::Nobody
        );
        assert_eq!(
            picker.pick(&pickup, &search, 5.0, &full, false),
            Pick::Unknown
        );
        assert!(picker.takes().is_empty());
    }

    #[test]
    fn nearest_courier_within_the_radius_comes_first() {
        let pickup = point(31.2304, 121.4737);
        let couriers = [
            courier("far", 31.2304, 121.60),   // ≈ 12 km
            courier("mid", 31.2304, 121.49),   // ≈ 1.6 km
            courier("near", 31.2310, 121.474), // ≈ 0.07 km
        ];
        let ranked = rank_couriers(&pickup, &couriers, 5.0);
        let ids: Vec<&str> = ranked.iter().map(|c| c.courier_id.as_str()).collect();
        assert_eq!(ids, ["near", "mid"]);
        assert!(ranked[0].distance_km < ranked[1].distance_km);
        assert!((ranked[1].distance_km - pickup.distance_km(&couriers[1].position)).abs() < 1e-12);
    }

    #[test]
    fn the_radius_is_inclusive_and_nobody_outside_it_is_chosen() {
        let pickup = point(0.0, 0.0);
        let edge = courier("edge", 0.0, 0.0);
        let on_radius = pickup.distance_km(&point(0.0, 0.01));
        let ranked = rank_couriers(&pickup, &[courier("on", 0.0, 0.01), edge], on_radius);
        assert_eq!(ranked.len(), 2);
        let outside = rank_couriers(&pickup, &[courier("out", 0.0, 0.01)], on_radius * 0.99);
        assert!(outside.is_empty());
        assert!(rank_couriers(&pickup, &[], 5.0).is_empty());
    }

    #[test]
    fn equal_distances_are_broken_by_courier_id() {
        let pickup = point(10.0, 10.0);
        let couriers = [
            courier("c-b", 10.0, 10.01),
            courier("c-a", 10.0, 9.99),
            courier("c-c", 10.0, 10.01),
        ];
        let ids: Vec<String> = rank_couriers(&pickup, &couriers, 5.0)
            .into_iter()
            .map(|c| c.courier_id.to_string())
            .collect();
        assert_eq!(ids, ["c-a", "c-b", "c-c"]);
    }

    #[test]
    fn a_courier_takes_the_nearest_waiting_waybills_oldest_deadline_first() {
        let at = point(31.0, 121.0);
        let t0 = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        let waybill = |lon: f64, deadline_offset: i64| WaitingWaybill {
            waybill_id: WaybillId::new(),
            pickup: point(31.0, lon),
            deadline: t0 + TimeDelta::seconds(deadline_offset),
        };
        let near_late = waybill(121.001, 60);
        let near_early = waybill(121.001, 10);
        let farther = waybill(121.02, 0);
        let out_of_range = waybill(121.5, -100);
        let waiting = [
            out_of_range.clone(),
            farther.clone(),
            near_late.clone(),
            near_early.clone(),
        ];
        let picks = pick_waybills(&at, &waiting, 5.0, 10);
        let ids: Vec<WaybillId> = picks.iter().map(|p| p.waybill_id).collect();
        assert_eq!(
            ids,
            [
                near_early.waybill_id,
                near_late.waybill_id,
                farther.waybill_id
            ]
        );
        let one = pick_waybills(&at, &waiting, 5.0, 1);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].waybill_id, near_early.waybill_id);
        assert!(pick_waybills(&at, &waiting, 5.0, 0).is_empty());
    }

    #[test]
    fn capacity_and_deadlines() {
        assert_eq!(free_slots(1, 0), 1);
        assert_eq!(free_slots(1, 1), 0);
        assert_eq!(free_slots(3, 5), 0);
        assert_eq!(free_slots(2, -1), 2);
        let t0 = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(
            waiting_deadline(t0, Duration::from_secs(60)),
            t0 + TimeDelta::seconds(60)
        );
        assert_eq!(
            waiting_deadline(t0, Duration::MAX),
            DateTime::<Utc>::MAX_UTC
        );
    }

    #[test]
    fn the_timer_ticks_a_quarter_of_the_deadline_within_bounds() {
        assert_eq!(
            timer_interval(Duration::from_secs(60)),
            Duration::from_secs(1)
        );
        assert_eq!(
            timer_interval(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(
            timer_interval(Duration::from_millis(400)),
            Duration::from_millis(100)
        );
        assert_eq!(timer_interval(Duration::from_millis(1)), TIMER_MIN_INTERVAL);
    }

    #[test]
    fn names_round_trip() {
        for status in [
            WaybillStatus::Waiting,
            WaybillStatus::Assigned,
            WaybillStatus::Failed,
            WaybillStatus::Delivered,
        ] {
            assert_eq!(WaybillStatus::parse(status.as_str()), Some(status));
        }
        for reason in [
            DispatchFailureReason::NoCourier,
            DispatchFailureReason::Customer,
            DispatchFailureReason::Deadline,
        ] {
            let name = failure_reason_name(reason);
            assert_eq!(parse_failure_reason(name), Some(reason));
            assert_eq!(serde_json::to_value(reason).unwrap(), name);
        }
        assert_eq!(WaybillStatus::parse("lost"), None);
        assert_eq!(parse_failure_reason("bored"), None);
    }

    #[test]
    fn waybill_created_dispatches_once_or_fails_on_a_tombstone() {
        let id = WaybillId::new();
        assert_eq!(
            on_waybill_created(id, None, None),
            OnWaybillCreated::Dispatch
        );
        assert_eq!(
            on_waybill_created(id, None, Some(DispatchFailureReason::Customer)),
            OnWaybillCreated::FailAtOnce(DispatchFailureReason::Customer)
        );
        assert_eq!(
            on_waybill_created(id, Some(id), Some(DispatchFailureReason::Customer)),
            OnWaybillCreated::AlreadyKnown
        );
        let other = WaybillId::new();
        assert_eq!(
            on_waybill_created(id, Some(other), None),
            OnWaybillCreated::Conflict(other)
        );
    }

    #[test]
    fn cancellation_stops_at_the_assignment() {
        use WaybillStatus::*;
        let id = WaybillId::new();
        assert_eq!(
            on_cancel_requested(Some((id, Waiting)), CancelReason::Customer),
            OnCancel::FailNow(id, DispatchFailureReason::Customer)
        );
        assert_eq!(
            on_cancel_requested(None, CancelReason::Deadline),
            OnCancel::Tombstone(DispatchFailureReason::Deadline)
        );
        assert_eq!(
            on_cancel_requested(Some((id, Assigned)), CancelReason::Customer),
            OnCancel::Refuse
        );
        assert_eq!(
            on_cancel_requested(Some((id, Delivered)), CancelReason::Deadline),
            OnCancel::Refuse
        );
        assert_eq!(
            on_cancel_requested(Some((id, Failed)), CancelReason::Customer),
            OnCancel::AlreadyFailed
        );
    }

    #[test]
    fn only_the_assigned_courier_delivers_and_only_once() {
        let id = WaybillId::new();
        let me = CourierId::parse("me").unwrap();
        let other = CourierId::parse("other").unwrap();
        assert_eq!(
            check_delivery(id, WaybillStatus::Assigned, Some(&me), &me),
            Ok(())
        );
        assert!(matches!(
            check_delivery(id, WaybillStatus::Assigned, Some(&other), &me),
            Err(DeliveryRefusal::OtherCourier { .. })
        ));
        assert_eq!(
            check_delivery(id, WaybillStatus::Delivered, Some(&me), &me),
            Err(DeliveryRefusal::AlreadyDelivered(id))
        );
        for status in [WaybillStatus::Waiting, WaybillStatus::Failed] {
            assert!(matches!(
                check_delivery(id, status, None, &me),
                Err(DeliveryRefusal::NotAssigned { .. })
            ));
        }
    }

    #[test]
    fn couriers_act_for_themselves_with_the_scope_admins_for_anyone() {
        let c7 = CourierId::parse("c7").unwrap();
        let caller = |subject: &str, scopes: Vec<Scope>| Caller {
            subject: subject.to_owned(),
            scopes,
        };
        assert!(may_act_for_courier(
            &caller("c7", vec![Scope::CouriersWrite]),
            &c7
        ));
        assert!(!may_act_for_courier(
            &caller("c8", vec![Scope::CouriersWrite]),
            &c7
        ));
        assert!(!may_act_for_courier(
            &caller("c7", vec![Scope::OrdersWrite]),
            &c7
        ));
        assert!(may_act_for_courier(&caller("ops", vec![Scope::Admin]), &c7));
        assert!(may_read_courier(&caller("c7", vec![]), &c7));
        assert!(!may_read_courier(
            &caller("c8", vec![Scope::CouriersWrite]),
            &c7
        ));
        assert!(may_read_courier(&caller("ops", vec![Scope::Admin]), &c7));
    }
}
