//! Unit tests of the invariant checks on hand-built evidence.

use jwl_events::{
    CourierAssigned, CourierId, GeoPoint, InventoryReleased, InventoryReserved,
    LineItem as EventLine, OrderCreated, OrderId, PaymentAuthorized, PaymentCaptured,
    WaybillCreated, WaybillId,
};

use super::*;
use crate::api::{LineItem, TimelineEntry};
use crate::geo::Point;

const SKU: &str = "SKU-1";
const PRICE: i64 = 1250;

fn point() -> GeoPoint {
    GeoPoint::new(31.3, 121.5).unwrap()
}

fn items() -> Vec<EventLine> {
    vec![EventLine {
        sku: SKU.into(),
        qty: 1,
        unit_price_cents: PRICE,
    }]
}

fn envelope(source: Service, data: impl Into<EventData>) -> Envelope {
    Envelope::new(source, data.into())
}

/// One dispatched order with everything consistent: events, outboxes, tables, API views.
struct World {
    order_id: OrderId,
    evidence: Evidence,
}

impl World {
    fn dispatched(courier: &str) -> World {
        let order_id = OrderId::new();
        let waybill_id = WaybillId::new();
        let courier_id = CourierId::parse(courier).unwrap();
        let created = OrderCreated {
            order_id,
            customer_id: "c1".into(),
            items: items(),
            amount_cents: PRICE,
            pickup: point(),
            dropoff: point(),
            payment_token: "tok_ok".into(),
            deadline: chrono::Utc::now(),
        };
        let events = vec![
            envelope(Service::Order, created),
            envelope(
                Service::Payment,
                PaymentAuthorized {
                    order_id,
                    amount_cents: PRICE,
                    items: items(),
                    pickup: point(),
                    dropoff: point(),
                },
            ),
            envelope(
                Service::Inventory,
                InventoryReserved {
                    order_id,
                    items: items(),
                    pickup: point(),
                    dropoff: point(),
                },
            ),
            envelope(
                Service::Fulfillment,
                WaybillCreated {
                    order_id,
                    waybill_id,
                    pickup: point(),
                    dropoff: point(),
                },
            ),
            envelope(
                Service::Dispatch,
                CourierAssigned {
                    order_id,
                    waybill_id,
                    courier_id,
                    distance_km: 0.5,
                },
            ),
            envelope(
                Service::Payment,
                PaymentCaptured {
                    order_id,
                    amount_cents: PRICE,
                },
            ),
        ];
        let mut world = World {
            order_id,
            evidence: Evidence {
                courier_capacity: 1,
                stock: vec![StockEvidence {
                    sku: SKU.into(),
                    initial_on_hand: 10,
                    level: StockLevel {
                        sku: SKU.into(),
                        on_hand: 9,
                        reserved: 0,
                        shipped: Some(1),
                    },
                }],
                ..Evidence::default()
            },
        };
        let view = OrderView {
            order_id: order_id.to_string(),
            status: OrderStatus::Dispatched,
            reason: None,
            waybill_id: Some(waybill_id.to_string()),
            courier_id: Some(courier.into()),
            timeline: Vec::new(),
        };
        world.evidence.orders.push(OrderEvidence {
            placed: PlacedOrder {
                order_id: order_id.to_string(),
                customer_id: "c1".into(),
                order: NewOrder {
                    items: vec![LineItem {
                        sku: SKU.into(),
                        qty: 1,
                        unit_price_cents: PRICE,
                    }],
                    pickup: Point::JIANGWAN,
                    dropoff: Point::JIANGWAN,
                    payment_token: "tok_ok".into(),
                },
            },
            view,
            payment: PaymentView {
                order_id: order_id.to_string(),
                status: PaymentStatus::Captured,
                amount_cents: PRICE,
            },
        });
        world.evidence.payments.push(PaymentRow {
            order_id: order_id.0,
            status: "captured".into(),
            amount_cents: Some(PRICE),
            captured: true,
            voided: false,
        });
        world.evidence.stock_rows.push(StockRow {
            sku: SKU.into(),
            on_hand: 9,
            reserved: 0,
            shipped: 1,
        });
        world.evidence.order_reservations.push(OrderReservationRow {
            order_id: order_id.0,
            state: "committed".into(),
        });
        world.evidence.reservations.push(ReservationRow {
            order_id: order_id.0,
            sku: SKU.into(),
            qty: 1,
            state: "committed".into(),
        });
        world.evidence.couriers.push(CourierRow {
            courier_id: courier.into(),
            live_waybills: 1,
        });
        world.evidence.dispatch_waybills.push(DispatchWaybillRow {
            waybill_id: waybill_id.0,
            order_id: order_id.0,
            status: "assigned".into(),
            courier_id: Some(courier.into()),
            failure_reason: None,
        });
        world.evidence.waybills.push(WaybillRow {
            waybill_id: waybill_id.0,
            order_id: order_id.0,
            status: "assigned".into(),
            courier_id: Some(courier.into()),
        });
        for event in events {
            world.publish(event);
        }
        world
    }

    /// Adds `event` to the stream, its emitter's outbox (published) and the order's timeline.
    fn publish(&mut self, event: Envelope) {
        let evidence = &mut self.evidence;
        let sequence = evidence.events.len() as u64 + 1;
        let outbox = match evidence
            .outboxes
            .iter_mut()
            .find(|(s, _)| *s == event.source)
        {
            Some((_, rows)) => rows,
            None => {
                evidence.outboxes.push((event.source, Vec::new()));
                &mut evidence.outboxes.last_mut().unwrap().1
            }
        };
        outbox.push(OutboxRow {
            seq: sequence as i64,
            event_id: event.id.0,
            subject: jwl_events::subject(&event.order_id(), event.event_type()),
            published: true,
            parked: false,
            last_error: None,
        });
        if let Some(order) = evidence
            .orders
            .iter_mut()
            .find(|o| o.placed.order_id == event.order_id().to_string())
        {
            order.view.timeline.push(TimelineEntry {
                event_type: event.event_type().as_str().into(),
                time: event.time,
                source: event.source.source().into(),
            });
        }
        evidence.events.push(StreamEvent {
            sequence,
            subject: jwl_events::subject(&event.order_id(), event.event_type()),
            envelope: event,
        });
    }
}

#[test]
fn a_consistent_dispatched_order_passes() {
    let world = World::dispatched("courier-1");
    let verdict = check(&world.evidence);
    assert!(verdict.violations.is_empty(), "{:#?}", verdict.violations);
    assert_eq!(verdict.outcomes.count("dispatched"), 1);
    assert_eq!(verdict.outcomes.to_string(), "dispatched=1");
}

#[test]
fn a_second_capture_is_reported() {
    let mut world = World::dispatched("courier-1");
    let order_id = world.order_id;
    world.publish(envelope(
        Service::Payment,
        PaymentCaptured {
            order_id,
            amount_cents: PRICE,
        },
    ));
    let verdict = check(&world.evidence);
    assert!(
        verdict.violations.iter().any(|v| v.contains("captured×2")),
        "{:#?}",
        verdict.violations
    );
}

#[test]
fn an_unpublished_outbox_row_and_a_lost_event_are_reported() {
    let mut world = World::dispatched("courier-1");
    let (_, rows) = &mut world.evidence.outboxes[0];
    rows[0].published = false;
    rows.push(OutboxRow {
        seq: 99,
        event_id: Uuid::now_v7(),
        subject: "jwl.evt.x.order.created".into(),
        published: true,
        parked: false,
        last_error: None,
    });
    let violations = check(&world.evidence).violations;
    assert!(
        violations.iter().any(|v| v.contains("is not published")),
        "{violations:#?}"
    );
    assert!(
        violations
            .iter()
            .any(|v| v.contains("not in the stream (lost)")),
        "{violations:#?}"
    );
}

#[test]
fn replayed_events_are_left_out_only_when_declared() {
    let mut world = World::dispatched("courier-1");
    let mut copy = world.evidence.events[0].clone();
    copy.sequence = 700;
    world.evidence.events.push(copy);
    let strict = check(&world.evidence).violations;
    assert!(
        strict.iter().any(|v| v.contains("in the stream twice")),
        "{strict:#?}"
    );
    let injected = Injected {
        replays: [700].into(),
        ..Injected::default()
    };
    let verdict = check_with(&world.evidence, &injected);
    assert!(verdict.violations.is_empty(), "{:#?}", verdict.violations);
}

#[test]
fn republished_copies_are_accepted_only_where_the_broker_keeps_them() {
    let mut world = World::dispatched("courier-1");
    let mut copy = world.evidence.events[0].clone();
    copy.sequence = 700;
    world.evidence.events.push(copy.clone());
    world.evidence.republished_copies = true;
    let verdict = check(&world.evidence);
    assert!(verdict.violations.is_empty(), "{:#?}", verdict.violations);
    // a copy that differs is still a second event under the same id
    copy.subject.push_str(".other");
    world.evidence.events.push(copy);
    let violations = check(&world.evidence).violations;
    assert!(
        violations.iter().any(|v| v.contains("in the stream twice")),
        "{violations:#?}"
    );
}

#[test]
fn a_courier_over_capacity_is_reported() {
    let mut world = World::dispatched("courier-1");
    let other_order = OrderId::new();
    world.publish(envelope(
        Service::Dispatch,
        CourierAssigned {
            order_id: other_order,
            waybill_id: WaybillId::new(),
            courier_id: CourierId::parse("courier-1").unwrap(),
            distance_km: 1.0,
        },
    ));
    let violations = check(&world.evidence).violations;
    assert!(
        violations
            .iter()
            .any(|v| v.contains("courier courier-1: 2 live waybills")),
        "{violations:#?}"
    );
}

#[test]
fn a_cancelled_order_still_holding_stock_is_reported() {
    let mut world = World::dispatched("courier-1");
    // Rewrite the story: the order was cancelled after its reservation, nothing released.
    let order_id = world.order_id;
    world.evidence.events.retain(|e| {
        !matches!(
            e.envelope.event_type(),
            EventType::CourierAssigned | EventType::PaymentCaptured
        )
    });
    for (_, rows) in &mut world.evidence.outboxes {
        rows.retain(|r| {
            !matches!(
                jwl_events::subject_type(&r.subject),
                Some(EventType::CourierAssigned | EventType::PaymentCaptured)
            )
        });
    }
    let order = &mut world.evidence.orders[0];
    order.view.status = OrderStatus::Cancelled;
    order.view.reason = Some("out_of_stock".into());
    order.view.timeline.retain(|t| {
        !t.event_type.ends_with("courier_assigned") && !t.event_type.ends_with("captured")
    });
    let violations = check(&world.evidence).violations;
    assert!(
        violations
            .iter()
            .any(|v| v.contains("still holds its reservation")),
        "{violations:#?}"
    );
    // Once released, the stock part is satisfied.
    world.publish(envelope(
        Service::Inventory,
        InventoryReleased {
            order_id,
            items: items(),
        },
    ));
    let violations = check(&world.evidence).violations;
    assert!(
        !violations
            .iter()
            .any(|v| v.contains("still holds its reservation")),
        "{violations:#?}"
    );
}

#[test]
fn dead_letters_are_accepted_only_for_injected_messages() {
    let mut world = World::dispatched("courier-1");
    world
        .evidence
        .undecodable
        .push((900, "jwl.evt.x.order.created".into(), "bad json".into()));
    let letter = |sequence| DeadLetterRecord {
        subject: "jwl.dlq.payment__order_created.unknown".into(),
        consumer: "payment__order_created".into(),
        reason: "decode".into(),
        error: "bad json".into(),
        stream_sequence: Some(sequence),
    };
    world.evidence.dead_letters.push(letter(900));
    let strict = check(&world.evidence).violations;
    assert!(
        strict.iter().any(|v| v.contains("not a valid event"))
            && strict.iter().any(|v| v.starts_with("dead letter")),
        "{strict:#?}"
    );

    let injected = Injected {
        sequences: [900].into(),
        ..Injected::default()
    };
    let verdict = check_with(&world.evidence, &injected);
    assert!(verdict.violations.is_empty(), "{:#?}", verdict.violations);

    // a dead letter of anything else, and an injected message never dead-lettered, are not
    world.evidence.dead_letters.push(letter(3));
    let injected = Injected {
        sequences: [900, 901].into(),
        ..Injected::default()
    };
    let violations = check_with(&world.evidence, &injected).violations;
    assert_eq!(violations.len(), 2, "{violations:#?}");
    assert!(violations.iter().any(|v| v.starts_with("dead letter")));
    assert!(
        violations
            .iter()
            .any(|v| v.contains("901 was not dead-lettered"))
    );
}
