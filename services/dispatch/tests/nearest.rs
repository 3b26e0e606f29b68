//! The nearest-neighbour search: exactly the nearest available courier within the radius, as a
//! scan of every courier would find it, whatever the density, capacity and place on the globe
//! (including where the search falls back to cells); waiting waybills offered to a courier
//! nearest first beyond the first batch; and the migration that brings the index to an
//! existing database.

mod common;

use common::*;
use jwl_dispatch::bench;
use jwl_events::{CourierId, GeoPoint};
use jwl_service_kit::Settings;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sqlx::migrate::Migrator;

/// The first migration's version: the schema before the planar indexes.
const BEFORE_NEAREST: i64 = 20260301000000;

static MIGRATOR: Migrator = sqlx::migrate!();

/// Within ±`km` east and north of `centre`, wrapping around the antimeridian.
fn near(random: &mut StdRng, centre: &GeoPoint, km: f64) -> GeoPoint {
    let north = (random.random::<f64>() * 2.0 - 1.0) * km;
    let east = (random.random::<f64>() * 2.0 - 1.0) * km;
    let lat = (centre.lat + north / 111.195).clamp(-90.0, 90.0);
    let lon = centre.lon + east / (111.195 * centre.lat.to_radians().cos().max(0.01));
    let lon = (lon + 540.0).rem_euclid(360.0) - 180.0;
    GeoPoint::new(lat, lon).unwrap()
}

/// The nearest courier with spare capacity within the radius by brute force (ties by id).
async fn expected_nearest(
    h: &Harness,
    pickup: &GeoPoint,
    settings: &Settings,
) -> anyhow::Result<Option<(String, f64)>> {
    let rows: Vec<(String, f64, f64)> =
        sqlx::query_as("SELECT courier_id, lat, lon FROM couriers WHERE live_waybills < $1")
            .bind(settings.courier_capacity as i32)
            .fetch_all(&h.pool)
            .await?;
    let mut best: Option<(String, f64)> = None;
    for (id, lat, lon) in rows {
        let distance = pickup.distance_km(&GeoPoint::new(lat, lon)?);
        if distance > settings.dispatch_radius_km {
            continue;
        }
        let better = match &best {
            None => true,
            Some((best_id, best_distance)) => {
                distance < *best_distance || (distance == *best_distance && id < *best_id)
            }
        };
        if better {
            best = Some((id, distance));
        }
    }
    Ok(best)
}

/// Couriers around `centre`, about a third of them full, and pickups among them; every pickup's
/// reservation (rolled back) must be the brute-force nearest.
async fn check_places(
    h: &Harness,
    settings: &Settings,
    centres: &[GeoPoint],
    spread_km: f64,
) -> anyhow::Result<()> {
    let mut random = StdRng::seed_from_u64(42);
    let mut couriers = Vec::new();
    for centre in centres {
        let c = format!(
            "{}x{}",
            (centre.lat * 100.0) as i64,
            (centre.lon * 100.0) as i64
        );
        for i in 0..400 {
            let id = CourierId::parse(&format!("c{c}-{i:03}"))?;
            couriers.push((id, near(&mut random, centre, spread_km)));
        }
        // a cluster at one spot: equal distances, broken by id
        for i in 0..12 {
            let id = CourierId::parse(&format!("same{c}-{i:02}"))?;
            couriers.push((id, near(&mut random, centre, 0.0)));
        }
    }
    bench::put_couriers(&h.pool, &couriers, settings).await?;
    sqlx::query("UPDATE couriers SET live_waybills = $1 WHERE hashtext(courier_id) % 3 = 0")
        .bind(settings.courier_capacity as i32)
        .execute(&h.pool)
        .await?;
    for centre in centres {
        let mut pickups: Vec<GeoPoint> = (0..25)
            .map(|_| near(&mut random, centre, spread_km))
            .collect();
        pickups.push(*centre);
        for pickup in pickups {
            let expected = expected_nearest(h, &pickup, settings).await?;
            let mut tx = h.pool.begin().await?;
            let reserved = bench::reserve_nearest(&mut tx, &pickup, settings).await?;
            tx.rollback().await?;
            match (&reserved, &expected) {
                (Some((id, distance)), Some((expected_id, expected_distance))) => {
                    assert_eq!(
                        (id.as_str(), *distance),
                        (expected_id.as_str(), *expected_distance),
                        "pickup {pickup:?}"
                    );
                }
                (None, None) => {}
                _ => panic!("pickup {pickup:?}: reserved {reserved:?}, expected {expected:?}"),
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_reserved_courier_is_the_nearest_available_one_in_the_radius() -> anyhow::Result<()> {
    let settings = Settings {
        dispatch_radius_km: 2.0,
        courier_capacity: 2,
        ..Settings::default()
    };
    let h = Harness::with_settings(settings.clone()).await?;
    // a dense city, a sparse one (most pickups have nobody in range), high latitude (Tromsø),
    // and places searched by cells: the antimeridian (Taveuni, Fiji) and near the pole
    let centres = [
        point((31.2304, 121.4737)),
        point((-33.87, 151.21)),
        point((69.65, 18.96)),
        point((-16.8, 179.995)),
        point((79.5, 10.0)),
    ];
    check_places(&h, &settings, &centres[..1], 1.5).await?;
    check_places(&h, &settings, &centres[1..2], 8.0).await?;
    check_places(&h, &settings, &centres[2..], 2.5).await?;
    Ok(())
}

#[tokio::test]
async fn a_courier_takes_the_nearest_waiting_waybills_beyond_the_first_batch() -> anyhow::Result<()>
{
    let h = Harness::with_settings(Settings {
        courier_capacity: 12,
        ..Settings::default()
    })
    .await?;
    // 30 waiting waybills at 0.1, 0.2, … 3.0 km, and 5 beyond the 5 km radius
    let mut by_distance = Vec::new();
    for step in (1..=30).rev() {
        let event = waybill_created(km_east(f64::from(step) * 0.1));
        assert!(h.emitted(&event).await?.is_empty());
        by_distance.push(created(&event).waybill_id);
    }
    by_distance.reverse();
    for step in 0..5 {
        assert!(
            h.emitted(&waybill_created(km_east(6.0 + f64::from(step))))
                .await?
                .is_empty()
        );
    }
    let body = h.report("c1", km_east(0.0)).await;
    assert_eq!(body["assigned"], json!(by_distance[..12]));
    assert_eq!(body["live_waybills"], 12);
    Ok(())
}

#[tokio::test]
async fn an_existing_database_gets_the_index_and_keeps_matching() -> anyhow::Result<()> {
    let pool = jwl_testkit::service::schema_pool(jwl_dispatch::SCHEMA).await?;
    jwl_outbox::migrate(&pool).await?;
    let mut before = Migrator::with_migrations(
        MIGRATOR
            .iter()
            .filter(|migration| migration.version == BEFORE_NEAREST)
            .cloned()
            .collect(),
    );
    before.set_ignore_missing(true);
    before.run(&pool).await?;
    // rows as the previous version stored them (cells are not used by the planar search)
    let (near, far) = (km_east(0.5), km_east(1.5));
    for (id, (lat, lon), live) in [
        ("near", near, 1),
        ("far", far, 0),
        ("idle", km_east(3.0), 0),
    ] {
        sqlx::query(
            "INSERT INTO couriers (courier_id, lat, lon, cell, live_waybills) VALUES ($1, $2, $3, 0, $4)",
        )
        .bind(id)
        .bind(lat)
        .bind(lon)
        .bind(live)
        .execute(&pool)
        .await?;
    }
    let waiting = waybill_created(km_east(-0.2));
    let waiting_id = created(&waiting).waybill_id;
    sqlx::query(
        "INSERT INTO waybills (waybill_id, order_id, pickup_lat, pickup_lon, pickup_cell, status,
                               deadline, cause_event_id)
         VALUES ($1, $2, $3, $4, 0, 'waiting', now() + interval '1 hour', $5)",
    )
    .bind(waiting_id.0)
    .bind(created(&waiting).order_id.0)
    .bind(created(&waiting).pickup.lat)
    .bind(created(&waiting).pickup.lon)
    .bind(waiting.id.0)
    .execute(&pool)
    .await?;
    // the upgrade: the harness runs every migration on this database
    let h = Harness::on_pool(pool, Settings::default()).await?;
    let (x, y): (f64, f64) =
        sqlx::query_as("SELECT plane[0], plane[1] FROM couriers WHERE courier_id = 'far'")
            .fetch_one(&h.pool)
            .await?;
    assert!((x - far.1.to_radians()).abs() < 1e-12, "{x}");
    assert!((y - far.0.to_radians().tan().asinh()).abs() < 1e-12, "{y}");
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE indexname LIKE '%\\_nearest' ORDER BY 1",
    )
    .fetch_all(&h.pool)
    .await?;
    assert_eq!(
        indexes,
        ["couriers_available_nearest", "waybills_waiting_nearest"]
    );

    // the waybill that was waiting before is offered to a courier reporting next to it…
    let body = h.report("idle", km_east(-0.1)).await;
    assert_eq!(body["assigned"], json!([waiting_id]));
    // …and a new waybill goes to the nearest courier with capacity left
    let emitted = h.emitted(&waybill_created(PICKUP)).await?;
    match emitted.as_slice() {
        [jwl_events::EventData::CourierAssigned(assigned)] => {
            assert_eq!(assigned.courier_id.as_str(), "far");
        }
        other => panic!("{other:?}"),
    }
    Ok(())
}
