//! Scenario 6 of issue 3: one service (inventory) cut off from NATS for 5 s under load and
//! restored, then cut off from PostgreSQL for 5 s and restored, each through a TCP proxy of the
//! harness ([`jwl_e2e::Proxy`]). Every order must end, the service must come back by itself
//! (no hang on a dead connection) and the invariants of the README (How delivery is guaranteed) must hold.
//!
//! The second test cuts the database path *silently*: the service's live connections (its
//! consumers' open transactions, the relay's lease session) are black-holed for good, neither
//! closed nor answered, as after a NAT or firewall lost their state. Only the service's own
//! timeouts and PostgreSQL's session timeouts (`JWL_DB_STALL_TIMEOUT`) can get it going again.

use std::time::{Duration, Instant};

use jwl_e2e::{Cut, Link, NewOrder, PlacedOrder, Service, System, SystemOptions, with_system};

/// How long each path stays cut.
const CUT_FOR: Duration = Duration::from_secs(5);
/// How long the orders may take to end after the last cut (reconnects, redeliveries).
const SAGA_TIMEOUT: Duration = Duration::from_secs(120);
/// Orders placed before, during each cut, and after.
const ORDERS_PER_PHASE: usize = 6;
const COURIERS: usize = 6;
const PARTITIONED: Service = Service::Inventory;

fn order() -> NewOrder {
    NewOrder::one_tea(1250)
}

async fn place(system: &System) -> anyhow::Result<Vec<PlacedOrder>> {
    system
        .place_orders((0..ORDERS_PER_PHASE).map(|_| order()).collect())
        .await
}

/// Cuts `link` of the partitioned service (as `how` says) for [`CUT_FOR`] while orders are
/// placed, then restores it; returns the orders placed meanwhile.
async fn cut_under_load(system: &System, link: Link, how: Cut) -> anyhow::Result<Vec<PlacedOrder>> {
    let proxy = system.proxy(PARTITIONED, link)?;
    let (placed, ()) = tokio::join!(place(system), proxy.cut_for(how, CUT_FOR));
    placed
}

/// Stock and couriers enough for every order of a test.
async fn prepare(system: &System) -> anyhow::Result<()> {
    system.set_stock("TEA", 1_000).await?;
    system.line_up_couriers(COURIERS, 0.2).await
}

/// Every order of `placed` ended well and the README's invariants hold; prints the figures.
async fn assert_all_delivered(
    system: &System,
    placed: &[PlacedOrder],
    started: Instant,
) -> anyhow::Result<()> {
    let outcomes = system.check_invariants(placed).await?;
    assert_eq!(outcomes.total(), placed.len(), "{outcomes}");
    assert_eq!(outcomes.succeeded(), placed.len(), "{outcomes}");
    let log = std::fs::read_to_string(system.service(PARTITIONED).log_path())?;
    println!(
        "e2e partition: {} orders, outcomes [{outcomes}], {} NATS connection events in the {PARTITIONED} log, wall {:.1}s",
        placed.len(),
        log.matches("nats connection event").count(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_cut_from_nats_then_postgres_recovers_and_loses_nothing() -> anyhow::Result<()> {
    let started = Instant::now();
    let options = SystemOptions {
        ack_wait: Duration::from_secs(3),
        courier_capacity: 5,
        proxied: vec![(PARTITIONED, Link::Nats), (PARTITIONED, Link::Postgres)],
        ..SystemOptions::default()
    };
    with_system(options, async |system| {
        prepare(system).await?;
        let mut placed = place(system).await?;
        placed.extend(cut_under_load(system, Link::Nats, Cut::Closing).await?);
        let nats_restored = Instant::now();
        placed.extend(cut_under_load(system, Link::Postgres, Cut::Closing).await?);
        placed.extend(place(system).await?);

        system.wait_all_terminal(&placed, SAGA_TIMEOUT).await?;
        println!(
            "e2e partition: every order terminal {:.1}s after NATS came back",
            nats_restored.elapsed().as_secs_f64()
        );
        assert_all_delivered(system, &placed, started).await
    })
    .await
}

/// The database path of the partitioned service is black-holed mid-load, its live connections
/// for good; after the path comes back the service must give those up by itself and finish
/// every order. Without the stall timeouts it hangs forever on a transaction or on the relay
/// lease of a session that PostgreSQL still believes alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_left_with_half_open_database_connections_recovers() -> anyhow::Result<()> {
    let started = Instant::now();
    let stall_timeout = Duration::from_secs(4);
    let options = SystemOptions {
        ack_wait: Duration::from_secs(3),
        db_stall_timeout: stall_timeout,
        courier_capacity: 5,
        proxied: vec![(PARTITIONED, Link::Postgres)],
        ..SystemOptions::default()
    };
    with_system(options, async |system| {
        prepare(system).await?;
        let mut placed = place(system).await?;
        placed.extend(cut_under_load(system, Link::Postgres, Cut::Silent).await?);
        let restored = Instant::now();
        placed.extend(place(system).await?);

        system.wait_all_terminal(&placed, SAGA_TIMEOUT).await?;
        println!(
            "e2e partition: every order terminal {:.1}s after the silent cut ended (stall timeout {stall_timeout:?})",
            restored.elapsed().as_secs_f64()
        );
        assert_all_delivered(system, &placed, started).await
    })
    .await
}
