//! One subscription: a consumer of the group `durable_name` on the stream's topic and the group's
//! retry topic, read by one task that hands [`Delivery`]s to the consumer loop.
//!
//! - **Settling and commits.** The task records every message it reads in a [`Tracker`]. A
//!   settled message (`ack`, `term`, a `nak` once its copy is in the retry topic, a message
//!   outside the filter at once) lets the partition's position advance to its lowest unsettled
//!   offset, which is *stored* in librdkafka; librdkafka commits stored positions every 200 ms,
//!   when partitions are revoked and when the consumer closes. A crash may thus deliver again what
//!   was settled in its last 200 ms: the inbox absorbs it.
//! - **Retries.** A copy in the retry topic is delivered once its `jwl_not_before` has passed:
//!   until then the task keeps it in memory, unsettled (so a crash delivers it again from the
//!   retry topic), and goes on reading.
//! - **Rebalances.** When partitions are revoked, what was read from them and not settled is
//!   forgotten (its later settlement changes nothing); the partition's next owner reads it again
//!   from the committed position. Nothing is re-delivered while this process owns a partition:
//!   a delivery dropped without being settled holds its partition's position until the next
//!   rebalance.
//! - **Flow control.** At most `max_ack_pending` messages are read and not settled at once, and
//!   at most `prefetch` wait to be taken by the consumer loop.
//! - **No partitions.** A consumer that the group leaves without any partition for
//!   [`STARVED_REJOIN`] leaves the group and joins it again (then after twice as long, up to
//!   [`MAX_REJOIN_BACKOFF`]). tansu 0.6.0 can hand a consumer that joins while a killed member
//!   of its group is still within its session an empty assignment, and never rebalances once
//!   that member expires: a service restarted right after a crash would read nothing, forever.
//!   Joining again after the session has expired makes it the group's only member. (A consumer
//!   that has no partition because the group has more members than partitions rejoins rarely,
//!   with the backoff.)
//! - **Errors.** librdkafka recovers from broker errors by itself (reconnecting, rejoining the
//!   group); the task logs them and the subscription stays open, so the stream never yields an
//!   `Err`. Dropping the stream closes the consumer (leaving the group: its partitions go to the
//!   other members at once) on a thread of its own ([`ClosedApart`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::{ClientCtx, KafkaBroker, publish::publish_error, wire};
use crate::transport::{ConsumerSpec, Deliveries, Delivery, TransportError};

/// How often librdkafka commits the stored positions.
const AUTO_COMMIT_INTERVAL: &str = "200";
/// A member that stops heartbeating loses its partitions after this long.
const SESSION_TIMEOUT: &str = "10000";
/// How often a subscription checks that the group gave it partitions.
const ASSIGNMENT_CHECK: Duration = Duration::from_secs(5);
/// How long a subscription without any partition waits before joining its group again: twice
/// the session timeout, so that a killed member it might be waiting for has expired.
const STARVED_REJOIN: Duration = Duration::from_secs(20);
/// Longest wait between two rejoins of a subscription that keeps getting no partition.
const MAX_REJOIN_BACKOFF: Duration = Duration::from_secs(600);

/// Opens the consumer and starts its reading task. Returns the deliveries and the counts of
/// what the subscription holds unsettled.
pub(super) fn open(
    broker: &KafkaBroker,
    spec: &ConsumerSpec,
    topic: String,
    retry_topic: String,
) -> Result<(Deliveries, Arc<Counts>), TransportError> {
    let failed = |error: KafkaError| TransportError::Subscribe {
        consumer: spec.durable_name.clone(),
        source: error.into(),
    };
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let context = SubscriptionCtx {
        client: broker.inner.context.clone(),
        tracker: tracker.clone(),
    };
    let consumer: StreamConsumer<SubscriptionCtx> = broker
        .inner
        .settings
        .client_config()
        .set("group.id", &spec.durable_name)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", AUTO_COMMIT_INTERVAL)
        .set("enable.auto.offset.store", "false")
        // a new group reads each topic from its start, as a new JetStream consumer does
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", SESSION_TIMEOUT)
        .set("heartbeat.interval.ms", "1000")
        .create_with_context(context)
        .map_err(failed)?;
    consumer
        .subscribe(&[topic.as_str(), retry_topic.as_str()])
        .map_err(failed)?;
    let consumer = ClosedApart(Some(consumer));
    let counts = Arc::new(Counts::default());
    let (deliveries, receiver) = mpsc::channel(spec.prefetch.max(1));
    let (settled, settlements) = mpsc::unbounded_channel();
    let max_ack_pending = usize::try_from(spec.max_ack_pending.max(1)).unwrap_or(usize::MAX);
    let reader = Reader {
        consumer,
        topic,
        starved: None,
        tracker,
        filters: spec.filter_subjects.clone(),
        retry_topic: retry_topic.clone(),
        link: Arc::new(Link {
            producer: broker.inner.producer.clone(),
            retry_topic,
            settled,
            counts: counts.clone(),
        }),
        permits: Arc::new(Semaphore::new(max_ack_pending)),
        delayed: BTreeMap::new(),
        delayed_seq: 0,
        group: spec.durable_name.clone(),
    };
    tokio::spawn(reader.run(deliveries, settlements));
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|delivery| (Ok(delivery), receiver))
    });
    Ok((stream.boxed(), counts))
}

/// What a subscription holds: read and not settled (waiting retries included), and of those
/// the redeliveries (retry copies).
#[derive(Debug, Default)]
pub(super) struct Counts {
    unsettled: AtomicU64,
    redelivered: AtomicU64,
}

impl Counts {
    pub(super) fn snapshot(&self) -> (u64, u64) {
        (
            self.unsettled.load(Ordering::Relaxed),
            self.redelivered.load(Ordering::Relaxed),
        )
    }
}

/// A message read and not settled: its flow-control permit and its place in the counts, both
/// given back when it is settled or dropped.
struct Claim {
    _permit: OwnedSemaphorePermit,
    counts: Arc<Counts>,
    redelivery: bool,
}

impl Claim {
    fn new(permit: OwnedSemaphorePermit, counts: Arc<Counts>, redelivery: bool) -> Self {
        counts.unsettled.fetch_add(1, Ordering::Relaxed);
        if redelivery {
            counts.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        Self {
            _permit: permit,
            counts,
            redelivery,
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.counts.unsettled.fetch_sub(1, Ordering::Relaxed);
        if self.redelivery {
            self.counts.redelivered.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Where a message was read, and in which ownership of its partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Position {
    topic: String,
    partition: i32,
    offset: i64,
    generation: u64,
}

/// The read and unsettled offsets of each partition, so that the committed position never
/// passes an unsettled message. Each ownership of a partition has its own generation: a
/// settlement from an earlier one is ignored.
#[derive(Debug, Default)]
pub(super) struct Tracker {
    lanes: HashMap<(String, i32), Lane>,
    generations: u64,
}

#[derive(Debug)]
struct Lane {
    generation: u64,
    unsettled: BTreeSet<i64>,
    /// The offset after the last one read.
    next: i64,
}

impl Tracker {
    /// Records that the message at `offset` was read. Reading at or before an offset read
    /// earlier means the partition was re-read from its committed position (a rebalance): what
    /// was unsettled there is forgotten.
    pub(super) fn read(&mut self, topic: &str, partition: i32, offset: i64) -> Position {
        let key = (topic.to_owned(), partition);
        let rewound = self.lanes.get(&key).is_some_and(|lane| offset < lane.next);
        if rewound {
            self.lanes.remove(&key);
        }
        let generations = &mut self.generations;
        let lane = self.lanes.entry(key).or_insert_with(|| {
            *generations += 1;
            Lane {
                generation: *generations,
                unsettled: BTreeSet::new(),
                next: offset,
            }
        });
        lane.unsettled.insert(offset);
        lane.next = offset + 1;
        Position {
            topic: topic.to_owned(),
            partition,
            offset,
            generation: lane.generation,
        }
    }

    /// Records that the message at `position` was settled; returns the partition's new position
    /// to commit (its lowest unsettled offset, or the offset after the last read), or `None` when
    /// the settlement is stale.
    pub(super) fn settle(&mut self, position: &Position) -> Option<i64> {
        let lane = self
            .lanes
            .get_mut(&(position.topic.clone(), position.partition))?;
        if lane.generation != position.generation || !lane.unsettled.remove(&position.offset) {
            return None;
        }
        Some(lane.unsettled.first().copied().unwrap_or(lane.next))
    }

    /// Forgets a partition this consumer no longer owns.
    pub(super) fn revoke(&mut self, topic: &str, partition: i32) {
        self.lanes.remove(&(topic.to_owned(), partition));
    }
}

/// The consumer's context: the broker's client context, plus forgetting revoked partitions.
struct SubscriptionCtx {
    client: ClientCtx,
    tracker: Arc<Mutex<Tracker>>,
}

impl ClientContext for SubscriptionCtx {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.client.log(level, facility, message);
    }

    fn stats(&self, statistics: Statistics) {
        self.client.stats(statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.client.error(error, reason);
    }
}

impl ConsumerContext for SubscriptionCtx {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(revoked) => {
                let mut tracker = self
                    .tracker
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                for element in revoked.elements() {
                    tracker.revoke(element.topic(), element.partition());
                }
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(error) => tracing::warn!(%error, "Kafka rebalance failed"),
        }
    }
}

/// The subscription's consumer, closed on a thread of its own when dropped (whether the reading
/// task ended or was cancelled by a runtime shutting down). Closing leaves the group and commits
/// the stored positions, and rdkafka's `Drop` polls until librdkafka says it is closed, with no
/// deadline: against a broker that is gone or never answers, it never returns. Dropped on a
/// runtime worker it would stall that worker; dropped on the blocking pool it would make the
/// runtime's shutdown wait for it forever. A detached thread blocks nobody, and the process can
/// exit while it waits.
struct ClosedApart(Option<StreamConsumer<SubscriptionCtx>>);

impl std::ops::Deref for ClosedApart {
    type Target = StreamConsumer<SubscriptionCtx>;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("the consumer is only taken by drop")
    }
}

impl Drop for ClosedApart {
    fn drop(&mut self) {
        let Some(consumer) = self.0.take() else {
            return;
        };
        let closing = std::thread::Builder::new()
            .name("jwl-kafka-close".into())
            .spawn(move || {
                drop(consumer);
                tracing::debug!("Kafka consumer closed");
            });
        if let Err(error) = closing {
            // the consumer went down with the closure: it was closed on this thread
            tracing::warn!(%error, "no thread to close a Kafka consumer on");
        }
    }
}

/// What a delivery needs to settle itself: the reading task's settlement queue, and the producer
/// and retry topic for `nak`.
struct Link {
    producer: FutureProducer<ClientCtx>,
    retry_topic: String,
    settled: mpsc::UnboundedSender<Position>,
    counts: Arc<Counts>,
}

type Item = Box<dyn Delivery>;

/// The reading task's state.
struct Reader {
    consumer: ClosedApart,
    /// The stream's topic (the other subscribed topic is `retry_topic`).
    topic: String,
    /// Since when the group has given this consumer no partition, and how long it waits from
    /// then before joining again.
    starved: Option<(Instant, Duration)>,
    tracker: Arc<Mutex<Tracker>>,
    filters: Vec<String>,
    retry_topic: String,
    link: Arc<Link>,
    permits: Arc<Semaphore>,
    /// Retry copies read before their time, by (not before, arrival).
    delayed: BTreeMap<(u64, u64), KafkaDelivery>,
    delayed_seq: u64,
    group: String,
}

enum Event {
    Closed,
    Settled(Position),
    Due,
    CheckAssignment,
    Read(OwnedSemaphorePermit, KafkaResult<OwnedMessage>),
}

impl Reader {
    async fn run(
        mut self,
        deliveries: mpsc::Sender<Item>,
        mut settlements: mpsc::UnboundedReceiver<Position>,
    ) {
        let mut check = tokio::time::interval(ASSIGNMENT_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_due = self
                .delayed
                .keys()
                .next()
                .map(|(not_before, _)| *not_before);
            let event = tokio::select! {
                biased;
                () = deliveries.closed() => Event::Closed,
                Some(position) = settlements.recv() => Event::Settled(position),
                () = due(next_due) => Event::Due,
                _ = check.tick() => Event::CheckAssignment,
                Some((permit, read)) = read(&self.consumer, &self.permits) => Event::Read(permit, read),
            };
            let ready = match event {
                Event::Closed => break,
                Event::Settled(position) => {
                    self.settled(&position);
                    None
                }
                Event::Due => self.delayed.pop_first().map(|(_, delivery)| delivery),
                Event::CheckAssignment => {
                    self.rejoin_if_starved();
                    None
                }
                Event::Read(permit, Ok(message)) => self.accept(permit, message),
                Event::Read(_, Err(error)) => {
                    tracing::warn!(group = %self.group, %error, "Kafka consumer error");
                    None
                }
            };
            if let Some(delivery) = ready
                && deliveries.send(Box::new(delivery)).await.is_err()
            {
                break;
            }
        }
        // dropping `self` closes the consumer, apart
    }

    /// Leaves the group and joins it again when it has given this consumer no partition for
    /// the current wait (see the module doc), doubling the wait each time.
    fn rejoin_if_starved(&mut self) {
        let assigned = self
            .consumer
            .assignment()
            .map_or(1, |assignment| assignment.count());
        if assigned > 0 {
            self.starved = None;
            return;
        }
        let now = Instant::now();
        let (since, wait) = self.starved.get_or_insert((now, STARVED_REJOIN));
        if now.duration_since(*since) < *wait {
            return;
        }
        tracing::warn!(group = %self.group, without_partitions = ?*wait,
            "the Kafka group gives this consumer no partition: joining it again");
        *since = now;
        *wait = (*wait * 2).min(MAX_REJOIN_BACKOFF);
        self.consumer.unsubscribe();
        if let Err(error) = self
            .consumer
            .subscribe(&[self.topic.as_str(), self.retry_topic.as_str()])
        {
            tracing::warn!(group = %self.group, %error, "joining the Kafka group again failed");
        }
    }

    /// Tracks a message just read; returns it if it is to be delivered now. One outside the
    /// filter is settled at once; a retry copy whose time has not come is kept for later.
    fn accept(
        &mut self,
        permit: OwnedSemaphorePermit,
        message: OwnedMessage,
    ) -> Option<KafkaDelivery> {
        let position =
            self.lock_tracker()
                .read(message.topic(), message.partition(), message.offset());
        let parsed = Parsed::of(&message);
        let is_retry = message.topic() == self.retry_topic;
        if !is_retry && !wire::matches_any(&self.filters, &parsed.subject) {
            self.settled(&position);
            return None;
        }
        let attempt = if is_retry { parsed.attempt.max(2) } else { 1 };
        let delivery = KafkaDelivery {
            stream_sequence: parsed
                .origin_offset
                .unwrap_or_else(|| u64::try_from(message.offset()).unwrap_or_default()),
            subject: parsed.subject,
            headers: parsed.headers,
            attempt,
            message,
            position,
            claim: Mutex::new(Some(Claim::new(
                permit,
                self.link.counts.clone(),
                attempt > 1,
            ))),
            link: self.link.clone(),
        };
        match parsed.not_before {
            Some(not_before) if !wire::wait_until(not_before, SystemTime::now()).is_zero() => {
                self.delayed_seq += 1;
                self.delayed
                    .insert((not_before, self.delayed_seq), delivery);
                None
            }
            _ => Some(delivery),
        }
    }

    /// Stores the partition's new position after a settlement, for the next commit.
    fn settled(&self, position: &Position) {
        let Some(next) = self.lock_tracker().settle(position) else {
            return;
        };
        let mut list = TopicPartitionList::with_capacity(1);
        let stored = list
            .add_partition_offset(&position.topic, position.partition, Offset::Offset(next))
            .and_then(|()| self.consumer.store_offsets(&list));
        // the list must not outlive the consumer (librdkafka would hang destroying it)
        drop(list);
        if let Err(error) = stored {
            // the partition was revoked meanwhile: its next owner reads the message again
            tracing::debug!(group = %self.group, topic = %position.topic,
                partition = position.partition, %error, "could not store a Kafka position");
        }
    }

    fn lock_tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Waits until `not_before` (milliseconds since the epoch); forever when there is none.
async fn due(not_before: Option<u64>) {
    match not_before {
        Some(not_before) => {
            tokio::time::sleep(wire::wait_until(not_before, SystemTime::now())).await
        }
        None => std::future::pending().await,
    }
}

/// The next message, once fewer than `max_ack_pending` are unsettled. `None` never happens (the
/// semaphore is never closed).
async fn read(
    consumer: &StreamConsumer<SubscriptionCtx>,
    permits: &Arc<Semaphore>,
) -> Option<(OwnedSemaphorePermit, KafkaResult<OwnedMessage>)> {
    let permit = permits.clone().acquire_owned().await.ok()?;
    let read = consumer.recv().await.map(|message| message.detach());
    Some((permit, read))
}

/// The transport's view of a Kafka message.
struct Parsed {
    subject: String,
    headers: Vec<(String, String)>,
    attempt: u32,
    not_before: Option<u64>,
    origin_offset: Option<u64>,
}

impl Parsed {
    fn of(message: &OwnedMessage) -> Self {
        let mut parsed = Self {
            subject: String::new(),
            headers: Vec::new(),
            attempt: 1,
            not_before: None,
            origin_offset: None,
        };
        let Some(headers) = message.headers() else {
            return parsed;
        };
        for header in headers.iter() {
            let value = header
                .value
                .map(|value| String::from_utf8_lossy(value).into_owned())
                .unwrap_or_default();
            match header.key {
                wire::SUBJECT => parsed.subject = value,
                wire::ATTEMPT => parsed.attempt = value.parse().unwrap_or(2),
                wire::NOT_BEFORE => parsed.not_before = value.parse().ok(),
                wire::ORIGIN_OFFSET => parsed.origin_offset = value.parse().ok(),
                name => {
                    if let Some(name) = wire::from_wire_name(name) {
                        parsed.headers.push((name, value));
                    }
                }
            }
        }
        parsed
    }
}

/// A message handed to the consumer loop.
struct KafkaDelivery {
    message: OwnedMessage,
    subject: String,
    headers: Vec<(String, String)>,
    attempt: u32,
    stream_sequence: u64,
    position: Position,
    /// `None` once settled.
    claim: Mutex<Option<Claim>>,
    link: Arc<Link>,
}

impl KafkaDelivery {
    fn is_settled(&self) -> bool {
        self.claim
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_none()
    }

    /// Settles the message (once; later calls do nothing).
    fn settle(&self) -> Result<(), TransportError> {
        let claim = self
            .claim
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if claim.is_none() {
            return Ok(());
        }
        self.link
            .settled
            .send(self.position.clone())
            .map_err(|_| TransportError::Settle("the Kafka subscription is closed".into()))
    }

    /// Produces the copy that `nak(delay)` asks for to the retry topic.
    async fn produce_retry(&self, delay: Duration) -> Result<(), TransportError> {
        let not_before = wire::epoch_millis(SystemTime::now() + delay).to_string();
        let attempt = (self.attempt + 1).to_string();
        let origin = self.stream_sequence.to_string();
        let own = [wire::ATTEMPT, wire::NOT_BEFORE, wire::ORIGIN_OFFSET];
        let carried = self.message.headers().map_or(0, |headers| headers.count());
        let mut headers = OwnedHeaders::new_with_capacity(carried + own.len());
        if let Some(original) = self.message.headers() {
            for header in original.iter().filter(|header| !own.contains(&header.key)) {
                headers = headers.insert(header);
            }
        }
        for (key, value) in own.into_iter().zip([&attempt, &not_before, &origin]) {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_str()),
            });
        }
        let payload = self.message.payload().unwrap_or_default();
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.link.retry_topic)
            .payload(payload)
            .headers(headers);
        if let Some(key) = self.message.key() {
            record = record.key(key);
        }
        let sent = self
            .link
            .producer
            .send_result(record)
            .map_err(|(error, _record)| publish_error(error, &self.subject))
            .map_err(|error| TransportError::Settle(error.into()))?;
        match sent.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((error, _message))) => Err(TransportError::Settle(error.into())),
            Err(_canceled) => Err(TransportError::Settle(
                "the Kafka producer went away before reporting the retry copy".into(),
            )),
        }
    }
}

#[async_trait]
impl Delivery for KafkaDelivery {
    fn subject(&self) -> &str {
        &self.subject
    }

    fn headers(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect()
    }

    fn payload(&self) -> &[u8] {
        self.message.payload().unwrap_or_default()
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    fn stream_sequence(&self) -> u64 {
        self.stream_sequence
    }

    async fn ack(&self) -> Result<(), TransportError> {
        self.settle()
    }

    /// Produces a copy to the retry topic, delivered after `delay` with the next attempt number,
    /// then settles this one. If the copy cannot be produced, this one stays unsettled (it is
    /// delivered again after the next rebalance).
    async fn nak(&self, delay: Duration) -> Result<(), TransportError> {
        if self.is_settled() {
            return Ok(());
        }
        self.produce_retry(delay).await?;
        self.settle()
    }

    async fn term(&self) -> Result<(), TransportError> {
        self.settle()
    }

    /// Nothing to do: Kafka has no ack timer.
    async fn in_progress(&self) -> Result<(), TransportError> {
        Ok(())
    }
}

/// Messages of `topics` that `reader`'s group has not committed past: Σ (high watermark −
/// committed offset, or − low watermark where nothing is committed). Topics that do not exist
/// count nothing.
pub(super) fn unread(
    reader: &BaseConsumer<ClientCtx>,
    topics: &[String],
    timeout: Duration,
) -> KafkaResult<u64> {
    let mut wanted = TopicPartitionList::new();
    for topic in topics {
        let metadata = reader.fetch_metadata(Some(topic), timeout)?;
        for found in metadata.topics() {
            if found.error().is_some() {
                continue;
            }
            for partition in found.partitions() {
                wanted.add_partition(topic, partition.id());
            }
        }
    }
    let committed = reader.committed_offsets(wanted, timeout)?;
    let positions: Vec<(String, i32, Offset)> = committed
        .elements()
        .iter()
        .map(|element| {
            (
                element.topic().to_owned(),
                element.partition(),
                element.offset(),
            )
        })
        .collect();
    // the list must not outlive the consumer (librdkafka would hang destroying it)
    drop(committed);
    let mut pending = 0u64;
    for (topic, partition, offset) in positions {
        let (low, high) = reader.fetch_watermarks(&topic, partition, timeout)?;
        let from = match offset {
            Offset::Offset(committed) => committed.max(low),
            _ => low,
        };
        pending += u64::try_from(high - from).unwrap_or_default();
    }
    Ok(pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_position_stops_at_the_lowest_unsettled_offset() {
        let mut tracker = Tracker::default();
        let read: Vec<Position> = (10..14)
            .map(|offset| tracker.read("t", 0, offset))
            .collect();
        // settled out of order: 11 and 13 first, then 10, then 12
        assert_eq!(tracker.settle(&read[1]), Some(10));
        assert_eq!(tracker.settle(&read[3]), Some(10));
        assert_eq!(tracker.settle(&read[0]), Some(12));
        assert_eq!(tracker.settle(&read[2]), Some(14));
        // settling twice changes nothing
        assert_eq!(tracker.settle(&read[2]), None);
        // another partition is independent
        let other = tracker.read("t", 1, 3);
        assert_eq!(tracker.settle(&other), Some(4));
    }

    #[test]
    fn settlements_from_an_earlier_ownership_are_ignored() {
        let mut tracker = Tracker::default();
        let first = tracker.read("t", 0, 5);
        let _second = tracker.read("t", 0, 6);
        // re-read from the committed position after a rebalance
        let again = tracker.read("t", 0, 5);
        assert_eq!(tracker.settle(&first), None);
        assert_eq!(tracker.settle(&again), Some(6));
        // revoked, then assigned again further on
        let later = tracker.read("t", 0, 6);
        tracker.revoke("t", 0);
        assert_eq!(tracker.settle(&later), None);
        let after = tracker.read("t", 0, 20);
        assert_eq!(tracker.settle(&after), Some(21));
    }
}
