//! Fulfillment's SQL: reading, locking, creating and updating waybills.

use std::collections::HashMap;

use jwl_events::{CourierId, GeoPoint, OrderId, WaybillId};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::domain::WaybillStatus;

/// Why a stored row could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A status the migration's CHECK constraint should have made impossible.
    #[error("waybill {waybill_id} has an unknown status {status:?}")]
    UnknownStatus { waybill_id: Uuid, status: String },
}

/// A waybill as the handler and the API see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Waybill {
    pub waybill_id: WaybillId,
    pub order_id: OrderId,
    pub status: WaybillStatus,
    pub courier_id: Option<String>,
}

#[derive(sqlx::FromRow)]
struct WaybillRow {
    waybill_id: Uuid,
    order_id: Uuid,
    status: String,
    courier_id: Option<String>,
}

impl TryFrom<WaybillRow> for Waybill {
    type Error = StoreError;
    fn try_from(row: WaybillRow) -> Result<Self, StoreError> {
        let status = WaybillStatus::parse(&row.status).ok_or(StoreError::UnknownStatus {
            waybill_id: row.waybill_id,
            status: row.status.clone(),
        })?;
        Ok(Waybill {
            waybill_id: WaybillId(row.waybill_id),
            order_id: OrderId(row.order_id),
            status,
            courier_id: row.courier_id,
        })
    }
}

/// The waybill of `order_id`, locked for the rest of the transaction.
pub async fn lock_by_order(
    conn: &mut PgConnection,
    order_id: OrderId,
) -> Result<Option<Waybill>, StoreError> {
    Ok(lock_by_orders(conn, &[order_id]).await?.remove(&order_id))
}

/// The waybills of `orders` that exist, by order, locked for the rest of the transaction (in
/// order id order, so two transactions locking overlapping sets never wait on each other in a
/// cycle).
pub async fn lock_by_orders(
    conn: &mut PgConnection,
    orders: &[OrderId],
) -> Result<HashMap<OrderId, Waybill>, StoreError> {
    let ids: Vec<Uuid> = orders.iter().map(|order| order.0).collect();
    let rows: Vec<WaybillRow> = sqlx::query_as(
        "SELECT waybill_id, order_id, status, courier_id FROM waybills
         WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|row| Waybill::try_from(row).map(|waybill| (waybill.order_id, waybill)))
        .collect()
}

/// The waybill `waybill_id` (for the API).
pub async fn find(
    db: impl PgExecutor<'_>,
    waybill_id: WaybillId,
) -> Result<Option<Waybill>, StoreError> {
    let row: Option<WaybillRow> = sqlx::query_as(
        "SELECT waybill_id, order_id, status, courier_id FROM waybills WHERE waybill_id = $1",
    )
    .bind(waybill_id.0)
    .fetch_optional(db)
    .await?;
    row.map(Waybill::try_from).transpose()
}

/// A waybill to create, `open`.
#[derive(Debug, Clone, Copy)]
pub struct NewWaybill {
    pub waybill_id: WaybillId,
    pub order_id: OrderId,
    pub pickup: GeoPoint,
    pub dropoff: GeoPoint,
}

/// Inserts new `open` waybills in one statement, each unless its order already has one; how
/// many were inserted.
pub async fn insert_open(
    conn: &mut PgConnection,
    waybills: &[NewWaybill],
) -> Result<u64, StoreError> {
    let column = |f: fn(&NewWaybill) -> f64| waybills.iter().map(f).collect::<Vec<f64>>();
    let inserted = sqlx::query(
        "INSERT INTO waybills
             (waybill_id, order_id, status, pickup_lat, pickup_lon, dropoff_lat, dropoff_lon)
         SELECT waybill_id, order_id, 'open', pickup_lat, pickup_lon, dropoff_lat, dropoff_lon
         FROM unnest($1::uuid[], $2::uuid[], $3::float8[], $4::float8[], $5::float8[],
                     $6::float8[])
              AS w(waybill_id, order_id, pickup_lat, pickup_lon, dropoff_lat, dropoff_lon)
         ON CONFLICT DO NOTHING",
    )
    .bind(
        waybills
            .iter()
            .map(|w| w.waybill_id.0)
            .collect::<Vec<Uuid>>(),
    )
    .bind(waybills.iter().map(|w| w.order_id.0).collect::<Vec<Uuid>>())
    .bind(column(|w| w.pickup.lat))
    .bind(column(|w| w.pickup.lon))
    .bind(column(|w| w.dropoff.lat))
    .bind(column(|w| w.dropoff.lon))
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted)
}

/// Inserts a `cancelled` tombstone without addresses unless the order or id already has a
/// waybill; true if it was inserted.
pub async fn insert_tombstone(
    conn: &mut PgConnection,
    waybill_id: WaybillId,
    order_id: OrderId,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO waybills (waybill_id, order_id, status)
         VALUES ($1, $2, 'cancelled')
         ON CONFLICT DO NOTHING",
    )
    .bind(waybill_id.0)
    .bind(order_id.0)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Fills in the addresses of a tombstone that has none yet.
pub async fn complete_tombstone(
    conn: &mut PgConnection,
    waybill_id: WaybillId,
    pickup: GeoPoint,
    dropoff: GeoPoint,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE waybills
         SET pickup_lat = $2, pickup_lon = $3, dropoff_lat = $4, dropoff_lon = $5,
             updated_at = now()
         WHERE waybill_id = $1 AND pickup_lat IS NULL",
    )
    .bind(waybill_id.0)
    .bind(pickup.lat)
    .bind(pickup.lon)
    .bind(dropoff.lat)
    .bind(dropoff.lon)
    .execute(conn)
    .await?;
    Ok(())
}

/// A locked waybill's move from `from` to `to`, recording `courier_id` when given (an
/// existing courier id is kept otherwise).
#[derive(Debug, Clone, Copy)]
pub struct Move<'a> {
    pub waybill_id: WaybillId,
    pub from: WaybillStatus,
    pub to: WaybillStatus,
    pub courier_id: Option<&'a CourierId>,
}

/// Applies `moves` in one statement, each only if its waybill is still in `from`; how many
/// were applied.
pub async fn transition(conn: &mut PgConnection, moves: &[Move<'_>]) -> Result<u64, StoreError> {
    let updated = sqlx::query(
        "UPDATE waybills
         SET status = m.to_status, courier_id = COALESCE(m.courier_id, waybills.courier_id),
             updated_at = now()
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[])
              AS m(waybill_id, from_status, to_status, courier_id)
         WHERE waybills.waybill_id = m.waybill_id AND waybills.status = m.from_status",
    )
    .bind(moves.iter().map(|m| m.waybill_id.0).collect::<Vec<Uuid>>())
    .bind(moves.iter().map(|m| m.from.as_str()).collect::<Vec<&str>>())
    .bind(moves.iter().map(|m| m.to.as_str()).collect::<Vec<&str>>())
    .bind(
        moves
            .iter()
            .map(|m| m.courier_id.map(CourierId::as_str))
            .collect::<Vec<Option<&str>>>(),
    )
    .execute(conn)
    .await?
    .rows_affected();
    Ok(updated)
}
