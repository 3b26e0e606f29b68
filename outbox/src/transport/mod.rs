//! The broker behind traits: the relay and the consumer loop only see these, so another broker
//! (Kafka) can be added next to [`nats`]. The transport moves subjects, headers and bytes; it
//! knows nothing of events or orders.

pub mod nats;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::handler::BoxError;
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

/// A complete broker: publishing, subscribing, provisioning and health.
#[async_trait]
pub trait Broker: Publisher + Subscriber + Send + Sync + 'static {
    /// Creates (or reconciles) the events, dead-letter, replay and dead-letter log streams.
    /// Idempotent.
    async fn ensure_streams(&self, settings: &MessagingSettings) -> Result<(), TransportError>;
    /// Whether the broker connection is currently up (for readiness).
    fn is_healthy(&self) -> bool;
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
