//! What the broker holds: every event in the `JWL_EVENTS` stream (decoded), the dead letters in
//! `JWL_DLQ`, and how far behind each durable consumer is.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer, stream};
use futures::{StreamExt, TryStreamExt};
use jwl_events::{EVENTS_SUBJECTS, Envelope, HeaderStyle};
use jwl_outbox::transport::nats::NatsSecurity;

/// The stream holding every event (`jwl.evt.>`).
pub const EVENTS_STREAM: &str = "JWL_EVENTS";
/// The dead-letter stream (`jwl.dlq.>`).
pub const DLQ_STREAM: &str = "JWL_DLQ";
/// How long reading the whole events stream may take.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// An event as stored in the stream.
#[derive(Debug, Clone)]
pub struct StreamEvent {
    pub sequence: u64,
    pub subject: String,
    pub envelope: Envelope,
}

/// Everything in the events stream, in stream order.
#[derive(Debug, Clone, Default)]
pub struct StreamContents {
    pub events: Vec<StreamEvent>,
    /// Messages that are not valid events: `(stream sequence, subject, error)`.
    pub undecodable: Vec<(u64, String, String)>,
}

/// One message of the dead-letter stream, by its `jwl-dlq-*` headers.
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

impl std::fmt::Display for DeadLetterRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} consumer={} reason={} stream-seq={:?} error={}",
            self.subject, self.consumer, self.reason, self.stream_sequence, self.error
        )
    }
}

/// A durable consumer's backlog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerBacklog {
    pub name: String,
    /// Messages not yet delivered to it.
    pub pending: u64,
    /// Messages delivered but not yet acknowledged.
    pub ack_pending: usize,
    /// Deliveries so far, redeliveries included.
    pub deliveries: u64,
}

impl ConsumerBacklog {
    pub fn is_drained(&self) -> bool {
        self.pending == 0 && self.ack_pending == 0
    }
}

/// A JetStream view of one system's broker.
#[derive(Debug, Clone)]
pub struct Broker {
    jetstream: jetstream::Context,
}

impl Broker {
    /// Connects to the NATS server at `url` (or a comma-separated list of cluster nodes).
    /// Connects with the credentials and TLS of `security` (the operator's, on a secured bus).
    pub async fn connect_secured(url: &str, security: &NatsSecurity) -> anyhow::Result<Self> {
        let (options, servers) =
            security.client_options(url, async_nats::ConnectOptions::new().name("jwl-e2e"))?;
        let client = options
            .connect(servers)
            .await
            .with_context(|| format!("connecting to NATS at {url}"))?;
        Ok(Self {
            jetstream: jetstream::new(client),
        })
    }

    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let servers: Vec<&str> = url.split(',').map(str::trim).collect();
        let client = async_nats::ConnectOptions::new()
            .name("jwl-e2e")
            .connect(servers)
            .await
            .with_context(|| format!("connecting to NATS at {url}"))?;
        Ok(Self {
            jetstream: jetstream::new(client),
        })
    }

    /// The server name of the events stream's cluster leader, and its replica count (`None`
    /// as leader on a single server, or while no leader is elected).
    pub async fn events_leader(&self) -> anyhow::Result<(Option<String>, usize)> {
        let mut stream = self.stream(EVENTS_STREAM).await?;
        let info = stream
            .info()
            .await
            .with_context(|| format!("reading the {EVENTS_STREAM} stream info"))?;
        let leader = info.cluster.as_ref().and_then(|c| c.leader.clone());
        Ok((leader, info.config.num_replicas))
    }

    /// Reads every message of the events stream (as of now) with an ordered consumer, decoding each.
    pub async fn events(&self) -> anyhow::Result<StreamContents> {
        let mut stream = self.stream(EVENTS_STREAM).await?;
        let expected = stream
            .info()
            .await
            .with_context(|| format!("reading the {EVENTS_STREAM} stream info"))?
            .state
            .messages;
        let mut contents = StreamContents::default();
        if expected == 0 {
            return Ok(contents);
        }
        let reader = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: EVENTS_SUBJECTS.to_owned(),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .context("creating an ordered consumer on the events stream")?;
        let mut messages = reader
            .messages()
            .await
            .context("reading the events stream")?;
        let read_all = async {
            let mut read = 0u64;
            while read < expected {
                let message = messages
                    .next()
                    .await
                    .context("the events stream ended early")?
                    .context("reading an event from the stream")?;
                read += 1;
                let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(read);
                let subject = message.subject.to_string();
                let headers: Vec<(&str, &str)> = message
                    .headers
                    .iter()
                    .flat_map(|headers| headers.iter())
                    .flat_map(|(name, values)| {
                        let name: &str = name.as_ref();
                        values.iter().map(move |value| (name, value.as_str()))
                    })
                    .collect();
                match jwl_events::decode(HeaderStyle::Nats, headers, &message.payload) {
                    Ok(envelope) => contents.events.push(StreamEvent {
                        sequence,
                        subject,
                        envelope,
                    }),
                    Err(error) => contents
                        .undecodable
                        .push((sequence, subject, error.to_string())),
                }
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(READ_TIMEOUT, read_all)
            .await
            .with_context(|| {
                format!("reading {expected} events took longer than {READ_TIMEOUT:?}")
            })??;
        Ok(contents)
    }

    /// The sequence of the last message in the events stream (0 when empty).
    pub async fn last_sequence(&self) -> anyhow::Result<u64> {
        let mut stream = self.stream(EVENTS_STREAM).await?;
        Ok(stream
            .info()
            .await
            .with_context(|| format!("reading the {EVENTS_STREAM} stream info"))?
            .state
            .last_sequence)
    }

    /// How many dead letters the DLQ stream holds.
    pub async fn dead_letter_count(&self) -> anyhow::Result<u64> {
        let mut stream = self.stream(DLQ_STREAM).await?;
        Ok(stream
            .info()
            .await
            .with_context(|| format!("reading the {DLQ_STREAM} stream info"))?
            .state
            .messages)
    }

    /// Every dead letter in the DLQ stream, in stream order.
    pub async fn dead_letters(&self) -> anyhow::Result<Vec<DeadLetterRecord>> {
        let count = self.dead_letter_count().await?;
        if count == 0 {
            return Ok(Vec::new());
        }
        let stream = self.stream(DLQ_STREAM).await?;
        let reader = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .context("creating an ordered consumer on the DLQ")?;
        let mut messages = reader.messages().await.context("reading the DLQ")?;
        let mut letters = Vec::new();
        let read_all = async {
            while (letters.len() as u64) < count {
                let message = messages
                    .next()
                    .await
                    .context("the DLQ stream ended early")?
                    .context("reading a dead letter")?;
                let header = |name: &str| {
                    message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(name))
                        .map(|v| v.as_str().to_owned())
                        .unwrap_or_default()
                };
                letters.push(DeadLetterRecord {
                    subject: message.subject.to_string(),
                    consumer: header("jwl-dlq-consumer"),
                    reason: header("jwl-dlq-reason"),
                    error: header("jwl-dlq-error"),
                    stream_sequence: header("jwl-dlq-stream-seq").parse().ok(),
                });
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(READ_TIMEOUT, read_all)
            .await
            .context("reading the DLQ took too long")??;
        Ok(letters)
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

    /// The backlog of every durable consumer on the events stream.
    pub async fn consumer_backlogs(&self) -> anyhow::Result<Vec<ConsumerBacklog>> {
        let stream = self.stream(EVENTS_STREAM).await?;
        let infos: Vec<consumer::Info> = stream
            .consumers()
            .try_collect()
            .await
            .context("listing the consumers of the events stream")?;
        Ok(infos
            .into_iter()
            .filter(|info| info.config.durable_name.is_some())
            .map(|info| ConsumerBacklog {
                name: info.name,
                pending: info.num_pending,
                ack_pending: info.num_ack_pending,
                deliveries: info.delivered.consumer_sequence,
            })
            .collect())
    }

    /// How many deliveries durable consumer `name` of the events stream has made so far.
    pub async fn deliveries(&self, name: &str) -> anyhow::Result<u64> {
        self.consumer_backlogs()
            .await?
            .into_iter()
            .find(|backlog| backlog.name == name)
            .map(|backlog| backlog.deliveries)
            .with_context(|| format!("no durable consumer {name} on the events stream"))
    }

    async fn stream(&self, name: &str) -> anyhow::Result<stream::Stream> {
        self.jetstream
            .get_stream(name)
            .await
            .with_context(|| format!("opening the {name} stream"))
    }
}
