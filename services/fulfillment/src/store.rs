//! Fulfillment's SQL: reading, locking, creating and updating waybills.

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
    let row: Option<WaybillRow> = sqlx::query_as(
        "SELECT waybill_id, order_id, status, courier_id FROM waybills
         WHERE order_id = $1 FOR UPDATE",
    )
    .bind(order_id.0)
    .fetch_optional(conn)
    .await?;
    row.map(Waybill::try_from).transpose()
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

/// Inserts a new `open` waybill unless the order already has one; true if it was inserted.
pub async fn insert_open(
    conn: &mut PgConnection,
    waybill_id: WaybillId,
    order_id: OrderId,
    pickup: GeoPoint,
    dropoff: GeoPoint,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO waybills
             (waybill_id, order_id, status, pickup_lat, pickup_lon, dropoff_lat, dropoff_lon)
         VALUES ($1, $2, 'open', $3, $4, $5, $6)
         ON CONFLICT DO NOTHING",
    )
    .bind(waybill_id.0)
    .bind(order_id.0)
    .bind(pickup.lat)
    .bind(pickup.lon)
    .bind(dropoff.lat)
    .bind(dropoff.lon)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
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

/// Moves a locked waybill from `from` to `to`, recording `courier_id` when given (an existing
/// courier id is kept otherwise). True if the row was in `from`.
pub async fn transition(
    conn: &mut PgConnection,
    waybill_id: WaybillId,
    from: WaybillStatus,
    to: WaybillStatus,
    courier_id: Option<&CourierId>,
) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE waybills
         SET status = $3, courier_id = COALESCE($4, courier_id), updated_at = now()
         WHERE waybill_id = $1 AND status = $2",
    )
    .bind(waybill_id.0)
    .bind(from.as_str())
    .bind(to.as_str())
    .bind(courier_id.map(CourierId::as_str))
    .execute(conn)
    .await?
    .rows_affected();
    Ok(updated == 1)
}
