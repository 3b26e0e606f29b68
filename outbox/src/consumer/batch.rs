//! Handling one batch of deliveries: decode, one transaction with a savepoint per message,
//! commit, then settle each message (ack, nak with backoff, or dead-letter then term).

use std::time::Duration;

use futures::future::join_all;
use jwl_events::{Envelope, HeaderStyle};
use tokio::time::Instant;

use super::ConsumerLoop;
use super::dead_letter::{DeadLetter, DeadLetterReason, dead_letter_message};
use crate::handler::HandlerError;
use crate::inbox::{HandlingTarget, SavepointOutcome, handle_in_savepoint};
use crate::transport::Delivery;

/// What to do with one delivery once the batch transaction is over.
enum Verdict {
    /// Handled (or already handled): ack after commit.
    Handled,
    Duplicate,
    /// Failed transiently: redeliver after this delay.
    Retry(Duration),
    DeadLetter(DeadLetter),
}

/// The outcome of looking at a delivery before the transaction.
enum Screened {
    Handle(Envelope),
    Decided(Verdict),
}

/// Whether the batch transaction committed.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum BatchResult {
    Committed,
    /// The transaction could not be run or committed; every message was nak'ed.
    Failed {
        /// The database could not be reached (rather than refusing this batch's work, e.g. a
        /// deferred constraint failing at commit).
        database_down: bool,
    },
}

impl ConsumerLoop {
    pub(super) async fn handle_batch(&self, batch: Vec<Box<dyn Delivery>>) -> BatchResult {
        let mut verdicts: Vec<Option<Verdict>> = Vec::with_capacity(batch.len());
        let mut to_handle: Vec<(usize, Envelope)> = Vec::with_capacity(batch.len());
        for (index, delivery) in batch.iter().enumerate() {
            match self.screen(delivery.as_ref()) {
                Screened::Handle(envelope) => {
                    to_handle.push((index, envelope));
                    verdicts.push(None);
                }
                Screened::Decided(verdict) => verdicts.push(Some(verdict)),
            }
        }

        if !to_handle.is_empty()
            && let Err(error) = self
                .handle_in_transaction(&batch, to_handle, &mut verdicts)
                .await
        {
            tracing::warn!(consumer = %self.consumer, %error, size = batch.len(),
                "batch transaction failed; redelivering the whole batch");
            self.metrics.batch_failures.increment(1);
            let delay = self.settings.batch_failure_nak_delay;
            join_all(
                batch
                    .iter()
                    .map(|delivery| self.nak(delivery.as_ref(), delay)),
            )
            .await;
            return BatchResult::Failed {
                database_down: !matches!(error, sqlx::Error::Database(_)),
            };
        }
        self.settle(&batch, verdicts).await;
        BatchResult::Committed
    }

    /// Decides before handling: an undecodable message, or one already past `max_attempts`, is
    /// dead-lettered; anything else is to be handled.
    fn screen(&self, delivery: &dyn Delivery) -> Screened {
        let envelope =
            match jwl_events::decode(HeaderStyle::Nats, delivery.headers(), delivery.payload()) {
                Ok(envelope) => envelope,
                Err(error) => {
                    return Screened::Decided(Verdict::DeadLetter(DeadLetter {
                        reason: DeadLetterReason::Decode,
                        error: error.to_string(),
                        order_id: None,
                    }));
                }
            };
        let max_attempts = self.settings.max_attempts;
        if delivery.attempt() > max_attempts {
            return Screened::Decided(Verdict::DeadLetter(DeadLetter {
                reason: DeadLetterReason::MaxAttempts,
                error: format!(
                    "delivered {} times, more than max_attempts ({max_attempts})",
                    delivery.attempt()
                ),
                order_id: Some(envelope.order_id().to_string()),
            }));
        }
        Screened::Handle(envelope)
    }

    /// Runs the decoded messages in one transaction, a savepoint each, and commits.
    async fn handle_in_transaction(
        &self,
        batch: &[Box<dyn Delivery>],
        to_handle: Vec<(usize, Envelope)>,
        verdicts: &mut [Option<Verdict>],
    ) -> Result<(), sqlx::Error> {
        let target = HandlingTarget {
            service: self.service,
            consumer: &self.consumer,
            handler: &*self.handler,
        };
        let mut tx = self.pool.begin().await?;
        for (index, envelope) in to_handle {
            let attempt = batch[index].attempt();
            let started = Instant::now();
            let outcome = handle_in_savepoint(&mut tx, &target, &envelope, attempt).await?;
            self.metrics
                .handler_duration
                .record(started.elapsed().as_secs_f64());
            verdicts[index] = Some(self.judge(outcome, &envelope, attempt));
        }
        tx.commit().await
    }

    fn judge(&self, outcome: SavepointOutcome, envelope: &Envelope, attempt: u32) -> Verdict {
        let error = match outcome {
            SavepointOutcome::Handled { .. } => return Verdict::Handled,
            SavepointOutcome::Duplicate => return Verdict::Duplicate,
            SavepointOutcome::Failed(error) => error,
        };
        let dead_letter = |reason, error: String| {
            Verdict::DeadLetter(DeadLetter {
                reason,
                error,
                order_id: Some(envelope.order_id().to_string()),
            })
        };
        match error {
            HandlerError::Permanent(reason) => dead_letter(DeadLetterReason::Permanent, reason),
            HandlerError::Transient(error) if attempt >= self.settings.max_attempts => {
                dead_letter(DeadLetterReason::MaxAttempts, error.to_string())
            }
            HandlerError::Transient(error) => {
                tracing::info!(consumer = %self.consumer, event_id = %envelope.id.0, attempt,
                    %error, "handler failed transiently; will retry");
                Verdict::Retry(with_jitter(self.settings.nak_delay(attempt)))
            }
        }
    }

    /// After commit: ack, nak, or dead-letter (publish, await the ack, then term) each delivery.
    async fn settle(&self, batch: &[Box<dyn Delivery>], verdicts: Vec<Option<Verdict>>) {
        let mut settles = Vec::with_capacity(batch.len());
        let mut dead: Vec<(&dyn Delivery, DeadLetter)> = Vec::new();
        for (delivery, verdict) in batch.iter().map(|d| d.as_ref()).zip(verdicts) {
            match verdict {
                Some(Verdict::Handled) => {
                    self.metrics.ok.increment(1);
                    settles.push(self.ack(delivery));
                }
                Some(Verdict::Duplicate) => {
                    self.metrics.duplicate.increment(1);
                    settles.push(self.ack(delivery));
                }
                Some(Verdict::Retry(delay)) => {
                    self.metrics.retried.increment(1);
                    settles.push(Box::pin(self.nak(delivery, delay)));
                }
                Some(Verdict::DeadLetter(letter)) => dead.push((delivery, letter)),
                // every delivery gets a verdict; redeliver rather than lose one if not
                None => settles.push(Box::pin(self.nak(delivery, Duration::ZERO))),
            }
        }
        join_all(settles).await;
        if !dead.is_empty() {
            self.dead_letter(dead).await;
        }
    }

    async fn dead_letter(&self, dead: Vec<(&dyn Delivery, DeadLetter)>) {
        let messages: Vec<_> = dead
            .iter()
            .map(|(delivery, letter)| dead_letter_message(&self.consumer, *delivery, letter))
            .collect();
        let results = self.broker.publish_batch(&messages).await;
        let mut settles = Vec::with_capacity(dead.len());
        for ((delivery, letter), result) in dead.iter().zip(results) {
            match result {
                Ok(_) => {
                    self.metrics.dead_lettered.increment(1);
                    tracing::warn!(consumer = %self.consumer, reason = %letter.reason,
                        error = %letter.error, stream_seq = delivery.stream_sequence(),
                        "message dead-lettered");
                    settles.push(self.term(*delivery));
                }
                Err(error) => {
                    tracing::warn!(consumer = %self.consumer, %error,
                        "could not publish a dead letter; redelivering the original");
                    settles.push(Box::pin(
                        self.nak(*delivery, self.settings.batch_failure_nak_delay),
                    ));
                }
            }
        }
        join_all(settles).await;
    }

    fn ack<'a>(&'a self, delivery: &'a dyn Delivery) -> SettleFuture<'a> {
        Box::pin(async move {
            if let Err(error) = delivery.ack().await {
                tracing::warn!(consumer = %self.consumer, %error, "ack failed; the message will be redelivered");
            }
        })
    }

    fn term<'a>(&'a self, delivery: &'a dyn Delivery) -> SettleFuture<'a> {
        Box::pin(async move {
            if let Err(error) = delivery.term().await {
                tracing::warn!(consumer = %self.consumer, %error, "term failed; the message will be redelivered");
            }
        })
    }

    pub(super) async fn nak(&self, delivery: &dyn Delivery, delay: Duration) {
        if let Err(error) = delivery.nak(delay).await {
            tracing::warn!(consumer = %self.consumer, %error, "nak failed; the message will be redelivered after ack_wait");
        }
    }
}

type SettleFuture<'a> = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Adds up to 10 % to a redelivery delay, so messages that failed together spread out.
fn with_jitter(delay: Duration) -> Duration {
    delay.mul_f64(1.0 + fastrand::f64() * 0.1)
}
