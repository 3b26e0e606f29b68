//! The dead-letter wire format: the subject a dead letter is stored on
//! (`jwl.dlq.<consumer>.<order id or "unknown">`), the `jwl-dlq-*` headers saying who gave up on
//! the original message and why ([`DeadLetterReason`]), which headers belong to the original
//! event, and the dead-letter log (`jwl.dlqlog.<dlq seq>`) where the operator tools record how a
//! dead letter was resolved. Pure, no I/O.

use std::fmt;
use std::str::FromStr;

/// Prefix of every dead-letter subject.
const DLQ_PREFIX: &str = "jwl.dlq";
/// Every dead-letter subject (the dead-letter stream's subjects).
pub const DLQ_SUBJECTS: &str = "jwl.dlq.>";
/// The order token of a dead letter whose order is not known.
pub const UNKNOWN_ORDER: &str = "unknown";
/// Prefix of the dead-letter log's subjects: `jwl.dlqlog.<dlq seq>`.
const DLQ_LOG_PREFIX: &str = "jwl.dlqlog";
/// Every subject of the dead-letter log (its stream's subjects).
pub const DLQ_LOG_SUBJECTS: &str = "jwl.dlqlog.>";

/// The inbox consumer that gave up, e.g. `payment__order_created`.
pub const CONSUMER_HEADER: &str = "jwl-dlq-consumer";
/// Why ([`DeadLetterReason::as_str`]).
pub const REASON_HEADER: &str = "jwl-dlq-reason";
/// The last error, on one line.
pub const ERROR_HEADER: &str = "jwl-dlq-error";
/// The original subject in the events stream.
pub const SUBJECT_HEADER: &str = "jwl-dlq-subject";
/// The original position in the stream it was received from.
pub const STREAM_SEQ_HEADER: &str = "jwl-dlq-stream-seq";
/// The order id, or [`UNKNOWN_ORDER`].
pub const ORDER_ID_HEADER: &str = "jwl-dlq-order-id";

/// Why a message was dead-lettered (the `jwl-dlq-reason` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// Not a valid event (`jwl_events::decode` failed).
    Decode,
    /// The handler failed permanently.
    Permanent,
    /// It failed transiently `max_attempts` times, or arrived past that.
    MaxAttempts,
}

impl DeadLetterReason {
    pub const ALL: [Self; 3] = [Self::Decode, Self::Permanent, Self::MaxAttempts];

    /// `"decode"`, `"permanent"` or `"max_attempts"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Decode => "decode",
            Self::Permanent => "permanent",
            Self::MaxAttempts => "max_attempts",
        }
    }

    /// The reason [`Self::as_str`] names.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.as_str() == name)
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `jwl-dlq-reason` value that names no [`DeadLetterReason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dead-letter reason {0:?} (decode, permanent or max_attempts)")]
pub struct UnknownReason(pub String);

impl FromStr for DeadLetterReason {
    type Err = UnknownReason;
    fn from_str(text: &str) -> Result<Self, UnknownReason> {
        Self::parse(text).ok_or_else(|| UnknownReason(text.to_owned()))
    }
}

/// The subject of a dead letter of `consumer`: `jwl.dlq.<consumer>.<order token>`, where the
/// order token is the order id or [`UNKNOWN_ORDER`].
pub fn dead_letter_subject(consumer: &str, order_token: &str) -> String {
    format!("{DLQ_PREFIX}.{consumer}.{order_token}")
}

/// The dead letters of `consumer` (any when `None`) for `order` (any when `None`):
/// `jwl.dlq.<consumer or *>.<order or *>`, or [`DLQ_SUBJECTS`] for all. `consumer` must be one
/// subject token.
pub fn dead_letter_filter(consumer: Option<&str>, order: Option<&str>) -> String {
    match (consumer, order) {
        (None, None) => DLQ_SUBJECTS.to_owned(),
        (consumer, order) => dead_letter_subject(consumer.unwrap_or("*"), order.unwrap_or("*")),
    }
}

/// The consumer and order tokens of a dead-letter subject (the order token may be
/// [`UNKNOWN_ORDER`]); `None` for a subject that is not one.
pub fn parse_dead_letter_subject(subject: &str) -> Option<(&str, Option<&str>)> {
    let rest = subject.strip_prefix(DLQ_PREFIX)?.strip_prefix('.')?;
    let mut tokens = rest.splitn(2, '.');
    Some((tokens.next()?, tokens.next()))
}

/// Whether header `name` is an annotation rather than part of the original event: the broker's
/// own (`Nats-*`, e.g. the original `Nats-Msg-Id`), dead-letter (`jwl-dlq-*`) and replay
/// (`jwl-replay-*`, `jwl-release-*`) headers. Neither a dead letter nor a replayed message
/// carries the annotations of the message it is made from.
pub fn is_annotation_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    ["nats-", "jwl-dlq-", "jwl-replay-", "jwl-release-"]
        .iter()
        .any(|prefix| lower.starts_with(prefix))
}

/// The subject of the dead-letter log record of dead letter `dlq_seq`: `jwl.dlqlog.<dlq seq>`.
pub fn dead_letter_log_subject(dlq_seq: u64) -> String {
    format!("{DLQ_LOG_PREFIX}.{dlq_seq}")
}

/// The dedup id of that record: `dlqlog:<dlq seq>` (one record per dead letter).
pub fn dead_letter_log_id(dlq_seq: u64) -> String {
    format!("dlqlog:{dlq_seq}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_parse_back_from_their_names() {
        for reason in DeadLetterReason::ALL {
            assert_eq!(DeadLetterReason::parse(reason.as_str()), Some(reason));
            assert_eq!(reason.as_str().parse::<DeadLetterReason>(), Ok(reason));
        }
        assert_eq!(DeadLetterReason::parse("expired"), None);
        assert!("later".parse::<DeadLetterReason>().is_err());
    }

    #[test]
    fn subjects_and_filters() {
        assert_eq!(dead_letter_subject("c", "o"), "jwl.dlq.c.o");
        assert_eq!(dead_letter_filter(None, None), DLQ_SUBJECTS);
        assert_eq!(dead_letter_filter(Some("c"), None), "jwl.dlq.c.*");
        assert_eq!(dead_letter_filter(None, Some("o")), "jwl.dlq.*.o");
        assert_eq!(
            parse_dead_letter_subject("jwl.dlq.c.unknown"),
            Some(("c", Some(UNKNOWN_ORDER)))
        );
        assert_eq!(parse_dead_letter_subject("jwl.dlq.c"), Some(("c", None)));
        assert_eq!(parse_dead_letter_subject("jwl.dlqlog.3"), None);
        assert_eq!(dead_letter_log_subject(3), "jwl.dlqlog.3");
        assert_eq!(dead_letter_log_id(3), "dlqlog:3");
    }

    #[test]
    fn broker_dead_letter_and_replay_headers_are_annotations() {
        assert!(is_annotation_header("Nats-Msg-Id"));
        assert!(is_annotation_header("jwl-dlq-reason"));
        assert!(is_annotation_header("jwl-replay-mode"));
        assert!(is_annotation_header("jwl-release-reason"));
        assert!(!is_annotation_header("ce-id"));
    }
}
