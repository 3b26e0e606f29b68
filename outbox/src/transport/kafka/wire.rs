//! The Kafka wire format of a message, and the pure rules of the mapping: topic names, the
//! message key, header names (CloudEvents' Kafka binding and our own `jwl_` headers) and NATS
//! subject filters matched on the client. No I/O.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jwl_events::HeaderStyle;

use crate::transport::TransportError;

/// The message's broker subject (`jwl.evt.<type>.<order>`, …): Kafka has no subjects.
pub(crate) const SUBJECT: &str = "jwl_subject";
/// The publisher's dedup id (kept for operators; Kafka does not deduplicate by it).
pub(crate) const MSG_ID: &str = "jwl_msg_id";
/// On a retry copy: which delivery it is (2 for the first retry).
pub(crate) const ATTEMPT: &str = "jwl_attempt";
/// On a retry copy: not to be delivered before this time (milliseconds since the Unix epoch).
pub(crate) const NOT_BEFORE: &str = "jwl_not_before";
/// On a retry copy: the offset of the original message in its topic (its stream sequence).
pub(crate) const ORIGIN_OFFSET: &str = "jwl_origin_offset";
/// Prefix of the headers this transport adds; they are not handed to the application.
const OWN_PREFIX: &str = "jwl_";

/// The Kafka topic of a stream: its name, which must be a legal topic name (letters, digits,
/// `.`, `_`, `-`; at most 249 characters).
pub(crate) fn topic_of(stream: &str) -> Result<&str, TransportError> {
    let legal = !stream.is_empty()
        && stream.len() <= 249
        && stream != "."
        && stream != ".."
        && stream
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if legal {
        Ok(stream)
    } else {
        Err(TransportError::Unsupported(format!(
            "stream name {stream:?} is not a legal Kafka topic name (letters, digits, '.', '_', \
             '-', at most 249 characters)"
        )))
    }
}

/// The topic holding the delayed retries of `group` on `topic`: `<topic>.retry.<group>`.
pub(crate) fn retry_topic_of(topic: &str, group: &str) -> Result<String, TransportError> {
    let name = format!("{topic}.retry.{group}");
    topic_of(&name)?;
    Ok(name)
}

/// The message key, which picks the partition: the CloudEvents `subject` (the order id) when
/// the message has one, else the order token of the event subject, else the subject.
/// All messages of one order thus stay in one partition, in publication order.
pub(crate) fn key_of<'m>(subject: &'m str, headers: &'m [(String, String)]) -> &'m str {
    if let Some((_, order)) = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("ce-subject"))
    {
        return order;
    }
    jwl_events::subject_order(subject).unwrap_or(subject)
}

/// A header name as written to Kafka: the neutral `ce-` prefix becomes the Kafka
/// binding's `ce_`; every other name is kept.
pub(crate) fn to_wire_name(name: &str) -> String {
    map_prefix(
        name,
        HeaderStyle::NEUTRAL.prefix(),
        HeaderStyle::Kafka.prefix(),
    )
}

/// A header name as handed to the application (the inverse of [`to_wire_name`]), or `None` for
/// the transport's own `jwl_` headers.
pub(crate) fn from_wire_name(name: &str) -> Option<String> {
    if name.starts_with(OWN_PREFIX) {
        return None;
    }
    Some(map_prefix(
        name,
        HeaderStyle::Kafka.prefix(),
        HeaderStyle::NEUTRAL.prefix(),
    ))
}

fn map_prefix(name: &str, from: &str, to: &str) -> String {
    match name.get(..from.len()) {
        Some(head) if head.eq_ignore_ascii_case(from) => format!("{to}{}", &name[from.len()..]),
        _ => name.to_owned(),
    }
}

/// Whether `subject` matches the NATS subject filter `filter`: tokens separated by `.`, `*`
/// matches exactly one token, a final `>` one or more.
pub(crate) fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    let mut filter_tokens = filter.split('.').peekable();
    while let Some(wanted) = filter_tokens.next() {
        if wanted == ">" && filter_tokens.peek().is_none() {
            return subject_tokens.next().is_some();
        }
        match subject_tokens.next() {
            Some(token) if wanted == "*" || wanted == token => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// Whether `subject` matches any of `filters` (an empty list matches everything).
pub(crate) fn matches_any(filters: &[String], subject: &str) -> bool {
    filters.is_empty()
        || filters
            .iter()
            .any(|filter| subject_matches(filter, subject))
}

/// Milliseconds since the Unix epoch of `time` (0 before it).
pub(crate) fn epoch_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

/// How long from `now` until `not_before` (milliseconds since the epoch); zero when due.
pub(crate) fn wait_until(not_before: u64, now: SystemTime) -> Duration {
    Duration::from_millis(not_before.saturating_sub(epoch_millis(now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_follow_nats_wildcards() {
        let subject = "jwl.evt.0193.payment.authorized";
        assert!(subject_matches("jwl.evt.*.payment.authorized", subject));
        assert!(subject_matches("jwl.evt.>", subject));
        assert!(subject_matches(subject, subject));
        assert!(!subject_matches("jwl.evt.*.payment.captured", subject));
        assert!(!subject_matches("jwl.evt.*.payment", subject));
        assert!(!subject_matches("jwl.evt.*.payment.authorized.x", subject));
        assert!(!subject_matches(
            "jwl.evt.0193.payment.authorized.>",
            subject
        ));
        assert!(subject_matches(
            "jwl.replay.payment.>",
            "jwl.replay.payment.o.order.created"
        ));
        assert!(!subject_matches(
            "jwl.replay.payment.>",
            "jwl.replay.payment"
        ));
        assert!(!subject_matches("jwl.*", "jwl"));
        assert!(matches_any(&[], subject));
        assert!(matches_any(
            &["a.b".to_owned(), "jwl.evt.*.payment.*".to_owned()],
            subject
        ));
    }

    #[test]
    fn cloudevents_headers_use_the_kafka_binding_on_the_wire() {
        assert_eq!(to_wire_name("ce-id"), "ce_id");
        assert_eq!(to_wire_name("CE-type"), "ce_type");
        assert_eq!(to_wire_name("content-type"), "content-type");
        assert_eq!(to_wire_name("jwl-dlq-reason"), "jwl-dlq-reason");
        assert_eq!(from_wire_name("ce_id").as_deref(), Some("ce-id"));
        assert_eq!(
            from_wire_name("jwl-dlq-reason").as_deref(),
            Some("jwl-dlq-reason")
        );
        assert_eq!(from_wire_name(SUBJECT), None);
        assert_eq!(from_wire_name(ATTEMPT), None);
    }

    #[test]
    fn the_key_is_the_order() {
        let headers = vec![("ce-subject".to_owned(), "order-1".to_owned())];
        assert_eq!(key_of("jwl.dlq.c.order-1", &headers), "order-1");
        assert_eq!(key_of("jwl.evt.order.created.order-2", &[]), "order-2");
        // the earlier layout
        assert_eq!(key_of("jwl.evt.order-2.order.created", &[]), "order-2");
        assert_eq!(key_of("other.subject", &[]), "other.subject");
    }

    #[test]
    fn topic_names_are_checked() {
        assert_eq!(topic_of("JWL_EVENTS").ok(), Some("JWL_EVENTS"));
        assert!(topic_of("bad name").is_err());
        assert!(topic_of("").is_err());
        assert_eq!(
            retry_topic_of("JWL_EVENTS", "payment__events")
                .ok()
                .as_deref(),
            Some("JWL_EVENTS.retry.payment__events")
        );
    }

    #[test]
    fn not_before_is_waited_for() {
        let now = UNIX_EPOCH + Duration::from_millis(10_000);
        assert_eq!(wait_until(12_500, now), Duration::from_millis(2_500));
        assert_eq!(wait_until(9_000, now), Duration::ZERO);
    }
}
