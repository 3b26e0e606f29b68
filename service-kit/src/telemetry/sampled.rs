//! Metrics read at scrape time rather than recorded as things happen: the Tokio runtime's
//! workers, their busy time, alive tasks and global queue depth, and the size and idle
//! connections of every Postgres pool registered with [`watch_pool`].

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics::gauge;
use sqlx::PgPool;

/// Worker threads of the runtime serving `/metrics`.
pub const TOKIO_WORKERS: &str = "jwl_tokio_workers";
/// How busy the runtime's workers were since the previous scrape: busy (not parked) time over
/// wall time, averaged over workers, 0 to 1.
pub const TOKIO_WORKERS_BUSY_RATIO: &str = "jwl_tokio_workers_busy_ratio";
/// Tasks alive (spawned, not finished) on that runtime.
pub const TOKIO_ALIVE_TASKS: &str = "jwl_tokio_alive_tasks";
/// Tasks waiting in the runtime's global injection queue.
pub const TOKIO_GLOBAL_QUEUE_DEPTH: &str = "jwl_tokio_global_queue_depth";
/// Connections a pool holds (idle or in use), by pool.
pub const DB_POOL_CONNECTIONS: &str = "jwl_db_pool_connections";
/// Idle connections of a pool, by pool.
pub const DB_POOL_IDLE_CONNECTIONS: &str = "jwl_db_pool_idle_connections";
/// Most connections a pool may open, by pool.
pub const DB_POOL_MAX_CONNECTIONS: &str = "jwl_db_pool_max_connections";

/// Pools sampled at each scrape, by label. Closed pools are dropped at the next scrape.
static POOLS: OnceLock<Mutex<Vec<(String, PgPool)>>> = OnceLock::new();

fn pools() -> &'static Mutex<Vec<(String, PgPool)>> {
    POOLS.get_or_init(|| Mutex::new(Vec::new()))
}

/// Samples `pool` under `pool="<name>"` at every scrape of `/metrics` (use the schema name, so
/// the label set stays bounded). Registering a name again replaces the earlier pool.
pub fn watch_pool(name: &str, pool: PgPool) {
    let mut pools = pools()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    pools.retain(|(existing, _)| existing != name);
    pools.push((name.to_owned(), pool));
}

/// Sets every sampled gauge to its current value.
pub(crate) fn sample() {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let runtime = runtime.metrics();
        gauge!(TOKIO_WORKERS).set(runtime.num_workers() as f64);
        gauge!(TOKIO_ALIVE_TASKS).set(runtime.num_alive_tasks() as f64);
        gauge!(TOKIO_GLOBAL_QUEUE_DEPTH).set(runtime.global_queue_depth() as f64);
        let busy: Duration = (0..runtime.num_workers())
            .map(|worker| runtime.worker_total_busy_duration(worker))
            .sum();
        if let Some(ratio) = busy_ratio_since_last_scrape(busy, runtime.num_workers()) {
            gauge!(TOKIO_WORKERS_BUSY_RATIO).set(ratio);
        }
    }
    let mut pools = pools()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    pools.retain(|(_, pool)| !pool.is_closed());
    for (name, pool) in pools.iter() {
        gauge!(DB_POOL_CONNECTIONS, "pool" => name.clone()).set(f64::from(pool.size()));
        gauge!(DB_POOL_IDLE_CONNECTIONS, "pool" => name.clone()).set(pool.num_idle() as f64);
        gauge!(DB_POOL_MAX_CONNECTIONS, "pool" => name.clone())
            .set(f64::from(pool.options().get_max_connections()));
    }
}

/// The runtime's total busy time at the previous scrape, and when that was.
static LAST_BUSY: Mutex<Option<(Instant, Duration)>> = Mutex::new(None);

/// Busy time since the previous scrape over the wall time since then, per worker (clamped to
/// 0..=1); `None` at the first scrape.
fn busy_ratio_since_last_scrape(total_busy: Duration, workers: usize) -> Option<f64> {
    let now = Instant::now();
    let mut last = LAST_BUSY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let previous = last.replace((now, total_busy));
    let (then, busy_then) = previous?;
    let wall = now.duration_since(then).as_secs_f64() * workers.max(1) as f64;
    (wall > 0.0).then(|| {
        let busy = total_busy.saturating_sub(busy_then).as_secs_f64();
        (busy / wall).clamp(0.0, 1.0)
    })
}
