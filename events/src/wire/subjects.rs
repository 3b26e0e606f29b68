//! NATS subjects: `jwl.evt.<order_id>.<type minus "jwl.">`, and the filters built on them.
//!
//! The order id is a subject token so that one order's history can be read server-side
//! ([`order_filter`]) and each event type can get its own consumer ([`type_filter`]).

use crate::catalogue::EventType;
use crate::ids::OrderId;

/// Prefix of every event subject.
const EVENTS_PREFIX: &str = "jwl.evt.";

/// Every event subject (the `JWL_EVENTS` stream's subject filter).
pub const EVENTS_SUBJECTS: &str = "jwl.evt.>";

/// The subject of an event: `jwl.evt.<order_id>.order.created`.
pub fn subject(order_id: &OrderId, ty: EventType) -> String {
    format!("{EVENTS_PREFIX}{order_id}.{}", ty.subject_token())
}

/// Every event of one type, for any order: `jwl.evt.*.order.created`.
pub fn type_filter(ty: EventType) -> String {
    format!("{EVENTS_PREFIX}*.{}", ty.subject_token())
}

/// Every event of one order: `jwl.evt.<order_id>.>`.
pub fn order_filter(order_id: &OrderId) -> String {
    format!("{EVENTS_PREFIX}{order_id}.>")
}

/// The order id and event type of an event subject, if it is one.
pub fn parse_subject(subject: &str) -> Option<(OrderId, EventType)> {
    let rest = subject.strip_prefix(EVENTS_PREFIX)?;
    let (order_id, _) = rest.split_once('.')?;
    Some((OrderId::parse(order_id).ok()?, subject_type(subject)?))
}

/// The event type an event subject names, even if its order id token is not a valid id.
pub fn subject_type(subject: &str) -> Option<EventType> {
    let rest = subject.strip_prefix(EVENTS_PREFIX)?;
    let (_, token) = rest.split_once('.')?;
    EventType::ALL
        .into_iter()
        .find(|t| t.subject_token() == token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: &str = "0196a3f2-7c1e-7d40-9a51-2f0c8e6b1a01";

    fn order() -> OrderId {
        ORDER.parse().unwrap()
    }

    #[test]
    fn subjects_carry_order_id_and_type_token() {
        assert_eq!(
            subject(&order(), EventType::PaymentAuthorized),
            format!("jwl.evt.{ORDER}.payment.authorized")
        );
        assert_eq!(
            subject(&order(), EventType::WaybillCreated),
            format!("jwl.evt.{ORDER}.fulfillment.waybill_created")
        );
        assert_eq!(
            type_filter(EventType::OrderCreated),
            "jwl.evt.*.order.created"
        );
        assert_eq!(order_filter(&order()), format!("jwl.evt.{ORDER}.>"));
    }

    #[test]
    fn every_subject_parses_back_and_matches_its_filters() {
        for ty in EventType::ALL {
            let s = subject(&order(), ty);
            assert_eq!(parse_subject(&s), Some((order(), ty)));
            assert!(s.starts_with(EVENTS_SUBJECTS.trim_end_matches('>')));
            let tokens: Vec<_> = s.split('.').collect();
            let filter: Vec<_> = type_filter(ty).split('.').map(str::to_owned).collect();
            assert_eq!(
                tokens.len(),
                filter.len(),
                "type filter must match exactly: {s}"
            );
            assert!(
                tokens.iter().zip(&filter).all(|(t, f)| f == "*" || t == f),
                "{s}"
            );
        }
        assert_eq!(parse_subject("jwl.evt.not-a-uuid.order.created"), None);
        assert_eq!(
            parse_subject(&format!("jwl.evt.{ORDER}.order.shipped")),
            None
        );
        assert_eq!(parse_subject("jwl.dlq.x.y"), None);
    }
}
