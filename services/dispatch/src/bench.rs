//! Hooks for the benchmarks and load tests in `benches/` and `tests/` (not the service's API,
//! hidden from its docs): bulk-load couriers, and run the nearest-courier reservation that the
//! `waybill_created` handler runs, on a caller's connection (and so inside its transaction).

use jwl_events::{CourierId, GeoPoint};
use jwl_service_kit::Settings;
use sqlx::{PgConnection, PgPool};

use crate::{dispatcher, domain, store};

/// Stores `couriers` at their positions (created or moved), all in one statement, without
/// offering them waiting waybills.
pub async fn put_couriers(
    pool: &PgPool,
    couriers: &[(CourierId, GeoPoint)],
    settings: &Settings,
) -> anyhow::Result<()> {
    let mut rows = Vec::with_capacity(couriers.len());
    for (id, position) in couriers {
        rows.push(store::CourierRow {
            courier_id: id.clone(),
            position: *position,
            cell: domain::cell_of(position)?,
        });
    }
    let mut conn = pool.acquire().await?;
    store::put_couriers(&mut conn, &rows, dispatcher::capacity(settings)).await?;
    Ok(())
}

/// Finds the nearest available courier within the radius of `pickup` and takes one unit of its
/// capacity, as the `waybill_created` handler does: the courier and its distance in km.
pub async fn reserve_nearest(
    conn: &mut PgConnection,
    pickup: &GeoPoint,
    settings: &Settings,
) -> anyhow::Result<Option<(CourierId, f64)>> {
    Ok(dispatcher::reserve_nearest(conn, pickup, settings)
        .await?
        .map(|courier| (courier.courier_id, courier.distance_km)))
}
