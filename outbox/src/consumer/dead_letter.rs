//! Building dead letters: the original message, re-addressed to `jwl.dlq.<consumer>.<order id>`,
//! with headers saying who gave up on it and why.

use std::fmt;

use bytes::Bytes;

use crate::transport::{Delivery, OutboundMessage};

/// Why a message was dead-lettered (the `jwl-dlq-reason` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadLetterReason {
    /// Not a valid event (`jwl_events::decode` failed).
    Decode,
    /// The handler failed permanently.
    Permanent,
    /// It failed transiently `max_attempts` times, or arrived past that.
    MaxAttempts,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decode => "decode",
            Self::Permanent => "permanent",
            Self::MaxAttempts => "max_attempts",
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decision to dead-letter one delivery.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    pub reason: DeadLetterReason,
    pub error: String,
    /// The order the event belongs to, when known.
    pub order_id: Option<String>,
}

/// Longest `jwl-dlq-error` value kept.
const MAX_ERROR_LEN: usize = 1024;
const UNKNOWN_ORDER: &str = "unknown";

/// The dead-letter message for `delivery`. Its dedup id is `dlq-<consumer>-<stream seq>`, so a
/// retry after a failure (before `term`) is absorbed by the dead-letter stream.
pub(crate) fn dead_letter_message(
    consumer: &str,
    delivery: &dyn Delivery,
    letter: &DeadLetter,
) -> OutboundMessage {
    let order_id = letter
        .order_id
        .clone()
        .or_else(|| order_id_from_headers(delivery))
        .unwrap_or_else(|| UNKNOWN_ORDER.to_owned());
    let mut headers: Vec<(String, String)> = delivery
        .headers()
        .into_iter()
        .filter(|(name, _)| !is_replaced_header(name))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    headers.extend([
        ("jwl-dlq-consumer".to_owned(), consumer.to_owned()),
        (
            "jwl-dlq-reason".to_owned(),
            letter.reason.as_str().to_owned(),
        ),
        ("jwl-dlq-error".to_owned(), header_safe(&letter.error)),
        ("jwl-dlq-subject".to_owned(), delivery.subject().to_owned()),
        (
            "jwl-dlq-stream-seq".to_owned(),
            delivery.stream_sequence().to_string(),
        ),
        ("jwl-dlq-order-id".to_owned(), order_id.clone()),
    ]);
    OutboundMessage {
        dedup_id: format!("dlq-{consumer}-{}", delivery.stream_sequence()),
        subject: format!("jwl.dlq.{consumer}.{order_id}"),
        headers,
        payload: Bytes::copy_from_slice(delivery.payload()),
    }
}

/// Broker headers (`Nats-*`, e.g. the original `Nats-Msg-Id`) and earlier dead-letter headers are
/// not carried over.
fn is_replaced_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("nats-") || lower.starts_with("jwl-dlq-")
}

/// The order id of an undecodable message, if its `ce-subject` header holds a valid one.
fn order_id_from_headers(delivery: &dyn Delivery) -> Option<String> {
    delivery
        .headers()
        .into_iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("ce-subject"))
        .and_then(|(_, value)| uuid::Uuid::parse_str(value).ok())
        .map(|id| id.hyphenated().to_string())
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

    #[test]
    fn broker_and_old_dead_letter_headers_are_dropped() {
        assert!(is_replaced_header("Nats-Msg-Id"));
        assert!(is_replaced_header("jwl-dlq-reason"));
        assert!(!is_replaced_header("ce-id"));
    }
}
