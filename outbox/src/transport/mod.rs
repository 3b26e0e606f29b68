//! The broker behind traits: the relay, the consumer loop, the services' health checks and the
//! operator tools (`jwl-ops`, through [`History`]) only see these, so another broker (Kafka)
//! can be used: NATS JetStream ([`nats`]) or Kafka ([`kafka`]). The transport moves subjects,
//! headers and bytes; only the operator tools' queries ([`EventQuery`], [`DeadLetterQuery`])
//! name orders and event types, so that each broker picks its own way to find them.

mod history;
pub mod kafka;
pub mod nats;

pub use history::{
    DeadLetterQuery, EventQuery, FollowedEvents, History, Keep, NamedBacklog, ReadEnd, ReadStart,
    StoredMessage,
};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use jwl_events::EventType;

use crate::handler::BoxError;
use crate::protocol::dead_letter::{DLQ_LOG_SUBJECTS, DLQ_SUBJECTS};
use crate::protocol::replay::REPLAY_SUBJECTS;
use crate::settings::MessagingSettings;

/// A message to publish. `dedup_id` lets the broker drop a re-publication (`Nats-Msg-Id`).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundMessage {
    pub dedup_id: String,
    pub subject: String,
    pub headers: Vec<(String, String)>,
    pub payload: Bytes,
}

/// The broker's acknowledgement of one published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishReceipt {
    /// Position in the stream.
    pub sequence: u64,
    /// The broker already had a message with this `dedup_id` (inside its window) and kept that.
    pub duplicate: bool,
}

/// Publishes to the broker.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Sends every message in order, then awaits all acknowledgements together. Returns one
    /// result per message, in the same order.
    async fn publish_batch(
        &self,
        batch: &[OutboundMessage],
    ) -> Vec<Result<PublishReceipt, TransportError>>;
}

/// A durable, shared (competing replicas) subscription to one or more filter subjects.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerSpec {
    /// The stream (or topic family) to read.
    pub stream: String,
    /// Durable name, shared by all replicas of the consuming service.
    pub durable_name: String,
    /// The subject filters (may contain wildcards); messages of all of them arrive in stream
    /// order on the one subscription.
    pub filter_subjects: Vec<String>,
    /// Durable consumers this one supersedes: when it is first created, it starts where the
    /// slowest of them had acknowledged everything, and they are deleted (the inbox absorbs
    /// what is delivered again).
    pub replaces: Vec<String>,
    /// Redelivery after this long without an ack.
    pub ack_wait: Duration,
    /// Most unacknowledged messages across the consumer's replicas.
    pub max_ack_pending: u32,
    /// How many messages the client asks for ahead of handling.
    pub prefetch: usize,
}

/// A received message, to be settled exactly once with `ack`, `nak` or `term`.
#[async_trait]
pub trait Delivery: Send + Sync {
    fn subject(&self) -> &str;
    /// Header name/value pairs (a name may repeat).
    fn headers(&self) -> Vec<(&str, &str)>;
    fn payload(&self) -> &[u8];
    /// Which delivery this is: 1 for the first.
    fn attempt(&self) -> u32;
    /// Position of the message in its stream.
    fn stream_sequence(&self) -> u64;
    /// Done: never deliver again.
    async fn ack(&self) -> Result<(), TransportError>;
    /// Not done: deliver again after `delay` (zero = at once).
    async fn nak(&self, delay: Duration) -> Result<(), TransportError>;
    /// Given up (it has been dead-lettered): never deliver again.
    async fn term(&self) -> Result<(), TransportError>;
    /// Still being worked on: restart the ack timer (no redelivery, no new attempt). May be
    /// sent any number of times before the message is settled.
    async fn in_progress(&self) -> Result<(), TransportError>;
}

/// The continuous stream of deliveries of one subscription. An `Err` item is not fatal for
/// the broker, but the subscription should be re-opened.
pub type Deliveries = BoxStream<'static, Result<Box<dyn Delivery>, TransportError>>;

/// Opens subscriptions.
#[async_trait]
pub trait Subscriber: Send + Sync {
    /// Creates the durable consumer if missing and starts pulling from it.
    async fn subscribe(&self, spec: &ConsumerSpec) -> Result<Deliveries, TransportError>;
    /// What the broker still holds for one durable consumer.
    async fn backlog(&self, spec: &ConsumerSpec) -> Result<ConsumerBacklog, TransportError>;
}

/// A durable consumer's backlog as the broker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerBacklog {
    /// Messages matching the filter not yet delivered.
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub ack_pending: u64,
    /// Delivered more than once and not yet acknowledged.
    pub redelivered: u64,
}

/// A complete broker: publishing, subscribing, reading for the operator tools, provisioning
/// and health. Services hold one as `Arc<dyn Broker>`.
#[async_trait]
pub trait Broker: Publisher + Subscriber + History + Send + Sync + 'static {
    /// Creates (or reconciles) the events, dead-letter, replay and dead-letter log streams.
    /// Idempotent.
    async fn ensure_streams(&self, settings: &MessagingSettings) -> Result<(), TransportError>;
    /// Whether the broker connection is currently up (for readiness).
    fn is_healthy(&self) -> bool;
    /// Whether `stream` can be used now: it answers within `timeout` and (on a cluster) has a
    /// leader. For readiness: a stream can be unavailable while the connection is fine.
    async fn stream_available(&self, stream: &str, timeout: Duration)
    -> Result<(), TransportError>;
}

// A shared broker is a broker: `Arc<dyn Broker>` can be handed to whatever takes one.

#[async_trait]
impl<T: Publisher + ?Sized> Publisher for Arc<T> {
    async fn publish_batch(
        &self,
        batch: &[OutboundMessage],
    ) -> Vec<Result<PublishReceipt, TransportError>> {
        (**self).publish_batch(batch).await
    }
}

#[async_trait]
impl<T: Subscriber + ?Sized> Subscriber for Arc<T> {
    async fn subscribe(&self, spec: &ConsumerSpec) -> Result<Deliveries, TransportError> {
        (**self).subscribe(spec).await
    }

    async fn backlog(&self, spec: &ConsumerSpec) -> Result<ConsumerBacklog, TransportError> {
        (**self).backlog(spec).await
    }
}

#[async_trait]
impl<T: History + ?Sized> History for Arc<T> {
    async fn follow_events(
        &self,
        settings: &MessagingSettings,
        types: &[EventType],
    ) -> Result<FollowedEvents, TransportError> {
        (**self).follow_events(settings, types).await
    }

    async fn read_events(
        &self,
        settings: &MessagingSettings,
        query: &EventQuery,
        keep: Keep<'_>,
    ) -> Result<Vec<StoredMessage>, TransportError> {
        (**self).read_events(settings, query, keep).await
    }

    async fn read_dead_letters(
        &self,
        settings: &MessagingSettings,
        query: &DeadLetterQuery,
        keep: Keep<'_>,
    ) -> Result<Vec<StoredMessage>, TransportError> {
        (**self).read_dead_letters(settings, query, keep).await
    }

    async fn dead_letter(
        &self,
        settings: &MessagingSettings,
        dlq_seq: u64,
    ) -> Result<Option<StoredMessage>, TransportError> {
        (**self).dead_letter(settings, dlq_seq).await
    }

    async fn delete_dead_letter(
        &self,
        settings: &MessagingSettings,
        dlq_seq: u64,
    ) -> Result<(), TransportError> {
        (**self).delete_dead_letter(settings, dlq_seq).await
    }

    async fn read_dead_letter_log(
        &self,
        settings: &MessagingSettings,
    ) -> Result<Vec<StoredMessage>, TransportError> {
        (**self).read_dead_letter_log(settings).await
    }

    async fn dead_letter_logged(
        &self,
        settings: &MessagingSettings,
        dlq_seq: u64,
    ) -> Result<bool, TransportError> {
        (**self).dead_letter_logged(settings, dlq_seq).await
    }

    async fn consumer_backlogs(
        &self,
        settings: &MessagingSettings,
    ) -> Result<Vec<NamedBacklog>, TransportError> {
        (**self).consumer_backlogs(settings).await
    }
}

#[async_trait]
impl<T: Broker + ?Sized> Broker for Arc<T> {
    async fn ensure_streams(&self, settings: &MessagingSettings) -> Result<(), TransportError> {
        (**self).ensure_streams(settings).await
    }

    fn is_healthy(&self) -> bool {
        (**self).is_healthy()
    }

    async fn stream_available(
        &self,
        stream: &str,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        (**self).stream_available(stream, timeout).await
    }
}

/// A stream `max_age` of zero: messages never expire.
pub(crate) const UNLIMITED_AGE: Duration = Duration::ZERO;

/// One of the deployment's streams as `settings` name it: its name, the subjects it holds and
/// how long it keeps a message ([`UNLIMITED_AGE`]: until it is removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamShape<'s> {
    pub name: &'s str,
    pub subjects: &'static str,
    pub max_age: Duration,
}

/// The events, dead-letter, replay and dead-letter log streams, in that order.
pub(crate) fn stream_shapes(settings: &MessagingSettings) -> [StreamShape<'_>; 4] {
    [
        StreamShape {
            name: &settings.events_stream,
            subjects: jwl_events::EVENTS_SUBJECTS,
            max_age: settings.events_max_age,
        },
        // no age limit: a dead letter stays until it is redriven or discarded, which is what
        // releases the hold it may have on its order (one that expired would leave the order
        // held, with nothing for an operator to act on)
        StreamShape {
            name: &settings.dlq_stream,
            subjects: DLQ_SUBJECTS,
            max_age: UNLIMITED_AGE,
        },
        StreamShape {
            name: &settings.replay_stream,
            subjects: REPLAY_SUBJECTS,
            max_age: settings.replay_max_age,
        },
        StreamShape {
            name: &settings.dlq_log_stream,
            subjects: DLQ_LOG_SUBJECTS,
            max_age: settings.dlq_log_max_age,
        },
    ]
}

/// Errors talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connecting to {url}: {source}")]
    Connect { url: String, source: BoxError },
    /// The security settings cannot be used (see [`nats::SecurityError`]); never holds a secret.
    #[error("{0}")]
    Security(String),
    /// The server is up and refuses the connection for good (rejected credentials, a failed TLS
    /// handshake); retrying with the same settings cannot help.
    #[error("NATS at {url} refused the connection: {why}")]
    Refused { url: String, why: String },
    /// The server refused to take a message on this subject: the connection's user lacks
    /// permission to publish there (a deployment error; retried until fixed).
    #[error(
        "the NATS server denied publishing to {subject} (permissions violation): the \
         connection's user may not publish there"
    )]
    Denied { subject: String },
    #[error("provisioning {what}: {source}")]
    Provision { what: String, source: BoxError },
    /// The broker lacks a feature this transport needs; retrying cannot help.
    #[error("unsupported broker: {0}")]
    Unsupported(String),
    /// A stream cannot have the configured shape on this broker (its replica count); the
    /// message says what to change or run. Retrying cannot help.
    #[error("{0}")]
    StreamConflict(String),
    /// A stream does not answer or has no leader now; it may come back.
    #[error("stream {stream} is unavailable: {why}")]
    Unavailable { stream: String, why: String },
    #[error("subscribing as {consumer}: {source}")]
    Subscribe { consumer: String, source: BoxError },
    /// Publishing failed; trying again later may work.
    #[error("publishing: {0}")]
    Publish(BoxError),
    /// The broker (or the client) refuses this message for good, e.g. it is too large.
    #[error("message rejected: {0}")]
    Rejected(String),
    #[error("receiving: {0}")]
    Receive(BoxError),
    #[error("settling a message: {0}")]
    Settle(BoxError),
    /// A stream does not exist, or asking about it failed.
    #[error("stream {stream}: {source}")]
    Stream { stream: String, source: BoxError },
    /// A reader of `filter` on `stream` (the operator tools') could not be created.
    #[error("creating a reader on {stream} for {filter}: {source}")]
    Reader {
        stream: String,
        filter: String,
        source: BoxError,
    },
    /// Receiving messages failed part way through a read.
    #[error("reading {stream} ({filter}): {source}")]
    Read {
        stream: String,
        filter: String,
        source: BoxError,
    },
    /// Messages were still pending but none arrived for `idle` (e.g. they expired meanwhile).
    #[error("reading {stream} ({filter}): no message for {idle:?} while {pending} were pending")]
    Stalled {
        stream: String,
        filter: String,
        idle: Duration,
        pending: u64,
    },
    /// Deleting a message from a stream failed.
    #[error("deleting message {seq} from {stream}: {source}")]
    Delete {
        stream: String,
        seq: u64,
        source: BoxError,
    },
}

impl TransportError {
    /// Whether publishing the same message again can never succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Rejected(_))
    }

    /// Whether the broker itself cannot do what is asked, however often it is asked.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Self::Unsupported(_))
    }

    /// Whether provisioning can never succeed as configured (the broker is too old, or refuses
    /// the streams' replica count), so start-up should fail rather than retry.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Unsupported(_) | Self::StreamConflict(_))
    }
}
