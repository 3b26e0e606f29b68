//! Building dead letters: the original message, re-addressed to `jwl.dlq.<consumer>.<order id>`,
//! with headers saying who gave up on it and why, deduplicated by consumer and event id.

use bytes::Bytes;

use jwl_events::Envelope;
use uuid::Uuid;

pub(crate) use crate::protocol::dead_letter::DeadLetterReason;
use crate::protocol::dead_letter::{
    CONSUMER_HEADER, ERROR_HEADER, ORDER_ID_HEADER, REASON_HEADER, STREAM_SEQ_HEADER,
    SUBJECT_HEADER, UNKNOWN_ORDER, dead_letter_subject, is_annotation_header,
};
use crate::transport::OutboundMessage;

/// A decision to dead-letter one message.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    /// The consumer that gives up (`jwl-dlq-consumer`, and the hold's consumer).
    pub consumer: String,
    pub reason: DeadLetterReason,
    pub error: String,
    /// The order the event belongs to, when known.
    pub order_id: Option<Uuid>,
    /// The event's id, when known.
    pub event_id: Option<Uuid>,
    /// The event's subject in the events stream, when known (for a replayed message, the
    /// subject it was replayed to is not the original one).
    pub events_subject: Option<String>,
    /// `jwl-replay-origin` of a replayed message.
    pub replay_origin: Option<String>,
    /// Whether (consumer, order) is held behind this dead letter.
    pub holds: bool,
}

impl DeadLetter {
    /// A dead letter of a decoded event; it holds its (consumer, order).
    pub fn of_event(
        consumer: &str,
        reason: DeadLetterReason,
        error: String,
        event: &Envelope,
        replay_origin: Option<&str>,
    ) -> Self {
        let order_id = event.order_id();
        Self {
            consumer: consumer.to_owned(),
            reason,
            error,
            order_id: Some(order_id.0),
            event_id: Some(event.id.0),
            events_subject: Some(jwl_events::subject(&order_id, event.event_type())),
            replay_origin: replay_origin.map(str::to_owned),
            holds: true,
        }
    }

    /// A dead letter of a message that is not a valid event: order and event id come from its
    /// `ce-subject` and `ce-id` headers when they hold UUIDs; it holds its (consumer, order)
    /// only if both are known and `holds` is asked for.
    pub fn of_message(
        consumer: &str,
        reason: DeadLetterReason,
        error: String,
        headers: &[(&str, &str)],
        holds: bool,
    ) -> Self {
        let order_id = uuid_header(headers, "ce-subject");
        let event_id = uuid_header(headers, "ce-id");
        Self {
            consumer: consumer.to_owned(),
            reason,
            error,
            order_id,
            event_id,
            events_subject: None,
            replay_origin: None,
            holds: holds && order_id.is_some() && event_id.is_some(),
        }
    }

    /// The (order, head event) this dead letter holds, if any.
    pub fn hold_key(&self) -> Option<(Uuid, Uuid)> {
        match (self.holds, self.order_id, self.event_id) {
            (true, Some(order_id), Some(event_id)) => Some((order_id, event_id)),
            _ => None,
        }
    }
}

/// The message being dead-lettered, as received (or as parked).
pub(crate) struct LetterSource<'m> {
    pub subject: &'m str,
    pub headers: Vec<(&'m str, &'m str)>,
    pub payload: &'m [u8],
    pub stream_sequence: u64,
}

/// Longest `jwl-dlq-error` value kept.
const MAX_ERROR_LEN: usize = 1024;

/// The dead-letter message for `source`. Its dedup id is `dlq:<consumer>:<event id>` (with
/// `:<replay origin>` appended for a replayed message, so that a redrive failing again is not
/// swallowed as a duplicate of the first dead letter), or `dlq:<consumer>:seq:<stream seq>` for
/// a message without an event id; a retry after a failure (before `term`) is absorbed by the
/// dead-letter stream.
pub(crate) fn dead_letter_message(
    letter: &DeadLetter,
    source: &LetterSource<'_>,
) -> OutboundMessage {
    let consumer = &letter.consumer;
    let order_id = letter
        .order_id
        .map(|id| id.hyphenated().to_string())
        .unwrap_or_else(|| UNKNOWN_ORDER.to_owned());
    let mut headers: Vec<(String, String)> = source
        .headers
        .iter()
        .filter(|(name, _)| !is_annotation_header(name))
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    let subject = letter.events_subject.as_deref().unwrap_or(source.subject);
    headers.extend([
        (CONSUMER_HEADER.to_owned(), consumer.clone()),
        (REASON_HEADER.to_owned(), letter.reason.as_str().to_owned()),
        (ERROR_HEADER.to_owned(), header_safe(&letter.error)),
        (SUBJECT_HEADER.to_owned(), subject.to_owned()),
        (
            STREAM_SEQ_HEADER.to_owned(),
            source.stream_sequence.to_string(),
        ),
        (ORDER_ID_HEADER.to_owned(), order_id.clone()),
    ]);
    let dedup_id = match (letter.event_id, &letter.replay_origin) {
        (Some(event_id), None) => format!("dlq:{consumer}:{event_id}"),
        (Some(event_id), Some(origin)) => format!("dlq:{consumer}:{event_id}:{origin}"),
        (None, _) => format!("dlq:{consumer}:seq:{}", source.stream_sequence),
    };
    OutboundMessage {
        dedup_id,
        subject: dead_letter_subject(consumer, &order_id),
        headers,
        payload: Bytes::copy_from_slice(source.payload),
    }
}

/// Header `name` (case-insensitive) as a UUID, if it holds one.
fn uuid_header(headers: &[(&str, &str)], name: &str) -> Option<Uuid> {
    jwl_events::header_value(headers, name).and_then(|value| Uuid::parse_str(value).ok())
}

/// One line, bounded length: header values cannot hold CR/LF.
fn header_safe(text: &str) -> String {
    let mut safe: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if safe.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !safe.is_char_boundary(end) {
            end -= 1;
        }
        safe.truncate(end);
    }
    safe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_is_one_bounded_line() {
        let text = format!("first\r\nsecond{}", "é".repeat(2000));
        let safe = header_safe(&text);
        assert!(!safe.contains(['\r', '\n']));
        assert!(safe.len() <= MAX_ERROR_LEN);
        assert!(safe.starts_with("first  second"));
    }
}
