//! Two `jwl serve` replicas of every service with `JWL_OUTBOX_PARTITIONS=4`, on a 3-node
//! JetStream cluster with R3 streams (the shape of `deploy/`). The replicas of each service share
//! its relay partitions (two each) and its consumer. A first lot of orders is placed and every
//! replica must have handled events and published some; then the test kill -9s the payment
//! replica that leads relay partition 0 and the second fulfillment replica, and places the rest.
//! Every order ends terminal and dispatched, the invariants hold, and the surviving payment
//! replica takes over all four partitions (the test prints how long that took); the killed
//! payment replica is started again before the invariants are checked (they read payments
//! through the first replica's API).

use std::time::{Duration, Instant};

use jwl_e2e::{
    LineItem, NewOrder, Point, Service, ServiceProcess, System, SystemOptions, eventually,
    with_system,
};

const ORDERS: usize = 60;
/// Orders placed before the kills.
const BEFORE_KILL: usize = 20;
/// Orders placed, at most, while waiting for a replica to get work (the stock has room for them).
const EXTRA_ORDERS: usize = 10;
/// How often a replica's metrics are read while waiting.
const POLL: Duration = Duration::from_millis(200);
/// Orders per second, placed one by one at a steady pace.
const RATE: u64 = 5;
const PARTITIONS: usize = 4;
const COURIERS: usize = 20;
/// How long the sagas may take to finish after the last order (a busy 2-core machine).
const SAGA_TIMEOUT: Duration = Duration::from_secs(90);
/// Sharing the partitions out takes a few standby retries (3 s each).
const SHARING_TIMEOUT: Duration = Duration::from_secs(60);

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

/// The Prometheus text of a replica's `/metrics`.
async fn scrape(process: &ServiceProcess) -> anyhow::Result<String> {
    let url = format!("{}/metrics", process.base_url());
    let response = reqwest::get(&url).await?;
    anyhow::ensure!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    Ok(response.text().await?)
}

/// The sum of the samples of `metric` whose labels include every one of `labels`.
fn sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, rest) = series.split_once('{').unwrap_or((series, ""));
            let wanted = name == metric
                && labels
                    .iter()
                    .all(|(key, value)| rest.contains(&format!("{key}=\"{value}\"")));
            if wanted {
                value.parse::<f64>().ok()
            } else {
                None
            }
        })
        .sum()
}

/// Relay partitions each replica of `service` leads, in replica order.
async fn partitions_led(system: &System, service: Service) -> anyhow::Result<Vec<usize>> {
    let mut led = Vec::new();
    for replica in system.replicas(service) {
        let text = scrape(replica).await?;
        led.push(sum(&text, "jwl_relay_partition_leader", &[]) as usize);
    }
    Ok(led)
}

async fn place(
    system: &System,
    count: usize,
    placed: &mut Vec<jwl_e2e::PlacedOrder>,
) -> anyhow::Result<()> {
    let mut pace = tokio::time::interval(Duration::from_millis(1000 / RATE));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for _ in 0..count {
        pace.tick().await;
        placed.push(system.place_order("alice", order()).await?);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_of_every_service_share_the_work_and_survive_kills() -> anyhow::Result<()> {
    let options = SystemOptions {
        nats_nodes: 3,
        stream_replicas: 3,
        replicas: 2,
        outbox_partitions: PARTITIONS,
        ack_wait: Duration::from_secs(3),
        courier_capacity: 5,
        ..SystemOptions::default()
    };
    let started = Instant::now();
    with_system(options, async |system: &System| {
        system.set_stock("TEA", (ORDERS + EXTRA_ORDERS) as i64 + 10).await?;
        system.line_up_couriers(COURIERS, 0.2).await?;
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

        let mut placed = Vec::with_capacity(ORDERS);
        place(system, BEFORE_KILL, &mut placed).await?;
        // every replica handled events (the consumer is shared) and published some (partitions);
        // a replica whose consumer subscribed after the first orders (its start-up can wait
        // for a busy cluster) gets some of the next ones, placed while it has none
        let mut extra = 0;
        for service in Service::ALL {
            for (index, replica) in system.replicas(service).into_iter().enumerate() {
                let deadline = Instant::now() + SAGA_TIMEOUT;
                loop {
                    let (handled, published) = match scrape(replica).await {
                        Ok(text) => (
                            sum(&text, "jwl_events_handled_total", &[("outcome", "ok")]),
                            sum(&text, "jwl_outbox_published_total", &[]),
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
                        place(system, 1, &mut placed).await?;
                        extra += 1;
                    } else {
                        tokio::time::sleep(POLL).await;
                    }
                }
            }
        }

        // kill -9 the payment replica leading relay partition 0, and a fulfillment replica
        let payment = system.replicas(Service::Payment);
        let mut holder = None;
        for (index, replica) in payment.iter().enumerate() {
            let text = scrape(replica).await?;
            if sum(&text, "jwl_relay_partition_leader", &[("partition", "0")]) == 1.0 {
                holder = Some(index);
            }
        }
        let holder =
            holder.ok_or_else(|| anyhow::anyhow!("no payment replica leads partition 0"))?;
        payment[holder].kill().await?;
        let killed = Instant::now();
        system.replicas(Service::Fulfillment)[1].kill().await?;
        println!(
            "e2e replicas: killed payment replica {} (leader of relay partition 0) and \
             fulfillment replica 2 after {BEFORE_KILL} orders",
            holder + 1
        );
        let survivor = payment[1 - holder];
        let took_over = eventually(
            "the surviving payment replica leads all four partitions",
            SAGA_TIMEOUT,
            || async {
                let text = scrape(survivor).await.map_err(|e| format!("{e:#}"))?;
                let led = sum(&text, "jwl_relay_partition_leader", &[]) as usize;
                if led == PARTITIONS {
                    Ok(killed.elapsed())
                } else {
                    Err(format!("led {led}"))
                }
            },
        )
        .await?;

        place(system, ORDERS - BEFORE_KILL, &mut placed).await?;
        system.wait_all_terminal(&placed, SAGA_TIMEOUT).await?;
        // as an orchestrator would (the invariants read payments through the first replica)
        payment[holder].restart().await?;
        let outcomes = system.check_invariants(&placed).await?;
        let mut not_dispatched = Vec::new();
        for order in &placed {
            let view = system.order(&order.order_id).await?;
            if !view.status.succeeded() {
                not_dispatched.push(format!(
                    "{} {:?} {:?}",
                    view.order_id, view.status, view.reason
                ));
            }
        }
        assert!(
            not_dispatched.is_empty(),
            "every order should be dispatched: {not_dispatched:?}"
        );
        println!(
            "e2e replicas: {} orders, outcomes [{outcomes}]; the surviving payment replica led \
             all {PARTITIONS} relay partitions {:.2}s after the kill; wall {:.1}s",
            placed.len(),
            took_over.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    })
    .await
}
