//! The broker-neutral read contract of the operator tools ([`History`]): what the broker still
//! holds of the events, the dead letters and the dead-letter log, read in stream order up to
//! where the stream ended when the read started; deleting a resolved dead letter; and every
//! durable consumer's backlog. Writes (to the replay channel and the dead-letter log) go
//! through [`Publisher`]. Queries name orders, event types and consumers, never a broker's
//! subjects: which filters, start positions and readers serve them is the broker's choice
//! (see [`super::nats`] for JetStream's).
//!
//! One read does wait for new messages: [`History::follow_events`], the events as they are
//! published from the moment it returns, for a watcher (`jwl bench` sees sagas end through it).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use jwl_events::{EventType, OrderId, WireMessage};

use super::{ConsumerBacklog, Publisher, TransportError};
use crate::settings::MessagingSettings;

/// One message as the broker stored it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// Position in its stream.
    pub stream_seq: u64,
    /// When the broker stored it (the stream's own timestamp).
    pub stored_at: DateTime<Utc>,
    pub subject: String,
    /// Header name/value pairs (a name may repeat).
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl StoredMessage {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        jwl_events::header_value(&self.headers, name)
    }
}

/// Events of the events stream as they are published, from when
/// [`History::follow_events`] returned, with their headers as the application names them
/// (`ce-id`, …; no stream position: a follower on NATS reads a core subscription, which has
/// none); the stream ends if the broker connection is given up.
pub type FollowedEvents = BoxStream<'static, WireMessage>;

/// Whether a follower of `types` wants the event on `subject` (either subject layout).
pub(crate) fn is_followed(types: &[EventType], subject: &str) -> bool {
    jwl_events::subject_type(subject).is_some_and(|ty| types.contains(&ty))
}

/// Where a read starts in its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadStart {
    /// The first message.
    #[default]
    First,
    /// This stream sequence.
    Sequence(u64),
    /// The first message stored at or after this time.
    Time(DateTime<Utc>),
}

/// Where a read ends (inclusive). Messages are read in stream order, so the first message
/// outside the bounds ends the read; a read also ends at the stream's last message when it
/// started, so messages published while reading do not prolong it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadEnd {
    pub last_seq: Option<u64>,
    pub until: Option<DateTime<Utc>>,
}

impl ReadEnd {
    /// Also ends at `stream_last_seq`, the stream's last sequence when the read started.
    pub fn capped_at(self, stream_last_seq: u64) -> ReadEnd {
        ReadEnd {
            last_seq: Some(
                self.last_seq
                    .map_or(stream_last_seq, |last| last.min(stream_last_seq)),
            ),
            ..self
        }
    }

    /// Whether the message at `seq`, stored at `stored_at`, is inside; `false` ends the read.
    pub fn admits(&self, seq: u64, stored_at: DateTime<Utc>) -> bool {
        self.last_seq.is_none_or(|last| seq <= last)
            && self.until.is_none_or(|until| stored_at <= until)
    }
}

/// Which messages of the events stream a read wants.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventQuery {
    /// Only this order's events (the events' key), when given.
    pub order: Option<OrderId>,
    /// Only these types; empty: every type. With an order and no type, every catalogue type
    /// (a message of an unknown type on the order's key may then be left out).
    pub types: Vec<EventType>,
    pub start: ReadStart,
    pub end: ReadEnd,
    /// Most messages kept (the first ones in stream order).
    pub limit: Option<usize>,
}

/// Which dead letters a read wants.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeadLetterQuery {
    /// Only dead letters of this inbox consumer (one subject token: no `.`, `*`, `>` or
    /// whitespace), when given.
    pub consumer: Option<String>,
    /// Only dead letters of this order, when given.
    pub order: Option<OrderId>,
    pub end: ReadEnd,
    /// Most messages kept (the oldest first).
    pub limit: Option<usize>,
}

/// Which of the messages a read meets it keeps (and counts towards its limit).
pub type Keep<'a> = &'a (dyn Fn(&StoredMessage) -> bool + Send + Sync);

/// One durable consumer's backlog, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedBacklog {
    /// The durable name, e.g. `payment__events`.
    pub name: String,
    pub backlog: ConsumerBacklog,
}

/// The broker as the operator tools see it. Every read but [`Self::follow_events`] returns the
/// kept messages in stream order, ends where the stream ended when it started, and never waits
/// for new messages.
#[async_trait]
pub trait History: Publisher + Send + Sync {
    /// The events of `types` published from when this returns, as they arrive, each order's in
    /// publication order; nothing durable is created and nothing is acknowledged. A follower
    /// that falls far behind may lose events (NATS drops a slow core subscriber's messages), so
    /// it suits watchers, not consumers.
    async fn follow_events(
        &self,
        settings: &MessagingSettings,
        types: &[EventType],
    ) -> Result<FollowedEvents, TransportError>;

    /// The events `query` selects among those of the events stream that `keep` accepts.
    async fn read_events(
        &self,
        settings: &MessagingSettings,
        query: &EventQuery,
        keep: Keep<'_>,
    ) -> Result<Vec<StoredMessage>, TransportError>;

    /// The dead letters `query` selects that `keep` accepts, oldest first.
    async fn read_dead_letters(
        &self,
        settings: &MessagingSettings,
        query: &DeadLetterQuery,
        keep: Keep<'_>,
    ) -> Result<Vec<StoredMessage>, TransportError>;

    /// The dead letter at `dlq_seq`, or `None` when the dead-letter stream does not hold it.
    async fn dead_letter(
        &self,
        settings: &MessagingSettings,
        dlq_seq: u64,
    ) -> Result<Option<StoredMessage>, TransportError>;

    /// Deletes the dead letter at `dlq_seq`; one already gone counts as deleted.
    async fn delete_dead_letter(
        &self,
        settings: &MessagingSettings,
        dlq_seq: u64,
    ) -> Result<(), TransportError>;

    /// Every record of the dead-letter log, oldest first.
    async fn read_dead_letter_log(
        &self,
        settings: &MessagingSettings,
    ) -> Result<Vec<StoredMessage>, TransportError>;

    /// Whether the dead-letter log holds a record of dead letter `dlq_seq`.
    async fn dead_letter_logged(
        &self,
        settings: &MessagingSettings,
        dlq_seq: u64,
    ) -> Result<bool, TransportError>;

    /// Every durable consumer of the events stream with its backlog, sorted by name.
    async fn consumer_backlogs(
        &self,
        settings: &MessagingSettings,
    ) -> Result<Vec<NamedBacklog>, TransportError>;
}
