//! Dispatch's SQL: couriers, waybills and cancel tombstones. Every function runs on the
//! caller's connection (inside its transaction); locking is stated per function.

use chrono::{DateTime, Utc};
use jwl_events::{CourierId, DispatchFailureReason, EventId, GeoPoint, OrderId, WaybillId};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::domain::{
    self, Candidate, CourierPosition, MatchingArea, PlanePoint, RankedCourier, SearchArea,
    WaitingWaybill, WaybillStatus,
};
use crate::error::DispatchError;

type Result<T> = std::result::Result<T, DispatchError>;

fn point(lat: f64, lon: f64) -> Result<GeoPoint> {
    GeoPoint::new(lat, lon).map_err(|error| DispatchError::Corrupt(error.to_string()))
}

fn courier_id(text: &str) -> Result<CourierId> {
    CourierId::parse(text).map_err(|error| DispatchError::Corrupt(error.to_string()))
}

fn status(text: &str) -> Result<WaybillStatus> {
    WaybillStatus::parse(text)
        .ok_or_else(|| DispatchError::Corrupt(format!("unknown waybill status {text:?}")))
}

/// Serializes the handlers of one order (`waybill_created` against `order.cancel_requested`)
/// until the transaction ends, so a cancellation and the waybill it targets cannot miss each
/// other. A transaction-scoped advisory lock in a key space of dispatch's own.
pub async fn lock_order(conn: &mut PgConnection, order_id: OrderId) -> Result<()> {
    lock_orders(conn, &[order_id]).await
}

/// [`lock_order`] for several orders in one statement, in the order of their keys, so two
/// transactions locking several orders never wait for each other in a cycle.
pub async fn lock_orders(conn: &mut PgConnection, orders: &[OrderId]) -> Result<()> {
    let orders: Vec<Uuid> = orders.iter().map(|order| order.0).collect();
    // output expressions are evaluated after the sort (volatile functions are)
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtext('jwl_dispatch.order'), key)
         FROM (SELECT DISTINCT hashtext(o::text) AS key FROM unnest($1::uuid[]) AS o) AS keys
         ORDER BY key",
    )
    .bind(orders)
    .execute(conn)
    .await?;
    Ok(())
}

/// Locks, shared, every stripe of the matching areas a waybill's search touches (sorted, so
/// two such transactions never wait for each other), until the transaction ends. See
/// [`domain::MatchingArea`]; the keys are derived from the areas' H3 indexes, which no other key
/// of ours takes.
pub async fn lock_areas_for_waybill(conn: &mut PgConnection, areas: &[MatchingArea]) -> Result<()> {
    let mut keys: Vec<i64> = areas.iter().flat_map(|area| area.stripe_keys()).collect();
    keys.sort_unstable();
    keys.dedup();
    sqlx::query(
        "SELECT pg_advisory_xact_lock_shared(key) FROM unnest($1::bigint[]) AS key ORDER BY key",
    )
    .bind(keys)
    .execute(conn)
    .await?;
    Ok(())
}

/// Locks, exclusively, the courier's stripe of the matching area it is in until the
/// transaction ends (see [`domain::MatchingArea`]). Take it before the courier's row, so a
/// waybill transaction holding the area and waiting for the row cannot deadlock with it.
pub async fn lock_area_for_courier(
    conn: &mut PgConnection,
    area: MatchingArea,
    courier_id: &CourierId,
) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(area.stripe_key(domain::courier_stripe(courier_id)))
        .execute(conn)
        .await?;
    Ok(())
}

/// The order's waybill id and status, row locked.
pub async fn order_waybill(
    conn: &mut PgConnection,
    order_id: OrderId,
) -> Result<Option<(WaybillId, WaybillStatus)>> {
    let row: Option<(Uuid, String)> =
        sqlx::query_as("SELECT waybill_id, status FROM waybills WHERE order_id = $1 FOR UPDATE")
            .bind(order_id.0)
            .fetch_optional(conn)
            .await?;
    row.map(|(id, text)| Ok((WaybillId(id), status(&text)?)))
        .transpose()
}

/// What dispatch knows of an order when its waybill arrives: its waybill's id (row locked), and
/// the reason of its cancel tombstone if a cancellation came before the waybill.
pub type OnArrival = (Option<WaybillId>, Option<DispatchFailureReason>);

/// The [`OnArrival`] of each of `orders`, in their order, in one statement. Take the orders'
/// locks ([`lock_orders`]) first, in a statement of its own: a statement reads what was
/// committed when it started, so a read in the statement that waited for a lock could miss the
/// tombstone of the cancellation that held it.
pub async fn orders_on_arrival(
    conn: &mut PgConnection,
    orders: &[OrderId],
) -> Result<Vec<OnArrival>> {
    let ids: Vec<Uuid> = orders.iter().map(|order| order.0).collect();
    let rows: Vec<(Option<Uuid>, Option<String>)> = sqlx::query_as(
        "SELECT waybill.waybill_id, tombstone.reason
         FROM unnest($1::uuid[]) WITH ORDINALITY AS o(order_id, n)
         LEFT JOIN LATERAL (
             SELECT waybill_id FROM waybills WHERE order_id = o.order_id FOR UPDATE
         ) AS waybill ON true
         LEFT JOIN LATERAL (
             SELECT reason FROM cancel_tombstones WHERE order_id = o.order_id
         ) AS tombstone ON true
         ORDER BY o.n",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    if rows.len() != orders.len() {
        return Err(DispatchError::Corrupt(format!(
            "{} arrival states for {} orders",
            rows.len(),
            orders.len()
        )));
    }
    rows.into_iter()
        .map(|(waybill_id, reason)| {
            let reason = reason
                .map(|text| {
                    domain::parse_failure_reason(&text)
                        .ok_or_else(|| DispatchError::Corrupt(format!("unknown reason {text:?}")))
                })
                .transpose()?;
            Ok((waybill_id.map(WaybillId), reason))
        })
        .collect()
}

/// Records a cancellation that arrived before the order's waybill (the first one wins).
pub async fn insert_tombstone(
    conn: &mut PgConnection,
    order_id: OrderId,
    reason: DispatchFailureReason,
    cause: EventId,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO cancel_tombstones (order_id, reason, cause_event_id) VALUES ($1, $2, $3)
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id.0)
    .bind(domain::failure_reason_name(reason))
    .bind(cause.0)
    .execute(conn)
    .await?;
    Ok(())
}

/// A waybill dispatch has just learned of.
#[derive(Debug, Clone)]
pub struct NewWaybill {
    pub waybill_id: WaybillId,
    pub order_id: OrderId,
    pub pickup: GeoPoint,
    pub pickup_cell: i64,
    pub deadline: DateTime<Utc>,
    /// The `waybill_created` event, for the cause and trace of timer-born events.
    pub cause_event_id: EventId,
    pub cause_traceparent: Option<String>,
}

/// The state a new waybill is stored in.
#[derive(Debug, Clone)]
pub enum Placement {
    Waiting,
    Assigned(RankedCourier),
    Failed(DispatchFailureReason),
}

/// Inserts new waybills, each in its first state, in one statement.
pub async fn insert_waybills(
    conn: &mut PgConnection,
    waybills: &[(NewWaybill, Placement)],
) -> Result<()> {
    let mut columns = WaybillColumns::default();
    for (waybill, placement) in waybills {
        let (status, courier, distance, reason) = match placement {
            Placement::Waiting => (WaybillStatus::Waiting, None, None, None),
            Placement::Assigned(courier) => (
                WaybillStatus::Assigned,
                Some(courier.courier_id.as_str().to_owned()),
                Some(courier.distance_km),
                None,
            ),
            Placement::Failed(reason) => (
                WaybillStatus::Failed,
                None,
                None,
                Some(domain::failure_reason_name(*reason)),
            ),
        };
        columns.waybill_id.push(waybill.waybill_id.0);
        columns.order_id.push(waybill.order_id.0);
        columns.lat.push(waybill.pickup.lat);
        columns.lon.push(waybill.pickup.lon);
        columns.cell.push(waybill.pickup_cell);
        columns.status.push(status.as_str());
        columns.courier.push(courier);
        columns.distance.push(distance);
        columns.deadline.push(waybill.deadline);
        columns.reason.push(reason);
        columns.cause.push(waybill.cause_event_id.0);
        columns.traceparent.push(waybill.cause_traceparent.clone());
    }
    sqlx::query(
        "INSERT INTO waybills (waybill_id, order_id, pickup_lat, pickup_lon, pickup_cell, status,
                               courier_id, distance_km, deadline, failure_reason,
                               cause_event_id, cause_traceparent)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::float8[], $4::float8[], $5::bigint[],
                              $6::text[], $7::text[], $8::float8[], $9::timestamptz[],
                              $10::text[], $11::uuid[], $12::text[])",
    )
    .bind(columns.waybill_id)
    .bind(columns.order_id)
    .bind(columns.lat)
    .bind(columns.lon)
    .bind(columns.cell)
    .bind(columns.status)
    .bind(columns.courier)
    .bind(columns.distance)
    .bind(columns.deadline)
    .bind(columns.reason)
    .bind(columns.cause)
    .bind(columns.traceparent)
    .execute(conn)
    .await?;
    Ok(())
}

/// The columns of [`insert_waybills`], one array each.
#[derive(Default)]
struct WaybillColumns {
    waybill_id: Vec<Uuid>,
    order_id: Vec<Uuid>,
    lat: Vec<f64>,
    lon: Vec<f64>,
    cell: Vec<i64>,
    status: Vec<&'static str>,
    courier: Vec<Option<String>>,
    distance: Vec<Option<f64>>,
    deadline: Vec<DateTime<Utc>>,
    reason: Vec<Option<&'static str>>,
    cause: Vec<Uuid>,
    traceparent: Vec<Option<String>>,
}

/// Couriers in `area` with fewer than `capacity` live waybills (not locked: assignment takes
/// capacity with [`take_capacity`], which re-checks under the row lock).
pub async fn available_couriers(
    conn: &mut PgConnection,
    area: &SearchArea,
    capacity: i32,
) -> Result<Vec<CourierPosition>> {
    let rows: Vec<(String, f64, f64)> = match area {
        SearchArea::Cells(cells) => {
            sqlx::query_as(
                "SELECT courier_id, lat, lon FROM couriers
                 WHERE cell = ANY($1) AND live_waybills < $2",
            )
            .bind(cells)
            .bind(capacity)
            .fetch_all(conn)
            .await?
        }
        SearchArea::Everywhere => {
            sqlx::query_as("SELECT courier_id, lat, lon FROM couriers WHERE live_waybills < $1")
                .bind(capacity)
                .fetch_all(conn)
                .await?
        }
    };
    rows.into_iter()
        .map(|(id, lat, lon)| {
            Ok(CourierPosition {
                courier_id: courier_id(&id)?,
                position: point(lat, lon)?,
            })
        })
        .collect()
}

/// Up to `limit` couriers with fewer than `capacity` live waybills, nearest to `origin` on the
/// plane first (not locked, like [`available_couriers`]): [`nearest_available_to_each`] for one
/// origin.
pub async fn nearest_available(
    conn: &mut PgConnection,
    origin: PlanePoint,
    capacity: i32,
    limit: i64,
) -> Result<Vec<Candidate>> {
    let mut found = nearest_available_to_each(conn, &[origin], capacity, limit).await?;
    Ok(found.pop().unwrap_or_default())
}

/// For each of `origins`, in their order, up to `limit` couriers with fewer than `capacity`
/// live waybills, nearest to it on the plane first, in one statement (not locked, like
/// [`available_couriers`]). One KNN scan of the partial GiST index `couriers_available_nearest`
/// per origin: it walks only couriers with spare capacity and stops after `limit` rows, however
/// many couriers there are.
pub async fn nearest_available_to_each(
    conn: &mut PgConnection,
    origins: &[PlanePoint],
    capacity: i32,
    limit: i64,
) -> Result<Vec<Vec<Candidate>>> {
    let xs: Vec<f64> = origins.iter().map(|origin| origin.x).collect();
    let ys: Vec<f64> = origins.iter().map(|origin| origin.y).collect();
    // `live_waybills < capacity` (the column) is the index's predicate, spelled out so that
    // the planner can use it; `< $3` applies the configured capacity exactly.
    let rows: Vec<(i64, String, f64, f64, f64, i32)> = sqlx::query_as(
        "SELECT o.n, c.courier_id, c.lat, c.lon, c.planar, c.live_waybills
         FROM unnest($1::float8[], $2::float8[]) WITH ORDINALITY AS o(x, y, n)
         CROSS JOIN LATERAL (
             SELECT courier_id, lat, lon, live_waybills, plane <-> point(o.x, o.y) AS planar
             FROM couriers
             WHERE live_waybills < capacity AND live_waybills < $3
             ORDER BY plane <-> point(o.x, o.y)
             LIMIT $4
         ) AS c
         ORDER BY o.n, c.planar",
    )
    .bind(xs)
    .bind(ys)
    .bind(capacity)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    let mut found: Vec<Vec<Candidate>> = vec![Vec::new(); origins.len()];
    for (n, id, lat, lon, planar_distance, live) in rows {
        let slot = usize::try_from(n - 1)
            .ok()
            .and_then(|index| found.get_mut(index))
            .ok_or_else(|| DispatchError::Corrupt(format!("search {n} of {}", origins.len())))?;
        slot.push(Candidate {
            courier: CourierPosition {
                courier_id: courier_id(&id)?,
                position: point(lat, lon)?,
            },
            planar_distance,
            free_slots: capacity.saturating_sub(live),
        });
    }
    Ok(found)
}

/// Raises every courier's stored `capacity` to at least `capacity` (the configured one), so
/// that the index of available couriers holds every courier with fewer live waybills; how many
/// rows changed. The stored value only ever rises (see the migration `…_nearest.sql`).
pub async fn raise_stored_capacity(db: impl PgExecutor<'_>, capacity: i32) -> Result<u64> {
    Ok(
        sqlx::query("UPDATE couriers SET capacity = $1 WHERE capacity < $1")
            .bind(capacity)
            .execute(db)
            .await?
            .rows_affected(),
    )
}

/// Takes one unit of `courier`'s capacity if it still has some and is still where it was
/// ranked; false if it lost that in the meantime (another assignment, or it moved):
/// [`take_capacities`] for one courier.
pub async fn take_capacity(
    conn: &mut PgConnection,
    courier: &RankedCourier,
    capacity: i32,
) -> Result<bool> {
    let taken = take_capacities(conn, &[(courier, 1)], capacity).await?;
    Ok(!taken.is_empty())
}

/// Takes `count` units of each courier's capacity, all or none per courier, if it still has
/// them and is still where it was ranked, in one statement; the couriers taken. The couriers'
/// rows are locked in the order of their ids (two transactions taking several never wait for
/// each other in a cycle), and each condition is checked again on the row as locked, after any
/// concurrent writer committed, so capacity is never exceeded.
pub async fn take_capacities(
    conn: &mut PgConnection,
    takes: &[(&RankedCourier, i32)],
    capacity: i32,
) -> Result<Vec<CourierId>> {
    if takes.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = takes.iter().map(|(c, _)| c.courier_id.as_str()).collect();
    let counts: Vec<i32> = takes.iter().map(|(_, count)| *count).collect();
    let lats: Vec<f64> = takes.iter().map(|(c, _)| c.position.lat).collect();
    let lons: Vec<f64> = takes.iter().map(|(c, _)| c.position.lon).collect();
    let taken: Vec<String> = sqlx::query_scalar(
        "WITH locked AS MATERIALIZED (
             SELECT courier_id FROM couriers WHERE courier_id = ANY($1)
             ORDER BY courier_id
             FOR UPDATE
         )
         UPDATE couriers c SET live_waybills = c.live_waybills + t.count
         FROM unnest($1::text[], $2::int4[], $3::float8[], $4::float8[]) AS t(id, count, lat, lon),
              locked
         WHERE locked.courier_id = t.id AND c.courier_id = t.id
           AND c.live_waybills + t.count <= $5 AND c.lat = t.lat AND c.lon = t.lon
         RETURNING c.courier_id",
    )
    .bind(ids)
    .bind(counts)
    .bind(lats)
    .bind(lons)
    .bind(capacity)
    .fetch_all(conn)
    .await?;
    taken.iter().map(|id| courier_id(id)).collect()
}

/// Fails a waiting waybill; false if it was not waiting.
pub async fn fail_waiting(
    conn: &mut PgConnection,
    waybill_id: WaybillId,
    reason: DispatchFailureReason,
) -> Result<bool> {
    let updated = sqlx::query(
        "UPDATE waybills SET status = 'failed', failure_reason = $2, updated_at = now()
         WHERE waybill_id = $1 AND status = 'waiting'",
    )
    .bind(waybill_id.0)
    .bind(domain::failure_reason_name(reason))
    .execute(conn)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// A waybill the deadline timer failed, with the event that created it.
#[derive(Debug, Clone)]
pub struct OverdueWaybill {
    pub waybill_id: WaybillId,
    pub order_id: OrderId,
    pub cause_event_id: EventId,
    pub cause_traceparent: Option<String>,
}

/// Fails up to `limit` waiting waybills whose deadline is at or before `now` (reason
/// `no_courier`), skipping rows another transaction holds (a replica's timer, an assignment).
pub async fn fail_overdue(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<OverdueWaybill>> {
    let rows: Vec<(Uuid, Uuid, Uuid, Option<String>)> = sqlx::query_as(
        "WITH due AS (
             SELECT waybill_id FROM waybills
             WHERE status = 'waiting' AND deadline <= $1
             ORDER BY deadline
             LIMIT $2
             FOR UPDATE SKIP LOCKED
         )
         UPDATE waybills w
         SET status = 'failed', failure_reason = 'no_courier', updated_at = now()
         FROM due
         WHERE w.waybill_id = due.waybill_id
         RETURNING w.waybill_id, w.order_id, w.cause_event_id, w.cause_traceparent",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(waybill_id, order_id, cause, traceparent)| OverdueWaybill {
                waybill_id: WaybillId(waybill_id),
                order_id: OrderId(order_id),
                cause_event_id: EventId(cause),
                cause_traceparent: traceparent,
            },
        )
        .collect())
}

/// A courier as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Courier {
    pub courier_id: CourierId,
    pub position: GeoPoint,
    pub live_waybills: i32,
}

fn courier_row((id, lat, lon, live): (String, f64, f64, i32)) -> Result<Courier> {
    Ok(Courier {
        courier_id: courier_id(&id)?,
        position: point(lat, lon)?,
        live_waybills: live,
    })
}

/// Creates the courier or moves it; the row stays locked until the transaction ends.
/// `capacity` is the configured capacity (the stored one only rises to it). In the same
/// statement (one round trip), the planar distance from `origin` to the nearest waiting waybill
/// whose deadline is after `now`, if any (not locked: see [`nearest_waiting`]).
pub async fn upsert_courier(
    conn: &mut PgConnection,
    courier_id: &CourierId,
    position: &GeoPoint,
    cell: i64,
    capacity: i32,
    origin: PlanePoint,
    now: DateTime<Utc>,
) -> Result<(Courier, Option<f64>)> {
    let (id, lat, lon, live, nearest_waiting): (String, f64, f64, i32, Option<f64>) =
        sqlx::query_as(
            "WITH moved AS (
                 INSERT INTO couriers (courier_id, lat, lon, cell, capacity)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (courier_id) DO UPDATE
                     SET lat = EXCLUDED.lat, lon = EXCLUDED.lon, cell = EXCLUDED.cell,
                         capacity = greatest(couriers.capacity, EXCLUDED.capacity),
                         updated_at = now()
                 RETURNING courier_id, lat, lon, live_waybills
             )
             SELECT courier_id, lat, lon, live_waybills,
                    (SELECT pickup_plane <-> point($6, $7) FROM waybills
                     WHERE status = 'waiting' AND deadline > $8
                     ORDER BY pickup_plane <-> point($6, $7)
                     LIMIT 1)
             FROM moved",
        )
        .bind(courier_id.as_str())
        .bind(position.lat)
        .bind(position.lon)
        .bind(cell)
        .bind(capacity)
        .bind(origin.x)
        .bind(origin.y)
        .bind(now)
        .fetch_one(conn)
        .await?;
    Ok((courier_row((id, lat, lon, live))?, nearest_waiting))
}

/// A courier position to store in bulk ([`put_couriers`]).
#[derive(Debug, Clone)]
pub struct CourierRow {
    pub courier_id: CourierId,
    pub position: GeoPoint,
    pub cell: i64,
}

/// Creates or moves many couriers in one statement (for benchmarks and load tests); their
/// capacity counts are kept. `capacity` is the configured capacity.
pub async fn put_couriers(
    conn: &mut PgConnection,
    couriers: &[CourierRow],
    capacity: i32,
) -> Result<()> {
    let ids: Vec<&str> = couriers.iter().map(|c| c.courier_id.as_str()).collect();
    let lats: Vec<f64> = couriers.iter().map(|c| c.position.lat).collect();
    let lons: Vec<f64> = couriers.iter().map(|c| c.position.lon).collect();
    let cells: Vec<i64> = couriers.iter().map(|c| c.cell).collect();
    sqlx::query(
        "INSERT INTO couriers (courier_id, lat, lon, cell, capacity)
         SELECT *, $5 FROM unnest($1::text[], $2::float8[], $3::float8[], $4::bigint[])
         ON CONFLICT (courier_id) DO UPDATE
             SET lat = EXCLUDED.lat, lon = EXCLUDED.lon, cell = EXCLUDED.cell,
                 capacity = greatest(couriers.capacity, EXCLUDED.capacity), updated_at = now()",
    )
    .bind(ids)
    .bind(lats)
    .bind(lons)
    .bind(cells)
    .bind(capacity)
    .execute(conn)
    .await?;
    Ok(())
}

/// The courier, if it ever reported.
pub async fn find_courier(
    db: impl PgExecutor<'_>,
    courier_id: &CourierId,
) -> Result<Option<Courier>> {
    let row: Option<(String, f64, f64, i32)> = sqlx::query_as(
        "SELECT courier_id, lat, lon, live_waybills FROM couriers WHERE courier_id = $1",
    )
    .bind(courier_id.as_str())
    .fetch_optional(db)
    .await?;
    row.map(courier_row).transpose()
}

/// A waiting waybill offered to a courier, with what its `courier_assigned` event needs.
#[derive(Debug, Clone)]
pub struct WaitingRow {
    pub waybill: WaitingWaybill,
    pub order_id: OrderId,
    pub cause_traceparent: Option<String>,
}

/// Waiting waybills in `area` whose deadline is after `now`, locked; rows another transaction
/// holds are skipped (being failed, cancelled or offered to another courier).
pub async fn waiting_in_area(
    conn: &mut PgConnection,
    area: &SearchArea,
    now: DateTime<Utc>,
) -> Result<Vec<WaitingRow>> {
    type Row = (Uuid, Uuid, f64, f64, DateTime<Utc>, Option<String>);
    let rows: Vec<Row> =
        match area {
            SearchArea::Cells(cells) => sqlx::query_as(
                "SELECT waybill_id, order_id, pickup_lat, pickup_lon, deadline, cause_traceparent
                 FROM waybills
                 WHERE status = 'waiting' AND pickup_cell = ANY($1) AND deadline > $2
                 FOR UPDATE SKIP LOCKED",
            )
            .bind(cells)
            .bind(now)
            .fetch_all(conn)
            .await?,
            SearchArea::Everywhere => sqlx::query_as(
                "SELECT waybill_id, order_id, pickup_lat, pickup_lon, deadline, cause_traceparent
                 FROM waybills
                 WHERE status = 'waiting' AND deadline > $1
                 FOR UPDATE SKIP LOCKED",
            )
            .bind(now)
            .fetch_all(conn)
            .await?,
        };
    rows.into_iter()
        .map(|(waybill_id, order_id, lat, lon, deadline, traceparent)| {
            waiting_row(waybill_id, order_id, (lat, lon), deadline, traceparent)
        })
        .collect()
}

/// A waiting waybill as read from its row.
fn waiting_row(
    waybill_id: Uuid,
    order_id: Uuid,
    (lat, lon): (f64, f64),
    deadline: DateTime<Utc>,
    cause_traceparent: Option<String>,
) -> Result<WaitingRow> {
    Ok(WaitingRow {
        waybill: WaitingWaybill {
            waybill_id: WaybillId(waybill_id),
            pickup: point(lat, lon)?,
            deadline,
        },
        order_id: OrderId(order_id),
        cause_traceparent,
    })
}

/// Up to `limit` waiting waybills whose deadline is after `now`, nearest to `origin` on the
/// plane first, each with its planar distance; locked, skipping rows another transaction holds
/// (like [`waiting_in_area`]). A KNN scan of the partial GiST index `waybills_waiting_nearest`.
pub async fn nearest_waiting(
    conn: &mut PgConnection,
    origin: PlanePoint,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(WaitingRow, f64)>> {
    type Row = (Uuid, Uuid, f64, f64, DateTime<Utc>, Option<String>, f64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT waybill_id, order_id, pickup_lat, pickup_lon, deadline, cause_traceparent,
                pickup_plane <-> point($1, $2)
         FROM waybills
         WHERE status = 'waiting' AND deadline > $3
         ORDER BY pickup_plane <-> point($1, $2)
         LIMIT $4
         FOR UPDATE SKIP LOCKED",
    )
    .bind(origin.x)
    .bind(origin.y)
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(
            |(waybill_id, order_id, lat, lon, deadline, traceparent, planar)| {
                Ok((
                    waiting_row(waybill_id, order_id, (lat, lon), deadline, traceparent)?,
                    planar,
                ))
            },
        )
        .collect()
}

/// Assigns a waiting (locked) waybill to `courier_id`; false if it was no longer waiting.
pub async fn assign_waiting(
    conn: &mut PgConnection,
    waybill_id: WaybillId,
    courier_id: &CourierId,
    distance_km: f64,
) -> Result<bool> {
    let updated = sqlx::query(
        "UPDATE waybills
         SET status = 'assigned', courier_id = $2, distance_km = $3, updated_at = now()
         WHERE waybill_id = $1 AND status = 'waiting'",
    )
    .bind(waybill_id.0)
    .bind(courier_id.as_str())
    .bind(distance_km)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Adds `count` live waybills to the courier unless that would exceed `capacity`; the new
/// count, or `None` if refused.
pub async fn add_live_waybills(
    conn: &mut PgConnection,
    courier_id: &CourierId,
    count: i32,
    capacity: i32,
) -> Result<Option<i32>> {
    Ok(sqlx::query_scalar(
        "UPDATE couriers SET live_waybills = live_waybills + $2
         WHERE courier_id = $1 AND live_waybills + $2 <= $3
         RETURNING live_waybills",
    )
    .bind(courier_id.as_str())
    .bind(count)
    .bind(capacity)
    .fetch_optional(conn)
    .await?)
}

/// A waybill as the delivery endpoint sees it.
#[derive(Debug, Clone)]
pub struct LockedWaybill {
    pub order_id: OrderId,
    pub status: WaybillStatus,
    pub courier_id: Option<CourierId>,
    pub cause_traceparent: Option<String>,
}

/// The waybill, row locked.
pub async fn lock_waybill(
    conn: &mut PgConnection,
    waybill_id: WaybillId,
) -> Result<Option<LockedWaybill>> {
    let row: Option<(Uuid, String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT order_id, status, courier_id, cause_traceparent
         FROM waybills WHERE waybill_id = $1 FOR UPDATE",
    )
    .bind(waybill_id.0)
    .fetch_optional(conn)
    .await?;
    row.map(|(order_id, text, courier, traceparent)| {
        Ok(LockedWaybill {
            order_id: OrderId(order_id),
            status: status(&text)?,
            courier_id: courier.as_deref().map(courier_id).transpose()?,
            cause_traceparent: traceparent,
        })
    })
    .transpose()
}

/// Marks an assigned (locked) waybill delivered; false if it was not assigned.
pub async fn mark_delivered(conn: &mut PgConnection, waybill_id: WaybillId) -> Result<bool> {
    let updated = sqlx::query(
        "UPDATE waybills SET status = 'delivered', updated_at = now()
         WHERE waybill_id = $1 AND status = 'assigned'",
    )
    .bind(waybill_id.0)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Gives back one unit of the courier's capacity; the courier (row locked), or `None` if it
/// held none.
pub async fn release_capacity(
    conn: &mut PgConnection,
    courier_id: &CourierId,
) -> Result<Option<Courier>> {
    let row: Option<(String, f64, f64, i32)> = sqlx::query_as(
        "UPDATE couriers SET live_waybills = live_waybills - 1
         WHERE courier_id = $1 AND live_waybills > 0
         RETURNING courier_id, lat, lon, live_waybills",
    )
    .bind(courier_id.as_str())
    .fetch_optional(conn)
    .await?;
    row.map(courier_row).transpose()
}
