//! Scenario 6 of issue 3: one service (inventory) cut off from NATS for 5 s under load and
//! restored, then cut off from PostgreSQL for 5 s and restored, each through a TCP proxy of the
//! harness ([`jwl_e2e::Proxy`]). Every order must end, the service must come back by itself
//! (no hang on a dead connection) and the invariants of DESIGN.md §5 must hold.

use std::time::{Duration, Instant};

use jwl_e2e::{
    LineItem, Link, NewOrder, PlacedOrder, Point, Service, System, SystemOptions, with_system,
};

/// How long each path stays cut.
const CUT_FOR: Duration = Duration::from_secs(5);
/// How long the orders may take to end after the last cut (reconnects, redeliveries).
const SAGA_TIMEOUT: Duration = Duration::from_secs(120);
/// Orders placed before, during each cut, and after.
const ORDERS_PER_PHASE: usize = 6;
const COURIERS: usize = 6;
const PARTITIONED: Service = Service::Inventory;

fn order() -> NewOrder {
    NewOrder {
        items: vec![LineItem {
            sku: "TEA".to_owned(),
            qty: 1,
            unit_price_cents: 1250,
        }],
        pickup: Point::JIANGWAN,
        dropoff: Point::JIANGWAN.offset_km(2.0, 0.0),
        payment_token: "tok_ok".to_owned(),
    }
}

async fn place(system: &System) -> anyhow::Result<Vec<PlacedOrder>> {
    system
        .place_orders((0..ORDERS_PER_PHASE).map(|_| order()).collect())
        .await
}

/// Cuts `link` of the partitioned service for [`CUT_FOR`] while orders are placed, then
/// restores it; returns the orders placed meanwhile.
async fn cut_under_load(system: &System, link: Link) -> anyhow::Result<Vec<PlacedOrder>> {
    let proxy = system.proxy(PARTITIONED, link)?;
    proxy.cut();
    let (placed, ()) = tokio::join!(place(system), async {
        // the partition lasts this long: a fault's duration, not a wait for a condition
        tokio::time::sleep(CUT_FOR).await;
    });
    proxy.restore();
    placed
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
        system.set_stock("TEA", 1_000).await?;
        for n in 0..COURIERS {
            system
                .move_courier(
                    &format!("courier-{n}"),
                    Point::JIANGWAN.offset_km(n as f64 * 0.2, 0.0),
                )
                .await?;
        }
        let mut placed = place(system).await?;
        placed.extend(cut_under_load(system, Link::Nats).await?);
        let nats_restored = Instant::now();
        placed.extend(cut_under_load(system, Link::Postgres).await?);
        placed.extend(place(system).await?);

        system.wait_all_terminal(&placed, SAGA_TIMEOUT).await?;
        println!(
            "e2e partition: every order terminal {:.1}s after NATS came back",
            nats_restored.elapsed().as_secs_f64()
        );
        let outcomes = system.check_invariants(&placed).await?;
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
    })
    .await
}
