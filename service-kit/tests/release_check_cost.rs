//! What the release check of service pools costs (a ping bounded by the stall timeout each time
//! a connection goes back to the pool, on top of sqlx's own): one-statement queries, one at a
//! time, through a pool from `db::connect_with` against the same pool without the check, in
//! alternating rounds in one run; prints both rates and their ratio. A benchmark, not a test:
//! `cargo test -p jwl-service-kit --release --test release_check_cost -- --ignored --nocapture`

use std::time::{Duration, Instant};

use jwl_service_kit::db::{self, PoolSettings};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

const QUERIES_PER_ROUND: u32 = 3_000;
const ROUNDS: usize = 4;

/// Queries per second over one round.
async fn rate(pool: &PgPool) -> f64 {
    let started = Instant::now();
    for _ in 0..QUERIES_PER_ROUND {
        sqlx::query("SELECT 1").execute(pool).await.expect("query");
    }
    f64::from(QUERIES_PER_ROUND) / started.elapsed().as_secs_f64()
}

#[tokio::test]
#[ignore = "benchmark: run by hand with --ignored --nocapture"]
async fn release_check_cost() {
    let database = jwl_testkit::database().await.expect("test database");
    let settings = PoolSettings {
        max_connections: 1,
        stall_timeout: Duration::from_secs(30),
        ..PoolSettings::default()
    };
    let checked = db::connect_with(database.url(), "jwl_bench", &settings)
        .await
        .expect("service pool");
    let plain = PgPoolOptions::new()
        .max_connections(1)
        .connect(database.url())
        .await
        .expect("plain pool");
    let (mut with_check, mut without) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        without.push(rate(&plain).await);
        with_check.push(rate(&checked).await);
    }
    let median = |rates: &mut Vec<f64>| {
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    let (with_check, without) = (median(&mut with_check), median(&mut without));
    println!(
        "release check: {with_check:.0} queries/s with it, {without:.0} without, ratio {:.2}",
        with_check / without
    );
}
