//! The Kafka broker ([`KafkaBroker`]): the transport traits implemented over librdkafka
//! (`rdkafka`, its bundled build). See `docs/kafka.md` for operators; the mapping in short:
//!
//! - **Streams are topics.** Each JetStream stream of [`MessagingSettings`] is a topic of the same
//!   name (`JWL_EVENTS`, `JWL_DLQ`, …), created idempotently by
//!   [`ensure_streams`](Broker::ensure_streams) with [`KafkaSettings::partitions`] partitions
//!   (default 8) and `retention.ms` from the stream's max age. An existing topic is kept as it
//!   is (Kafka can only add partitions, which would move keys between partitions). A message
//!   goes to the topic of the stream whose subjects hold its subject (`jwl.evt.>` → events, …).
//! - **Key = order.** The message key is the CloudEvents subject (`ce-subject`, the order id),
//!   else the order token of `jwl.evt.<type>.<order>`, else the subject: one order's messages
//!   stay in one partition, in order.
//! - **Headers.** Kafka has no subjects: the subject travels in the `jwl_subject` header. Every
//!   header is carried as a Kafka header; the NATS binding's `ce-` names are written with the
//!   CloudEvents Kafka binding's `ce_` prefix and read back as `ce-`. Headers starting with `jwl_`
//!   belong to this transport and are not handed to the application.
//! - **Publishing.** One idempotent producer (`enable.idempotence=true`, `acks=all`);
//!   [`publish_batch`](Publisher::publish_batch) enqueues the whole batch, then awaits every
//!   delivery report. A receipt's `sequence` is the offset in the message's partition. Kafka has
//!   no deduplication by id: `duplicate` is always false, and a re-published message (a relay
//!   that crashed after publishing, before marking its rows) is delivered again, to be absorbed
//!   by the consumers' inbox. The dedup id travels in `jwl_msg_id`, for operators.
//! - **Consumers.** A durable consumer is a consumer group named `durable_name`, reading the
//!   stream's topic and its own retry topic (`<topic>.retry.<group>`). Filter subjects are matched
//!   on the client (NATS rules, `*` and `>`); a message that matches none is settled at once.
//!   See `subscription.rs` for settling, retries and redelivery. [`ConsumerSpec::replaces`] does
//!   not apply: a new group starts at the beginning of its topics (`auto.offset.reset=earliest`),
//!   as a new JetStream consumer does, and no Kafka deployment has superseded groups to take over
//!   from.
//! - **Settling.** Kafka commits a position per partition, not per message: a message is settled
//!   by `ack` or `term`, and the committed position of a partition advances only up to its lowest
//!   unsettled offset (the consumer loop settles out of order). `nak(delay)` produces a copy to
//!   the retry topic (`jwl_attempt` = n+1, `jwl_not_before` = now + delay), then settles the
//!   original, so the partition keeps flowing for other orders; the copy is delivered once its
//!   time has come. `in_progress` does nothing: Kafka has no ack timer, so
//!   [`ConsumerSpec::ack_wait`] does not apply. What bounds a stuck consumer instead is the
//!   group's session (a consumer that stops heartbeating loses its partitions after
//!   `session.timeout.ms`, 10 s) and `max.poll.interval.ms` (5 min: a consumer whose reader does
//!   not poll, because nobody reads its deliveries, leaves the group). Unsettled messages are
//!   delivered again after a rebalance (a crash, a scale-out), with `attempt()` 1: Kafka does
//!   not count deliveries.
//! - **Backlog.** `pending` = Σ over the partitions of both topics of (high watermark − committed
//!   offset), which includes messages delivered and not settled and messages outside the filter
//!   not read yet; `ack_pending` and `redelivered` count what this process has been given and
//!   not settled.
//! - **Operator reads** ([`History`](crate::transport::History)): assigned, group-less readers up
//!   to the high watermarks; an event's `stream_seq` is its offset, a dead letter's is partition
//!   and offset packed; a deleted dead letter is a marker record. See `history.rs`.
//! - **Health.** From librdkafka's statistics (every second): healthy while a broker connection
//!   is up, unhealthy on `AllBrokersDown`.

mod follow;
mod history;
mod publish;
mod subscription;
mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;

use super::{
    Broker, ConsumerBacklog, ConsumerSpec, Deliveries, OutboundMessage, PublishReceipt, Publisher,
    Subscriber, TransportError, UNLIMITED_AGE, stream_shapes,
};
use crate::settings::MessagingSettings;
use subscription::Counts;

/// How to reach Kafka and how to shape new topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// Bootstrap brokers, `host:port` separated by commas (`bootstrap.servers`).
    pub brokers: String,
    /// Partitions of each topic created by `ensure_streams` (and of the retry topics).
    pub partitions: i32,
    /// `client.id` of the producer and the consumers, e.g. `jwl-payment`.
    pub client_id: String,
    /// Bound of one administrative or metadata request (creating topics, reading offsets).
    pub request_timeout: Duration,
}

impl KafkaSettings {
    /// Default partition count of new topics.
    pub const DEFAULT_PARTITIONS: i32 = 8;

    /// Settings for `brokers` with the defaults: 8 partitions, a `client.id` of `jwl-<pid>`.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            partitions: Self::DEFAULT_PARTITIONS,
            client_id: format!("jwl-{}", std::process::id()),
            request_timeout: Duration::from_secs(10),
        }
    }

    /// The options every client of this broker shares.
    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            // a request waits behind an open fetch on the broker's connection: keep fetches short
            .set("fetch.wait.max.ms", "50")
            .set_log_level(RDKafkaLogLevel::Warning);
        config
    }
}

/// A Kafka broker: a producer, an admin client, and consumer groups opened by
/// [`subscribe`](Subscriber::subscribe). Cheap to clone; clones share the clients.
#[derive(Clone)]
pub struct KafkaBroker {
    inner: Arc<Inner>,
}

struct Inner {
    settings: KafkaSettings,
    /// Which topic holds a subject: (subject prefix, topic).
    routes: Vec<(String, String)>,
    /// Replicas of the retry topics (`stream_replicas` of the messaging settings).
    replicas: usize,
    producer: FutureProducer<ClientCtx>,
    admin: AdminClient<ClientCtx>,
    context: ClientCtx,
    /// The live subscriptions' counts, by group, for `backlog`.
    subscriptions: Mutex<HashMap<String, Vec<Weak<Counts>>>>,
    /// One non-subscribed consumer per group, to read its committed offsets.
    offset_readers: Mutex<HashMap<String, Arc<BaseConsumer<ClientCtx>>>>,
}

impl std::fmt::Debug for KafkaBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBroker")
            .field("settings", &self.inner.settings)
            .field("routes", &self.inner.routes)
            .finish_non_exhaustive()
    }
}

impl KafkaBroker {
    /// Creates the clients for `kafka`, publishing to the streams `messaging` names. The
    /// connection is made in the background (librdkafka reconnects by itself); this waits up
    /// to `kafka.request_timeout` for a first answer, only to report health early.
    pub async fn connect(
        kafka: KafkaSettings,
        messaging: &MessagingSettings,
    ) -> Result<Self, TransportError> {
        let connect_failed = |error: KafkaError| TransportError::Connect {
            url: kafka.brokers.clone(),
            source: error.into(),
        };
        if kafka.brokers.trim().is_empty() {
            return Err(TransportError::Connect {
                url: String::new(),
                source: "no Kafka broker given".into(),
            });
        }
        let mut routes = Vec::with_capacity(4);
        for shape in stream_shapes(messaging) {
            let topic = wire::topic_of(shape.name)?;
            routes.push((
                shape.subjects.trim_end_matches('>').to_owned(),
                topic.to_owned(),
            ));
        }
        let context = ClientCtx::default();
        let producer: FutureProducer<ClientCtx> = kafka
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // librdkafka's default, named: history.rs computes a key's partition the same way
            .set("partitioner", "consistent_random")
            .set("linger.ms", "2")
            .set("statistics.interval.ms", "1000")
            .create_with_context(context.clone())
            .map_err(connect_failed)?;
        let admin: AdminClient<ClientCtx> = kafka
            .client_config()
            .create_with_context(context.clone())
            .map_err(connect_failed)?;
        let broker = Self {
            inner: Arc::new(Inner {
                settings: kafka,
                routes,
                replicas: messaging.stream_replicas.unwrap_or(1),
                producer,
                admin,
                context,
                subscriptions: Mutex::default(),
                offset_readers: Mutex::default(),
            }),
        };
        let probe = broker.clone();
        let timeout = broker.inner.settings.request_timeout;
        let answered = tokio::task::spawn_blocking(move || {
            probe
                .inner
                .producer
                .client()
                .fetch_metadata(None, timeout)
                .map(drop)
        })
        .await;
        match answered {
            Ok(Ok(())) => broker.inner.context.health.set(true),
            Ok(Err(error)) => tracing::info!(brokers = %broker.inner.settings.brokers, %error,
                "Kafka is not reachable yet; connecting in the background"),
            Err(error) => tracing::warn!(%error, "the Kafka metadata probe failed"),
        }
        Ok(broker)
    }

    /// The settings this broker was created with.
    pub fn settings(&self) -> &KafkaSettings {
        &self.inner.settings
    }

    /// The topic that holds `subject`.
    fn topic_for(&self, subject: &str) -> Result<&str, TransportError> {
        self.inner
            .routes
            .iter()
            .find(|(prefix, _)| subject.starts_with(prefix.as_str()))
            .map(|(_, topic)| topic.as_str())
            .ok_or_else(|| TransportError::Rejected(format!("no stream holds subject {subject:?}")))
    }

    /// Creates the topics that do not exist yet (`partitions` each, `max_age` as
    /// `retention.ms`); an existing topic is left as it is.
    async fn create_topics(
        &self,
        topics: &[(String, Duration)],
        replicas: usize,
    ) -> Result<(), TransportError> {
        let settings = &self.inner.settings;
        let replicas = i32::try_from(replicas).unwrap_or(i32::MAX);
        let retention: Vec<String> = topics
            .iter()
            .map(|(_, max_age)| match *max_age {
                UNLIMITED_AGE => "-1".to_owned(),
                age => age.as_millis().to_string(),
            })
            .collect();
        let new_topics: Vec<NewTopic<'_>> = topics
            .iter()
            .zip(&retention)
            .map(|((name, _), retention)| {
                NewTopic::new(name, settings.partitions, TopicReplication::Fixed(replicas))
                    .set("retention.ms", retention)
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(settings.request_timeout));
        let results = tokio::time::timeout(
            settings.request_timeout,
            self.inner.admin.create_topics(&new_topics, &options),
        )
        .await
        .map_err(|_| TransportError::Provision {
            what: "Kafka topics".to_owned(),
            source: format!("no answer within {:?}", settings.request_timeout).into(),
        })?
        .map_err(|error| TransportError::Provision {
            what: "Kafka topics".to_owned(),
            source: error.into(),
        })?;
        for result in results {
            match result {
                Ok(topic) => tracing::info!(%topic, "Kafka topic created"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, RDKafkaErrorCode::InvalidReplicationFactor)) => {
                    return Err(TransportError::StreamConflict(format!(
                        "topic {topic} cannot be created with {replicas} replicas: \
                         JWL_STREAM_REPLICAS must not exceed the number of Kafka brokers"
                    )));
                }
                Err((topic, code)) => {
                    return Err(TransportError::Provision {
                        what: format!("topic {topic}"),
                        source: KafkaError::AdminOp(code).into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The consumer that reads `group`'s committed offsets (never subscribes).
    fn offset_reader(&self, group: &str) -> Result<Arc<BaseConsumer<ClientCtx>>, TransportError> {
        let mut readers = self
            .inner
            .offset_readers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(reader) = readers.get(group) {
            return Ok(reader.clone());
        }
        let reader: BaseConsumer<ClientCtx> = self
            .inner
            .settings
            .client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create_with_context(self.inner.context.clone())
            .map_err(|error| TransportError::Subscribe {
                consumer: group.to_owned(),
                source: error.into(),
            })?;
        let reader = Arc::new(reader);
        readers.insert(group.to_owned(), reader.clone());
        Ok(reader)
    }

    /// Remembers a subscription's counts for `backlog`.
    fn register(&self, group: &str, counts: &Arc<Counts>) {
        let mut subscriptions = self
            .inner
            .subscriptions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let live = subscriptions.entry(group.to_owned()).or_default();
        live.retain(|counts| counts.strong_count() > 0);
        live.push(Arc::downgrade(counts));
    }

    /// (unsettled, unsettled redeliveries) of `group`'s subscriptions in this process.
    fn in_hand(&self, group: &str) -> (u64, u64) {
        let subscriptions = self
            .inner
            .subscriptions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        subscriptions
            .get(group)
            .into_iter()
            .flatten()
            .filter_map(Weak::upgrade)
            .map(|counts| counts.snapshot())
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    }
}

#[async_trait]
impl Publisher for KafkaBroker {
    async fn publish_batch(
        &self,
        batch: &[OutboundMessage],
    ) -> Vec<Result<PublishReceipt, TransportError>> {
        publish::publish_batch(self, batch).await
    }
}

#[async_trait]
impl Subscriber for KafkaBroker {
    async fn subscribe(&self, spec: &ConsumerSpec) -> Result<Deliveries, TransportError> {
        let topic = wire::topic_of(&spec.stream)?.to_owned();
        let retry_topic = wire::retry_topic_of(&topic, &spec.durable_name)?;
        // the retry topic keeps a copy until it is delivered: as long as the stream keeps one
        self.create_topics(&[(retry_topic.clone(), UNLIMITED_AGE)], self.inner.replicas)
            .await?;
        let (deliveries, counts) = subscription::open(self, spec, topic, retry_topic)?;
        self.register(&spec.durable_name, &counts);
        Ok(deliveries)
    }

    async fn backlog(&self, spec: &ConsumerSpec) -> Result<ConsumerBacklog, TransportError> {
        let topic = wire::topic_of(&spec.stream)?.to_owned();
        let retry_topic = wire::retry_topic_of(&topic, &spec.durable_name)?;
        let reader = self.offset_reader(&spec.durable_name)?;
        let timeout = self.inner.settings.request_timeout;
        let group = spec.durable_name.clone();
        let pending = tokio::task::spawn_blocking(move || {
            subscription::unread(&reader, &[topic, retry_topic], timeout)
        })
        .await
        .map_err(|error| TransportError::Subscribe {
            consumer: group.clone(),
            source: error.into(),
        })?
        .map_err(|error| TransportError::Subscribe {
            consumer: group,
            source: error.into(),
        })?;
        let (ack_pending, redelivered) = self.in_hand(&spec.durable_name);
        Ok(ConsumerBacklog {
            pending,
            ack_pending,
            redelivered,
        })
    }
}

#[async_trait]
impl Broker for KafkaBroker {
    async fn ensure_streams(&self, settings: &MessagingSettings) -> Result<(), TransportError> {
        let mut topics = Vec::with_capacity(4);
        for shape in stream_shapes(settings) {
            topics.push((wire::topic_of(shape.name)?.to_owned(), shape.max_age));
        }
        self.create_topics(&topics, settings.stream_replicas.unwrap_or(1))
            .await
    }

    fn is_healthy(&self) -> bool {
        self.inner.context.health.get()
    }

    async fn stream_available(
        &self,
        stream: &str,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        let topic = wire::topic_of(stream)?.to_owned();
        let probe = self.clone();
        let unavailable = |why: String| TransportError::Unavailable {
            stream: stream.to_owned(),
            why,
        };
        let metadata = tokio::task::spawn_blocking(move || {
            let metadata = probe
                .inner
                .producer
                .client()
                .fetch_metadata(Some(&topic), timeout)?;
            // every partition of the topic has a leader
            Ok::<_, KafkaError>(
                metadata
                    .topics()
                    .iter()
                    .find(|found| found.name() == topic)
                    .map(|found| {
                        found.error().is_none()
                            && !found.partitions().is_empty()
                            && found.partitions().iter().all(|p| p.leader() >= 0)
                    }),
            )
        })
        .await
        .map_err(|error| unavailable(error.to_string()))?
        .map_err(|error| unavailable(error.to_string()))?;
        match metadata {
            Some(true) => Ok(()),
            Some(false) => Err(unavailable("a partition has no leader".to_owned())),
            None => Err(unavailable("the topic does not exist".to_owned())),
        }
    }
}

/// Whether a broker connection is up, as librdkafka last reported.
#[derive(Debug, Default)]
struct Health(AtomicBool);

impl Health {
    fn set(&self, up: bool) {
        self.0.store(up, Ordering::Relaxed);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The context of every client of one broker: librdkafka's logs and errors go to `tracing`, its
/// statistics to [`Health`].
#[derive(Clone, Default)]
pub(crate) struct ClientCtx {
    health: Arc<Health>,
}

impl ClientContext for ClientCtx {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(facility, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(facility, "librdkafka: {message}"),
        }
    }

    fn stats(&self, statistics: Statistics) {
        let up = statistics
            .brokers
            .values()
            .any(|broker| broker.state == "UP");
        self.health.set(up);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health.set(false);
        }
        tracing::warn!(%error, reason, "Kafka client error");
    }
}

impl ConsumerContext for ClientCtx {}
