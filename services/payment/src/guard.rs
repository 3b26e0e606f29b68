//! The card processor as the handler calls it: each call bounded by a timeout and passed
//! through a circuit breaker with dynamic thresholds ([`jwl_service_kit::breaker`]).
//!
//! How a failure is reported decides what it costs the message being handled:
//!
//! - the breaker refuses the call (open, or half-open with the probe out), or the call failed and
//!   the breaker is now open: [`ProcessorError::Unavailable`], which the handler turns into
//!   `HandlerError::Unavailable` — the consumer holds its messages without spending a delivery
//!   attempt and stops handing them out until [`GuardedProcessor::ready`];
//! - the call failed (error or timeout) and the breaker is still closed: the error itself, a
//!   transient failure of this message (retried with backoff, an attempt spent), so that a
//!   request the processor refuses on its own is dead-lettered in the end rather than holding
//!   the consumer forever.
//!
//! A call that succeeded is an answer even if its slowness opened the breaker.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jwl_service_kit::breaker::{Breaker, BreakerState};

use crate::processor::{Authorization, CardProcessor, IdempotencyKey, ProcessorError};

/// The `breaker` label of the card processor's breaker metrics.
pub const BREAKER_NAME: &str = "card_processor";

/// A [`CardProcessor`] behind a timeout and a circuit breaker.
pub struct GuardedProcessor {
    inner: Arc<dyn CardProcessor>,
    breaker: Arc<Breaker>,
    timeout: Duration,
}

impl GuardedProcessor {
    pub fn new(inner: Arc<dyn CardProcessor>, breaker: Arc<Breaker>, timeout: Duration) -> Self {
        Self {
            inner,
            breaker,
            timeout,
        }
    }

    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `call` through the breaker, within the timeout.
    async fn guarded<T: Send>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, ProcessorError>> + Send,
    ) -> Result<T, ProcessorError> {
        let Some(permit) = self.breaker.try_call() else {
            return Err(ProcessorError::Unavailable(format!(
                "{operation} not sent: the breaker is {}",
                self.breaker.state().as_str()
            )));
        };
        let outcome = match tokio::time::timeout(self.timeout, call).await {
            Ok(outcome) => outcome,
            Err(_elapsed) => Err(ProcessorError::TimedOut(self.timeout)),
        };
        let state = permit.record(outcome.is_ok());
        match outcome {
            Ok(answer) => Ok(answer),
            Err(error) if state != BreakerState::Closed => {
                Err(ProcessorError::Unavailable(format!("{operation}: {error}")))
            }
            Err(error) => Err(error),
        }
    }
}

#[async_trait]
impl CardProcessor for GuardedProcessor {
    async fn authorize(
        &self,
        key: &IdempotencyKey,
        payment_token: &str,
        amount_cents: i64,
    ) -> Result<Authorization, ProcessorError> {
        self.guarded(
            "authorize",
            self.inner.authorize(key, payment_token, amount_cents),
        )
        .await
    }

    async fn capture(&self, key: &IdempotencyKey, amount_cents: i64) -> Result<(), ProcessorError> {
        self.guarded("capture", self.inner.capture(key, amount_cents))
            .await
    }

    async fn void(&self, key: &IdempotencyKey, amount_cents: i64) -> Result<(), ProcessorError> {
        self.guarded("void", self.inner.void(key, amount_cents))
            .await
    }

    async fn ready(&self) {
        self.breaker.ready().await;
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use jwl_events::OrderId;
    use jwl_service_kit::breaker::BreakerSettings;

    use super::*;
    use crate::processor::{Faults, SimulatedProcessor};

    fn guarded(faults: Faults) -> (Arc<SimulatedProcessor>, GuardedProcessor) {
        let simulator = Arc::new(SimulatedProcessor::with_faults(faults));
        let breaker = Breaker::new(
            "test",
            BreakerSettings {
                min_calls: 3,
                open_for: Duration::from_secs(2),
                ..BreakerSettings::default()
            },
        );
        let guarded = GuardedProcessor::new(simulator.clone(), breaker, Duration::from_secs(1));
        (simulator, guarded)
    }

    fn key() -> IdempotencyKey {
        IdempotencyKey::authorization(OrderId::new())
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_fails_transiently_until_the_breaker_opens_then_is_unavailable() {
        let (simulator, processor) = guarded(Faults {
            error_rate: 1.0,
            ..Faults::default()
        });
        for _ in 0..2 {
            assert!(matches!(
                processor.authorize(&key(), "tok_ok", 1).await,
                Err(ProcessorError::Failed(_))
            ));
        }
        // the third failure opens it
        assert!(matches!(
            processor.authorize(&key(), "tok_ok", 1).await,
            Err(ProcessorError::Unavailable(_))
        ));
        assert!(processor.ready().now_or_never().is_none());
        assert!(matches!(
            processor.capture(&key(), 1).await,
            Err(ProcessorError::Unavailable(_))
        ));
        // the processor comes back; after the open time, the probe closes the breaker
        simulator.set_faults(Faults::default());
        processor.ready().await;
        assert_eq!(
            processor.authorize(&key(), "tok_ok", 1).await,
            Ok(Authorization::Approved)
        );
        assert_eq!(processor.breaker().state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_is_unavailable_not_a_failure_of_the_message() {
        let (_simulator, processor) = guarded(Faults {
            error_rate: 1.0,
            ..Faults::default()
        });
        for _ in 0..3 {
            let _ = processor.void(&key(), 1).await;
        }
        processor.ready().await;
        assert!(matches!(
            processor.void(&key(), 1).await,
            Err(ProcessorError::Unavailable(_))
        ));
        assert_eq!(processor.breaker().state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_never_answers_times_out() {
        let (_simulator, processor) = guarded(Faults {
            timeout_rate: 1.0,
            ..Faults::default()
        });
        assert_eq!(
            processor.authorize(&key(), "tok_ok", 1).await,
            Err(ProcessorError::TimedOut(Duration::from_secs(1)))
        );
    }
}
