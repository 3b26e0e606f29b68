//! NATS subjects: `jwl.evt.<type minus "jwl.">.<order_id>`, and the filters built on them.
//!
//! The type comes first and the order id last:
//! - each service's consumer filters on its types ([`type_filter`]), and nats-server narrows a
//!   filter by its leading literal tokens when it walks its per-subject index (which it does
//!   at the end of every block of the stream). With the type first, that walk visits only the
//!   consumer's own types' subjects; with the order id first it visited every subject in the
//!   stream, and the whole broker stalled for it (docs/performance.md, *The tail is the
//!   broker's*).
//! - the order id is still a token, so one order's history is read server-side on literal
//!   subjects ([`subjects_of`]).
//!
//! Earlier versions published `jwl.evt.<order_id>.<type>` (the *legacy* layout). Outbox rows
//! written by them and events still in the stream keep it, so everything here parses both, and
//! [`subjects_of`] and [`type_filters`] name both: a consumer still receives them, and an
//! order's history still includes them. The two layouts cannot be confused: a subject's third
//! and fourth tokens are a type in one, and its fourth and fifth in the other.

use crate::catalogue::EventType;
use crate::ids::OrderId;

/// Prefix of every event subject.
const EVENTS_PREFIX: &str = "jwl.evt.";

/// Every event subject (the `JWL_EVENTS` stream's subject filter).
pub const EVENTS_SUBJECTS: &str = "jwl.evt.>";

/// The subject of an event: `jwl.evt.order.created.<order_id>`.
pub fn subject(order_id: &OrderId, ty: EventType) -> String {
    format!("{EVENTS_PREFIX}{}.{order_id}", ty.subject_token())
}

/// The subject an event had in the legacy layout: `jwl.evt.<order_id>.order.created`.
fn legacy_subject(order_id: &OrderId, ty: EventType) -> String {
    format!("{EVENTS_PREFIX}{order_id}.{}", ty.subject_token())
}

/// The subjects an event of `order_id` and `ty` may be stored on: [`subject`] and the legacy
/// one.
pub fn subjects_of(order_id: &OrderId, ty: EventType) -> [String; 2] {
    [subject(order_id, ty), legacy_subject(order_id, ty)]
}

/// Every event of one type, for any order: `jwl.evt.order.created.*`.
pub fn type_filter(ty: EventType) -> String {
    format!("{EVENTS_PREFIX}{}.*", ty.subject_token())
}

/// Every event of one type in either layout: [`type_filter`] and `jwl.evt.*.order.created`.
/// The legacy filter costs the broker's index walk nothing once the stream holds no legacy
/// subject: it cannot match the type token in the third place.
pub fn type_filters(ty: EventType) -> [String; 2] {
    [
        type_filter(ty),
        format!("{EVENTS_PREFIX}*.{}", ty.subject_token()),
    ]
}

/// Every event of one order, in either layout: `jwl.evt.*.*.<order_id>` and
/// `jwl.evt.<order_id>.>`.
pub fn order_filters(order_id: &OrderId) -> [String; 2] {
    [
        format!("{EVENTS_PREFIX}*.*.{order_id}"),
        format!("{EVENTS_PREFIX}{order_id}.>"),
    ]
}

/// The type and the order token of an event subject of either layout.
fn split(subject: &str) -> Option<(EventType, &str)> {
    let rest = subject.strip_prefix(EVENTS_PREFIX)?;
    let type_named = |token: &str| {
        EventType::ALL
            .into_iter()
            .find(|t| t.subject_token() == token)
    };
    if let Some((token, order)) = rest.rsplit_once('.')
        && let Some(ty) = type_named(token)
    {
        return Some((ty, order));
    }
    let (order, token) = rest.split_once('.')?;
    Some((type_named(token)?, order))
}

/// The order id and event type of an event subject (of either layout), if it is one.
pub fn parse_subject(subject: &str) -> Option<(OrderId, EventType)> {
    let (ty, order) = split(subject)?;
    Some((OrderId::parse(order).ok()?, ty))
}

/// The event type an event subject names, even if its order id token is not a valid id.
pub fn subject_type(subject: &str) -> Option<EventType> {
    split(subject).map(|(ty, _)| ty)
}

/// The order token of an event subject (of either layout), even if it is not a valid id.
pub fn subject_order(subject: &str) -> Option<&str> {
    split(subject).map(|(_, order)| order)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: &str = "0196a3f2-7c1e-7d40-9a51-2f0c8e6b1a01";

    fn order() -> OrderId {
        ORDER.parse().unwrap()
    }

    /// Whether NATS subject `filter` matches `subject` (`*` and a trailing `>`).
    fn matches(filter: &str, subject: &str) -> bool {
        let (mut f, mut s) = (filter.split('.'), subject.split('.'));
        loop {
            match (f.next(), s.next()) {
                (Some(">"), Some(_)) => return true,
                (Some(a), Some(b)) if a == "*" || a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    #[test]
    fn subjects_carry_type_then_order_id() {
        assert_eq!(
            subject(&order(), EventType::PaymentAuthorized),
            format!("jwl.evt.payment.authorized.{ORDER}")
        );
        assert_eq!(
            subject(&order(), EventType::WaybillCreated),
            format!("jwl.evt.fulfillment.waybill_created.{ORDER}")
        );
        assert_eq!(
            type_filter(EventType::OrderCreated),
            "jwl.evt.order.created.*"
        );
        assert_eq!(
            subjects_of(&order(), EventType::OrderCreated)[1],
            format!("jwl.evt.{ORDER}.order.created")
        );
    }

    #[test]
    fn every_subject_of_either_layout_parses_back_and_matches_only_its_filters() {
        for ty in EventType::ALL {
            for s in subjects_of(&order(), ty) {
                assert_eq!(parse_subject(&s), Some((order(), ty)), "{s}");
                assert_eq!(subject_order(&s), Some(ORDER), "{s}");
                assert!(matches(EVENTS_SUBJECTS, &s));
                assert!(
                    order_filters(&order()).iter().any(|f| matches(f, &s)),
                    "{s}"
                );
                for other in EventType::ALL {
                    assert_eq!(
                        type_filters(other).iter().any(|f| matches(f, &s)),
                        other == ty,
                        "{s} against the filters of {other:?}"
                    );
                }
            }
            // the two layouts' filters are disjoint
            let [new, legacy] = type_filters(ty);
            assert!(!matches(&legacy, &subject(&order(), ty)), "{legacy}");
            assert!(!matches(&new, &subjects_of(&order(), ty)[1]), "{new}");
        }
        assert_eq!(parse_subject("jwl.evt.order.created.not-a-uuid"), None);
        assert_eq!(parse_subject("jwl.evt.not-a-uuid.order.created"), None);
        assert_eq!(subject_order("jwl.evt.order.created.x"), Some("x"));
        assert_eq!(
            parse_subject(&format!("jwl.evt.order.shipped.{ORDER}")),
            None
        );
        assert_eq!(
            parse_subject(&format!("jwl.evt.{ORDER}.order.shipped")),
            None
        );
        assert_eq!(parse_subject("jwl.dlq.x.y"), None);
    }
}
