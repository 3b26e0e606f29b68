//! [`Envelope`]: an event's CloudEvents context (id, source, time, causation, trace) plus its
//! typed data. The type, subject and correlation id are derived from the data.

use chrono::{DateTime, SubsecRound, Utc};

use crate::catalogue::{EventData, EventType, Service};
use crate::ids::{EventId, OrderId};

/// One event, independent of how it travels.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// UUIDv7; also the broker dedup id.
    pub id: EventId,
    /// The emitting service; must be `data.event_type().emitter()` to pass `decode`.
    pub source: Service,
    /// When the event happened (microsecond precision, like PostgreSQL `timestamptz`).
    pub time: DateTime<Utc>,
    /// The event this one reacts to; `None` for events born from an HTTP request or a timer.
    pub causation_id: Option<EventId>,
    /// W3C `traceparent` (CloudEvents distributed-tracing extension).
    pub traceparent: Option<String>,
    /// The payload; determines the event type.
    pub data: EventData,
}

impl Envelope {
    /// A new event from `source` with a fresh UUIDv7 id, `time` = now (truncated to
    /// microseconds), no cause and no trace.
    pub fn new(source: Service, data: EventData) -> Envelope {
        Envelope {
            id: EventId::new(),
            source,
            time: Utc::now().trunc_subsecs(6),
            causation_id: None,
            traceparent: None,
            data,
        }
    }

    /// Marks this event as caused by `cause`: records its id and, unless this event already
    /// has one, inherits its `traceparent`.
    pub fn caused_by(mut self, cause: &Envelope) -> Self {
        self.causation_id = Some(cause.id);
        if self.traceparent.is_none() {
            self.traceparent.clone_from(&cause.traceparent);
        }
        self
    }

    /// Sets the W3C `traceparent` (e.g. from the HTTP request that created the event).
    pub fn with_traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// The CloudEvents `type`, from the data.
    pub fn event_type(&self) -> EventType {
        self.data.event_type()
    }

    /// The order the event is about (the CloudEvents `subject`).
    pub fn order_id(&self) -> OrderId {
        self.data.order_id()
    }

    /// The saga's correlation id: the order id as text.
    pub fn correlation_id(&self) -> String {
        self.order_id().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::{PaymentCaptured, PaymentVoided};

    fn captured() -> EventData {
        PaymentCaptured {
            order_id: OrderId::new(),
            amount_cents: 100,
        }
        .into()
    }

    #[test]
    fn new_derives_type_and_order_from_data() {
        let data = captured();
        let env = Envelope::new(Service::Payment, data.clone());
        assert_eq!(env.event_type(), EventType::PaymentCaptured);
        assert_eq!(env.order_id(), data.order_id());
        assert_eq!(env.correlation_id(), data.order_id().to_string());
        assert_eq!(env.id.0.get_version_num(), 7);
        assert_eq!(
            env.time.timestamp_subsec_nanos() % 1000,
            0,
            "microsecond precision"
        );
        assert_eq!((env.causation_id, env.traceparent), (None, None));
    }

    #[test]
    fn caused_by_links_the_cause_and_inherits_its_trace() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cause = Envelope::new(Service::Payment, captured()).with_traceparent(tp);
        let order_id = cause.order_id();
        let effect = Envelope::new(
            Service::Payment,
            PaymentVoided {
                order_id,
                amount_cents: 1,
            }
            .into(),
        )
        .caused_by(&cause);
        assert_eq!(effect.causation_id, Some(cause.id));
        assert_eq!(effect.traceparent.as_deref(), Some(tp));
        assert_ne!(effect.id, cause.id);

        let own = "00-11111111111111111111111111111111-2222222222222222-01";
        let kept = Envelope::new(Service::Payment, captured())
            .with_traceparent(own)
            .caused_by(&cause);
        assert_eq!(kept.traceparent.as_deref(), Some(own));
    }
}
