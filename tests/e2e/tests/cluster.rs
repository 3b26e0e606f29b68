//! The system in the shape of `deploy/`, broken on purpose: three nats-server processes clustered
//! over loopback routes with R3 streams (`JWL_STREAM_REPLICAS=3`, every node in `JWL_NATS_URL`,
//! each process connected to a node the client picks at random), two `jwl serve` replicas of
//! each of the five services, each service with a database of its own and its outbox in four
//! relay partitions (`JWL_OUTBOX_PARTITIONS=4`, two led by each replica).
//!
//! Orders are placed at a steady rate while the test, in turn:
//! 1. kill -9s the NATS node that leads `JWL_EVENTS`, and starts it again a little later;
//! 2. kill -9s one replica of every service at once: for payment, inventory, fulfillment and
//!    dispatch the replica leading relay partition 0 (it also does the outbox housekeeping), for
//!    order the second replica (the test's HTTP calls go to the first). Each killed replica held
//!    two relay partition leases and had messages of the shared consumers in flight.
//!
//! Then every order is terminal and dispatched, the invariants of the README hold, every replica
//! had handled and published part of its service's work before the kills, and the test prints
//! the time each failover took: the events stream's new leader, each service's relay leases
//! (the survivor leading all four partitions), and how much longer the sagas in flight around
//! each kill took than the sagas before any kill (the consumers' failover: a killed replica's
//! unacknowledged messages come back after `JWL_ACK_WAIT`). None of these times is asserted.

use std::time::{Duration, Instant};

use jwl_e2e::{
    LineItem, NewOrder, OrderView, PlacedOrder, Point, Service, ServiceProcess, System,
    SystemOptions, eventually, with_system,
};

/// Orders per second, placed one by one at a steady pace.
const RATE: u64 = 5;
/// Orders placed before anything is broken (the "normal" sagas).
const WARM_UP: usize = 20;
/// Orders placed, at most, while waiting for a replica to get work (the stock has room for them).
const EXTRA_ORDERS: usize = 10;
/// Orders placed between the stream leader's kill and its restart, and after the restart.
const LEADER_DOWN: usize = 15;
const LEADER_BACK: usize = 15;
/// Orders placed after the replicas are killed.
const AFTER_REPLICA_KILL: usize = 25;
/// Orders placed just before a kill that count as in flight when it happened.
const IN_FLIGHT_BEFORE: usize = 3;
/// Orders after a kill whose sagas are judged for that kill's stall (2 s at 5/s).
const JUDGED_AFTER: usize = 10;
const PARTITIONS: usize = 4;
const COURIERS: usize = 20;
/// How long the sagas may take to finish after the last order (a busy 2-core machine).
const SAGA_TIMEOUT: Duration = Duration::from_secs(90);
/// Sharing the partitions out takes a few standby retries (3 s each).
const SHARING_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a failover may take before the test gives up waiting for it.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a failover is polled for.
const POLL: Duration = Duration::from_millis(100);

fn order() -> NewOrder {
    NewOrder {
        items: vec![LineItem {
            sku: "TEA".to_owned(),
            qty: 1,
            unit_price_cents: 990,
        }],
        pickup: Point::JIANGWAN,
        dropoff: Point::JIANGWAN.offset_km(2.0, 0.0),
        payment_token: "tok_ok".to_owned(),
    }
}

/// Places `count` orders at [`RATE`].
async fn place(system: &System, count: usize, placed: &mut Vec<PlacedOrder>) -> anyhow::Result<()> {
    let mut pace = tokio::time::interval(Duration::from_millis(1000 / RATE));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for _ in 0..count {
        pace.tick().await;
        placed.push(system.place_order("alice", order()).await?);
    }
    Ok(())
}

/// Relay partitions each replica of `service` leads, in replica order.
async fn partitions_led(system: &System, service: Service) -> anyhow::Result<Vec<usize>> {
    let mut led = Vec::new();
    for replica in system.replicas(service) {
        let page = replica.metrics().await?;
        led.push(page.sum("jwl_relay_partition_leader", &[]) as usize);
    }
    Ok(led)
}

/// Waits until every replica of every service has handled events of the shared consumers and
/// published from its own partitions. A replica whose consumer subscribed after the first orders
/// (its start-up can wait for a busy cluster) gets some of up to [`EXTRA_ORDERS`] more, placed
/// while it has none.
async fn every_replica_worked(
    system: &System,
    placed: &mut Vec<PlacedOrder>,
) -> anyhow::Result<()> {
    let mut extra = 0;
    for service in Service::ALL {
        for (index, replica) in system.replicas(service).into_iter().enumerate() {
            let deadline = Instant::now() + SAGA_TIMEOUT;
            loop {
                let (handled, published) = match replica.metrics().await {
                    Ok(page) => (
                        page.sum("jwl_events_handled_total", &[("outcome", "ok")]),
                        page.sum("jwl_outbox_published_total", &[]),
                    ),
                    Err(_) => (0.0, 0.0),
                };
                if handled > 0.0 && published > 0.0 {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{service} replica {} handled {handled} and published {published} events \
                     within {SAGA_TIMEOUT:?}",
                    index + 1
                );
                if extra < EXTRA_ORDERS {
                    place(system, 1, placed).await?;
                    extra += 1;
                } else {
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }
    Ok(())
}

/// How long after `since` the events stream had a leader other than `old`.
async fn new_leader(system: &System, old: &str, since: Instant) -> anyhow::Result<Duration> {
    let deadline = since + FAILOVER_TIMEOUT;
    loop {
        // the stream info request itself waits while no leader answers: bound it
        if let Ok(Ok((Some(leader), _))) =
            tokio::time::timeout(POLL * 5, system.broker().nats()?.events_leader()).await
            && leader != old
        {
            return Ok(since.elapsed());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no new leader of JWL_EVENTS within {FAILOVER_TIMEOUT:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The replica of `service` to kill: the one leading relay partition 0, except for order, whose
/// first replica answers the test's HTTP calls.
async fn victim(system: &System, service: Service) -> anyhow::Result<&ServiceProcess> {
    let replicas = system.replicas(service);
    if service == Service::Order {
        return replicas
            .get(1)
            .copied()
            .ok_or_else(|| anyhow::anyhow!("order has no second replica"));
    }
    for replica in &replicas {
        let page = replica.metrics().await?;
        if page.sum("jwl_relay_partition_leader", &[("partition", "0")]) == 1.0 {
            return Ok(replica);
        }
    }
    anyhow::bail!("no {service} replica leads relay partition 0")
}

/// How long after `since` each service's surviving replica led all the partitions.
async fn leases_taken_over(
    survivors: &[(Service, &ServiceProcess)],
    since: Instant,
) -> anyhow::Result<Vec<(Service, Duration)>> {
    let mut taken: Vec<(Service, Option<Duration>)> = survivors
        .iter()
        .map(|&(service, _)| (service, None))
        .collect();
    let deadline = since + FAILOVER_TIMEOUT;
    loop {
        for ((_, survivor), (_, took)) in survivors.iter().zip(taken.iter_mut()) {
            if took.is_none()
                && let Ok(page) = survivor.metrics().await
                && page.sum("jwl_relay_partition_leader", &[]) as usize == PARTITIONS
            {
                *took = Some(since.elapsed());
            }
        }
        if taken.iter().all(|(_, took)| took.is_some()) {
            return Ok(taken
                .into_iter()
                .map(|(service, took)| (service, took.unwrap_or_default()))
                .collect());
        }
        let waiting: Vec<String> = taken
            .iter()
            .filter(|(_, took)| took.is_none())
            .map(|(service, _)| service.to_string())
            .collect();
        anyhow::ensure!(
            Instant::now() < deadline,
            "the surviving replicas of {waiting:?} did not lead all {PARTITIONS} partitions \
             within {FAILOVER_TIMEOUT:?}"
        );
        tokio::time::sleep(POLL).await;
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

/// How much longer than `normal` the slowest saga took among those in flight when a kill
/// happened after `placed_before` orders.
fn stall(durations: &[Duration], placed_before: usize, normal: Duration) -> Duration {
    let from = placed_before.saturating_sub(IN_FLIGHT_BEFORE);
    let to = (placed_before + JUDGED_AFTER).min(durations.len());
    let slowest = durations
        .get(from..to)
        .and_then(|judged| judged.iter().max().copied())
        .unwrap_or_default();
    slowest.saturating_sub(normal)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_survives_a_stream_leader_kill_and_a_replica_of_every_service_killed()
-> anyhow::Result<()> {
    let options = SystemOptions {
        nats_nodes: 3,
        stream_replicas: 3,
        replicas: 2,
        outbox_partitions: PARTITIONS,
        database_per_service: true,
        ack_wait: Duration::from_secs(3),
        courier_capacity: 5,
        ..SystemOptions::default()
    };
    let started = Instant::now();
    with_system(options, async |system: &System| {
        let cluster = system
            .nats_cluster()
            .ok_or_else(|| anyhow::anyhow!("the system should run on a cluster"))?;
        let orders = WARM_UP + EXTRA_ORDERS + LEADER_DOWN + LEADER_BACK + AFTER_REPLICA_KILL;
        system.set_stock("TEA", orders as i64 + 10).await?;
        system.line_up_couriers(COURIERS, 0.2).await?;
        let (_, replicas) = system.broker().nats()?.events_leader().await?;
        assert_eq!(replicas, 3, "JWL_EVENTS should be R3");
        for service in Service::ALL {
            eventually(
                &format!("{service}'s partitions shared out two and two"),
                SHARING_TIMEOUT,
                || async {
                    let led = partitions_led(system, service)
                        .await
                        .map_err(|e| format!("{e:#}"))?;
                    if led == [2, 2] {
                        Ok(())
                    } else {
                        Err(format!("led {led:?}"))
                    }
                },
            )
            .await?;
        }

        let mut placed = Vec::with_capacity(orders);
        place(system, WARM_UP, &mut placed).await?;
        every_replica_worked(system, &mut placed).await?;
        let normal_sagas = placed.len();

        // 1. the node leading the events stream dies, and comes back
        let leader = eventually("the events leader", Duration::from_secs(20), || async {
            system
                .broker()
                .nats()?
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
        let leader_killed = Instant::now();
        let before_leader_kill = placed.len();
        println!("e2e cluster: killed {leader} (events leader) after {before_leader_kill} orders");
        let (election, ()) = tokio::try_join!(
            new_leader(system, &leader, leader_killed),
            place(system, LEADER_DOWN, &mut placed)
        )?;
        node.start_again().await?;
        println!("e2e cluster: started {leader} again");
        place(system, LEADER_BACK, &mut placed).await?;

        // 2. one replica of every service dies (each held two relay partition leases)
        let mut killed = Vec::new();
        let mut survivors = Vec::new();
        for service in Service::ALL {
            let victim = victim(system, service).await?;
            let survivor = system
                .replicas(service)
                .into_iter()
                .find(|replica| !std::ptr::eq(*replica, victim))
                .ok_or_else(|| anyhow::anyhow!("{service} has no second replica"))?;
            killed.push(victim);
            survivors.push((service, survivor));
        }
        for victim in &killed {
            victim.kill().await?;
        }
        let replicas_killed = Instant::now();
        let before_replica_kill = placed.len();
        println!(
            "e2e cluster: killed a replica of every service after {before_replica_kill} orders"
        );
        let (leases, ()) = tokio::try_join!(
            leases_taken_over(&survivors, replicas_killed),
            place(system, AFTER_REPLICA_KILL, &mut placed)
        )?;

        system.wait_all_terminal(&placed, SAGA_TIMEOUT).await?;
        // as an orchestrator would (the invariants read through the first replicas' APIs)
        for victim in &killed {
            victim.restart().await?;
        }
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
        let normal = median(durations[..normal_sagas].to_vec());
        let leases: Vec<String> = leases
            .iter()
            .map(|(service, took)| format!("{service} {:.2}s", took.as_secs_f64()))
            .collect();
        println!(
            "e2e cluster: {} orders, outcomes [{outcomes}]; saga median before any kill {:.2}s",
            placed.len(),
            normal.as_secs_f64()
        );
        println!(
            "e2e cluster: failover times: events stream leader elected {:.2}s after the kill, \
             sagas in flight stalled {:.2}s; relay leases taken over: {}; sagas in flight at the \
             replica kills stalled {:.2}s (consumer failover, JWL_ACK_WAIT 3s); wall {:.1}s",
            election.as_secs_f64(),
            stall(&durations, before_leader_kill, normal).as_secs_f64(),
            leases.join(", "),
            stall(&durations, before_replica_kill, normal).as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    })
    .await
}
