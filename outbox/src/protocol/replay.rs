//! The replay channel's wire format: which service a replayed message is for, what it asks for
//! (`jwl-replay-mode`), and the names of the per-service replay consumer. Pure, no I/O.

use jwl_events::{OrderId, Service};

/// Prefix of every replay subject: `jwl.replay.<service>.<order id>.<type minus "jwl.">`.
const REPLAY_PREFIX: &str = "jwl.replay.";
pub(crate) const MODE_HEADER: &str = "jwl-replay-mode";
pub(crate) const ORIGIN_HEADER: &str = "jwl-replay-origin";
pub(crate) const RELEASE_CONSUMER_HEADER: &str = "jwl-release-consumer";
pub(crate) const RELEASE_REASON_HEADER: &str = "jwl-release-reason";

/// What a replayed message asks the service to do (`jwl-replay-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplayMode {
    /// Handle through the inbox: a no-op for an event the consumer already handled (default).
    Inbox,
    /// Forget the inbox row of (consumer, event) and handle again.
    Rerun,
    /// A control message: release the hold of (consumer, order).
    Release,
}

impl ReplayMode {
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

/// The first value of header `name` (case-insensitive).
pub(crate) fn header_value<'h>(headers: &[(&'h str, &'h str)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| *value)
}

/// The durable name of `service`'s replay consumer: `<service>__replay`.
pub(crate) fn replay_durable(service: Service) -> String {
    format!("{}__replay", service.as_str())
}

/// Every replay subject of `service`: `jwl.replay.<service>.>`.
pub(crate) fn replay_filter(service: Service) -> String {
    format!("{REPLAY_PREFIX}{}.>", service.as_str())
}

/// The order id token of a replay subject, if it holds a valid one.
pub(crate) fn replay_subject_order(subject: &str) -> Option<OrderId> {
    let rest = subject.strip_prefix(REPLAY_PREFIX)?;
    let mut tokens = rest.split('.');
    let _service = tokens.next()?;
    OrderId::parse(tokens.next()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_default_to_inbox_and_reject_unknown_values() {
        assert_eq!(ReplayMode::from_header(None), Ok(ReplayMode::Inbox));
        assert_eq!(
            ReplayMode::from_header(Some("rerun")),
            Ok(ReplayMode::Rerun)
        );
        assert_eq!(
            ReplayMode::from_header(Some("release")),
            Ok(ReplayMode::Release)
        );
        assert!(ReplayMode::from_header(Some("again")).is_err());
    }

    #[test]
    fn replay_names_and_subjects() {
        assert_eq!(replay_durable(Service::Payment), "payment__replay");
        assert_eq!(replay_filter(Service::Payment), "jwl.replay.payment.>");
        let order = "0196a3f2-7c1e-7d40-9a51-2f0c8e6b1a01";
        let subject = format!("jwl.replay.payment.{order}.control.release");
        assert_eq!(
            replay_subject_order(&subject).map(|o| o.to_string()),
            Some(order.to_owned())
        );
        assert!(replay_subject_order("jwl.replay.payment.nope.order.created").is_none());
        assert!(replay_subject_order("jwl.evt.x").is_none());
    }

    #[test]
    fn headers_are_matched_case_insensitively() {
        let headers = [("Jwl-Replay-Mode", "rerun")];
        assert_eq!(header_value(&headers, MODE_HEADER), Some("rerun"));
        assert_eq!(header_value(&headers, ORIGIN_HEADER), None);
    }
}
