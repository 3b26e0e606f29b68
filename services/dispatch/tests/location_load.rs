//! A load generator for courier location updates (`PUT /v1/couriers/{id}/location`), ignored by
//! default: it measures, it checks nothing but that every update succeeds. It serves dispatch's
//! routes behind the real HTTP edge on a loopback port, as its tests build them (a fresh
//! database in the test kit's private PostgreSQL, or in `JWL_TEST_DATABASE_URL`), and keeps
//! `JWL_LOAD_CONCURRENCY` (default 32) keep-alive connections busy for `JWL_LOAD_SECONDS`
//! (default 10) with updates of `JWL_LOAD_COURIERS` (default 1 000) couriers around one point,
//! each moving a few metres at a time (a random walk), then prints the rate.
//!
//! Couriers start within `JWL_LOAD_SPREAD_KM` (default 4) east and north of the pickup. By
//! default no waybill waits, so each update stores the position and finds nothing to take: the
//! steady state of a city where couriers report every few seconds. `JWL_LOAD_WAITING=N` first
//! leaves N waybills waiting on a ring 6.3 to 6.5 km from the pickup, out of every courier's
//! 5 km radius when the spread is at most 0.5 km but inside the cells a cell search scans: a
//! district short of couriers next to one with idle couriers.
//!
//! ```text
//! cargo test --release -p jwl-dispatch --test location_load -- --ignored --nocapture
//! JWL_LOAD_SPREAD_KM=0.5 JWL_LOAD_WAITING=200 cargo test --release -p jwl-dispatch \
//!     --test location_load -- --ignored --nocapture
//! ```

mod common;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use jwl_events::CourierId;
use jwl_service_kit::Settings;
use jwl_service_kit::auth::Scope;
use tokio_util::sync::CancellationToken;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

/// Somewhere within ±`km` east and north of `(lat, lon)`.
fn near(random: &mut StdRng, (lat, lon): (f64, f64), km: f64) -> (f64, f64) {
    let north = (random.random::<f64>() * 2.0 - 1.0) * km;
    let east = (random.random::<f64>() * 2.0 - 1.0) * km;
    (
        lat + north / 111.195,
        lon + east / (111.195 * lat.to_radians().cos()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a load generator: run it by name, in release"]
async fn location_updates_per_second() -> anyhow::Result<()> {
    let seconds: u64 = env_or("JWL_LOAD_SECONDS", 10);
    let couriers: usize = env_or("JWL_LOAD_COURIERS", 1_000);
    let concurrency: usize = env_or("JWL_LOAD_CONCURRENCY", 32);
    let spread_km: f64 = env_or("JWL_LOAD_SPREAD_KM", 4.0);
    let waiting: usize = env_or("JWL_LOAD_WAITING", 0);
    let settings = Settings::default();
    let h = Harness::with_settings(settings.clone()).await?;

    let mut random = StdRng::seed_from_u64(1);
    for _ in 0..waiting {
        let bearing = std::f64::consts::TAU * random.random::<f64>();
        let km = 6.3 + 0.2 * random.random::<f64>();
        let pickup = (
            PICKUP.0 + km * bearing.cos() / 111.195,
            PICKUP.1 + km * bearing.sin() / (111.195 * PICKUP.0.to_radians().cos()),
        );
        h.handle(&waybill_created(pickup)).await?;
    }
    let mut positions = Vec::with_capacity(couriers);
    let mut seeded = Vec::with_capacity(couriers);
    for i in 0..couriers {
        let position = near(&mut random, PICKUP, spread_km);
        seeded.push((CourierId::parse(&format!("load-{i}"))?, point(position)));
        positions.push(position);
    }
    jwl_dispatch::bench::put_couriers(&h.pool, &seeded, &settings).await?;
    sqlx::query("VACUUM ANALYZE couriers")
        .execute(&h.pool)
        .await?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let server = tokio::spawn(jwl_service_kit::http::serve_on(
        listener,
        h.edge.router.clone(),
        stop.clone(),
    ));
    let token = h.token("load", &[Scope::Admin]);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;

    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        // each worker moves its own couriers, so no two updates of one courier overlap
        let mine: Vec<(usize, (f64, f64))> = positions
            .iter()
            .copied()
            .enumerate()
            .filter(|(i, _)| i % concurrency == worker)
            .collect();
        let (client, token, base, done) =
            (client.clone(), token.clone(), base.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut random = StdRng::seed_from_u64(worker as u64 + 100);
            let mut mine = mine;
            let mut next = 0;
            while Instant::now() < until && !mine.is_empty() {
                let slot = next % mine.len();
                let (i, position) = &mut mine[slot];
                next += 1;
                *position = near(&mut random, *position, 0.02);
                let reply = client
                    .put(format!("{base}/v1/couriers/load-{i}/location"))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({ "lat": position.0, "lon": position.1 }))
                    .send()
                    .await?;
                anyhow::ensure!(reply.status().is_success(), "{}", reply.status());
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let elapsed = started.elapsed();
    let updates = done.load(Ordering::Relaxed);
    println!(
        "location updates: {updates} in {:.1} s = {:.0}/s ({couriers} couriers within {spread_km} km, \
         {waiting} waybills waiting, {concurrency} connections)",
        elapsed.as_secs_f64(),
        updates as f64 / elapsed.as_secs_f64()
    );
    let still_waiting: i64 =
        sqlx::query_scalar("SELECT count(*) FROM waybills WHERE status = 'waiting'")
            .fetch_one(&h.pool)
            .await?;
    anyhow::ensure!(
        still_waiting == waiting as i64,
        "{still_waiting} of {waiting} waybills still waiting: some were in a courier's range"
    );
    stop.cancel();
    server.await??;
    Ok(())
}
