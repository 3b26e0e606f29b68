//! Fault points for failure-injection tests ([`FaultPoints`]): crash after a consumer's batch
//! commit (before the acks), crash in the relay after publishing (before marking the rows), and
//! a handler failing transiently for its first deliveries. Switched on only through
//! [`crate::MessagingSettings::faults`]; when that is `None` the loops check one `Option` per
//! batch and nothing else.

use std::fmt;
use std::str::FromStr;

/// Which faults to inject. Built by `jwl serve` from `JWL_FAULT_*` variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPoints {
    /// This consumer aborts the process after committing a batch that handled an event, before
    /// acknowledging it (`JWL_FAULT_CRASH_AFTER_COMMIT=<consumer>`).
    pub crash_after_commit: Option<String>,
    /// The relay (or a hand-over) aborts the process after publishing a batch, before its rows
    /// are marked published (`JWL_FAULT_CRASH_AFTER_PUBLISH=1`).
    pub crash_after_publish: bool,
    /// A consumer whose handler fails transiently on the first deliveries of every message
    /// (`JWL_FAULT_TRANSIENT_FIRST=<consumer>:<n>`).
    pub transient_first: Option<TransientFault>,
}

/// The handler of `consumer` fails transiently on deliveries `1..=deliveries` of each message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransientFault {
    pub consumer: String,
    pub deliveries: u32,
}

/// A `JWL_FAULT_TRANSIENT_FIRST` value that is not `<consumer>:<n>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected <consumer>:<deliveries> (e.g. payment__order_created:2), got {0:?}")]
pub struct InvalidTransientFault(String);

impl FromStr for TransientFault {
    type Err = InvalidTransientFault;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidTransientFault(text.to_owned());
        let (consumer, deliveries) = text.trim().rsplit_once(':').ok_or_else(invalid)?;
        let deliveries: u32 = deliveries.trim().parse().map_err(|_| invalid())?;
        let consumer = consumer.trim();
        if consumer.is_empty() || deliveries == 0 {
            return Err(invalid());
        }
        Ok(Self {
            consumer: consumer.to_owned(),
            deliveries,
        })
    }
}

impl fmt::Display for TransientFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.consumer, self.deliveries)
    }
}

impl FaultPoints {
    /// `Some` when at least one fault point is switched on, else `None` (what
    /// [`crate::MessagingSettings::faults`] should hold when there is nothing to inject).
    pub fn switched_on(self) -> Option<Self> {
        let any = self.crash_after_commit.is_some()
            || self.crash_after_publish
            || self.transient_first.is_some();
        any.then_some(self)
    }

    /// Whether `consumer` crashes after its batch commit.
    pub(crate) fn crashes_after_commit(&self, consumer: &str) -> bool {
        self.crash_after_commit.as_deref() == Some(consumer)
    }

    /// Whether the `attempt`-th delivery of a message to `consumer` must fail transiently.
    pub(crate) fn fails_transiently(&self, consumer: &str, attempt: u32) -> bool {
        self.transient_first
            .as_ref()
            .is_some_and(|fault| fault.consumer == consumer && attempt <= fault.deliveries)
    }
}

/// Ends the process at once, as a crash would (no unwinding, no graceful shutdown, nothing
/// flushed but this line on stderr).
pub(crate) fn crash(point: &str) -> ! {
    eprintln!("jwl fault point {point}: aborting the process");
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_fault_parses_consumer_and_deliveries() {
        assert_eq!(
            "payment__order_created:2".parse(),
            Ok(TransientFault {
                consumer: "payment__order_created".to_owned(),
                deliveries: 2
            })
        );
        for bad in ["payment__order_created", ":2", "c:0", "c:x", "c:-1"] {
            assert!(bad.parse::<TransientFault>().is_err(), "{bad}");
        }
    }

    #[test]
    fn nothing_switched_on_is_none() {
        assert_eq!(FaultPoints::default().switched_on(), None);
        let publish = FaultPoints {
            crash_after_publish: true,
            ..FaultPoints::default()
        };
        assert_eq!(publish.clone().switched_on(), Some(publish));
    }

    #[test]
    fn faults_apply_to_their_consumer_and_first_deliveries_only() {
        let faults = FaultPoints {
            crash_after_commit: Some("a__x".to_owned()),
            crash_after_publish: false,
            transient_first: Some(TransientFault {
                consumer: "b__y".to_owned(),
                deliveries: 2,
            }),
        };
        assert!(faults.crashes_after_commit("a__x"));
        assert!(!faults.crashes_after_commit("b__y"));
        assert!(faults.fails_transiently("b__y", 1));
        assert!(faults.fails_transiently("b__y", 2));
        assert!(!faults.fails_transiently("b__y", 3));
        assert!(!faults.fails_transiently("a__x", 1));
    }
}
