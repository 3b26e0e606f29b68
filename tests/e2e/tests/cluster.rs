//! The system on a 3-node JetStream cluster (three private nats-server processes clustered over
//! loopback routes) with `JWL_STREAM_REPLICAS=3` and every node in `JWL_NATS_URL`. Orders are
//! placed at a steady rate while the test kill -9s the node that leads `JWL_EVENTS` and, once a
//! new leader is elected, starts it again. Then every order is terminal and dispatched, the
//! invariants hold, and the test prints how long the stream-leader failover stalled sagas (the
//! slowest saga against the median of those that ran before the kill).

use std::time::{Duration, Instant};

use jwl_e2e::{
    LineItem, NewOrder, OrderView, Point, System, SystemOptions, eventually, with_system,
};

const ORDERS: usize = 100;
/// Orders per second, placed one by one at a steady pace.
const RATE: u64 = 5;
/// The leader is killed once this many orders are placed, and started again this many later.
const KILL_AFTER: usize = 25;
const RESTART_AFTER: usize = 50;
const COURIERS: usize = 20;
/// How long the sagas may take to finish after the last order (a busy 2-core machine).
const SAGA_TIMEOUT: Duration = Duration::from_secs(60);
const PRICE_CENTS: i64 = 990;

fn order() -> NewOrder {
    NewOrder {
        items: vec![LineItem {
            sku: "TEA".to_owned(),
            qty: 1,
            unit_price_cents: PRICE_CENTS,
        }],
        pickup: Point::JIANGWAN,
        dropoff: Point::JIANGWAN.offset_km(2.0, 0.0),
        payment_token: "tok_ok".to_owned(),
    }
}

/// How long a saga took by its own events: the first event's time to the last's.
fn saga_duration(view: &OrderView) -> Duration {
    match (view.timeline.first(), view.timeline.last()) {
        (Some(first), Some(last)) => (last.time - first.time).to_std().unwrap_or_default(),
        _ => Duration::ZERO,
    }
}

fn median(mut durations: Vec<Duration>) -> Duration {
    durations.sort();
    durations
        .get(durations.len() / 2)
        .copied()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_survive_the_events_stream_leader_being_killed() -> anyhow::Result<()> {
    let options = SystemOptions {
        nats_nodes: 3,
        stream_replicas: 3,
        ack_wait: Duration::from_secs(3),
        courier_capacity: 5,
        ..SystemOptions::default()
    };
    let started = Instant::now();
    with_system(options, async |system: &System| {
        let cluster = system
            .nats_cluster()
            .ok_or_else(|| anyhow::anyhow!("the system should run on a cluster"))?;
        system.set_stock("TEA", ORDERS as i64 + 10).await?;
        system.line_up_couriers(COURIERS, 0.2).await?;
        let (_, replicas) = system.broker().events_leader().await?;
        assert_eq!(replicas, 3, "JWL_EVENTS should be R3");

        let mut placed = Vec::with_capacity(ORDERS);
        let mut placed_before_kill = 0;
        let mut killed = None;
        let mut pace = tokio::time::interval(Duration::from_millis(1000 / RATE));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for index in 0..ORDERS {
            pace.tick().await;
            if index == KILL_AFTER {
                let leader = eventually("the events leader", Duration::from_secs(20), || async {
                    system
                        .broker()
                        .events_leader()
                        .await?
                        .0
                        .ok_or_else(|| anyhow::anyhow!("no leader of JWL_EVENTS"))
                })
                .await?;
                let node = cluster
                    .node_named(&leader)
                    .ok_or_else(|| anyhow::anyhow!("leader {leader} is not one of our nodes"))?;
                node.kill().await?;
                placed_before_kill = placed.len();
                println!("e2e cluster: killed {leader} (events leader) after {index} orders");
                killed = Some(node);
            }
            if index == RESTART_AFTER
                && let Some(node) = killed
            {
                node.start_again().await?;
                println!("e2e cluster: started {} again", node.server_name());
            }
            placed.push(system.place_order("alice", order()).await?);
        }
        let (leader, _) = system.broker().events_leader().await?;
        println!("e2e cluster: events leader now {leader:?}");

        system.wait_all_terminal(&placed, SAGA_TIMEOUT).await?;
        let outcomes = system.check_invariants(&placed).await?;
        let mut views = Vec::with_capacity(placed.len());
        for order in &placed {
            views.push(system.order(&order.order_id).await?);
        }
        let not_dispatched: Vec<_> = views
            .iter()
            .filter(|view| !view.status.succeeded())
            .map(|view| format!("{} {:?} {:?}", view.order_id, view.status, view.reason))
            .collect();
        assert!(
            not_dispatched.is_empty(),
            "every order should be dispatched: {not_dispatched:?}"
        );
        let durations: Vec<Duration> = views.iter().map(saga_duration).collect();
        let normal = median(durations[..placed_before_kill].to_vec());
        let slowest = durations.iter().max().copied().unwrap_or_default();
        println!(
            "e2e cluster: {} orders, outcomes [{outcomes}], saga median before the kill {:.2}s, \
             slowest {:.2}s: the stream-leader failover stalled sagas ~{:.2}s; wall {:.1}s",
            placed.len(),
            normal.as_secs_f64(),
            slowest.as_secs_f64(),
            slowest.saturating_sub(normal).as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    })
    .await
}
