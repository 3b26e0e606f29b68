//! Metric names and pre-labelled handles for the relay and the consumer loops.

use std::collections::HashMap;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

pub(crate) const OUTBOX_PUBLISHED: &str = "jwl_outbox_published_total";
pub(crate) const OUTBOX_PUBLISH_FAILURES: &str = "jwl_outbox_publish_failures_total";
pub(crate) const OUTBOX_PENDING: &str = "jwl_outbox_pending";
pub(crate) const OUTBOX_PARKED: &str = "jwl_outbox_parked_total";
pub(crate) const OUTBOX_PARKED_ROWS: &str = "jwl_outbox_parked_rows";
pub(crate) const OUTBOX_OLDEST_PENDING_AGE: &str = "jwl_outbox_oldest_pending_age_seconds";
pub(crate) const RELAY_BATCH_SIZE: &str = "jwl_relay_batch_size";
pub(crate) const RELAY_PUBLISH_DURATION: &str = "jwl_relay_publish_duration_seconds";
pub(crate) const RELAY_PARTITION_LEADER: &str = "jwl_relay_partition_leader";
/// Committed transactions' rows, by whether they were handed over (published at once) or left to
/// the relay's claim (an earlier row of one of their orders was not acknowledged yet).
pub(crate) const OUTBOX_HANDOVERS: &str = "jwl_outbox_handovers_total";
pub(crate) const HANDOVER_OUTCOME: &str = "outcome";
pub(crate) const DEAD_LETTERS: &str = "jwl_dead_letters_total";
pub(crate) const EVENTS_HANDLED: &str = "jwl_events_handled_total";
pub(crate) const HANDLER_DURATION: &str = "jwl_handler_duration_seconds";
pub(crate) const BATCH_FAILURES: &str = "jwl_consumer_batch_failures_total";
pub(crate) const DB_ACQUIRE_DURATION: &str = "jwl_db_acquire_duration_seconds";
pub(crate) const CONSUMER_PENDING: &str = "jwl_consumer_pending_messages";
pub(crate) const CONSUMER_ACK_PENDING: &str = "jwl_consumer_ack_pending_messages";
pub(crate) const CONSUMER_REDELIVERED: &str = "jwl_consumer_redelivered_messages";
pub(crate) const CONSUMER_HELD: &str = "jwl_consumer_held_messages";
pub(crate) const CONSUMER_PAUSED: &str = "jwl_consumer_paused";

/// The metrics of one relay partition, labelled with its service and partition (histograms with
/// the service only). A process reports the backlog of the partitions it leads and 0 for the
/// others, so `sum` or `max` over a service's processes gives the partition's figure.
pub(crate) struct RelayMetrics {
    pub published: Counter,
    pub publish_failures: Counter,
    pub parked: Counter,
    /// Rows parked now (rejected by the broker for good, waiting for `jwl outbox retry`).
    pub parked_rows: Gauge,
    pub pending: Gauge,
    /// Age of the oldest row not yet published (0 when none is pending).
    pub oldest_pending_age: Gauge,
    /// 1 while this process leads the partition.
    pub leader: Gauge,
    pub batch_size: Histogram,
    /// One broker round publishing a batch, acks included.
    pub publish_duration: Histogram,
}

impl RelayMetrics {
    pub fn new(service: &'static str, partition: usize) -> Self {
        let partition = partition.to_string();
        Self {
            published: counter!(OUTBOX_PUBLISHED, "service" => service,
                "partition" => partition.clone()),
            publish_failures: counter!(OUTBOX_PUBLISH_FAILURES, "service" => service,
                "partition" => partition.clone()),
            parked: counter!(OUTBOX_PARKED, "service" => service,
                "partition" => partition.clone()),
            parked_rows: gauge!(OUTBOX_PARKED_ROWS, "service" => service,
                "partition" => partition.clone()),
            pending: gauge!(OUTBOX_PENDING, "service" => service,
                "partition" => partition.clone()),
            oldest_pending_age: gauge!(OUTBOX_OLDEST_PENDING_AGE, "service" => service,
                "partition" => partition.clone()),
            leader: gauge!(RELAY_PARTITION_LEADER, "service" => service,
                "partition" => partition),
            batch_size: histogram!(RELAY_BATCH_SIZE, "service" => service),
            publish_duration: histogram!(RELAY_PUBLISH_DURATION, "service" => service),
        }
    }
}

/// The outcomes of the events one consumer (a service's handling of one event type) handled,
/// labelled with that consumer and event type.
pub(crate) struct HandledMetrics {
    pub ok: Counter,
    pub duplicate: Counter,
    pub retried: Counter,
    pub dead_lettered: Counter,
    /// Held back behind a dead letter of the same order.
    pub parked: Counter,
    /// Hold releases asked for by a control message.
    pub released: Counter,
    pub handler_duration: Histogram,
}

impl HandledMetrics {
    pub fn new(consumer: &str, event_type: &'static str) -> Self {
        let handled = |outcome: &'static str| {
            counter!(EVENTS_HANDLED, "consumer" => consumer.to_owned(), "type" => event_type,
                "outcome" => outcome)
        };
        Self {
            ok: handled("ok"),
            duplicate: handled("duplicate"),
            retried: handled("retried"),
            dead_lettered: handled("dead_lettered"),
            parked: handled("parked"),
            released: handled("released"),
            handler_duration: histogram!(HANDLER_DURATION, "consumer" => consumer.to_owned(),
                "type" => event_type),
        }
    }
}

/// One consumer loop's metrics: its batches and the broker's backlog under its durable name,
/// and the outcomes of each consumer (event type) it handles.
pub(crate) struct ConsumerMetrics {
    /// By consumer name: one per event type the loop handles.
    handled: HashMap<String, HandledMetrics>,
    /// For what is attributed to no event type (e.g. an unreadable replayed message).
    unattributed: HandledMetrics,
    /// Time to get a pooled connection and begin a batch's transaction.
    pub db_acquire: Histogram,
    /// Batches whose transaction could not be run or committed.
    pub batch_failures: Counter,
    /// The broker's count of messages not yet delivered to this consumer.
    pub pending: Gauge,
    /// Delivered to this consumer and not yet acknowledged.
    pub ack_pending: Gauge,
    /// Delivered more than once and not yet acknowledged.
    pub redelivered: Gauge,
    /// Messages held (received, kept in progress, not handled) while the loop is paused.
    pub held: Gauge,
    /// 1 while the loop is paused, labelled `cause` (`database` or `dependency`).
    pub paused_database: Gauge,
    pub paused_dependency: Gauge,
}

impl ConsumerMetrics {
    /// The metrics of loop `consumer` (`source`: `events` or `replay`), which handles events as
    /// the (consumer name, event type) pairs of `handles`.
    pub fn new(
        consumer: &str,
        source: &'static str,
        handles: impl IntoIterator<Item = (String, &'static str)>,
    ) -> Self {
        Self {
            handled: handles
                .into_iter()
                .map(|(name, event_type)| {
                    let metrics = HandledMetrics::new(&name, event_type);
                    (name, metrics)
                })
                .collect(),
            unattributed: HandledMetrics::new(consumer, source),
            db_acquire: histogram!(DB_ACQUIRE_DURATION, "consumer" => consumer.to_owned()),
            batch_failures: counter!(BATCH_FAILURES, "consumer" => consumer.to_owned()),
            pending: gauge!(CONSUMER_PENDING, "consumer" => consumer.to_owned()),
            ack_pending: gauge!(CONSUMER_ACK_PENDING, "consumer" => consumer.to_owned()),
            redelivered: gauge!(CONSUMER_REDELIVERED, "consumer" => consumer.to_owned()),
            held: gauge!(CONSUMER_HELD, "consumer" => consumer.to_owned()),
            paused_database: gauge!(CONSUMER_PAUSED, "consumer" => consumer.to_owned(),
                "cause" => "database"),
            paused_dependency: gauge!(CONSUMER_PAUSED, "consumer" => consumer.to_owned(),
                "cause" => "dependency"),
        }
    }

    /// The outcome metrics of `consumer` (falling back to the loop's own).
    pub fn of(&self, consumer: &str) -> &HandledMetrics {
        self.handled.get(consumer).unwrap_or(&self.unattributed)
    }
}

/// Exports `jwl_dead_letters_total` at 0 for every (consumer, reason) of `consumers` ×
/// `reasons`, so that the series exist from start-up and `increase()` (the `DeadLettersGrowing`
/// alert) sees the first dead letter: a series born at 1 has no earlier sample to grow from.
pub(crate) fn dead_letters_from_zero<'a>(
    consumers: impl IntoIterator<Item = &'a str>,
    reasons: &[&'static str],
) {
    for consumer in consumers {
        for &reason in reasons {
            counter!(DEAD_LETTERS, "consumer" => consumer.to_owned(), "reason" => reason)
                .increment(0);
        }
    }
}

/// Counts one published dead letter under the consumer that gave up and its reason (both
/// bounded sets: the service's consumers, and `decode`/`permanent`/`max_attempts`).
pub(crate) fn count_dead_letter(consumer: &str, reason: &'static str) {
    counter!(DEAD_LETTERS, "consumer" => consumer.to_owned(), "reason" => reason).increment(1);
}
