//! The pure decisions of the operator tools, without I/O: how an event is summarised, how a
//! stored message becomes an entry, which broker query (start position, end bound) a
//! [`Selection`] or a [`DeadLetterFilter`] makes, how a replay message is built, and who
//! should act next on an order.

use std::time::Duration;

use crate::error::OpsError;
use crate::model::{
    DeadLetterDetail, DeadLetterEntry, DecodedEvent, EntryEvent, EventEntry, StoredMessage,
    UndecodableMessage,
};
use chrono::{DateTime, Utc};
use jwl_events::{
    CancelReason, DispatchFailureReason, EventData, EventType, HeaderStyle, OrderId, Service,
};
use jwl_outbox::protocol::dead_letter::{
    CONSUMER_HEADER, DeadLetterReason, ERROR_HEADER, ORDER_ID_HEADER, REASON_HEADER,
    STREAM_SEQ_HEADER, SUBJECT_HEADER, dead_letter_log_id, dead_letter_log_subject,
    is_annotation_header, parse_dead_letter_subject,
};
use jwl_outbox::protocol::replay::{
    MODE_HEADER, ORIGIN_HEADER, RELEASE_CONSUMER_HEADER, RELEASE_REASON_HEADER, ReplayMode,
    ReplayOrigin, release_subject, replay_subject,
};
use jwl_outbox::transport::{DeadLetterQuery, EventQuery, ReadEnd, ReadStart};
use serde::{Deserialize, Serialize};
/// Most SKUs named in a summary; the rest are counted.
const SUMMARY_SKUS: usize = 3;

/// One line saying what an event's data is about, e.g. `"authorized 2598 cents"`,
/// `"reserved 2 lines"`, `"courier courier-7 at 0.42 km"`, `"failed: no_courier"`.
pub fn summarize(data: &EventData) -> String {
    match data {
        EventData::OrderCreated(e) => format!(
            "created for {}: {}, {} cents, deadline {}",
            one_line(&e.customer_id),
            lines(e.items.len()),
            e.amount_cents,
            e.deadline.format("%Y-%m-%dT%H:%M:%SZ")
        ),
        EventData::OrderCancelRequested(e) => {
            format!("cancel requested: {}", cancel_reason(e.reason))
        }
        EventData::PaymentAuthorized(e) => format!("authorized {} cents", e.amount_cents),
        EventData::PaymentDeclined(e) => {
            format!("declined {} cents: {}", e.amount_cents, one_line(&e.reason))
        }
        EventData::PaymentCaptured(e) => format!("captured {} cents", e.amount_cents),
        EventData::PaymentVoided(e) => format!("voided {} cents", e.amount_cents),
        EventData::InventoryReserved(e) => format!("reserved {}", lines(e.items.len())),
        EventData::InventoryRejected(e) => {
            format!("rejected: {} unavailable", sku_list(&e.unavailable_skus))
        }
        EventData::InventoryReleased(e) => format!("released {}", lines(e.items.len())),
        EventData::WaybillCreated(e) => format!("waybill {} created", e.waybill_id),
        EventData::WaybillCancelled(e) => format!("waybill {} cancelled", e.waybill_id),
        EventData::CourierAssigned(e) => format!(
            "courier {} at {:.2} km",
            e.courier_id.as_str(),
            e.distance_km
        ),
        EventData::DispatchFailed(e) => format!("failed: {}", failure_reason(e.reason)),
        EventData::Delivered(e) => format!("delivered by courier {}", e.courier_id.as_str()),
    }
}

fn lines(count: usize) -> String {
    match count {
        1 => "1 line".to_owned(),
        n => format!("{n} lines"),
    }
}

fn sku_list(skus: &[String]) -> String {
    let named: Vec<String> = skus
        .iter()
        .take(SUMMARY_SKUS)
        .map(|s| one_line(s))
        .collect();
    match skus.len().saturating_sub(SUMMARY_SKUS) {
        0 => named.join(", "),
        more => format!("{} and {more} more", named.join(", ")),
    }
}

fn cancel_reason(reason: CancelReason) -> &'static str {
    match reason {
        CancelReason::Customer => "customer",
        CancelReason::Deadline => "deadline",
    }
}

fn failure_reason(reason: DispatchFailureReason) -> &'static str {
    match reason {
        DispatchFailureReason::NoCourier => "no_courier",
        DispatchFailureReason::Customer => "customer",
        DispatchFailureReason::Deadline => "deadline",
    }
}

/// Free text on one line: control characters (CR, LF, tab, …) become spaces.
pub(crate) fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The trace id (second field) of a W3C `traceparent`.
pub(crate) fn trace_id(traceparent: &str) -> Option<&str> {
    traceparent.split('-').nth(1).filter(|id| id.len() == 32)
}

/// Decodes a message's headers and payload into an event, or says why it is not one.
pub(crate) fn decode_event(headers: &[(String, String)], payload: &[u8]) -> EntryEvent {
    let pairs = headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
    match jwl_events::decode(HeaderStyle::NEUTRAL, pairs, payload) {
        Ok(envelope) => EntryEvent::Decoded(DecodedEvent {
            time: envelope.time,
            event_type: envelope.event_type(),
            source: envelope.source,
            event_id: envelope.id,
            causation_id: envelope.causation_id,
            trace_id: envelope
                .traceparent
                .as_deref()
                .and_then(trace_id)
                .map(str::to_owned),
            summary: summarize(&envelope.data),
            data: envelope.data,
        }),
        Err(error) => {
            let header = |name: &str| jwl_events::header_value(headers, name).map(str::to_owned);
            EntryEvent::Undecodable(UndecodableMessage {
                error: error.to_string(),
                error_kind: error.kind(),
                type_header: header("ce-type"),
                id_header: header("ce-id"),
            })
        }
    }
}

/// The entry for one message of the events stream.
pub(crate) fn event_entry(message: StoredMessage) -> EventEntry {
    EventEntry {
        event: decode_event(&message.headers, &message.payload),
        stream_seq: message.stream_seq,
        stored_at: message.stored_at,
        subject: message.subject,
    }
}

/// The entry for one message of the dead-letter stream. Consumer and order come from the
/// `jwl-dlq-*` headers, or from the subject when a header is missing.
pub(crate) fn dead_letter_entry(message: &StoredMessage) -> DeadLetterEntry {
    let (subject_consumer, subject_order) = match parse_dead_letter_subject(&message.subject) {
        Some((consumer, order)) => (Some(consumer), order),
        None => (None, None),
    };
    let text = |name: &str| message.header(name).map(str::to_owned);
    DeadLetterEntry {
        dlq_seq: message.stream_seq,
        stored_at: message.stored_at,
        consumer: message
            .header(CONSUMER_HEADER)
            .or(subject_consumer)
            .unwrap_or_default()
            .to_owned(),
        reason: text(REASON_HEADER).unwrap_or_default(),
        error: text(ERROR_HEADER).unwrap_or_default(),
        original_type: text("ce-type"),
        original_subject: text(SUBJECT_HEADER),
        original_stream_seq: message
            .header(STREAM_SEQ_HEADER)
            .and_then(|seq| seq.trim().parse().ok()),
        order_id: message
            .header(ORDER_ID_HEADER)
            .or(subject_order)
            .and_then(|id| OrderId::parse(id).ok()),
    }
}

/// One dead letter in full: its entry, sorted headers, payload and the decoded original.
pub(crate) fn dead_letter_detail(message: StoredMessage) -> DeadLetterDetail {
    let entry = dead_letter_entry(&message);
    let original = decode_event(&message.headers, &message.payload);
    let mut headers = message.headers;
    headers.sort();
    DeadLetterDetail {
        entry,
        subject: message.subject,
        headers,
        payload: String::from_utf8_lossy(&message.payload).into_owned(),
        payload_bytes: message.payload.len(),
        original,
    }
}

/// Which events `jwl replay` reads. Empty fields select everything; times are the broker's
/// stored time (the order of the stream); sequence bounds are inclusive.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    pub order: Option<OrderId>,
    /// Empty: every type.
    pub types: Vec<EventType>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub from_seq: Option<u64>,
    pub to_seq: Option<u64>,
    /// Most entries returned (the first ones in stream order).
    pub limit: Option<usize>,
}

impl Selection {
    /// The broker query of the selection: its order, its types, where to start and end,
    /// its limit.
    pub fn query(&self) -> EventQuery {
        EventQuery {
            order: self.order,
            types: self.types.clone(),
            start: self.start(),
            end: self.end(),
            limit: self.limit,
        }
    }

    /// A start sequence is exact, so it wins over a start time (which is then checked per
    /// message by [`keeps`](Self::keeps)).
    fn start(&self) -> ReadStart {
        match (self.from_seq, self.since) {
            (Some(seq), _) => ReadStart::Sequence(seq),
            (None, Some(since)) => ReadStart::Time(since),
            (None, None) => ReadStart::First,
        }
    }

    fn end(&self) -> ReadEnd {
        ReadEnd {
            last_seq: self.to_seq,
            until: self.until,
        }
    }

    /// Whether a message inside the read range belongs to the selection.
    pub(crate) fn keeps(&self, stored_at: DateTime<Utc>) -> bool {
        self.since.is_none_or(|since| stored_at >= since)
    }
}

/// Which dead letters `jwl dlq ls` lists. Consumer and order select by subject; type and
/// reason are checked per message; `older_than` ends the read at messages stored more recently.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeadLetterFilter {
    /// Durable consumer name, e.g. `payment__order_created`.
    pub consumer: Option<String>,
    pub event_type: Option<EventType>,
    pub reason: Option<DeadLetterReason>,
    pub order: Option<OrderId>,
    /// Only dead letters stored at least this long ago.
    pub older_than: Option<Duration>,
    /// Most entries returned (the oldest first).
    pub limit: Option<usize>,
}

impl DeadLetterFilter {
    /// The broker query of the filter at `now`: its consumer (which must be one subject token)
    /// and order, ending at the first dead letter stored after `now - older_than`, with its
    /// limit.
    pub fn query(&self, now: DateTime<Utc>) -> Result<DeadLetterQuery, OpsError> {
        if let Some(consumer) = &self.consumer {
            let valid = !consumer.is_empty()
                && !consumer
                    .chars()
                    .any(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control());
            if !valid {
                return Err(OpsError::InvalidFilter(format!(
                    "consumer {consumer:?} is not a subject token"
                )));
            }
        }
        Ok(DeadLetterQuery {
            consumer: self.consumer.clone(),
            order: self.order,
            end: self.end(now),
            limit: self.limit,
        })
    }

    /// The read ends at the first dead letter stored after `now - older_than`.
    fn end(&self, now: DateTime<Utc>) -> ReadEnd {
        ReadEnd {
            last_seq: None,
            until: self.older_than.map(|age| {
                chrono::Duration::from_std(age)
                    .ok()
                    .and_then(|age| now.checked_sub_signed(age))
                    .unwrap_or(DateTime::<Utc>::MIN_UTC)
            }),
        }
    }

    /// Whether a dead letter in the read range has the wanted event type and reason.
    pub fn matches(&self, entry: &DeadLetterEntry) -> bool {
        self.event_type
            .is_none_or(|ty| entry.original_type.as_deref() == Some(ty.as_str()))
            && self
                .reason
                .is_none_or(|reason| entry.reason == reason.as_str())
    }
}

/// One message for a service's replay channel, ready to publish (or to print with `--dry-run`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayMessage {
    /// `jwl.replay.<service>.<order id>.<type minus "jwl.">` (or `….control.release`).
    pub subject: String,
    /// `Nats-Msg-Id`, so the broker drops a second publish of the same message.
    pub message_id: String,
    /// Every header sent, `Nats-Msg-Id` excepted.
    pub headers: Vec<(String, String)>,
    #[serde(skip)]
    pub payload: Vec<u8>,
    pub payload_bytes: usize,
}

impl ReplayMessage {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        jwl_events::header_value(&self.headers, name)
    }
}

/// The replay message re-delivering a stored event of `order_id` and type `event_type` to
/// `service`: the original headers and payload, plus mode and origin, with
/// `Nats-Msg-Id: replay:<run id>:<origin>`.
pub(crate) fn replay_message(
    service: Service,
    order_id: &OrderId,
    event_type: EventType,
    message: &StoredMessage,
    origin: ReplayOrigin,
    mode: ReplayMode,
    run_id: &str,
) -> ReplayMessage {
    let mut headers: Vec<(String, String)> = message
        .headers
        .iter()
        .filter(|(name, _)| !is_annotation_header(name))
        .cloned()
        .collect();
    headers.push((MODE_HEADER.to_owned(), mode.as_str().to_owned()));
    headers.push((ORIGIN_HEADER.to_owned(), origin.to_string()));
    ReplayMessage {
        subject: replay_subject(service, order_id, event_type),
        message_id: format!("replay:{run_id}:{origin}"),
        headers,
        payload_bytes: message.payload.len(),
        payload: message.payload.clone(),
    }
}

/// The event types a replay to a service consuming `consumed` sends: the selection's types
/// that service consumes, or everything it consumes when the selection names no type.
pub fn replay_types(selection: &[EventType], consumed: &[EventType]) -> Vec<EventType> {
    if selection.is_empty() {
        consumed.to_vec()
    } else {
        selection
            .iter()
            .copied()
            .filter(|ty| consumed.contains(ty))
            .collect()
    }
}

/// The "release the hold" control message for `consumer`'s hold on `order_id`.
pub fn release_message(
    service: Service,
    order_id: &OrderId,
    consumer: &str,
    reason: &str,
    dlq_seq: u64,
) -> ReplayMessage {
    ReplayMessage {
        subject: release_subject(service, order_id),
        message_id: format!("release:dlq:{dlq_seq}"),
        headers: vec![
            (
                MODE_HEADER.to_owned(),
                ReplayMode::Release.as_str().to_owned(),
            ),
            (RELEASE_CONSUMER_HEADER.to_owned(), consumer.to_owned()),
            (RELEASE_REASON_HEADER.to_owned(), one_line(reason)),
        ],
        payload: Vec::new(),
        payload_bytes: 0,
    }
}

/// What was done with a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterAction {
    Redriven,
    Discarded,
}

/// The record published to `jwl.dlqlog.<dlq seq>` when a dead letter is resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterOutcome {
    pub dlq_seq: u64,
    pub action: DeadLetterAction,
    /// The operator's reason (discard), if any.
    pub reason: Option<String>,
    pub consumer: String,
    pub order_id: Option<OrderId>,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    /// The error the consumer gave up with.
    pub error: String,
    pub at: DateTime<Utc>,
    /// The redrive run, if any.
    pub run_id: Option<String>,
    /// Who resolved it, when known (the console's admin token subject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
}

impl DeadLetterOutcome {
    /// The outcome of `action` on the dead letter `detail`.
    pub fn of(
        detail: &DeadLetterDetail,
        action: DeadLetterAction,
        reason: Option<&str>,
        run_id: Option<&str>,
        at: DateTime<Utc>,
    ) -> DeadLetterOutcome {
        let header =
            |name: &str| jwl_events::header_value(&detail.headers, name).map(str::to_owned);
        DeadLetterOutcome {
            dlq_seq: detail.entry.dlq_seq,
            action,
            reason: reason.map(str::to_owned),
            consumer: detail.entry.consumer.clone(),
            order_id: detail.entry.order_id,
            event_id: header("ce-id"),
            event_type: detail.entry.original_type.clone(),
            error: detail.entry.error.clone(),
            at,
            run_id: run_id.map(str::to_owned),
            operator: None,
        }
    }

    /// The same outcome, recorded as done by `operator`.
    pub fn by(mut self, operator: Option<&str>) -> DeadLetterOutcome {
        self.operator = operator.map(str::to_owned);
        self
    }

    /// `jwl.dlqlog.<dlq seq>`.
    pub fn subject(&self) -> String {
        dead_letter_log_subject(self.dlq_seq)
    }

    /// `dlqlog:<dlq seq>`.
    pub fn message_id(&self) -> String {
        dead_letter_log_id(self.dlq_seq)
    }
}

/// The services that should act next on an order whose last event is `last` (`jwl saga stuck`):
/// every service whose handler consumes it ([`EventType::consumers`], the catalogue's one table
/// of who consumes what), in saga order, except the order service, whose read model records
/// every event but moves no saga on. An event nobody else consumes (the end of a branch) has
/// none.
pub fn next_services(last: EventType) -> Vec<Service> {
    last.consumers()
        .into_iter()
        .filter(|service| *service != Service::Order)
        .collect()
}

/// The order statuses (`jwl_order.orders.status`) a saga ends in.
pub const TERMINAL_STATUSES: [&str; 4] = ["dispatched", "delivered", "rejected", "cancelled"];

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use jwl_events::{
        CourierAssigned, CourierId, DispatchFailed, Envelope, InventoryRejected, InventoryReserved,
        LineItem, OrderCancelRequested, PaymentAuthorized, PaymentDeclined, Service, WaybillId,
        encode,
    };

    use super::*;

    const ORDER: &str = "0196a3f2-7c1e-7d40-9a51-2f0c8e6b1a01";

    fn order() -> OrderId {
        ORDER.parse().unwrap()
    }

    fn item(sku: &str) -> LineItem {
        LineItem {
            sku: sku.to_owned(),
            qty: 2,
            unit_price_cents: 100,
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn stored(seq: u64, subject: &str, headers: &[(&str, &str)], payload: &[u8]) -> StoredMessage {
        StoredMessage {
            stream_seq: seq,
            stored_at: at(seq as i64),
            subject: subject.to_owned(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn summaries_name_the_essential_fact_on_one_line() {
        let geo = jwl_events::GeoPoint::new(31.0, 121.0).unwrap();
        let waybill = WaybillId::new();
        let cases: Vec<(EventData, String)> = vec![
            (
                PaymentAuthorized {
                    order_id: order(),
                    amount_cents: 2598,
                    items: vec![item("A")],
                    pickup: geo,
                    dropoff: geo,
                }
                .into(),
                "authorized 2598 cents".to_owned(),
            ),
            (
                InventoryReserved {
                    order_id: order(),
                    items: vec![item("A"), item("B")],
                    pickup: geo,
                    dropoff: geo,
                }
                .into(),
                "reserved 2 lines".to_owned(),
            ),
            (
                CourierAssigned {
                    order_id: order(),
                    waybill_id: waybill,
                    courier_id: CourierId::parse("courier-7").unwrap(),
                    distance_km: 0.4213,
                }
                .into(),
                "courier courier-7 at 0.42 km".to_owned(),
            ),
            (
                DispatchFailed {
                    order_id: order(),
                    waybill_id: waybill,
                    reason: DispatchFailureReason::NoCourier,
                }
                .into(),
                "failed: no_courier".to_owned(),
            ),
            (
                OrderCancelRequested {
                    order_id: order(),
                    reason: CancelReason::Deadline,
                }
                .into(),
                "cancel requested: deadline".to_owned(),
            ),
            (
                PaymentDeclined {
                    order_id: order(),
                    amount_cents: 5,
                    reason: "card\r\ndeclined".to_owned(),
                }
                .into(),
                "declined 5 cents: card  declined".to_owned(),
            ),
            (
                InventoryRejected {
                    order_id: order(),
                    unavailable_skus: ["A", "B", "C", "D", "E"].map(str::to_owned).to_vec(),
                }
                .into(),
                "rejected: A, B, C and 2 more unavailable".to_owned(),
            ),
        ];
        for (data, expected) in cases {
            assert_eq!(summarize(&data), expected);
        }
    }

    #[test]
    fn trace_id_is_the_second_traceparent_field() {
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id("garbage"), None);
    }

    #[test]
    fn event_entry_decodes_valid_events_and_reports_invalid_ones() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cause = Envelope::new(
            Service::Order,
            OrderCancelRequested {
                order_id: order(),
                reason: CancelReason::Customer,
            }
            .into(),
        );
        let env = Envelope::new(
            Service::Payment,
            jwl_events::PaymentVoided {
                order_id: order(),
                amount_cents: 7,
            }
            .into(),
        )
        .with_traceparent(tp)
        .caused_by(&cause);
        let wire = encode(&env, HeaderStyle::NEUTRAL);
        let headers: Vec<(&str, &str)> = wire.header_pairs().collect();
        let entry = event_entry(stored(3, &wire.subject, &headers, &wire.payload));
        assert_eq!(entry.stream_seq, 3);
        let EntryEvent::Decoded(event) = &entry.event else {
            panic!("not decoded: {entry:?}");
        };
        assert_eq!(event.event_id, env.id);
        assert_eq!(event.event_type, EventType::PaymentVoided);
        assert_eq!(event.source, Service::Payment);
        assert_eq!(event.causation_id, Some(cause.id));
        assert_eq!(
            event.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(event.summary, "voided 7 cents");

        let broken = event_entry(stored(
            4,
            &wire.subject,
            &[("ce-type", "jwl.payment.voided"), ("ce-id", "x")],
            b"{}",
        ));
        let EntryEvent::Undecodable(bad) = &broken.event else {
            panic!("decoded: {broken:?}");
        };
        assert_eq!(bad.error_kind, "missing_attribute");
        assert_eq!(bad.type_header.as_deref(), Some("jwl.payment.voided"));
        assert_eq!(bad.id_header.as_deref(), Some("x"));
    }

    #[test]
    fn dead_letter_entry_reads_the_dlq_headers_and_falls_back_to_the_subject() {
        let full = stored(
            9,
            &format!("jwl.dlq.payment__order_created.{ORDER}"),
            &[
                ("ce-type", "jwl.order.created"),
                ("jwl-dlq-consumer", "payment__order_created"),
                ("jwl-dlq-reason", "permanent"),
                ("jwl-dlq-error", "boom"),
                ("jwl-dlq-subject", "jwl.evt.x.order.created"),
                ("jwl-dlq-stream-seq", "42"),
                ("jwl-dlq-order-id", ORDER),
            ],
            b"{}",
        );
        let entry = dead_letter_entry(&full);
        assert_eq!(entry.dlq_seq, 9);
        assert_eq!(entry.consumer, "payment__order_created");
        assert_eq!(entry.reason, "permanent");
        assert_eq!(entry.error, "boom");
        assert_eq!(entry.original_type.as_deref(), Some("jwl.order.created"));
        assert_eq!(
            entry.original_subject.as_deref(),
            Some("jwl.evt.x.order.created")
        );
        assert_eq!(entry.original_stream_seq, Some(42));
        assert_eq!(entry.order_id, Some(order()));

        let bare = dead_letter_entry(&stored(
            10,
            &format!("jwl.dlq.inventory__payment_authorized.{ORDER}"),
            &[],
            b"",
        ));
        assert_eq!(bare.consumer, "inventory__payment_authorized");
        assert_eq!(bare.order_id, Some(order()));
        assert_eq!(bare.original_stream_seq, None);
        let unknown = dead_letter_entry(&stored(11, "jwl.dlq.c.unknown", &[], b""));
        assert_eq!(unknown.order_id, None);
    }

    #[test]
    fn dead_letter_detail_sorts_headers_and_decodes_the_original() {
        let detail = dead_letter_detail(stored(
            1,
            "jwl.dlq.c.unknown",
            &[("jwl-dlq-reason", "decode"), ("ce-id", "nope")],
            b"not json",
        ));
        assert_eq!(detail.headers[0].0, "ce-id");
        assert_eq!(detail.payload, "not json");
        assert_eq!(detail.payload_bytes, 8);
        assert!(matches!(detail.original, EntryEvent::Undecodable(_)));
        assert_eq!(detail.entry.reason, "decode");
    }

    #[test]
    fn selection_starts_by_sequence_then_time_and_filters_the_rest() {
        let by_both = Selection {
            order: Some(order()),
            types: vec![EventType::OrderCreated],
            from_seq: Some(5),
            since: Some(at(3)),
            to_seq: Some(9),
            until: Some(at(8)),
            limit: Some(4),
        };
        assert_eq!(
            by_both.query(),
            EventQuery {
                order: Some(order()),
                types: vec![EventType::OrderCreated],
                start: ReadStart::Sequence(5),
                end: ReadEnd {
                    last_seq: Some(9),
                    until: Some(at(8))
                },
                limit: Some(4),
            }
        );
        assert!(!by_both.keeps(at(2)));
        assert!(by_both.keeps(at(3)));
        let by_time = Selection {
            since: Some(at(3)),
            ..Default::default()
        };
        assert_eq!(by_time.query().start, ReadStart::Time(at(3)));
        assert_eq!(Selection::default().query(), EventQuery::default());
        assert!(Selection::default().keeps(at(0)));
    }

    #[test]
    fn dead_letter_filter_queries_and_matching() {
        assert_eq!(
            DeadLetterFilter::default().query(at(0)).unwrap(),
            DeadLetterQuery::default()
        );
        let by_consumer_and_order = DeadLetterFilter {
            consumer: Some("payment__order_created".to_owned()),
            order: Some(order()),
            limit: Some(2),
            ..Default::default()
        };
        assert_eq!(
            by_consumer_and_order.query(at(0)).unwrap(),
            DeadLetterQuery {
                consumer: Some("payment__order_created".to_owned()),
                order: Some(order()),
                end: ReadEnd::default(),
                limit: Some(2),
            }
        );
        for bad in ["a.b", "*", "", "a b"] {
            let filter = DeadLetterFilter {
                consumer: Some(bad.to_owned()),
                ..Default::default()
            };
            assert!(filter.query(at(0)).is_err(), "{bad:?}");
        }

        let entry = dead_letter_entry(&stored(
            1,
            "jwl.dlq.c.unknown",
            &[
                ("ce-type", "jwl.order.created"),
                ("jwl-dlq-reason", "max_attempts"),
            ],
            b"",
        ));
        let wants = |event_type, reason| DeadLetterFilter {
            event_type,
            reason,
            ..Default::default()
        };
        assert!(wants(None, None).matches(&entry));
        assert!(
            wants(
                Some(EventType::OrderCreated),
                Some(DeadLetterReason::MaxAttempts)
            )
            .matches(&entry)
        );
        assert!(!wants(Some(EventType::PaymentVoided), None).matches(&entry));
        assert!(!wants(None, Some(DeadLetterReason::Decode)).matches(&entry));
    }

    #[test]
    fn older_than_ends_the_read_at_the_cutoff() {
        let filter = DeadLetterFilter {
            older_than: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        let end = filter.query(at(100)).unwrap().end;
        assert_eq!(end.until, Some(at(40)));
        assert!(end.admits(1, at(40)));
        assert!(!end.admits(1, at(41)));
    }

    #[test]
    fn next_services_are_the_consumers_but_the_read_model() {
        assert_eq!(next_services(EventType::OrderCreated), [Service::Payment]);
        assert_eq!(
            next_services(EventType::OrderCancelRequested),
            [Service::Dispatch]
        );
        assert_eq!(
            next_services(EventType::PaymentAuthorized),
            [Service::Inventory]
        );
        assert_eq!(
            next_services(EventType::InventoryReserved),
            [Service::Fulfillment]
        );
        assert_eq!(
            next_services(EventType::WaybillCreated),
            [Service::Dispatch]
        );
        assert_eq!(
            next_services(EventType::InventoryRejected),
            [Service::Payment]
        );
        assert_eq!(
            next_services(EventType::DispatchFailed),
            [Service::Payment, Service::Inventory, Service::Fulfillment]
        );
        assert!(next_services(EventType::PaymentDeclined).is_empty());
        assert!(next_services(EventType::WaybillCancelled).is_empty());
    }

    #[test]
    fn every_event_type_a_service_consumes_has_that_service_next() {
        for service in Service::ALL {
            if service == Service::Order {
                continue;
            }
            for &ty in service.subscriptions() {
                assert!(
                    next_services(ty).contains(&service),
                    "{service} consumes {ty}, but next_services({ty}) does not name it"
                );
            }
        }
    }

    #[test]
    fn terminal_statuses() {
        for status in ["dispatched", "delivered", "rejected", "cancelled"] {
            assert!(TERMINAL_STATUSES.contains(&status), "{status}");
        }
        for status in ["pending", "paid", "reserved", "waybill_created"] {
            assert!(!TERMINAL_STATUSES.contains(&status), "{status}");
        }
    }

    #[test]
    fn replay_types_intersect_with_what_the_service_consumes() {
        let consumed = [EventType::OrderCreated, EventType::DispatchFailed];
        assert_eq!(replay_types(&[], &consumed), consumed.to_vec());
        assert_eq!(
            replay_types(
                &[EventType::DispatchFailed, EventType::Delivered],
                &consumed
            ),
            vec![EventType::DispatchFailed]
        );
        assert!(replay_types(&[EventType::Delivered], &consumed).is_empty());
    }

    #[test]
    fn a_replay_message_keeps_the_original_and_drops_annotations() {
        let message = stored(
            7,
            &format!("jwl.dlq.payment__order_created.{ORDER}"),
            &[
                ("ce-type", "jwl.order.created"),
                ("ce-id", "e-1"),
                ("content-type", "application/json"),
                ("jwl-dlq-consumer", "payment__order_created"),
                ("jwl-dlq-reason", "permanent"),
                ("Nats-Msg-Id", "dlq:x"),
            ],
            b"{}",
        );
        let replay = replay_message(
            Service::Payment,
            &order(),
            EventType::OrderCreated,
            &message,
            ReplayOrigin::DeadLetter(7),
            ReplayMode::Rerun,
            "run-1",
        );
        assert_eq!(
            replay.subject,
            format!("jwl.replay.payment.{ORDER}.order.created")
        );
        assert_eq!(replay.message_id, "replay:run-1:dlq:7");
        assert_eq!(replay.header("ce-id"), Some("e-1"));
        assert_eq!(replay.header("content-type"), Some("application/json"));
        assert_eq!(replay.header("jwl-replay-mode"), Some("rerun"));
        assert_eq!(replay.header("jwl-replay-origin"), Some("dlq:7"));
        assert_eq!(replay.header("jwl-dlq-reason"), None);
        assert_eq!(replay.header("nats-msg-id"), None);
        assert_eq!(replay.payload, b"{}");
    }

    #[test]
    fn a_release_message_names_the_consumer_and_reason() {
        let release = release_message(
            Service::Payment,
            &order(),
            "payment__order_created",
            "bad\ndata",
            3,
        );
        assert_eq!(
            release.subject,
            format!("jwl.replay.payment.{ORDER}.control.release")
        );
        assert_eq!(release.header("jwl-replay-mode"), Some("release"));
        assert_eq!(release.header("jwl-release-reason"), Some("bad data"));
    }
}
