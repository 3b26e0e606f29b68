//! Relay work shared by partition (`outbox_partitions`): relay processes on one schema split the
//! partitions between them, publish every row exactly once and each order's rows in order, hand a
//! dead process's partitions over within a bounded time (measured here), and a relay of another
//! partition count stands by until the old count's relays are gone.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use jwl_events::{Envelope, EventData, OrderId, PaymentCaptured, Service};
use jwl_outbox::relay::Relay;
use jwl_outbox::transport::{OutboundMessage, PublishReceipt, Publisher};
use jwl_outbox::{MessagingSettings, RelaySignal, TransportError};
use jwl_testkit::eventually;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use support::{Harness, SCHEMA, SERVICE, SOON, header, service_pool};

const PARTITIONS: usize = 4;

/// Passes batches to the broker and records the dedup ids (event ids) acknowledged.
struct Recording {
    inner: Arc<dyn Publisher>,
    published: Mutex<Vec<String>>,
}

impl Recording {
    fn ids(&self) -> Vec<String> {
        self.published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[async_trait]
impl Publisher for Recording {
    async fn publish_batch(
        &self,
        batch: &[OutboundMessage],
    ) -> Vec<Result<PublishReceipt, TransportError>> {
        let results = self.inner.publish_batch(batch).await;
        let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        for (message, result) in batch.iter().zip(&results) {
            if result.is_ok() {
                published.push(message.dedup_id.clone());
            }
        }
        results
    }
}

/// A relay "process": its own pool, signal and recording publisher.
struct Process {
    publisher: Arc<Recording>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

async fn start(h: &Harness, settings: MessagingSettings) -> anyhow::Result<Process> {
    let pool = service_pool(&h.db, SCHEMA).await?;
    let publisher = Arc::new(Recording {
        inner: Arc::new(h.broker.clone()),
        published: Mutex::new(Vec::new()),
    });
    let signal = RelaySignal::new(settings.db_stall_timeout);
    let relay = Relay::new(SERVICE, pool, publisher.clone(), Arc::new(settings), signal);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    Ok(Process {
        publisher,
        shutdown,
        task,
    })
}

fn partitioned(h: &Harness, partitions: usize) -> MessagingSettings {
    MessagingSettings {
        outbox_partitions: partitions,
        relay_standby_retry: Duration::from_millis(500),
        ..h.settings.clone()
    }
}

/// Partitions led by each relay process seen within the last second, fewest first.
async fn led_counts(pool: &PgPool) -> anyhow::Result<Vec<i32>> {
    Ok(sqlx::query_scalar(
        "SELECT led FROM outbox_relay_members
         WHERE seen_at > now() - interval '1 second' ORDER BY led",
    )
    .fetch_all(pool)
    .await?)
}

/// One `payment.captured` for each order, in one transaction; returns (order, event id) pairs.
async fn one_event_each(
    h: &Harness,
    orders: &[OrderId],
    round: i64,
) -> anyhow::Result<Vec<(OrderId, String)>> {
    let events: Vec<Envelope> = orders
        .iter()
        .map(|&order_id| {
            Envelope::new(
                Service::Payment,
                EventData::PaymentCaptured(PaymentCaptured {
                    order_id,
                    amount_cents: round,
                }),
            )
        })
        .collect();
    h.enqueue_events(&events).await?;
    Ok(orders
        .iter()
        .zip(&events)
        .map(|(&order, event)| (order, event.id.0.to_string()))
        .collect())
}

/// The stream holds every id of `enqueued` exactly once, and each order's ids in enqueue order.
async fn assert_stream_in_order(h: &Harness, enqueued: &[(OrderId, String)]) -> anyhow::Result<()> {
    let stream: Vec<String> = h
        .events_in_stream()
        .await?
        .iter()
        .filter_map(|m| header(m, "Nats-Msg-Id").map(str::to_owned))
        .collect();
    let unique: HashSet<&String> = stream.iter().collect();
    assert_eq!(unique.len(), stream.len(), "no event twice in the stream");
    assert_eq!(stream.len(), enqueued.len(), "every event in the stream");
    let order_of: HashMap<&str, OrderId> = enqueued
        .iter()
        .map(|(order, id)| (id.as_str(), *order))
        .collect();
    let mut in_stream: HashMap<OrderId, Vec<&str>> = HashMap::new();
    for id in &stream {
        let order = order_of.get(id.as_str()).copied();
        let order = order.ok_or_else(|| anyhow::anyhow!("unexpected event {id} in the stream"))?;
        in_stream.entry(order).or_default().push(id);
    }
    let mut expected: HashMap<OrderId, Vec<&str>> = HashMap::new();
    for (order, id) in enqueued {
        expected.entry(*order).or_default().push(id);
    }
    assert_eq!(in_stream, expected, "each order's events in outbox order");
    Ok(())
}

#[tokio::test]
async fn two_relays_share_four_partitions_publish_once_in_order_and_fail_over() -> anyhow::Result<()>
{
    let h = Harness::start().await?;
    let settings = partitioned(&h, PARTITIONS);
    let a = start(&h, settings.clone()).await?;
    let b = start(&h, settings.clone()).await?;
    // the first relay records 4 partitions (the schema starts at 1), then they are shared out
    eventually(
        "the partitions are shared out two and two",
        SOON,
        || async { led_counts(&h.pool).await.ok() == Some(vec![2, 2]) },
    )
    .await?;

    let orders: Vec<OrderId> = (0..40).map(|_| OrderId(uuid::Uuid::now_v7())).collect();
    let mut enqueued = Vec::new();
    for round in 1..=5 {
        enqueued.extend(one_event_each(&h, &orders, round).await?);
    }
    eventually("the outbox is drained", SOON, || async {
        h.pending_in_outbox().await.ok() == Some(0)
    })
    .await?;
    assert_stream_in_order(&h, &enqueued).await?;

    let (by_a, by_b) = (a.publisher.ids(), b.publisher.ids());
    assert_eq!(
        by_a.len() + by_b.len(),
        enqueued.len(),
        "every row published once, by one relay"
    );
    assert!(
        !by_a.is_empty() && !by_b.is_empty(),
        "both relays publish: {} and {}",
        by_a.len(),
        by_b.len()
    );
    let by_a: HashSet<&String> = by_a.iter().collect();
    let orders_of_a: HashSet<OrderId> = enqueued
        .iter()
        .filter(|(_, id)| by_a.contains(id))
        .map(|(order, _)| *order)
        .collect();
    for (order, id) in &enqueued {
        assert_eq!(
            by_a.contains(id),
            orders_of_a.contains(order),
            "all of an order's rows go through one partition, so one relay"
        );
    }
    // the partition of each row is the stored hash of its order
    let spread: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT order_hash % 4) FROM outbox WHERE order_hash IS NOT NULL",
    )
    .fetch_one(&h.pool)
    .await?;
    assert_eq!(spread, 4, "40 orders land in all 4 partitions");

    // A dies (its connections drop, as when the process is killed): B takes its partitions over
    a.task.abort();
    let _ = a.task.await;
    let killed = Instant::now();
    let more = one_event_each(&h, &orders, 6).await?;
    enqueued.extend(more.iter().cloned());
    eventually(
        "the surviving relay publishes the dead one's partitions",
        SOON,
        || async { h.pending_in_outbox().await.ok() == Some(0) },
    )
    .await?;
    let failover = killed.elapsed();
    println!(
        "relay lease failover: {} ms until every row of the dead relay's partitions was \
         published (relay_standby_retry {} ms)",
        failover.as_millis(),
        settings.relay_standby_retry.as_millis()
    );
    assert!(
        failover < settings.relay_standby_retry * 2 + Duration::from_secs(2),
        "failover took {failover:?}"
    );
    let by_b: HashSet<String> = b.publisher.ids().into_iter().collect();
    assert!(
        more.iter().all(|(_, id)| by_b.contains(id)),
        "the survivor published every new row, of every partition"
    );
    assert_stream_in_order(&h, &enqueued).await?;
    eventually("the survivor leads all four partitions", SOON, || async {
        led_counts(&h.pool).await.ok() == Some(vec![4])
    })
    .await?;

    b.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), b.task).await??;
    Ok(())
}

#[tokio::test]
async fn a_relay_of_another_partition_count_waits_until_the_old_count_is_gone() -> anyhow::Result<()>
{
    let h = Harness::start().await?;
    let one = start(&h, partitioned(&h, 1)).await?;
    let orders: Vec<OrderId> = (0..20).map(|_| OrderId(uuid::Uuid::now_v7())).collect();
    let mut enqueued = one_event_each(&h, &orders, 1).await?;
    eventually("the single relay publishes", SOON, || async {
        h.pending_in_outbox().await.ok() == Some(0)
    })
    .await?;

    // a replica with 4 partitions starts while the 1-partition relay still runs: it stands by
    let four = start(&h, partitioned(&h, PARTITIONS)).await?;
    for round in 2..=4 {
        enqueued.extend(one_event_each(&h, &orders, round).await?);
        eventually("the old count's relay publishes", SOON, || async {
            h.pending_in_outbox().await.ok() == Some(0)
        })
        .await?;
    }
    assert!(
        four.publisher.ids().is_empty(),
        "a relay of another count never publishes beside the recorded count's"
    );

    // rows pending when the old relay stops go out through the new count's partitions
    one.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), one.task).await??;
    for round in 5..=7 {
        enqueued.extend(one_event_each(&h, &orders, round).await?);
    }
    eventually("the new count's relay publishes", SOON, || async {
        h.pending_in_outbox().await.ok() == Some(0)
    })
    .await?;
    let recorded: i32 = sqlx::query_scalar("SELECT partitions FROM outbox_relay_partitions")
        .fetch_one(&h.pool)
        .await?;
    assert_eq!(recorded, PARTITIONS as i32);
    assert_eq!(four.publisher.ids().len(), 3 * orders.len());
    assert_stream_in_order(&h, &enqueued).await?;

    four.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), four.task).await??;
    Ok(())
}

/// Drains a backlog of `orders` × `per_order` rows with `relays` relay processes of
/// `partitions` partitions each (started once the rows are in); returns rows published per
/// second, after checking every row went out once and each order's in order.
async fn drain_rate(
    relays: usize,
    partitions: usize,
    orders: usize,
    per_order: i64,
) -> anyhow::Result<f64> {
    let h = Harness::start().await?;
    let ids: Vec<OrderId> = (0..orders).map(|_| OrderId(uuid::Uuid::now_v7())).collect();
    let mut enqueued = Vec::new();
    for round in 1..=per_order {
        enqueued.extend(one_event_each(&h, &ids, round).await?);
    }
    // recorded beforehand (no relay runs yet), so the measure holds no count switch
    sqlx::query("UPDATE outbox_relay_partitions SET partitions = $1")
        .bind(partitions as i32)
        .execute(&h.pool)
        .await?;
    let settings = partitioned(&h, partitions);
    let began = Instant::now();
    let mut processes = Vec::new();
    for _ in 0..relays {
        processes.push(start(&h, settings.clone()).await?);
    }
    eventually(
        "the backlog is drained",
        Duration::from_secs(120),
        || async { h.pending_in_outbox().await.ok() == Some(0) },
    )
    .await?;
    let rate = enqueued.len() as f64 / began.elapsed().as_secs_f64();
    let published: usize = processes.iter().map(|p| p.publisher.ids().len()).sum();
    assert_eq!(published, enqueued.len(), "every row published once");
    assert_stream_in_order(&h, &enqueued).await?;
    for process in processes {
        process.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), process.task).await??;
    }
    Ok(rate)
}

/// The relay's drain rate of a backlog with one relay of one partition and with two relays of
/// four partitions (printed: the figures of docs/scaling.md).
#[tokio::test]
async fn a_backlog_drains_in_order_through_one_or_four_partitions() -> anyhow::Result<()> {
    const ORDERS: usize = 100;
    const PER_ORDER: i64 = 50;
    let single = drain_rate(1, 1, ORDERS, PER_ORDER).await?;
    let shared = drain_rate(2, PARTITIONS, ORDERS, PER_ORDER).await?;
    println!(
        "relay drain of {} rows: 1 relay x 1 partition {single:.0} rows/s, 2 relays x \
         {PARTITIONS} partitions {shared:.0} rows/s",
        ORDERS * PER_ORDER as usize
    );
    Ok(())
}
