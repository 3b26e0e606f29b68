//! The replay channel's wire format: the subject a replayed message is published to (which
//! service it is for, which order and event type), what it asks for (`jwl-replay-mode`), where
//! it comes from (`jwl-replay-origin`), the `release` control message, and the names of the
//! per-service replay consumer. Pure, no I/O.

use std::fmt;

use jwl_events::{EventType, OrderId, Service};
use serde::{Deserialize, Serialize};

/// Prefix of every replay subject: `jwl.replay.<service>.<order id>.<type minus "jwl.">`.
const REPLAY_PREFIX: &str = "jwl.replay.";
/// Every replay subject (the replay stream's subjects).
pub const REPLAY_SUBJECTS: &str = "jwl.replay.>";
/// How the receiving service handles the message ([`ReplayMode`]).
pub const MODE_HEADER: &str = "jwl-replay-mode";
/// Where a replayed message comes from ([`ReplayOrigin`]).
pub const ORIGIN_HEADER: &str = "jwl-replay-origin";
/// The inbox consumer whose hold a `release` message releases.
pub const RELEASE_CONSUMER_HEADER: &str = "jwl-release-consumer";
/// Why the hold is released (one line; the operator's discard reason).
pub const RELEASE_REASON_HEADER: &str = "jwl-release-reason";
/// The subject token (after the order id) of a `release` control message.
const RELEASE_TOKEN: &str = "control.release";

/// What a replayed message asks the service to do (`jwl-replay-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayMode {
    /// Handle through the inbox: a no-op for an event the consumer already handled (default).
    #[default]
    Inbox,
    /// Forget the inbox row of (consumer, event) and handle again.
    Rerun,
    /// A control message: release the hold of (consumer, order).
    Release,
}

impl ReplayMode {
    /// The header value: `"inbox"`, `"rerun"` or `"release"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Inbox => "inbox",
            Self::Rerun => "rerun",
            Self::Release => "release",
        }
    }

    /// The mode named by the `jwl-replay-mode` header; `Inbox` when it is absent.
    pub fn from_header(value: Option<&str>) -> Result<Self, String> {
        match value.map(str::trim) {
            None | Some("") | Some("inbox") => Ok(Self::Inbox),
            Some("rerun") => Ok(Self::Rerun),
            Some("release") => Ok(Self::Release),
            Some(other) => Err(format!("unknown {MODE_HEADER} {other:?}")),
        }
    }
}

/// Where a replayed message comes from (the `jwl-replay-origin` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayOrigin {
    /// A message of the events stream, by its stream sequence: `events:<seq>`.
    Events(u64),
    /// A dead letter, by its dead-letter stream sequence: `dlq:<seq>`.
    DeadLetter(u64),
}

impl fmt::Display for ReplayOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayOrigin::Events(seq) => write!(f, "events:{seq}"),
            ReplayOrigin::DeadLetter(seq) => write!(f, "dlq:{seq}"),
        }
    }
}

/// The durable name of `service`'s replay consumer: `<service>__replay`.
pub fn replay_durable(service: Service) -> String {
    format!("{}__replay", service.as_str())
}

/// Every replay subject of `service`: `jwl.replay.<service>.>`.
pub fn replay_filter(service: Service) -> String {
    format!("{REPLAY_PREFIX}{}.>", service.as_str())
}

/// The subject replaying an event of `order_id` and type `ty` to `service`:
/// `jwl.replay.<service>.<order id>.<type minus "jwl.">`.
pub fn replay_subject(service: Service, order_id: &OrderId, ty: EventType) -> String {
    format!(
        "{REPLAY_PREFIX}{}.{order_id}.{}",
        service.as_str(),
        ty.subject_token()
    )
}

/// The subject of the control message releasing `service`'s hold on `order_id`:
/// `jwl.replay.<service>.<order id>.control.release`.
pub fn release_subject(service: Service, order_id: &OrderId) -> String {
    format!(
        "{REPLAY_PREFIX}{}.{order_id}.{RELEASE_TOKEN}",
        service.as_str()
    )
}

/// The order id token of a replay subject, if it holds a valid one.
pub fn replay_subject_order(subject: &str) -> Option<OrderId> {
    let rest = subject.strip_prefix(REPLAY_PREFIX)?;
    let mut tokens = rest.split('.');
    let _service = tokens.next()?;
    OrderId::parse(tokens.next()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: &str = "0196a3f2-7c1e-7d40-9a51-2f0c8e6b1a01";

    #[test]
    fn modes_default_to_inbox_and_reject_unknown_values() {
        assert_eq!(ReplayMode::from_header(None), Ok(ReplayMode::Inbox));
        for mode in [ReplayMode::Inbox, ReplayMode::Rerun, ReplayMode::Release] {
            assert_eq!(ReplayMode::from_header(Some(mode.as_str())), Ok(mode));
        }
        assert!(ReplayMode::from_header(Some("again")).is_err());
    }

    #[test]
    fn replay_names_and_subjects() {
        let order: OrderId = ORDER.parse().unwrap();
        assert_eq!(replay_durable(Service::Payment), "payment__replay");
        assert_eq!(replay_filter(Service::Payment), "jwl.replay.payment.>");
        assert_eq!(
            replay_subject(Service::Payment, &order, EventType::OrderCreated),
            format!("jwl.replay.payment.{ORDER}.order.created")
        );
        let release = release_subject(Service::Payment, &order);
        assert_eq!(
            release,
            format!("jwl.replay.payment.{ORDER}.control.release")
        );
        assert_eq!(replay_subject_order(&release), Some(order));
        assert!(replay_subject_order("jwl.replay.payment.nope.order.created").is_none());
        assert!(replay_subject_order("jwl.evt.x").is_none());
    }

    #[test]
    fn origins_name_their_stream() {
        assert_eq!(ReplayOrigin::Events(4).to_string(), "events:4");
        assert_eq!(ReplayOrigin::DeadLetter(7).to_string(), "dlq:7");
    }
}
