//! How `jwl bench` sees sagas end: it follows the events that end a saga (`payment.captured`,
//! `payment.declined`, `payment.voided`, and the failures and compensations before a void) as
//! the broker gets them, through the transport's
//! [`History::follow_events`](jwl_outbox::transport::History::follow_events) (a core subscription
//! on NATS, a group-less reader on Kafka), so no order is polled. [`SagaEvents::ended`] decides from an order's events
//! whether and how its saga ended; the happy path's earlier events are watched too, for the
//! latency of each hop (an event's time → the time of the event its consumer emitted in
//! reaction, by `causationid`: [`SagaEvents::hops`]; the courier-assignment hop is the one into
//! `dispatch.courier_assigned`), and how long each event took to reach the broker (its time →
//! when the bench received it: [`SagaEvents::to_broker`]), which splits a hop into the cause's
//! way to the broker and the consumer's part. Only the three headers these need are read, not the whole
//! event through `jwl_events::decode`: the watcher shares the cores with the system it measures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use jwl_events::{EventType, OrderId, parse_subject};
use jwl_outbox::transport::Broker;
use serde::Deserialize;
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

use crate::args::{BrokerArgs, BrokerKind};
use crate::commands::connect_operator;

/// The event types the watcher subscribes to.
const WATCHED: [EventType; 12] = [
    EventType::OrderCreated,
    EventType::PaymentAuthorized,
    EventType::InventoryReserved,
    EventType::WaybillCreated,
    EventType::CourierAssigned,
    EventType::PaymentCaptured,
    EventType::PaymentDeclined,
    EventType::PaymentVoided,
    EventType::InventoryRejected,
    EventType::DispatchFailed,
    EventType::InventoryReleased,
    EventType::WaybillCancelled,
];

/// When one event happened (its CloudEvents `time`) and when the bench received it (by its
/// monotonic clock, and by the wall clock the event's time is compared with).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seen {
    pub time: DateTime<Utc>,
    pub arrived: Instant,
    pub received: DateTime<Utc>,
}

/// One event of an order's timeline, as the hops need it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Observed {
    causation: Causation,
    event_type: EventType,
    time: DateTime<Utc>,
    /// Its time → received here; `None` when the clocks put the receipt first.
    to_broker: Option<Duration>,
}

/// An event's id and cause (CloudEvents `id` and `causationid`), as the hops need them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Causation {
    pub id: Uuid,
    pub cause: Option<Uuid>,
}

/// The ending events of one order seen so far, and when each event seen happened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SagaEvents {
    /// Every event seen once (by id).
    timeline: Vec<Observed>,
    captured: Option<Seen>,
    declined: Option<Seen>,
    voided: Option<Seen>,
    inventory_rejected: Option<Seen>,
    dispatch_failed: Option<(Seen, String)>,
    released: Option<Seen>,
    waybill_cancelled: Option<Seen>,
}

/// How and when a saga ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    /// `dispatched`, `rejected`, `cancelled/out_of_stock`, `cancelled/<dispatch failure>`.
    pub outcome: String,
    /// The last event of the saga.
    pub last: Seen,
    /// The `payment.captured` event of a dispatched order.
    pub captured: Option<Seen>,
}

fn latest(events: &[Option<Seen>]) -> Option<Seen> {
    let mut last: Option<Seen> = None;
    for seen in events {
        let seen = (*seen)?;
        if last.is_none_or(|l| seen.arrived > l.arrived) {
            last = Some(seen);
        }
    }
    last
}

impl SagaEvents {
    /// Records one event (`reason` is the `dispatch.failed` payload's; `causation` absent when
    /// the headers did not carry a readable id).
    pub fn record(
        &mut self,
        event_type: EventType,
        seen: Seen,
        causation: Option<Causation>,
        reason: Option<String>,
    ) {
        if let Some(causation) = causation
            && !self.timeline.iter().any(|o| o.causation.id == causation.id)
        {
            self.timeline.push(Observed {
                causation,
                event_type,
                time: seen.time,
                to_broker: (seen.received - seen.time).to_std().ok(),
            });
        }
        let slot = match event_type {
            EventType::PaymentCaptured => &mut self.captured,
            EventType::PaymentDeclined => &mut self.declined,
            EventType::PaymentVoided => &mut self.voided,
            EventType::InventoryRejected => &mut self.inventory_rejected,
            EventType::InventoryReleased => &mut self.released,
            EventType::WaybillCancelled => &mut self.waybill_cancelled,
            EventType::DispatchFailed => {
                self.dispatch_failed
                    .get_or_insert((seen, reason.unwrap_or_else(|| "unknown".to_owned())));
                return;
            }
            _ => return,
        };
        slot.get_or_insert(seen);
    }

    /// Each hop seen: from an event's time to the time of an event emitted in reaction to it
    /// (its `causationid`), i.e. the cause's commit, the relay, the broker, the consumer and
    /// the handler up to the effect, all by the services' clocks; each with the effect's type.
    pub fn hops(&self) -> Vec<(EventType, Duration)> {
        self.timeline
            .iter()
            .filter_map(|effect| {
                let cause = effect.causation.cause?;
                let cause = self.timeline.iter().find(|o| o.causation.id == cause)?;
                Some((effect.event_type, (effect.time - cause.time).to_std().ok()?))
            })
            .collect()
    }

    /// For each event seen: its time → when the bench received it from the broker, i.e. the
    /// rest of the handler that emitted it, its commit, the relay and the broker. A hop is
    /// about this for its cause, plus the consumer's part (delivery, the batch's transaction up
    /// to the handler that emits the effect).
    pub fn to_broker(&self) -> Vec<Duration> {
        self.timeline.iter().filter_map(|o| o.to_broker).collect()
    }

    /// Whether the saga has ended: captured (dispatched); declined (rejected); out of stock
    /// once the payment is voided; a dispatch failure once the payment is voided, the stock
    /// released and the waybill cancelled.
    pub fn ended(&self) -> Option<Ended> {
        if let Some(captured) = self.captured {
            return Some(Ended {
                outcome: "dispatched".to_owned(),
                last: captured,
                captured: Some(captured),
            });
        }
        if let Some(declined) = self.declined {
            return Some(Ended {
                outcome: "rejected".to_owned(),
                last: declined,
                captured: None,
            });
        }
        if self.inventory_rejected.is_some() {
            let last = latest(&[self.inventory_rejected, self.voided])?;
            return Some(Ended {
                outcome: "cancelled/out_of_stock".to_owned(),
                last,
                captured: None,
            });
        }
        if let Some((failed, reason)) = &self.dispatch_failed {
            let last = latest(&[
                Some(*failed),
                self.voided,
                self.released,
                self.waybill_cancelled,
            ])?;
            return Some(Ended {
                outcome: format!("cancelled/{reason}"),
                last,
                captured: None,
            });
        }
        None
    }
}

/// What the watcher saw of an ended saga.
pub struct SagaSeen {
    pub ended: Ended,
    /// [`SagaEvents::hops`].
    pub hops: Vec<(EventType, Duration)>,
    /// [`SagaEvents::to_broker`].
    pub to_broker: Vec<Duration>,
}

/// The part of the `dispatch.failed` payload the watcher reads.
#[derive(Deserialize)]
struct FailurePayload {
    reason: String,
}

/// The subscriptions and what they have seen, by order id.
pub struct Watcher {
    seen: Arc<Mutex<HashMap<OrderId, SagaEvents>>>,
    changed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
    /// Keeps the connection the events arrive on.
    _broker: Arc<dyn Broker>,
    source: &'static str,
}

impl Watcher {
    /// Connects to the system's broker and follows the events; every event published after
    /// this returns is seen. Fails when the broker has no address or cannot be reached.
    pub async fn start(broker: &BrokerArgs) -> anyhow::Result<Self> {
        let (connected, settings) = connect_operator(broker, "bench-watcher").await?;
        let mut events = connected
            .follow_events(&settings, &WATCHED)
            .await
            .context("following the events")?;
        let seen: Arc<Mutex<HashMap<OrderId, SagaEvents>>> = Arc::default();
        let changed = Arc::new(Notify::new());
        let task = tokio::spawn({
            let seen = seen.clone();
            let changed = changed.clone();
            async move {
                while let Some(event) = events.next().await {
                    let arrived = Instant::now();
                    let received = Utc::now();
                    let Some((order_id, event_type)) = parse_subject(&event.subject) else {
                        continue;
                    };
                    let time = event
                        .header("ce-time")
                        .and_then(|value| DateTime::parse_from_rfc3339(value).ok())
                        .map_or_else(Utc::now, |time| time.with_timezone(&Utc));
                    let causation = event
                        .header("ce-id")
                        .and_then(|id| Uuid::parse_str(id).ok())
                        .map(|id| Causation {
                            id,
                            cause: event
                                .header("ce-causationid")
                                .and_then(|cause| Uuid::parse_str(cause).ok()),
                        });
                    let reason = (event_type == EventType::DispatchFailed)
                        .then(|| serde_json::from_slice::<FailurePayload>(&event.payload).ok())
                        .flatten()
                        .map(|payload| payload.reason);
                    if let Ok(mut seen) = seen.lock() {
                        seen.entry(order_id).or_default().record(
                            event_type,
                            Seen {
                                time,
                                arrived,
                                received,
                            },
                            causation,
                            reason,
                        );
                    }
                    changed.notify_one();
                }
            }
        });
        let source = match broker.kind {
            BrokerKind::Nats => "NATS: a core subscription on the events",
            BrokerKind::Kafka => "Kafka: a group-less reader of the events topic",
        };
        Ok(Self {
            seen,
            changed,
            task,
            _broker: connected,
            source,
        })
    }

    /// How the events are followed, for the report.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// How `order_id`'s saga ended, if it has, and every hop seen.
    pub fn ended(&self, order_id: &OrderId) -> Option<SagaSeen> {
        let seen = self.seen.lock().ok()?;
        let events = seen.get(order_id)?;
        Some(SagaSeen {
            ended: events.ended()?,
            hops: events.hops(),
            to_broker: events.to_broker(),
        })
    }

    /// Forgets the orders of earlier steps.
    pub fn clear(&self) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.clear();
        }
    }

    /// Waits until something new was seen, at most `timeout`.
    pub async fn changed(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.changed.notified()).await;
    }

    pub async fn stop(self) {
        self.task.abort();
        // the follower's stream ends with the task; the connection closes when dropped
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(base: Instant, ms: u64) -> Seen {
        received_after(base, ms, 1)
    }

    /// An event of time `ms` received `lag_ms` later.
    fn received_after(base: Instant, ms: u64, lag_ms: i64) -> Seen {
        let time = DateTime::from_timestamp_millis(1_800_000_000_000 + ms as i64).unwrap();
        Seen {
            time,
            arrived: base + Duration::from_millis(ms),
            received: time + chrono::Duration::milliseconds(lag_ms),
        }
    }

    #[test]
    fn a_saga_ends_at_its_capture_decline_or_last_compensation() {
        let base = Instant::now();
        let mut dispatched = SagaEvents::default();
        assert_eq!(dispatched.ended(), None);
        dispatched.record(EventType::PaymentCaptured, seen(base, 40), None, None);
        let ended = dispatched.ended().unwrap();
        assert_eq!(ended.outcome, "dispatched");
        assert_eq!(ended.captured, Some(seen(base, 40)));

        let mut rejected = SagaEvents::default();
        rejected.record(EventType::PaymentDeclined, seen(base, 5), None, None);
        assert_eq!(rejected.ended().unwrap().outcome, "rejected");

        let mut out_of_stock = SagaEvents::default();
        out_of_stock.record(EventType::InventoryRejected, seen(base, 10), None, None);
        assert_eq!(out_of_stock.ended(), None, "not before the void");
        out_of_stock.record(EventType::PaymentVoided, seen(base, 15), None, None);
        let ended = out_of_stock.ended().unwrap();
        assert_eq!(ended.outcome, "cancelled/out_of_stock");
        assert_eq!(ended.last, seen(base, 15));

        let mut no_courier = SagaEvents::default();
        no_courier.record(
            EventType::DispatchFailed,
            seen(base, 60_000),
            None,
            Some("no_courier".to_owned()),
        );
        no_courier.record(EventType::PaymentVoided, seen(base, 60_020), None, None);
        no_courier.record(EventType::WaybillCancelled, seen(base, 60_010), None, None);
        assert_eq!(no_courier.ended(), None, "stock not released yet");
        no_courier.record(EventType::InventoryReleased, seen(base, 60_030), None, None);
        let ended = no_courier.ended().unwrap();
        assert_eq!(ended.outcome, "cancelled/no_courier");
        assert_eq!(ended.last, seen(base, 60_030));
        // A redelivered event keeps the first sighting.
        no_courier.record(EventType::InventoryReleased, seen(base, 61_000), None, None);
        assert_eq!(no_courier.ended().unwrap().last, seen(base, 60_030));
    }

    #[test]
    fn the_assignment_hop_runs_from_the_waybill_to_the_courier_by_event_time() {
        let base = Instant::now();
        let (waybill, assignment) = (Uuid::now_v7(), Uuid::now_v7());
        let cause = Uuid::now_v7();
        let mut events = SagaEvents::default();
        events.record(
            EventType::WaybillCreated,
            seen(base, 100),
            Some(Causation {
                id: waybill,
                cause: Some(cause),
            }),
            None,
        );
        events.record(
            EventType::CourierAssigned,
            seen(base, 112),
            Some(Causation {
                id: assignment,
                cause: Some(waybill),
            }),
            None,
        );
        assert_eq!(
            events.hops(),
            vec![(EventType::CourierAssigned, Duration::from_millis(12))]
        );
        assert_eq!(events.ended(), None, "not ended before the capture");
    }

    #[test]
    fn a_hop_runs_from_a_cause_to_its_effect_and_an_event_to_the_broker_by_event_time() {
        let base = Instant::now();
        let (created, authorized, reserved) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let of = |id, cause| Some(Causation { id, cause });
        let mut events = SagaEvents::default();
        events.record(
            EventType::OrderCreated,
            received_after(base, 0, 3),
            of(created, None),
            None,
        );
        assert!(events.hops().is_empty(), "no cause, no hop");
        // received before its time by the clocks: no way to the broker rather than a wrong one
        events.record(
            EventType::InventoryReserved,
            received_after(base, 9, -1),
            of(reserved, Some(authorized)),
            None,
        );
        assert!(events.hops().is_empty(), "its cause not seen yet");
        // twice: a redelivered copy, received later, is the same event, not another hop
        for lag in [2, 40] {
            events.record(
                EventType::PaymentAuthorized,
                received_after(base, 4, lag),
                of(authorized, Some(created)),
                None,
            );
        }
        let mut hops = events.hops();
        hops.sort();
        assert_eq!(
            hops,
            vec![
                (EventType::PaymentAuthorized, Duration::from_millis(4)),
                (EventType::InventoryReserved, Duration::from_millis(5)),
            ]
        );
        let mut to_broker = events.to_broker();
        to_broker.sort();
        assert_eq!(
            to_broker,
            vec![Duration::from_millis(2), Duration::from_millis(3)]
        );
    }
}
