//! Find-and-reserve of the nearest available courier, as the `waybill_created` handler does it
//! (matching-area locks, the search, the conditional capacity update), with 1 000 and with
//! 100 000 available couriers within the dispatch radius of the pickups, against a real
//! PostgreSQL: the test kit's private cluster, or the server named by `JWL_TEST_DATABASE_URL`.
//!
//! Each population lives in a fresh database. Every iteration runs in its own transaction, and
//! only the reservation is timed; the transaction is rolled back afterwards, so the population
//! stays the same throughout. Pickups cycle through points within 200 m of the centre; couriers
//! lie uniformly within 4.5 km of it, so all of them are within the 5 km radius of every pickup.
//!
//! ```text
//! cargo bench -p jwl-dispatch --bench nearest
//! ```

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use jwl_dispatch::{SCHEMA, bench};
use jwl_events::{CourierId, GeoPoint};
use jwl_service_kit::Settings;
use sqlx::PgPool;

/// The centre of the population (People's Square, Shanghai).
const CENTRE: (f64, f64) = (31.2304, 121.4737);
/// Couriers lie within this distance of the centre.
const SPREAD_KM: f64 = 4.5;
/// Pickups lie within this distance of the centre.
const PICKUP_SPREAD_KM: f64 = 0.2;
const PICKUPS: usize = 64;
const KM_PER_DEGREE: f64 = 111.195;

/// A point uniformly distributed within `radius_km` of the centre.
fn point_within(random: &mut StdRng, radius_km: f64) -> GeoPoint {
    let r = radius_km * random.random::<f64>().sqrt();
    let theta = std::f64::consts::TAU * random.random::<f64>();
    let (north, east) = (r * theta.sin(), r * theta.cos());
    let lat = CENTRE.0 + north / KM_PER_DEGREE;
    let lon = CENTRE.1 + east / (KM_PER_DEGREE * CENTRE.0.to_radians().cos());
    GeoPoint::new(lat, lon).expect("a point near the centre is valid")
}

/// A fresh database holding `count` available couriers around the centre.
async fn population(count: usize, settings: &Settings) -> anyhow::Result<PgPool> {
    let pool = jwl_testkit::service::schema_pool(SCHEMA).await?;
    jwl_dispatch::migrate(&pool).await?;
    let mut random = StdRng::seed_from_u64(count as u64);
    let couriers: Vec<(CourierId, GeoPoint)> = (0..count)
        .map(|i| {
            let id = CourierId::parse(&format!("bench-{i}"))?;
            Ok((id, point_within(&mut random, SPREAD_KM)))
        })
        .collect::<anyhow::Result<_>>()?;
    for chunk in couriers.chunks(10_000) {
        bench::put_couriers(&pool, chunk, settings).await?;
    }
    sqlx::query("VACUUM ANALYZE couriers")
        .execute(&pool)
        .await?;
    Ok(pool)
}

/// `iters` reservations, each in a transaction rolled back afterwards; the time spent in them.
async fn reserve(
    pool: &PgPool,
    pickups: &[GeoPoint],
    settings: &Settings,
    iters: u64,
) -> anyhow::Result<Duration> {
    let mut total = Duration::ZERO;
    for i in 0..iters {
        let pickup = &pickups[(i as usize) % pickups.len()];
        let mut tx = pool.begin().await?;
        let start = Instant::now();
        let reserved = bench::reserve_nearest(&mut tx, pickup, settings).await?;
        total += start.elapsed();
        tx.rollback().await?;
        anyhow::ensure!(reserved.is_some(), "no courier reserved near {pickup:?}");
    }
    Ok(total)
}

fn nearest(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let settings = Settings::default();
    let mut random = StdRng::seed_from_u64(7);
    let pickups: Vec<GeoPoint> = (0..PICKUPS)
        .map(|_| point_within(&mut random, PICKUP_SPREAD_KM))
        .collect();

    let mut group = c.benchmark_group("find_and_reserve_nearest");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    for count in [1_000usize, 100_000] {
        let pool = runtime
            .block_on(population(count, &settings))
            .expect("populating the benchmark database");
        group.bench_with_input(
            BenchmarkId::new("available_couriers", count),
            &count,
            |b, _| {
                b.iter_custom(|iters| {
                    runtime
                        .block_on(reserve(&pool, &pickups, &settings, iters))
                        .expect("reserving the nearest courier")
                });
            },
        );
        runtime.block_on(pool.close());
    }
    group.finish();
}

criterion_group!(benches, nearest);
criterion_main!(benches);
