//! Metric names and pre-labelled handles for the relay and the consumer loops.

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

pub(crate) const OUTBOX_PUBLISHED: &str = "jwl_outbox_published_total";
pub(crate) const OUTBOX_PUBLISH_FAILURES: &str = "jwl_outbox_publish_failures_total";
pub(crate) const OUTBOX_PENDING: &str = "jwl_outbox_pending";
pub(crate) const OUTBOX_PARKED: &str = "jwl_outbox_parked_total";
pub(crate) const RELAY_BATCH_SIZE: &str = "jwl_relay_batch_size";
pub(crate) const EVENTS_HANDLED: &str = "jwl_events_handled_total";
pub(crate) const HANDLER_DURATION: &str = "jwl_handler_duration_seconds";
pub(crate) const BATCH_FAILURES: &str = "jwl_consumer_batch_failures_total";

/// The relay's metrics, labelled with its service.
pub(crate) struct RelayMetrics {
    pub published: Counter,
    pub publish_failures: Counter,
    pub parked: Counter,
    pub pending: Gauge,
    pub batch_size: Histogram,
}

impl RelayMetrics {
    pub fn new(service: &'static str) -> Self {
        Self {
            published: counter!(OUTBOX_PUBLISHED, "service" => service),
            publish_failures: counter!(OUTBOX_PUBLISH_FAILURES, "service" => service),
            parked: counter!(OUTBOX_PARKED, "service" => service),
            pending: gauge!(OUTBOX_PENDING, "service" => service),
            batch_size: histogram!(RELAY_BATCH_SIZE, "service" => service),
        }
    }
}

/// One consumer loop's metrics, labelled with its consumer and event type.
pub(crate) struct ConsumerMetrics {
    pub ok: Counter,
    pub duplicate: Counter,
    pub retried: Counter,
    pub dead_lettered: Counter,
    /// Held back behind a dead letter of the same order.
    pub parked: Counter,
    /// Hold releases asked for by a control message.
    pub released: Counter,
    pub handler_duration: Histogram,
    /// Batches whose transaction could not be run or committed.
    pub batch_failures: Counter,
}

impl ConsumerMetrics {
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
            batch_failures: counter!(BATCH_FAILURES, "consumer" => consumer.to_owned()),
        }
    }
}
