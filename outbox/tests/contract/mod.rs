//! The broker contract: what the relay and the consumer loop rely on from any [`Broker`], as
//! test cases generic over the broker (after Watermill's `pubsub/tests`). A test file provides a
//! `start` function that returns a [`Fixture`] on a private broker (or `None` to skip) and
//! instantiates every case with [`contract_tests!`]. Where the brokers differ, [`Differences`]
//! says so, in this one place.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use jwl_events::{EventType, OrderId, WireMessage};
use jwl_outbox::MessagingSettings;
use jwl_outbox::protocol::dead_letter::{
    CONSUMER_HEADER, ORDER_ID_HEADER, REASON_HEADER, dead_letter_log_subject, dead_letter_subject,
};
use jwl_outbox::transport::{
    Broker, ConsumerBacklog, ConsumerSpec, DeadLetterQuery, Deliveries, Delivery, EventQuery,
    OutboundMessage, ReadStart, StoredMessage,
};
use jwl_testkit::eventually;
use tokio::time::Instant;

/// How long a condition that should hold within a few seconds may take (group joins and
/// rebalances of a Kafka consumer take a few seconds each).
pub const SOON: Duration = Duration::from_secs(30);

/// How the brokers differ under the contract.
#[derive(Debug, Clone, Copy)]
pub struct Differences {
    /// The broker drops a re-publication of a dedup id it has seen (JetStream, within its
    /// duplicate window). Kafka has no such thing: the copy is delivered too, and the
    /// consumers' inbox absorbs it.
    pub dedups_by_id: bool,
    /// A message delivered again after a crash counts as another attempt (JetStream counts
    /// deliveries). Kafka re-reads it from the committed position with `attempt()` 1; only
    /// `nak` copies count attempts.
    pub counts_redeliveries: bool,
    /// `backlog().pending` includes messages delivered and not settled (Kafka: high watermark −
    /// committed position). JetStream counts only what it has not delivered yet.
    pub pending_includes_unsettled: bool,
}

/// NATS JetStream.
pub const JETSTREAM: Differences = Differences {
    dedups_by_id: true,
    counts_redeliveries: true,
    pending_includes_unsettled: false,
};

/// Kafka.
pub const KAFKA: Differences = Differences {
    dedups_by_id: false,
    counts_redeliveries: false,
    pending_includes_unsettled: true,
};

/// Restarts the broker (stop, start on the same port and storage), returning once it answers.
pub type Restart = Box<dyn Fn() -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// A broker for one test case, with its streams ensured.
pub struct Fixture {
    pub broker: Arc<dyn Broker>,
    pub settings: MessagingSettings,
    pub differences: Differences,
    /// `None` when the broker would lose its messages on a restart (the case is skipped).
    pub restart: Option<Restart>,
    /// Keeps the private server alive as long as the fixture.
    pub server: Box<dyn std::any::Any + Send + Sync>,
}

/// Instantiates every case of the contract as a `#[tokio::test]` with fixtures from `$start`
/// (an `async fn() -> anyhow::Result<Option<Fixture>>`; `None` skips).
macro_rules! contract_tests {
    ($start:path) => {
        contract::contract_tests!(@cases $start;
            a_published_batch_arrives_intact,
            each_key_keeps_its_order,
            competing_consumers_share_the_messages,
            an_unacked_message_is_redelivered_after_a_crash,
            nak_redelivers_after_the_delay_while_other_keys_flow,
            acked_and_termed_messages_are_never_redelivered,
            backlog_counts_what_is_left,
            filters_select_subjects,
            an_oversized_message_is_rejected_for_good,
            consuming_resumes_after_a_broker_restart,
            history_reads_one_orders_events_in_order,
            history_reads_a_range_up_to_its_limit,
            history_lists_reads_and_deletes_dead_letters,
            history_lists_the_consumers_backlogs,
            following_sees_the_events_published_after_it_started,
        );
    };
    (@cases $start:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() -> anyhow::Result<()> {
                match $start().await? {
                    Some(fixture) => contract::$case(fixture).await,
                    None => Ok(()),
                }
            }
        )*
    };
}
pub(crate) use contract_tests;

// --- helpers -----------------------------------------------------------------------------------

/// A random order id (a key).
fn order() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// An event of `order` of type `test.<kind>`, its payload `<tag>:<order>:<n>`, with CloudEvents
/// headers in the NATS binding and one header of our own given twice.
fn event(order: &str, kind: &str, tag: &str, n: usize) -> OutboundMessage {
    let id = uuid::Uuid::new_v4().to_string();
    OutboundMessage {
        dedup_id: id.clone(),
        subject: format!("jwl.evt.{order}.test.{kind}"),
        headers: vec![
            ("ce-id".to_owned(), id),
            ("ce-subject".to_owned(), order.to_owned()),
            ("ce-type".to_owned(), format!("jwl.test.{kind}")),
            ("content-type".to_owned(), "application/json".to_owned()),
            ("jwl-test-note".to_owned(), format!("first {n}")),
            ("jwl-test-note".to_owned(), format!("second {n}")),
        ],
        payload: Bytes::from(format!("{tag}:{order}:{n}")),
    }
}

/// Header values by name, each name's in the order given.
fn by_name<'h>(
    headers: impl IntoIterator<Item = (&'h str, &'h str)>,
) -> BTreeMap<String, Vec<String>> {
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        by_name
            .entry(name.to_owned())
            .or_default()
            .push(value.to_owned());
    }
    by_name
}

fn text(delivery: &dyn Delivery) -> String {
    String::from_utf8_lossy(delivery.payload()).into_owned()
}

/// A durable consumer of the events stream on `filters`.
fn spec(fixture: &Fixture, durable: &str, filters: &[&str]) -> ConsumerSpec {
    ConsumerSpec {
        stream: fixture.settings.events_stream.clone(),
        durable_name: durable.to_owned(),
        filter_subjects: filters.iter().map(|filter| (*filter).to_owned()).collect(),
        replaces: Vec::new(),
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 1000,
        prefetch: 32,
    }
}

/// A unique durable name.
fn durable(case: &str) -> String {
    format!("{case}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

async fn publish(fixture: &Fixture, batch: &[OutboundMessage]) -> anyhow::Result<Vec<u64>> {
    let mut sequences = Vec::with_capacity(batch.len());
    for receipt in fixture.broker.publish_batch(batch).await {
        sequences.push(receipt.context("publishing")?.sequence);
    }
    Ok(sequences)
}

/// The next delivery, failing after `timeout` or on a broker error.
async fn next(deliveries: &mut Deliveries, timeout: Duration) -> anyhow::Result<Box<dyn Delivery>> {
    match tokio::time::timeout(timeout, deliveries.next()).await {
        Ok(Some(Ok(delivery))) => Ok(delivery),
        Ok(Some(Err(error))) => Err(error).context("the subscription failed"),
        Ok(None) => bail!("the subscription ended"),
        Err(_) => bail!("nothing delivered within {timeout:?}"),
    }
}

/// Receives (and acks) until `count` deliveries whose payload starts with `tag` arrived, in
/// order; other deliveries are acked and returned apart.
async fn receive_tagged(
    deliveries: &mut Deliveries,
    tag: &str,
    count: usize,
) -> anyhow::Result<(Vec<Box<dyn Delivery>>, Vec<String>)> {
    let deadline = Instant::now() + SOON;
    let (mut tagged, mut others) = (Vec::new(), Vec::new());
    while tagged.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let delivery = next(deliveries, left)
            .await
            .with_context(|| format!("{} of {count} {tag:?} received", tagged.len()))?;
        delivery.ack().await?;
        if text(delivery.as_ref()).starts_with(&format!("{tag}:")) {
            tagged.push(delivery);
        } else {
            others.push(text(delivery.as_ref()));
        }
    }
    Ok((tagged, others))
}

async fn backlog(fixture: &Fixture, spec: &ConsumerSpec) -> anyhow::Result<ConsumerBacklog> {
    Ok(fixture.broker.backlog(spec).await?)
}

/// Waits until the broker holds nothing for `spec` (nothing pending, nothing unacknowledged).
async fn drained(fixture: &Fixture, spec: &ConsumerSpec) -> anyhow::Result<()> {
    eventually("the consumer's backlog to drain", SOON, || async {
        match fixture.broker.backlog(spec).await {
            Ok(b) if b.pending == 0 && b.ack_pending == 0 => Ok(()),
            Ok(b) => Err(format!("{b:?}")),
            Err(error) => Err(error.to_string()),
        }
    })
    .await
}

// --- the cases -----------------------------------------------------------------------------------

/// Subject, payload and every header (repeated names in order) arrive as published; a
/// re-publication with the same dedup id is dropped where the broker deduplicates.
pub async fn a_published_batch_arrives_intact(fixture: Fixture) -> anyhow::Result<()> {
    let orders: Vec<String> = (0..3).map(|_| order()).collect();
    let batch: Vec<OutboundMessage> = orders
        .iter()
        .enumerate()
        .map(|(n, order)| event(order, "intact", "intact", n))
        .collect();
    let sequences = publish(&fixture, &batch).await?;
    ensure!(sequences.len() == 3);
    let spec = spec(&fixture, &durable("intact"), &["jwl.evt.>"]);
    let mut deliveries = fixture.broker.subscribe(&spec).await?;
    let (received, _) = receive_tagged(&mut deliveries, "intact", 3).await?;
    let by_payload: HashMap<String, &Box<dyn Delivery>> = received
        .iter()
        .map(|delivery| (text(delivery.as_ref()), delivery))
        .collect();
    for sent in &batch {
        let payload = String::from_utf8_lossy(&sent.payload).into_owned();
        let got = by_payload
            .get(&payload)
            .with_context(|| format!("{payload} was not delivered"))?;
        assert_eq!(got.subject(), sent.subject);
        assert_eq!(got.attempt(), 1);
        // the broker may add headers of its own (`Nats-Msg-Id`), and keeps the order of the
        // values of one name, not the order between names
        let got_headers = by_name(
            got.headers()
                .into_iter()
                .filter(|(name, _)| sent.headers.iter().any(|(sent, _)| sent == name)),
        );
        let sent_headers = by_name(
            sent.headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str())),
        );
        assert_eq!(got_headers, sent_headers, "headers of {payload}");
    }

    // the same message again (a relay that crashed before marking its rows), then a marker
    let again = fixture.broker.publish_batch(&batch[..1]).await;
    let duplicate = again.into_iter().next().context("no receipt")??.duplicate;
    assert_eq!(duplicate, fixture.differences.dedups_by_id);
    // of the same order, so that it comes after the copy (Kafka orders only within a partition)
    publish(&fixture, &[event(&orders[0], "intact", "marker", 0)]).await?;
    let (_, before_marker) = receive_tagged(&mut deliveries, "marker", 1).await?;
    let first = String::from_utf8_lossy(&batch[0].payload).into_owned();
    let redelivered = before_marker.contains(&first);
    assert_eq!(
        redelivered, !fixture.differences.dedups_by_id,
        "the re-published message was delivered again: {redelivered}"
    );
    Ok(())
}

/// Many keys' messages, interleaved in batches, each key's arrive in publication order.
pub async fn each_key_keeps_its_order(fixture: Fixture) -> anyhow::Result<()> {
    const KEYS: usize = 16;
    const PER_KEY: usize = 8;
    let orders: Vec<String> = (0..KEYS).map(|_| order()).collect();
    let all: Vec<OutboundMessage> = (0..PER_KEY)
        .flat_map(|n| {
            orders
                .iter()
                .map(move |order| event(order, "ordered", "ordered", n))
        })
        .collect();
    for batch in all.chunks(24) {
        publish(&fixture, batch).await?;
    }
    let spec = spec(&fixture, &durable("ordered"), &["jwl.evt.*.test.ordered"]);
    let mut deliveries = fixture.broker.subscribe(&spec).await?;
    let (received, _) = receive_tagged(&mut deliveries, "ordered", KEYS * PER_KEY).await?;
    let mut seen: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for delivery in &received {
        let payload = text(delivery.as_ref());
        let mut parts = payload.split(':').skip(1);
        let (Some(order), Some(n)) = (parts.next(), parts.next()) else {
            bail!("unexpected payload {payload}");
        };
        seen.entry(order.to_owned()).or_default().push(n.parse()?);
    }
    assert_eq!(seen.len(), KEYS);
    for (order, ns) in seen {
        assert_eq!(ns, (0..PER_KEY).collect::<Vec<_>>(), "order {order}");
    }
    Ok(())
}

/// What one subscription of a group received: (consumer index, payload).
type Received = Arc<Mutex<Vec<(usize, String)>>>;

/// Reads and acks every delivery of `deliveries` into `received` as `who`, until dropped.
fn collect(
    who: usize,
    mut deliveries: Deliveries,
    received: Received,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = deliveries.next().await {
            let _ = delivery.ack().await;
            received
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push((who, text(delivery.as_ref())));
        }
    })
}

fn snapshot(received: &Received) -> Vec<(usize, String)> {
    received
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

/// Two subscriptions of one durable consumer share the messages: each goes to one of them.
pub async fn competing_consumers_share_the_messages(fixture: Fixture) -> anyhow::Result<()> {
    let mut spec = spec(&fixture, &durable("shared"), &["jwl.evt.>"]);
    spec.prefetch = 4;
    let received: Received = Arc::default();
    let first = collect(0, fixture.broker.subscribe(&spec).await?, received.clone());
    let second = collect(1, fixture.broker.subscribe(&spec).await?, received.clone());
    // until both are members (a Kafka group shares its partitions out once both joined), send
    // warm-up messages of ever new keys
    let mut warm_ups = 0usize;
    eventually("both consumers to receive messages", SOON, || {
        warm_ups += 1;
        let message = event(&order(), "shared", "warmup", warm_ups);
        let fixture = &fixture;
        let received = &received;
        async move {
            publish(fixture, &[message])
                .await
                .map_err(|e| e.to_string())?;
            let who: Vec<usize> = snapshot(received).into_iter().map(|(who, _)| who).collect();
            if who.contains(&0) && who.contains(&1) {
                Ok(())
            } else {
                Err(format!("received by {who:?}"))
            }
        }
    })
    .await?;
    const COUNT: usize = 64;
    let batch: Vec<OutboundMessage> = (0..COUNT)
        .map(|n| event(&order(), "shared", "shared", n))
        .collect();
    publish(&fixture, &batch).await?;
    let shared = eventually("every message to be received", SOON, || async {
        let shared: Vec<(usize, String)> = snapshot(&received)
            .into_iter()
            .filter(|(_, payload)| payload.starts_with("shared:"))
            .collect();
        (shared.len() >= COUNT).then_some(shared)
    })
    .await?;
    first.abort();
    second.abort();
    let mut per_message: HashMap<&str, usize> = HashMap::new();
    for (_, payload) in &shared {
        *per_message.entry(payload.as_str()).or_default() += 1;
    }
    assert_eq!(per_message.len(), COUNT, "distinct messages received");
    assert!(
        per_message.values().all(|&times| times == 1),
        "a message was delivered twice: {per_message:?}"
    );
    let by_first = shared.iter().filter(|(who, _)| *who == 0).count();
    assert!(
        by_first > 0 && by_first < COUNT,
        "both consumers take a share ({by_first} of {COUNT} went to the first)"
    );
    Ok(())
}

/// A message received and never settled by a consumer that went away is delivered to the next
/// subscriber of the durable consumer.
pub async fn an_unacked_message_is_redelivered_after_a_crash(
    fixture: Fixture,
) -> anyhow::Result<()> {
    let mut spec = spec(&fixture, &durable("crash"), &["jwl.evt.>"]);
    spec.ack_wait = Duration::from_secs(2);
    let message = event(&order(), "crash", "crash", 0);
    publish(&fixture, std::slice::from_ref(&message)).await?;
    let mut deliveries = fixture.broker.subscribe(&spec).await?;
    let first = next(&mut deliveries, SOON).await?;
    assert_eq!(first.subject(), message.subject);
    let sequence = first.stream_sequence();
    // the crash: neither settled nor kept
    drop(first);
    drop(deliveries);
    let mut deliveries = fixture.broker.subscribe(&spec).await?;
    let again = next(&mut deliveries, SOON).await?;
    assert_eq!(again.subject(), message.subject);
    assert_eq!(again.payload(), &message.payload[..]);
    assert_eq!(again.stream_sequence(), sequence);
    if fixture.differences.counts_redeliveries {
        assert!(again.attempt() >= 2, "attempt {}", again.attempt());
    } else {
        assert_eq!(again.attempt(), 1);
    }
    again.ack().await?;
    Ok(())
}

/// `nak(delay)` delivers the message again after about `delay`, as attempt 2, and meanwhile
/// other keys' messages are delivered.
pub async fn nak_redelivers_after_the_delay_while_other_keys_flow(
    fixture: Fixture,
) -> anyhow::Result<()> {
    const DELAY: Duration = Duration::from_secs(5);
    const OTHERS: usize = 10;
    let spec = spec(&fixture, &durable("nak"), &["jwl.evt.>"]);
    let mut deliveries = fixture.broker.subscribe(&spec).await?;
    let poison = event(&order(), "nak", "poison", 0);
    publish(&fixture, std::slice::from_ref(&poison)).await?;
    let first = next(&mut deliveries, SOON).await?;
    assert_eq!(first.subject(), poison.subject);
    assert_eq!(first.attempt(), 1);
    let sequence = first.stream_sequence();
    first.nak(DELAY).await?;
    let nak_at = Instant::now();
    let others: Vec<OutboundMessage> = (0..OTHERS)
        .map(|n| event(&order(), "nak", "other", n))
        .collect();
    publish(&fixture, &others).await?;
    let mut others_before = 0usize;
    let deadline = nak_at + SOON;
    let again = loop {
        let delivery = next(
            &mut deliveries,
            deadline.saturating_duration_since(Instant::now()),
        )
        .await
        .context("waiting for the nak'ed message")?;
        if delivery.subject() == poison.subject {
            break delivery;
        }
        others_before += 1;
        delivery.ack().await?;
    };
    let waited = nak_at.elapsed();
    assert_eq!(again.attempt(), 2);
    assert_eq!(again.payload(), &poison.payload[..]);
    assert_eq!(again.stream_sequence(), sequence);
    assert!(
        waited >= DELAY / 2,
        "delivered again after {waited:?}, asked for {DELAY:?}"
    );
    assert!(
        others_before > 0,
        "no other key's message was delivered while the nak'ed one waited"
    );
    again.ack().await?;
    Ok(())
}

/// Acked and termed messages are not delivered again, also to a new subscription of the same
/// durable consumer, and the broker holds nothing more for it.
pub async fn acked_and_termed_messages_are_never_redelivered(
    fixture: Fixture,
) -> anyhow::Result<()> {
    let spec = spec(&fixture, &durable("settled"), &["jwl.evt.>"]);
    let acked = event(&order(), "settled", "acked", 0);
    let termed = event(&order(), "settled", "termed", 0);
    publish(&fixture, &[acked.clone(), termed.clone()]).await?;
    let mut deliveries = fixture.broker.subscribe(&spec).await?;
    for _ in 0..2 {
        let delivery = next(&mut deliveries, SOON).await?;
        if delivery.subject() == acked.subject {
            delivery.ack().await?;
        } else {
            assert_eq!(delivery.subject(), termed.subject);
            delivery.term().await?;
        }
    }
    publish(&fixture, &[event(&order(), "settled", "marker", 1)]).await?;
    let (_, others) = receive_tagged(&mut deliveries, "marker", 1).await?;
    assert!(others.is_empty(), "delivered again: {others:?}");
    drained(&fixture, &spec).await?;
    drop(deliveries);

    let mut deliveries = fixture.broker.subscribe(&spec).await?;
    publish(&fixture, &[event(&order(), "settled", "marker", 2)]).await?;
    let (_, others) = receive_tagged(&mut deliveries, "marker", 1).await?;
    assert!(others.is_empty(), "delivered again: {others:?}");
    drained(&fixture, &spec).await?;
    Ok(())
}

/// The backlog counts messages delivered and not acked, and messages not delivered yet.
pub async fn backlog_counts_what_is_left(fixture: Fixture) -> anyhow::Result<()> {
    const COUNT: u64 = 5;
    let spec = spec(&fixture, &durable("backlog"), &["jwl.evt.>"]);
    let mut deliveries = fixture.broker.subscribe(&spec).await?;
    let batch: Vec<OutboundMessage> = (0..COUNT as usize)
        .map(|n| event(&order(), "backlog", "backlog", n))
        .collect();
    publish(&fixture, &batch).await?;
    let mut held = Vec::new();
    for _ in 0..COUNT {
        held.push(next(&mut deliveries, SOON).await?);
    }
    let expected_pending = if fixture.differences.pending_includes_unsettled {
        COUNT
    } else {
        0
    };
    eventually(
        "the backlog to count the unacked messages",
        SOON,
        || async {
            match backlog(&fixture, &spec).await {
                Ok(b) if b.ack_pending == COUNT && b.pending == expected_pending => Ok(()),
                Ok(b) => Err(format!("{b:?}")),
                Err(error) => Err(error.to_string()),
            }
        },
    )
    .await?;
    for delivery in held {
        delivery.ack().await?;
    }
    drained(&fixture, &spec).await?;

    // no subscriber: what is published waits (pending, or handed to a pull that is gone)
    drop(deliveries);
    const LATER: u64 = 3;
    let later: Vec<OutboundMessage> = (0..LATER as usize)
        .map(|n| event(&order(), "backlog", "later", n))
        .collect();
    publish(&fixture, &later).await?;
    eventually("the backlog to count the new messages", SOON, || async {
        match backlog(&fixture, &spec).await {
            Ok(b) if b.pending + b.ack_pending == LATER => Ok(()),
            Ok(b) => Err(format!("{b:?}")),
            Err(error) => Err(error.to_string()),
        }
    })
    .await?;
    Ok(())
}

/// Only subjects matching a filter are delivered (NATS wildcards); the others do not stay in the
/// consumer's backlog.
pub async fn filters_select_subjects(fixture: Fixture) -> anyhow::Result<()> {
    let spec = spec(&fixture, &durable("filtered"), &["jwl.evt.*.test.kept"]);
    let order = order();
    let batch: Vec<OutboundMessage> = (0..6)
        .flat_map(|n| {
            [
                event(&order, "kept", "kept", n),
                event(&order, "dropped", "dropped", n),
            ]
        })
        .collect();
    publish(&fixture, &batch).await?;
    let mut deliveries = fixture.broker.subscribe(&spec).await?;
    let (kept, others) = receive_tagged(&mut deliveries, "kept", 6).await?;
    assert!(others.is_empty(), "outside the filter: {others:?}");
    let payloads: Vec<String> = kept
        .iter()
        .map(|delivery| text(delivery.as_ref()))
        .collect();
    let expected: Vec<String> = (0..6).map(|n| format!("kept:{order}:{n}")).collect();
    assert_eq!(payloads, expected);
    drained(&fixture, &spec).await?;
    Ok(())
}

/// A message larger than the broker takes (1 MB by default on both) fails alone and for good;
/// the rest of its batch is published.
pub async fn an_oversized_message_is_rejected_for_good(fixture: Fixture) -> anyhow::Result<()> {
    let mut huge = event(&order(), "size", "huge", 1);
    huge.payload = Bytes::from(vec![b'x'; 2 * 1024 * 1024]);
    let batch = [
        event(&order(), "size", "small", 0),
        huge,
        event(&order(), "size", "small", 2),
    ];
    let results = fixture.broker.publish_batch(&batch).await;
    assert_eq!(results.len(), 3);
    let rejected = results[1]
        .as_ref()
        .err()
        .context("the huge message was accepted")?;
    assert!(rejected.is_permanent(), "not permanent: {rejected}");
    ensure!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    let spec = spec(&fixture, &durable("size"), &["jwl.evt.>"]);
    let mut deliveries = fixture.broker.subscribe(&spec).await?;
    let (small, others) = receive_tagged(&mut deliveries, "small", 2).await?;
    assert_eq!(small.len(), 2);
    assert!(others.is_empty(), "{others:?}");
    Ok(())
}

/// After the broker restarts, publishing and consuming go on (re-subscribing where the
/// subscription reports an error, as the consumer loop does).
pub async fn consuming_resumes_after_a_broker_restart(fixture: Fixture) -> anyhow::Result<()> {
    let Some(restart) = &fixture.restart else {
        eprintln!(
            "skipping: this broker keeps its messages in memory, so nothing survives a restart"
        );
        return Ok(());
    };
    eventually("the broker to be healthy", SOON, || async {
        fixture.broker.is_healthy()
    })
    .await?;
    let spec = spec(&fixture, &durable("restart"), &["jwl.evt.>"]);
    let mut deliveries = fixture.broker.subscribe(&spec).await?;
    publish(&fixture, &[event(&order(), "restart", "before", 0)]).await?;
    receive_tagged(&mut deliveries, "before", 1).await?;
    drained(&fixture, &spec).await?;

    restart().await?;
    eventually("the broker to be healthy again", SOON, || async {
        fixture.broker.is_healthy()
    })
    .await?;
    let after = event(&order(), "restart", "after", 0);
    eventually("publishing to succeed again", SOON, || async {
        publish(&fixture, std::slice::from_ref(&after))
            .await
            .map_err(|error| format!("{error:#}"))
    })
    .await?;
    let deadline = Instant::now() + SOON * 2;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(
            !left.is_zero(),
            "the message published after the restart never arrived"
        );
        match tokio::time::timeout(left, deliveries.next()).await {
            Ok(Some(Ok(delivery))) => {
                delivery.ack().await?;
                if text(delivery.as_ref()).starts_with("after:") {
                    return Ok(());
                }
            }
            // the subscription failed: open it again, as the consumer loop does
            Ok(Some(Err(_)) | None) => {
                deliveries = match fixture.broker.subscribe(&spec).await {
                    Ok(deliveries) => deliveries,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
            Err(_) => bail!("the message published after the restart never arrived"),
        }
    }
}

// --- History: the operator tools' reads ------------------------------------------------------

/// A catalogue event of `order` (the operator tools read catalogue types), its payload
/// `history:<order>:<n>`.
fn catalogue_event(order: &OrderId, ty: EventType, n: usize) -> OutboundMessage {
    let id = uuid::Uuid::new_v4().to_string();
    OutboundMessage {
        dedup_id: id.clone(),
        subject: jwl_events::subject(order, ty),
        headers: vec![
            ("ce-id".to_owned(), id),
            ("ce-subject".to_owned(), order.to_string()),
            ("content-type".to_owned(), "application/json".to_owned()),
        ],
        payload: Bytes::from(format!("history:{order}:{n}")),
    }
}

fn payloads(messages: &[StoredMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|message| String::from_utf8_lossy(&message.payload).into_owned())
        .collect()
}

/// One order's events come back in publication order, with their subjects and headers, among
/// other orders' events; a type filter narrows them, and a read from a sequence starts there.
pub async fn history_reads_one_orders_events_in_order(fixture: Fixture) -> anyhow::Result<()> {
    let orders: Vec<OrderId> = (0..4).map(|_| OrderId::new()).collect();
    let types = [
        EventType::OrderCreated,
        EventType::PaymentAuthorized,
        EventType::InventoryReserved,
        EventType::PaymentCaptured,
    ];
    let mut batch = Vec::new();
    for (n, ty) in types.into_iter().enumerate() {
        for order in &orders {
            batch.push(catalogue_event(order, ty, n));
        }
    }
    publish(&fixture, &batch).await?;
    let settings = &fixture.settings;
    for order in &orders {
        let query = EventQuery {
            order: Some(*order),
            ..Default::default()
        };
        let read = fixture
            .broker
            .read_events(settings, &query, &|_| true)
            .await?;
        let expected: Vec<String> = (0..types.len())
            .map(|n| format!("history:{order}:{n}"))
            .collect();
        assert_eq!(payloads(&read), expected, "order {order}");
        let subjects: Vec<String> = read.iter().map(|m| m.subject.clone()).collect();
        let expected: Vec<String> = types
            .iter()
            .map(|ty| jwl_events::subject(order, *ty))
            .collect();
        assert_eq!(subjects, expected);
        assert_eq!(
            read[0].header("ce-subject"),
            Some(order.to_string().as_str())
        );
        ensure!(
            read.windows(2).all(|w| w[0].stream_seq < w[1].stream_seq),
            "not in stream order: {read:?}"
        );

        let typed = EventQuery {
            order: Some(*order),
            types: vec![EventType::PaymentCaptured, EventType::OrderCreated],
            ..Default::default()
        };
        let read_typed = fixture
            .broker
            .read_events(settings, &typed, &|_| true)
            .await?;
        assert_eq!(
            payloads(&read_typed),
            [format!("history:{order}:0"), format!("history:{order}:3")]
        );

        let from = EventQuery {
            order: Some(*order),
            start: ReadStart::Sequence(read[2].stream_seq),
            ..Default::default()
        };
        let read_from = fixture
            .broker
            .read_events(settings, &from, &|_| true)
            .await?;
        assert_eq!(payloads(&read_from), payloads(&read[2..]));

        let kept = fixture
            .broker
            .read_events(settings, &query, &|m| m.payload.ends_with(b":1"))
            .await?;
        assert_eq!(payloads(&kept), [format!("history:{order}:1")]);
    }
    Ok(())
}

/// A read of the whole stream holds every event; with a limit it is the first ones of that
/// read; a time start after everything reads nothing.
pub async fn history_reads_a_range_up_to_its_limit(fixture: Fixture) -> anyhow::Result<()> {
    let started = chrono::Utc::now() - chrono::Duration::seconds(5);
    let batch: Vec<OutboundMessage> = (0..8)
        .map(|n| catalogue_event(&OrderId::new(), EventType::OrderCreated, n))
        .collect();
    publish(&fixture, &batch).await?;
    let settings = &fixture.settings;
    let all = fixture
        .broker
        .read_events(settings, &EventQuery::default(), &|_| true)
        .await?;
    let mut read = payloads(&all);
    read.sort();
    let mut published: Vec<String> = batch
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    published.sort();
    assert_eq!(read, published);

    let limited = EventQuery {
        limit: Some(3),
        ..Default::default()
    };
    let first = fixture
        .broker
        .read_events(settings, &limited, &|_| true)
        .await?;
    assert_eq!(payloads(&first), payloads(&all[..3]));

    let since = EventQuery {
        start: ReadStart::Time(started),
        types: vec![EventType::OrderCreated],
        ..Default::default()
    };
    let since_start = fixture
        .broker
        .read_events(settings, &since, &|_| true)
        .await?;
    assert_eq!(payloads(&since_start), payloads(&all));
    let later = EventQuery {
        start: ReadStart::Time(chrono::Utc::now() + chrono::Duration::hours(1)),
        ..Default::default()
    };
    let none = fixture
        .broker
        .read_events(settings, &later, &|_| true)
        .await?;
    ensure!(none.is_empty(), "read after the end: {none:?}");
    Ok(())
}

/// A dead letter is listed (by consumer and order), read by its sequence, logged, deleted and
/// then gone; deleting it again is fine; another dead letter stays.
pub async fn history_lists_reads_and_deletes_dead_letters(fixture: Fixture) -> anyhow::Result<()> {
    let settings = &fixture.settings;
    let dead_letter = |consumer: &str, order: &OrderId, n: usize| {
        let mut message = catalogue_event(order, EventType::PaymentCaptured, n);
        message.subject = dead_letter_subject(consumer, &order.to_string());
        message.headers.extend([
            (CONSUMER_HEADER.to_owned(), consumer.to_owned()),
            (REASON_HEADER.to_owned(), "permanent".to_owned()),
            (ORDER_ID_HEADER.to_owned(), order.to_string()),
        ]);
        message
    };
    let (order, other) = (OrderId::new(), OrderId::new());
    publish(
        &fixture,
        &[
            dead_letter("payment__events", &order, 0),
            dead_letter("inventory__events", &other, 1),
        ],
    )
    .await?;
    let query = DeadLetterQuery {
        consumer: Some("payment__events".to_owned()),
        ..Default::default()
    };
    let listed = fixture
        .broker
        .read_dead_letters(settings, &query, &|_| true)
        .await?;
    assert_eq!(payloads(&listed), [format!("history:{order}:0")]);
    assert_eq!(listed[0].header(REASON_HEADER), Some("permanent"));
    let by_order = DeadLetterQuery {
        order: Some(other),
        ..Default::default()
    };
    let other_listed = fixture
        .broker
        .read_dead_letters(settings, &by_order, &|_| true)
        .await?;
    assert_eq!(payloads(&other_listed), [format!("history:{other}:1")]);
    let seq = listed[0].stream_seq;
    ensure!(
        seq != other_listed[0].stream_seq,
        "two dead letters share {seq}"
    );

    // the same message (NATS headers come back in no particular order)
    let sorted = |message: &StoredMessage| {
        let mut message = message.clone();
        message.headers.sort();
        message
    };
    let read = fixture.broker.dead_letter(settings, seq).await?;
    assert_eq!(read.as_ref().map(sorted), Some(sorted(&listed[0])));

    ensure!(!fixture.broker.dead_letter_logged(settings, seq).await?);
    let record = OutboundMessage {
        dedup_id: format!("dlqlog:{seq}"),
        subject: dead_letter_log_subject(seq),
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        payload: Bytes::from_static(b"{}"),
    };
    publish(&fixture, &[record]).await?;
    ensure!(fixture.broker.dead_letter_logged(settings, seq).await?);
    let log = fixture.broker.read_dead_letter_log(settings).await?;
    let subjects: Vec<&str> = log.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(subjects, [dead_letter_log_subject(seq)]);

    fixture.broker.delete_dead_letter(settings, seq).await?;
    assert_eq!(fixture.broker.dead_letter(settings, seq).await?, None);
    let listed = fixture
        .broker
        .read_dead_letters(settings, &query, &|_| true)
        .await?;
    ensure!(listed.is_empty(), "deleted, still listed: {listed:?}");
    fixture.broker.delete_dead_letter(settings, seq).await?;
    let everything = fixture
        .broker
        .read_dead_letters(settings, &DeadLetterQuery::default(), &|_| true)
        .await?;
    assert_eq!(payloads(&everything), [format!("history:{other}:1")]);
    assert_eq!(
        fixture.broker.read_dead_letter_log(settings).await?.len(),
        1
    );
    Ok(())
}

/// A durable consumer of the events stream is listed with its backlog once it has settled
/// what it read.
pub async fn history_lists_the_consumers_backlogs(fixture: Fixture) -> anyhow::Result<()> {
    let name = durable("listed");
    let spec = spec(&fixture, &name, &["jwl.evt.>"]);
    let mut deliveries = fixture.broker.subscribe(&spec).await?;
    let batch: Vec<OutboundMessage> = (0..3)
        .map(|n| event(&order(), "listed", "listed", n))
        .collect();
    publish(&fixture, &batch).await?;
    let (received, _) = receive_tagged(&mut deliveries, "listed", 3).await?;
    drop(received);
    drained(&fixture, &spec).await?;
    let settings = &fixture.settings;
    let listed = eventually(
        "the consumer to be listed with an empty backlog",
        SOON,
        || async {
            let backlogs = fixture
                .broker
                .consumer_backlogs(settings)
                .await
                .map_err(|error| error.to_string())?;
            match backlogs.iter().find(|b| b.name == name) {
                Some(listed) if listed.backlog.pending == 0 => Ok(()),
                _ => Err(format!("{backlogs:?}")),
            }
        },
    )
    .await;
    // closed while the broker runs (closing a Kafka consumer without its broker hangs)
    drop(deliveries);
    listed
}

/// A follower sees the events of its types published after it started — on either subject
/// layout, each order's in publication order, with their subjects, headers and payloads — and
/// neither the events published before nor those of other types.
pub async fn following_sees_the_events_published_after_it_started(
    fixture: Fixture,
) -> anyhow::Result<()> {
    let orders: Vec<OrderId> = (0..3).map(|_| OrderId::new()).collect();
    let before: Vec<OutboundMessage> = orders
        .iter()
        .map(|order| catalogue_event(order, EventType::OrderCreated, 0))
        .collect();
    publish(&fixture, &before).await?;
    let followed = [EventType::OrderCreated, EventType::PaymentCaptured];
    let mut events = fixture
        .broker
        .follow_events(&fixture.settings, &followed)
        .await?;

    let mut batch = Vec::new();
    for order in &orders {
        batch.push(catalogue_event(order, EventType::OrderCreated, 1));
        // not followed
        batch.push(catalogue_event(order, EventType::PaymentAuthorized, 2));
        let mut legacy = catalogue_event(order, EventType::PaymentCaptured, 3);
        legacy.subject = jwl_events::subjects_of(order, EventType::PaymentCaptured)[1].clone();
        batch.push(legacy);
        batch.push(catalogue_event(order, EventType::PaymentCaptured, 4));
    }
    publish(&fixture, &batch).await?;

    let text = |event: &WireMessage| String::from_utf8_lossy(&event.payload).into_owned();
    let mut seen: Vec<WireMessage> = Vec::new();
    let deadline = Instant::now() + SOON;
    while seen.len() < orders.len() * 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.next()).await {
            Ok(Some(event)) => seen.push(event),
            Ok(None) => bail!("the follower ended after {} events", seen.len()),
            Err(_) => bail!(
                "only {} events followed: {:?}",
                seen.len(),
                seen.iter().map(text).collect::<Vec<_>>()
            ),
        }
    }
    for order in &orders {
        let own: Vec<&WireMessage> = seen
            .iter()
            .filter(|event| event.header("ce-subject") == Some(order.to_string().as_str()))
            .collect();
        let payloads: Vec<String> = own.iter().map(|event| text(event)).collect();
        assert_eq!(
            payloads,
            [1, 3, 4].map(|n| format!("history:{order}:{n}")),
            "order {order}"
        );
        let subjects: Vec<&str> = own.iter().map(|event| event.subject.as_str()).collect();
        let captured = jwl_events::subjects_of(order, EventType::PaymentCaptured);
        assert_eq!(
            subjects,
            [
                jwl_events::subject(order, EventType::OrderCreated).as_str(),
                captured[1].as_str(),
                captured[0].as_str(),
            ]
        );
        ensure!(
            own.iter()
                .all(|event| event.header("content-type") == Some("application/json")),
            "headers lost: {own:?}"
        );
    }
    // nothing else arrives: not the events from before, not the other type
    if let Ok(Some(extra)) = tokio::time::timeout(Duration::from_millis(500), events.next()).await {
        bail!(
            "followed an event it should not have: {} on {}",
            text(&extra),
            extra.subject
        );
    }
    Ok(())
}
