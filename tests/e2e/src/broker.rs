//! What the broker holds, read through the broker-neutral [`History`] contract of the transport
//! (so that the same checks run on NATS JetStream and on Kafka): every event of the events
//! stream (decoded), the dead letters, and how far behind each durable consumer is.
//! [`NatsStreams`] adds what only JetStream can tell or do (cluster leaders, delivery counts,
//! publishing with a broker dedup id), for the NATS-only tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, stream};
use futures::TryStreamExt;
use jwl_events::{Envelope, HeaderStyle};
use jwl_outbox::MessagingSettings;
use jwl_outbox::protocol::dead_letter::{
    CONSUMER_HEADER, ERROR_HEADER, REASON_HEADER, STREAM_SEQ_HEADER,
};
use jwl_outbox::transport::kafka::{KafkaBroker, KafkaSettings};
use jwl_outbox::transport::nats::{JetStreamBroker, NatsSecurity};
use jwl_outbox::transport::{
    DeadLetterQuery, EventQuery, History, Keep, NamedBacklog, StoredMessage,
};

/// How long reading the whole events stream may take.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// The name the test's broker clients connect with.
const CLIENT_NAME: &str = "jwl-e2e";

/// An event as stored in the stream.
#[derive(Debug, Clone)]
pub struct StreamEvent {
    /// Its position: the stream sequence on NATS, the offset in its partition on Kafka (so
    /// only unique within one order's events there).
    pub sequence: u64,
    pub subject: String,
    pub envelope: Envelope,
}

/// Everything in the events stream, in stream order (on Kafka: each order's events in their
/// partition's order, the partitions merged by time).
#[derive(Debug, Clone, Default)]
pub struct StreamContents {
    pub events: Vec<StreamEvent>,
    /// Messages that are not valid events: `(sequence, subject, error)`.
    pub undecodable: Vec<(u64, String, String)>,
}

/// One dead letter, by its `jwl-dlq-*` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRecord {
    pub subject: String,
    /// The consumer that gave up on the message.
    pub consumer: String,
    /// `decode`, `permanent` or `max_attempts`.
    pub reason: String,
    pub error: String,
    /// Where the original message is in the events stream.
    pub stream_sequence: Option<u64>,
}

impl DeadLetterRecord {
    fn of(message: &StoredMessage) -> Self {
        let header = |name: &str| message.header(name).unwrap_or_default().to_owned();
        Self {
            subject: message.subject.clone(),
            consumer: header(CONSUMER_HEADER),
            reason: header(REASON_HEADER),
            error: header(ERROR_HEADER),
            stream_sequence: header(STREAM_SEQ_HEADER).parse().ok(),
        }
    }
}

impl std::fmt::Display for DeadLetterRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} consumer={} reason={} stream-seq={:?} error={}",
            self.subject, self.consumer, self.reason, self.stream_sequence, self.error
        )
    }
}

/// One system's broker as the tests see it, on either transport.
#[derive(Clone)]
pub struct Broker {
    history: Arc<dyn History>,
    /// The stream (topic) names the services use: the defaults.
    settings: MessagingSettings,
    /// JetStream itself, when the broker is NATS.
    nats: Option<NatsStreams>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("nats", &self.nats.is_some())
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Connects to the NATS server at `url` (or a comma-separated list of cluster nodes), with
    /// the credentials and TLS of `security` (the operator's, on a secured bus).
    pub async fn connect_nats(url: &str, security: &NatsSecurity) -> anyhow::Result<Self> {
        let broker = JetStreamBroker::connect_secured(url, CLIENT_NAME, security)
            .await
            .with_context(|| format!("connecting to NATS at {url}"))?;
        let nats = NatsStreams {
            jetstream: broker.jetstream().clone(),
        };
        Ok(Self {
            history: Arc::new(broker),
            settings: reader_settings(),
            nats: Some(nats),
        })
    }

    /// Connects to the Kafka bootstrap brokers `brokers` (`host:port`, comma-separated).
    pub async fn connect_kafka(brokers: &str) -> anyhow::Result<Self> {
        let settings = reader_settings();
        let kafka = KafkaSettings {
            client_id: CLIENT_NAME.to_owned(),
            ..KafkaSettings::new(brokers)
        };
        let broker = KafkaBroker::connect(kafka, &settings)
            .await
            .with_context(|| format!("connecting to Kafka at {brokers}"))?;
        Ok(Self {
            history: Arc::new(broker),
            settings,
            nats: None,
        })
    }

    /// JetStream itself, for a test that needs what only NATS has; an error on Kafka.
    pub fn nats(&self) -> anyhow::Result<&NatsStreams> {
        self.nats
            .as_ref()
            .context("this needs NATS JetStream, and the system runs on Kafka")
    }

    /// Reads every message of the events stream (as of now), decoding each.
    pub async fn events(&self) -> anyhow::Result<StreamContents> {
        let messages = self.read_events(&|_| true).await?;
        let mut contents = StreamContents::default();
        for message in messages {
            let headers = message
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str()));
            match jwl_events::decode(HeaderStyle::Nats, headers, &message.payload) {
                Ok(envelope) => contents.events.push(StreamEvent {
                    sequence: message.stream_seq,
                    subject: message.subject,
                    envelope,
                }),
                Err(error) => contents.undecodable.push((
                    message.stream_seq,
                    message.subject,
                    error.to_string(),
                )),
            }
        }
        Ok(contents)
    }

    /// How many messages the events stream holds now (reads them, keeping none).
    pub async fn event_count(&self) -> anyhow::Result<u64> {
        let count = AtomicU64::new(0);
        self.read_events(&|_| {
            count.fetch_add(1, Ordering::Relaxed);
            false
        })
        .await?;
        Ok(count.into_inner())
    }

    async fn read_events(&self, keep: Keep<'_>) -> anyhow::Result<Vec<StoredMessage>> {
        tokio::time::timeout(
            READ_TIMEOUT,
            self.history
                .read_events(&self.settings, &EventQuery::default(), keep),
        )
        .await
        .with_context(|| format!("reading the events stream took longer than {READ_TIMEOUT:?}"))?
        .context("reading the events stream")
    }

    /// How many dead letters the broker holds.
    pub async fn dead_letter_count(&self) -> anyhow::Result<u64> {
        Ok(self.dead_letters().await?.len() as u64)
    }

    /// Every dead letter, oldest first.
    pub async fn dead_letters(&self) -> anyhow::Result<Vec<DeadLetterRecord>> {
        let letters = tokio::time::timeout(
            READ_TIMEOUT,
            self.history
                .read_dead_letters(&self.settings, &DeadLetterQuery::default(), &|_| true),
        )
        .await
        .context("reading the dead letters took too long")?
        .context("reading the dead letters")?;
        Ok(letters.iter().map(DeadLetterRecord::of).collect())
    }

    /// The backlog of every durable consumer of the events stream, by name. On Kafka
    /// `pending` counts what a consumer group has not committed yet (delivered or not), and
    /// `ack_pending` is always 0 (it counts what this process holds).
    pub async fn consumer_backlogs(&self) -> anyhow::Result<Vec<NamedBacklog>> {
        self.history
            .consumer_backlogs(&self.settings)
            .await
            .context("reading the consumers' backlogs")
    }
}

/// The services' stream names; `stream_replicas: None`, as the operator tools (a reader
/// never reshapes a stream).
fn reader_settings() -> MessagingSettings {
    MessagingSettings {
        stream_replicas: None,
        ..MessagingSettings::default()
    }
}

/// What only JetStream can tell or do (the NATS-only tests): the events stream's cluster
/// leader, a consumer's delivery count, publishing straight to the stream with a dedup id.
#[derive(Debug, Clone)]
pub struct NatsStreams {
    jetstream: jetstream::Context,
}

impl NatsStreams {
    /// The server name of the events stream's cluster leader, and its replica count (`None`
    /// as leader on a single server, or while no leader is elected).
    pub async fn events_leader(&self) -> anyhow::Result<(Option<String>, usize)> {
        let mut stream = self.events_stream().await?;
        let info = stream
            .info()
            .await
            .context("reading the events stream info")?;
        let leader = info.cluster.as_ref().and_then(|c| c.leader.clone());
        Ok((leader, info.config.num_replicas))
    }

    /// Publishes a raw message straight to the events stream (not through any outbox), with
    /// this broker dedup id; returns its stream sequence.
    pub async fn publish_raw(
        &self,
        subject: &str,
        headers: &[(String, String)],
        payload: Vec<u8>,
        msg_id: &str,
    ) -> anyhow::Result<u64> {
        let mut map = async_nats::HeaderMap::new();
        for (name, value) in headers {
            map.append(name.as_str(), value.as_str());
        }
        let publish = jetstream::message::PublishMessage::build()
            .headers(map)
            .payload(payload.into())
            .message_id(msg_id);
        let ack = self
            .jetstream
            .send_publish(subject.to_owned(), publish)
            .await
            .with_context(|| format!("publishing to {subject}"))?
            .await
            .with_context(|| format!("awaiting the ack of a publish to {subject}"))?;
        anyhow::ensure!(
            !ack.duplicate,
            "the broker took the message to {subject} as a duplicate of {msg_id}"
        );
        Ok(ack.sequence)
    }

    /// How many deliveries durable consumer `name` of the events stream has made so far,
    /// redeliveries included.
    pub async fn deliveries(&self, name: &str) -> anyhow::Result<u64> {
        let stream = self.events_stream().await?;
        let infos: Vec<_> = stream
            .consumers()
            .try_collect()
            .await
            .context("listing the consumers of the events stream")?;
        infos
            .into_iter()
            .find(|info| info.config.durable_name.as_deref() == Some(name))
            .map(|info| info.delivered.consumer_sequence)
            .with_context(|| format!("no durable consumer {name} on the events stream"))
    }

    async fn events_stream(&self) -> anyhow::Result<stream::Stream> {
        let name = reader_settings().events_stream;
        self.jetstream
            .get_stream(&name)
            .await
            .with_context(|| format!("opening the {name} stream"))
    }
}
