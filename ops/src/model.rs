//! What the operator tools return: one stored event ([`EventEntry`]), decoded or not, and one
//! dead letter ([`DeadLetterEntry`], [`DeadLetterDetail`]). Plain data, `Serialize` for JSON.

use chrono::{DateTime, Utc};
use jwl_events::{EventData, EventId, EventType, OrderId, Service};
use serde::Serialize;

pub(crate) use jwl_outbox::transport::StoredMessage;

/// One message of `JWL_EVENTS`: where it is in the stream and what it says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventEntry {
    /// Position in the events stream.
    pub stream_seq: u64,
    /// When the broker stored it.
    pub stored_at: DateTime<Utc>,
    pub subject: String,
    /// The decoded event, or why it could not be decoded (JSON: `"status": "decoded" | "undecodable"`).
    #[serde(flatten)]
    pub event: EntryEvent,
}

/// A stored message's content: a valid event, or a message `jwl_events::decode` rejects.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum EntryEvent {
    Decoded(DecodedEvent),
    Undecodable(UndecodableMessage),
}

/// The facts of a valid event, plus a one-line summary of its data.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecodedEvent {
    /// When the event happened (CloudEvents `time`).
    pub time: DateTime<Utc>,
    pub event_type: EventType,
    pub source: Service,
    pub event_id: EventId,
    /// The event this one reacts to.
    pub causation_id: Option<EventId>,
    /// The trace id of the W3C `traceparent`, when there is one.
    pub trace_id: Option<String>,
    /// See [`crate::summarize`].
    pub summary: String,
    /// The full payload.
    pub data: EventData,
}

/// A message that is not a valid event, with what its headers claim.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UndecodableMessage {
    /// The decode error.
    pub error: String,
    /// Its stable name (`jwl_events::DecodeError::kind`).
    pub error_kind: &'static str,
    /// The raw `ce-type` header, if any.
    pub type_header: Option<String>,
    /// The raw `ce-id` header, if any.
    pub id_header: Option<String>,
}

/// One message of `JWL_DLQ`: who gave up on which event, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetterEntry {
    /// Position in the dead-letter stream (what `jwl dlq show` takes).
    pub dlq_seq: u64,
    /// When it was dead-lettered.
    pub stored_at: DateTime<Utc>,
    /// The durable consumer that gave up (`jwl-dlq-consumer`), e.g. `payment__order_created`.
    pub consumer: String,
    /// `decode`, `permanent` or `max_attempts` (`jwl-dlq-reason`).
    pub reason: String,
    /// The last error (`jwl-dlq-error`).
    pub error: String,
    /// The original `ce-type` header, if any.
    pub original_type: Option<String>,
    /// The original subject in the events stream (`jwl-dlq-subject`).
    pub original_subject: Option<String>,
    /// The original position in the events stream (`jwl-dlq-stream-seq`).
    pub original_stream_seq: Option<u64>,
    /// The order, when the dead letter names a valid one.
    pub order_id: Option<OrderId>,
}

/// One dead letter in full (`jwl dlq show`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetterDetail {
    #[serde(flatten)]
    pub entry: DeadLetterEntry,
    /// Its subject in the dead-letter stream: `jwl.dlq.<consumer>.<order id or "unknown">`.
    pub subject: String,
    /// Every header, sorted by name.
    pub headers: Vec<(String, String)>,
    /// The payload as text (invalid UTF-8 replaced).
    pub payload: String,
    pub payload_bytes: usize,
    /// The original event decoded from the kept headers and payload, or why it does not decode.
    pub original: EntryEvent,
}
