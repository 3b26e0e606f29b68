//! The invariants of the README (How delivery is guaranteed) as pure functions over collected [`Evidence`] (no I/O here:
//! `audit.rs` gathers the evidence from the API, the database and the broker).
//!
//! 1. every order is terminal, its read model consistent with its events;
//! 2. money: `dispatched` ⇒ captured its amount exactly once; `rejected` ⇒ declined;
//!    `cancelled` ⇒ voided exactly once if it was authorised, else declined; never captured twice;
//! 3. stock: initial on-hand = on-hand now + shipped, shipped = Σ of the dispatched orders' lines,
//!    reserved = Σ of the reservations still held, and none is held by a failed order;
//! 4. couriers: never more live waybills than the capacity (replaying dispatch's events, and in
//!    the waybill table);
//! 5. every outbox row is published, every event in an outbox is in the stream and vice versa,
//!    no duplicate or undecodable message, no dead letter — except, with [`Injected`], the
//!    messages a test published straight to the stream, each of which must be dead-lettered;
//!    and, on a broker that does not deduplicate ([`Evidence::republished_copies`], Kafka),
//!    identical copies of an event a relay published again after a crash or a failed publish,
//!    which the consumers' inboxes absorb (the checks then see the first copy only).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use jwl_events::{Envelope, EventData, EventType, Service};
use uuid::Uuid;

use crate::api::{NewOrder, OrderStatus, OrderView, PaymentStatus, PaymentView, StockLevel};
use crate::broker::{DeadLetterRecord, StreamEvent};
use crate::store::{
    CourierRow, DispatchWaybillRow, OrderReservationRow, OutboxRow, PaymentRow, ReservationRow,
    StockRow, WaybillRow,
};

/// An order a test placed, with what it sent.
#[derive(Debug, Clone)]
pub struct PlacedOrder {
    pub order_id: String,
    pub customer_id: String,
    pub order: NewOrder,
}

/// What the API says about one placed order.
#[derive(Debug, Clone)]
pub struct OrderEvidence {
    pub placed: PlacedOrder,
    pub view: OrderView,
    pub payment: PaymentView,
}

/// A SKU the test stocked, and its level now.
#[derive(Debug, Clone)]
pub struct StockEvidence {
    pub sku: String,
    pub initial_on_hand: i64,
    pub level: StockLevel,
}

/// Everything the checks look at.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    pub orders: Vec<OrderEvidence>,
    pub stock: Vec<StockEvidence>,
    /// The events stream, in stream order.
    pub events: Vec<StreamEvent>,
    /// Stream messages that are not valid events: `(sequence, subject, error)`.
    pub undecodable: Vec<(u64, String, String)>,
    pub outboxes: Vec<(Service, Vec<OutboxRow>)>,
    pub dead_letters: Vec<DeadLetterRecord>,
    pub payments: Vec<PaymentRow>,
    pub waybills: Vec<WaybillRow>,
    pub stock_rows: Vec<StockRow>,
    pub order_reservations: Vec<OrderReservationRow>,
    pub reservations: Vec<ReservationRow>,
    pub couriers: Vec<CourierRow>,
    pub dispatch_waybills: Vec<DispatchWaybillRow>,
    pub courier_capacity: u32,
    /// The broker keeps a message the relay publishes again (Kafka has no deduplication by
    /// id; JetStream drops it within its window): an identical later copy of an event is then
    /// no violation, and the checks see the first copy only.
    pub republished_copies: bool,
}

/// How the orders ended: `dispatched`, `delivered`, `rejected`, `cancelled/<reason>`, … → count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcomes(pub BTreeMap<String, usize>);

impl Outcomes {
    /// How many orders ended as `key` (`"dispatched"`, `"cancelled/no_courier"`, …).
    pub fn count(&self, key: &str) -> usize {
        self.0.get(key).copied().unwrap_or(0)
    }

    /// Orders whose saga succeeded (`dispatched` + `delivered`).
    pub fn succeeded(&self) -> usize {
        self.count("dispatched") + self.count("delivered")
    }

    pub fn total(&self) -> usize {
        self.0.values().sum()
    }
}

impl fmt::Display for Outcomes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, n)| format!("{k}={n}")).collect();
        f.write_str(&parts.join(" "))
    }
}

/// The outcome key of an order view.
pub fn outcome_key(view: &OrderView) -> String {
    let status = serde_json::to_value(view.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{:?}", view.status));
    match (&view.status, &view.reason) {
        (OrderStatus::Cancelled, Some(reason)) => format!("{status}/{reason}"),
        _ => status,
    }
}

/// The result of checking: every violation found, and the outcome counts.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub violations: Vec<String>,
    pub outcomes: Outcomes,
}

/// Messages a test published straight to the events stream, by stream sequence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Injected {
    /// Poison: they may be undecodable and in no outbox, and each must have been
    /// dead-lettered; every dead letter must be one of theirs.
    pub sequences: BTreeSet<u64>,
    /// Copies of events already in the stream (same `ce-id`, a new broker message id): they are
    /// left out of the evidence, so that any second effect of them shows as a violation, and
    /// must not be dead-lettered.
    pub replays: BTreeSet<u64>,
}

/// Runs every check over `evidence`, with nothing injected.
pub fn check(evidence: &Evidence) -> Verdict {
    check_with(evidence, &Injected::default())
}

/// Runs every check over `evidence`, accepting the dead letters of the `injected` messages.
pub fn check_with(evidence: &Evidence, injected: &Injected) -> Verdict {
    let filtered;
    let evidence = if injected.replays.is_empty() && !evidence.republished_copies {
        evidence
    } else {
        let mut copy = evidence.clone();
        copy.events
            .retain(|event| !injected.replays.contains(&event.sequence));
        if copy.republished_copies {
            copy.events = first_copies(copy.events);
        }
        filtered = copy;
        &filtered
    };
    let index = EventIndex::new(&evidence.events);
    let mut violations = Vec::new();
    check_orders(evidence, &index, &mut violations);
    check_money(evidence, &index, &mut violations);
    check_stock(evidence, &index, &mut violations);
    check_inventory_tables(evidence, &mut violations);
    check_couriers(evidence, &mut violations);
    check_dispatch_tables(evidence, &mut violations);
    check_messaging(evidence, injected, &mut violations);
    let mut outcomes = Outcomes::default();
    for order in &evidence.orders {
        *outcomes.0.entry(outcome_key(&order.view)).or_default() += 1;
    }
    Verdict {
        violations,
        outcomes,
    }
}

/// `events` without the later copies of an event that are identical to its first (same id,
/// subject and content); a copy that differs stays, for [`check_messaging`] to report.
fn first_copies(events: Vec<StreamEvent>) -> Vec<StreamEvent> {
    let mut first: HashMap<Uuid, (String, Envelope)> = HashMap::new();
    events
        .into_iter()
        .filter(|event| match first.get(&event.envelope.id.0) {
            Some((subject, envelope)) => *subject != event.subject || *envelope != event.envelope,
            None => {
                first.insert(
                    event.envelope.id.0,
                    (event.subject.clone(), event.envelope.clone()),
                );
                true
            }
        })
        .collect()
}

/// The stream's events grouped by order id (in stream order).
struct EventIndex<'a> {
    by_order: HashMap<String, Vec<&'a Envelope>>,
}

impl<'a> EventIndex<'a> {
    fn new(events: &'a [StreamEvent]) -> Self {
        let mut by_order: HashMap<String, Vec<&Envelope>> = HashMap::new();
        for event in events {
            by_order
                .entry(event.envelope.order_id().to_string())
                .or_default()
                .push(&event.envelope);
        }
        Self { by_order }
    }

    fn of(&self, order_id: &str) -> &[&'a Envelope] {
        self.by_order
            .get(order_id)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    fn count(&self, order_id: &str, ty: EventType) -> usize {
        self.of(order_id)
            .iter()
            .filter(|e| e.event_type() == ty)
            .count()
    }

    fn has(&self, order_id: &str, ty: EventType) -> bool {
        self.count(order_id, ty) > 0
    }
}

/// Invariant 1 and the read model's consistency with the events.
fn check_orders(evidence: &Evidence, index: &EventIndex<'_>, violations: &mut Vec<String>) {
    const REASONS: [&str; 4] = ["out_of_stock", "no_courier", "customer", "deadline"];
    for OrderEvidence { placed, view, .. } in &evidence.orders {
        let id = &placed.order_id;
        let mut fail = |what: String| violations.push(format!("order {id}: {what}"));
        if &view.order_id != id {
            fail(format!("the API returned order {}", view.order_id));
        }
        if !view.status.is_terminal() {
            fail(format!("not terminal: {:?}", view.status));
        }
        match view.status {
            OrderStatus::Cancelled => match view.reason.as_deref() {
                Some(reason) if REASONS.contains(&reason) => {}
                other => fail(format!("cancelled with reason {other:?}")),
            },
            _ if view.reason.is_some() => {
                fail(format!("{:?} with a reason {:?}", view.status, view.reason))
            }
            _ => {}
        }
        if view.status.succeeded() && (view.waybill_id.is_none() || view.courier_id.is_none()) {
            fail(format!(
                "{:?} without waybill_id/courier_id ({:?}/{:?})",
                view.status, view.waybill_id, view.courier_id
            ));
        }
        let created = index.count(id, EventType::OrderCreated);
        if created != 1 {
            fail(format!("order.created is {created} times in the stream"));
        }
        // The timeline holds every event of the order exactly once, ordered by event time.
        let mut in_stream: Vec<&str> = index
            .of(id)
            .iter()
            .map(|e| e.event_type().as_str())
            .collect();
        let mut in_timeline = view.timeline_types();
        in_stream.sort_unstable();
        in_timeline.sort_unstable();
        if in_stream != in_timeline {
            fail(format!(
                "timeline {in_timeline:?} differs from the stream's events {in_stream:?}"
            ));
        }
        if view
            .timeline
            .windows(2)
            .any(|pair| pair[0].time > pair[1].time)
        {
            fail("timeline is not ordered by event time".to_owned());
        }
        // The status matches the decisive event.
        let expected_reason = match view.status {
            OrderStatus::Rejected if !index.has(id, EventType::PaymentDeclined) => {
                Some("rejected without payment.declined".to_owned())
            }
            OrderStatus::Cancelled => match view.reason.as_deref() {
                Some("out_of_stock") if !index.has(id, EventType::InventoryRejected) => {
                    Some("out_of_stock without inventory.rejected".to_owned())
                }
                Some(reason @ ("no_courier" | "customer" | "deadline")) => {
                    let failed_with_reason = index.of(id).iter().any(|e| match &e.data {
                        EventData::DispatchFailed(failed) => {
                            serde_json::to_value(failed.reason)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_owned))
                                == Some(reason.to_owned())
                        }
                        _ => false,
                    });
                    (!failed_with_reason)
                        .then(|| format!("{reason} without dispatch.failed {{reason: {reason}}}"))
                }
                _ => None,
            },
            OrderStatus::Delivered if !index.has(id, EventType::Delivered) => {
                Some("delivered without dispatch.delivered".to_owned())
            }
            _ => None,
        };
        if let Some(problem) = expected_reason {
            fail(problem);
        }
        if view.status.succeeded() {
            let assigned: Vec<_> = index
                .of(id)
                .iter()
                .filter_map(|e| match &e.data {
                    EventData::CourierAssigned(a) => {
                        Some((a.waybill_id.to_string(), a.courier_id.as_str().to_owned()))
                    }
                    _ => None,
                })
                .collect();
            let shown = (
                view.waybill_id.clone().unwrap_or_default(),
                view.courier_id.clone().unwrap_or_default(),
            );
            if assigned != [shown.clone()] {
                fail(format!(
                    "shows (waybill, courier) {shown:?} but the assignments were {assigned:?}"
                ));
            }
        }
    }
}

/// Invariant 2.
fn check_money(evidence: &Evidence, index: &EventIndex<'_>, violations: &mut Vec<String>) {
    let rows: HashMap<String, &PaymentRow> = evidence
        .payments
        .iter()
        .map(|row| (row.order_id.to_string(), row))
        .collect();
    for OrderEvidence {
        placed,
        view,
        payment,
    } in &evidence.orders
    {
        let id = &placed.order_id;
        let mut fail = |what: String| violations.push(format!("order {id}: money: {what}"));
        let amount = placed.order.amount_cents();
        let count = |ty| index.count(id, ty);
        let (authorized, declined, captured, voided) = (
            count(EventType::PaymentAuthorized),
            count(EventType::PaymentDeclined),
            count(EventType::PaymentCaptured),
            count(EventType::PaymentVoided),
        );
        for event in index.of(id) {
            let stated = match &event.data {
                EventData::OrderCreated(e) => Some(("order.created", e.amount_cents)),
                EventData::PaymentAuthorized(e) => Some(("payment.authorized", e.amount_cents)),
                EventData::PaymentCaptured(e) => Some(("payment.captured", e.amount_cents)),
                EventData::PaymentVoided(e) => Some(("payment.voided", e.amount_cents)),
                _ => None,
            };
            if let Some((what, stated)) = stated
                && stated != amount
            {
                fail(format!(
                    "{what} says {stated} cents, the order is worth {amount}"
                ));
            }
        }
        if captured > 1 || voided > 1 || authorized > 1 || declined > 1 {
            fail(format!(
                "events authorized×{authorized} declined×{declined} captured×{captured} voided×{voided}"
            ));
        }
        if captured > 0 && voided > 0 {
            fail("both captured and voided".to_owned());
        }
        if payment.amount_cents != amount {
            fail(format!(
                "payment amount {} ≠ order amount {amount}",
                payment.amount_cents
            ));
        }
        let wanted = match view.status {
            s if s.succeeded() => (captured == 1 && voided == 0).then_some(PaymentStatus::Captured),
            OrderStatus::Rejected => {
                (captured == 0 && voided == 0).then_some(PaymentStatus::Declined)
            }
            OrderStatus::Cancelled if captured > 0 => None,
            OrderStatus::Cancelled if authorized > 0 => {
                (voided == 1).then_some(PaymentStatus::Voided)
            }
            OrderStatus::Cancelled => (voided == 0).then_some(PaymentStatus::Declined),
            // Not terminal: reported by check_orders.
            _ => continue,
        };
        match wanted {
            Some(status) if status == payment.status => {}
            _ => fail(format!(
                "{:?} order has payment {:?} (events authorized×{authorized} declined×{declined} captured×{captured} voided×{voided})",
                view.status, payment.status
            )),
        }
        match rows.get(id) {
            None => fail("no row in jwl_payment.payments".to_owned()),
            Some(row) => {
                let api_status = serde_json::to_value(payment.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                if row.status != api_status || row.amount_cents != Some(amount) {
                    fail(format!(
                        "table row {row:?} disagrees with the API {payment:?}"
                    ));
                }
                if row.captured != (payment.status == PaymentStatus::Captured)
                    || row.voided != (payment.status == PaymentStatus::Voided)
                {
                    fail(format!(
                        "table row timestamps disagree with its status: {row:?}"
                    ));
                }
            }
        }
    }
}

/// Invariant 3.
fn check_stock(evidence: &Evidence, index: &EventIndex<'_>, violations: &mut Vec<String>) {
    let mut shipped: BTreeMap<&str, i64> = BTreeMap::new();
    let mut held: BTreeMap<&str, i64> = BTreeMap::new();
    for OrderEvidence { placed, view, .. } in &evidence.orders {
        let id = &placed.order_id;
        let reserved = index.count(id, EventType::InventoryReserved);
        let released = index.count(id, EventType::InventoryReleased);
        let rejected = index.count(id, EventType::InventoryRejected);
        let committed = index.has(id, EventType::PaymentCaptured);
        if reserved > 1 || released > 1 || released > reserved || (reserved > 0 && rejected > 0) {
            violations.push(format!(
                "order {id}: stock: events reserved×{reserved} released×{released} rejected×{rejected}"
            ));
        }
        let holds = reserved == 1 && released == 0 && !committed;
        if holds && matches!(view.status, OrderStatus::Cancelled | OrderStatus::Rejected) {
            violations.push(format!(
                "order {id}: stock: the {:?} order still holds its reservation (no inventory.released)",
                view.status
            ));
        }
        for item in &placed.order.items {
            let qty = i64::from(item.qty);
            if view.status.succeeded() {
                *shipped.entry(&item.sku).or_default() += qty;
            }
            if holds {
                *held.entry(&item.sku).or_default() += qty;
            }
        }
    }
    for StockEvidence {
        sku,
        initial_on_hand,
        level,
    } in &evidence.stock
    {
        let mut fail = |what: String| violations.push(format!("sku {sku}: stock: {what}"));
        let shipped_wanted = shipped.get(sku.as_str()).copied().unwrap_or(0);
        let held_wanted = held.get(sku.as_str()).copied().unwrap_or(0);
        let Some(level_shipped) = level.shipped else {
            fail("GET /v1/stock has no `shipped`".to_owned());
            continue;
        };
        if level_shipped != shipped_wanted {
            fail(format!(
                "shipped {level_shipped}, the dispatched orders hold {shipped_wanted}"
            ));
        }
        if level.reserved != held_wanted {
            fail(format!(
                "reserved {}, the live reservations hold {held_wanted}",
                level.reserved
            ));
        }
        let available = level.on_hand - level.reserved;
        if available < 0 {
            fail(format!("negative availability: {level:?}"));
        }
        if available + held_wanted + level_shipped != *initial_on_hand {
            fail(format!(
                "initial on_hand {initial_on_hand} ≠ available {available} + reserved for live orders {held_wanted} + shipped {level_shipped}"
            ));
        }
    }
}

/// Invariant 3 in the inventory tables: they agree with the API and with themselves, and each
/// order's reservation ended the way the order did (none is still held by a failed order).
fn check_inventory_tables(evidence: &Evidence, violations: &mut Vec<String>) {
    let rows: HashMap<&str, &StockRow> = evidence
        .stock_rows
        .iter()
        .map(|r| (r.sku.as_str(), r))
        .collect();
    for StockEvidence { sku, level, .. } in &evidence.stock {
        match rows.get(sku.as_str()) {
            None => violations.push(format!("sku {sku}: no row in jwl_inventory.stock")),
            Some(row)
                if (row.on_hand, row.reserved, Some(row.shipped))
                    != (level.on_hand, level.reserved, level.shipped) =>
            {
                violations.push(format!(
                    "sku {sku}: table row {row:?} disagrees with the API {level:?}"
                ))
            }
            Some(_) => {}
        }
    }
    let mut held_lines: BTreeMap<&str, i64> = BTreeMap::new();
    for line in evidence
        .reservations
        .iter()
        .filter(|r| r.state == "reserved")
    {
        *held_lines.entry(&line.sku).or_default() += line.qty;
    }
    for row in &evidence.stock_rows {
        let held = held_lines.get(row.sku.as_str()).copied().unwrap_or(0);
        if row.reserved != held {
            violations.push(format!(
                "sku {}: stock.reserved is {} but its reserved lines add up to {held}",
                row.sku, row.reserved
            ));
        }
    }
    let states: HashMap<String, &str> = evidence
        .order_reservations
        .iter()
        .map(|r| (r.order_id.to_string(), r.state.as_str()))
        .collect();
    let mut line_states: HashMap<String, Vec<&str>> = HashMap::new();
    for line in &evidence.reservations {
        line_states
            .entry(line.order_id.to_string())
            .or_default()
            .push(&line.state);
    }
    for OrderEvidence { placed, view, .. } in &evidence.orders {
        let id = &placed.order_id;
        let state = states.get(id).copied();
        let wanted: &[Option<&str>] = match (view.status, view.reason.as_deref()) {
            (s, _) if s.succeeded() => &[Some("committed")],
            (OrderStatus::Rejected, _) => &[None],
            (OrderStatus::Cancelled, Some("out_of_stock")) => &[Some("rejected")],
            // Cancelled after the reservation (dispatch failed) or before it (a tombstone).
            (OrderStatus::Cancelled, _) => &[Some("released"), Some("release_requested")],
            // Not terminal: reported by check_orders.
            _ => continue,
        };
        if !wanted.contains(&state) {
            violations.push(format!(
                "order {id}: {:?}/{:?} order has inventory state {state:?} (wanted one of {wanted:?})",
                view.status, view.reason
            ));
        }
        let lines = line_states.get(id).map(Vec::as_slice).unwrap_or(&[]);
        let line_wanted = match state {
            Some("committed") => Some("committed"),
            Some("released") => Some("released"),
            _ => None,
        };
        let consistent = match line_wanted {
            Some(wanted) => !lines.is_empty() && lines.iter().all(|l| *l == wanted),
            None => lines.is_empty(),
        };
        if !consistent {
            violations.push(format!(
                "order {id}: inventory state {state:?} but its reservation lines are {lines:?}"
            ));
        }
    }
}

/// Invariant 4, from dispatch's events (replayed in stream order: one relay publishes them in
/// commit order) and from the waybill table.
fn check_couriers(evidence: &Evidence, violations: &mut Vec<String>) {
    let capacity = evidence.courier_capacity as usize;
    let mut live: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut assigned_waybills: HashMap<String, String> = HashMap::new();
    for event in &evidence.events {
        match &event.envelope.data {
            EventData::CourierAssigned(a) => {
                let waybill = a.waybill_id.to_string();
                let courier = a.courier_id.as_str().to_owned();
                if let Some(earlier) = assigned_waybills.insert(waybill.clone(), courier.clone()) {
                    violations.push(format!(
                        "waybill {waybill}: assigned twice (to {earlier}, then {courier})"
                    ));
                }
                let held = live.entry(courier.clone()).or_default();
                held.insert(waybill);
                if held.len() > capacity {
                    violations.push(format!(
                        "courier {courier}: {} live waybills at stream sequence {} (capacity {capacity})",
                        held.len(),
                        event.sequence
                    ));
                }
            }
            EventData::Delivered(d) => {
                let courier = d.courier_id.as_str();
                let freed = live
                    .get_mut(courier)
                    .is_some_and(|held| held.remove(&d.waybill_id.to_string()));
                if !freed {
                    violations.push(format!(
                        "courier {courier}: delivered waybill {} it did not hold",
                        d.waybill_id
                    ));
                }
            }
            _ => {}
        }
    }
    let mut live_in_table: BTreeMap<&str, usize> = BTreeMap::new();
    for row in evidence.waybills.iter().filter(|w| w.status == "assigned") {
        if let Some(courier) = &row.courier_id {
            *live_in_table.entry(courier).or_default() += 1;
        }
    }
    for (courier, count) in live_in_table {
        if count > capacity {
            violations.push(format!(
                "courier {courier}: {count} assigned waybills in jwl_fulfillment.waybills (capacity {capacity})"
            ));
        }
    }
    // Each order's waybill row agrees with how the order ended.
    let rows: HashMap<String, &WaybillRow> = evidence
        .waybills
        .iter()
        .map(|row| (row.order_id.to_string(), row))
        .collect();
    for OrderEvidence { placed, view, .. } in &evidence.orders {
        let row = rows.get(&placed.order_id);
        let wanted = match (view.status, view.reason.as_deref()) {
            (OrderStatus::Dispatched, _) => Some("assigned"),
            (OrderStatus::Delivered, _) => Some("delivered"),
            (OrderStatus::Cancelled, Some("no_courier")) => Some("cancelled"),
            _ => None,
        };
        match (wanted, row) {
            (Some(status), Some(row)) if row.status == status => {
                if view.status.succeeded() && row.courier_id != view.courier_id {
                    violations.push(format!(
                        "order {}: waybill courier {:?} ≠ order courier {:?}",
                        placed.order_id, row.courier_id, view.courier_id
                    ));
                }
            }
            (Some(status), row) => violations.push(format!(
                "order {}: {:?} order should have a `{status}` waybill, found {row:?}",
                placed.order_id, view.status
            )),
            (None, Some(row)) if matches!(row.status.as_str(), "open" | "assigned") => violations
                .push(format!(
                    "order {}: {:?} order has a live waybill {row:?}",
                    placed.order_id, view.status
                )),
            (None, _) => {}
        }
    }
}

/// Invariant 4 in dispatch's tables: each courier's `live_waybills` counts its assigned
/// waybills and stays within the capacity; each order's waybill ended the way the order did.
fn check_dispatch_tables(evidence: &Evidence, violations: &mut Vec<String>) {
    let mut assigned: HashMap<&str, i32> = HashMap::new();
    for row in evidence
        .dispatch_waybills
        .iter()
        .filter(|w| w.status == "assigned")
    {
        if let Some(courier) = &row.courier_id {
            *assigned.entry(courier).or_default() += 1;
        }
    }
    for courier in &evidence.couriers {
        let counted = assigned
            .get(courier.courier_id.as_str())
            .copied()
            .unwrap_or(0);
        if courier.live_waybills != counted {
            violations.push(format!(
                "courier {}: live_waybills is {} but {counted} waybills are assigned to it",
                courier.courier_id, courier.live_waybills
            ));
        }
        if i64::from(courier.live_waybills) > i64::from(evidence.courier_capacity) {
            violations.push(format!(
                "courier {}: {} live waybills in jwl_dispatch (capacity {})",
                courier.courier_id, courier.live_waybills, evidence.courier_capacity
            ));
        }
    }
    let rows: HashMap<String, &DispatchWaybillRow> = evidence
        .dispatch_waybills
        .iter()
        .map(|row| (row.order_id.to_string(), row))
        .collect();
    for OrderEvidence { placed, view, .. } in &evidence.orders {
        let row = rows.get(&placed.order_id).copied();
        let consistent = match (view.status, view.reason.as_deref(), row) {
            (OrderStatus::Dispatched, _, Some(row)) => {
                row.status == "assigned" && row.courier_id == view.courier_id
            }
            (OrderStatus::Delivered, _, Some(row)) => {
                row.status == "delivered" && row.courier_id == view.courier_id
            }
            (
                OrderStatus::Cancelled,
                Some(reason @ ("no_courier" | "customer" | "deadline")),
                Some(row),
            ) => row.status == "failed" && row.failure_reason.as_deref() == Some(reason),
            (OrderStatus::Rejected, _, row)
            | (OrderStatus::Cancelled, Some("out_of_stock"), row) => row.is_none(),
            (status, _, None) => !status.succeeded() && view.waybill_id.is_none(),
            _ => false,
        };
        if !consistent {
            violations.push(format!(
                "order {}: {:?}/{:?} order has dispatch waybill {row:?}",
                placed.order_id, view.status, view.reason
            ));
        }
    }
}

/// Invariant 5.
fn check_messaging(evidence: &Evidence, injected: &Injected, violations: &mut Vec<String>) {
    let mut in_outboxes: HashMap<Uuid, Service> = HashMap::new();
    for (service, rows) in &evidence.outboxes {
        for row in rows {
            if !row.published || row.parked {
                violations.push(format!(
                    "{service} outbox row {} ({}) is not published (parked: {}, last error: {:?})",
                    row.seq, row.subject, row.parked, row.last_error
                ));
            }
            if in_outboxes.insert(row.event_id, *service).is_some() {
                violations.push(format!("event {} is in more than one outbox", row.event_id));
            }
        }
    }
    let mut in_stream: HashMap<Uuid, u64> = HashMap::new();
    for event in &evidence.events {
        let id = event.envelope.id.0;
        if let Some(first) = in_stream.insert(id, event.sequence) {
            violations.push(format!(
                "event {id} is in the stream twice (sequences {first} and {})",
                event.sequence
            ));
        }
        match in_outboxes.get(&id) {
            None if injected.sequences.contains(&event.sequence) => {}
            None => violations.push(format!(
                "stream event {id} ({}) is in no outbox",
                event.subject
            )),
            Some(service) if *service != event.envelope.source => violations.push(format!(
                "event {id} from {} is in the {service} outbox",
                event.envelope.source
            )),
            Some(_) => {}
        }
    }
    for (id, service) in &in_outboxes {
        if !in_stream.contains_key(id) {
            violations.push(format!(
                "{service} outbox event {id} is not in the stream (lost)"
            ));
        }
    }
    for (sequence, subject, error) in &evidence.undecodable {
        if !injected.sequences.contains(sequence) {
            violations.push(format!(
                "stream message {sequence} ({subject}) is not a valid event: {error}"
            ));
        }
    }
    let mut dead_lettered = BTreeSet::new();
    for letter in &evidence.dead_letters {
        match letter.stream_sequence {
            Some(sequence) if injected.sequences.contains(&sequence) => {
                dead_lettered.insert(sequence);
            }
            _ => violations.push(format!("dead letter: {letter}")),
        }
    }
    for sequence in injected.sequences.difference(&dead_lettered) {
        violations.push(format!(
            "injected stream message {sequence} was not dead-lettered"
        ));
    }
}

#[cfg(test)]
mod tests;
