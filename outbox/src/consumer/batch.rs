//! Handling one batch of deliveries: decode (and, for the replay consumer, pick the inbox
//! consumer from the event type), then the [`fast_path`](super::fast_path) when it can take the
//! batch, else (or when it gives up) one transaction with a savepoint per message — parking
//! messages of held orders, holding orders behind their dead letters, releasing holds —
//! commit, then settle each message (ack, nak with backoff, or dead-letter then term).

use std::time::Duration;

use futures::future::join_all;
use jwl_events::{Envelope, HeaderStyle};
use tokio::time::Instant;
use tracing::Instrument;

use sqlx::{Connection as _, PgConnection};
use uuid::Uuid;

use super::dead_letter::{DeadLetter, DeadLetterReason, LetterSource, dead_letter_message};
use super::fast_path::{self, FastOutcome, KnownFailure};
use super::holds::{self, ParkedMessage};
use super::{ConsumerLoop, ConsumerSource};
use crate::faults::crash;
use crate::handler::{BoxError, HandlerError};
use crate::inbox::{HandlingTarget, SavepointOutcome, handle_in_savepoint};
use crate::metrics::count_dead_letter;
use crate::naming::durable_name;
use crate::protocol::replay::{self, ReplayMode};
use crate::relay::Enqueued;
use crate::stall::{self, KeptConnection};
use crate::trace_context;
use crate::transport::Delivery;

/// What to do with one delivery once the batch transaction is over.
pub(super) enum Verdict {
    /// Handled (or already handled): ack after commit.
    Handled,
    Duplicate,
    /// Held behind a dead letter of its order and stored in `parked_messages`: ack after commit.
    Parked,
    /// A release control message, done: ack after commit.
    Released,
    /// Failed transiently: redeliver after this delay.
    Retry(Duration),
    DeadLetter(DeadLetter),
}

impl Verdict {
    /// The `outcome` recorded on the `handle_event` span.
    pub(super) fn outcome(&self) -> &'static str {
        match self {
            Self::Handled => "ok",
            Self::Duplicate => "duplicate",
            Self::Parked => "parked",
            Self::Released => "released",
            Self::Retry(_) => "retried",
            Self::DeadLetter(_) => "dead_lettered",
        }
    }
}

/// What a committed batch wrote to the outbox, for the relay.
enum Emitted {
    Nothing,
    /// These rows (the fast path's).
    Rows(Enqueued),
    /// Rows it did not list (the careful path's).
    Unlisted,
}

/// The work one delivery asks for, under the inbox consumer name it is handled as.
pub(super) struct Work {
    pub(super) consumer: String,
    pub(super) kind: WorkKind,
}

pub(super) enum WorkKind {
    /// Handle an event (unless its order is held for this consumer).
    Event {
        envelope: Box<Envelope>,
        rerun: bool,
        replay_origin: Option<String>,
    },
    /// Release the hold on (consumer, order) and handle what was parked behind it.
    Release { order_id: Uuid, reason: String },
}

/// The outcome of looking at a delivery before the transaction.
pub(super) enum Screened {
    Work(Work),
    Decided(Verdict),
}

/// A parked message that failed while being released: it is the new head of the hold, and is
/// deleted from `parked_messages` once its dead letter is published.
struct ReleasedDeadLetter {
    parked: ParkedMessage,
    letter: DeadLetter,
}

/// Whether the batch transaction committed.
pub(super) enum BatchResult {
    Committed,
    /// The database refused this batch's work (e.g. a deferred constraint failing at commit, a
    /// deadlock), or the batch failed otherwise while the database was reachable: every message
    /// was nak'ed, a delivery attempt like a handler failure.
    Refused,
    /// The database could not be reached (connection lost, stall timeout): nothing was settled,
    /// the deliveries are handed back to be held until it answers again and then handled, so
    /// the outage costs them no delivery attempt.
    DatabaseDown(Vec<Box<dyn Delivery>>),
    /// A handler reported a dependency unavailable ([`HandlerError::Unavailable`]): the
    /// transaction was rolled back, nothing was settled, the deliveries are handed back to be
    /// held until the handler is ready again, without a delivery attempt.
    DependencyDown(Vec<Box<dyn Delivery>>),
}

/// Why a batch transaction did not commit.
#[derive(Debug)]
pub(super) enum TxError {
    /// The database failed or refused the work.
    Database(sqlx::Error),
    /// A handler reported a dependency unavailable; the transaction is rolled back.
    Unavailable(BoxError),
}

impl From<sqlx::Error> for TxError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error)
    }
}

impl ConsumerLoop {
    pub(super) async fn handle_batch(
        &self,
        batch: Vec<Box<dyn Delivery>>,
        conn: &mut KeptConnection,
    ) -> BatchResult {
        let screened: Vec<Screened> = batch
            .iter()
            .map(|delivery| self.screen(delivery.as_ref()))
            .collect();
        let needs_database = screened.iter().any(|item| match item {
            Screened::Work(_) => true,
            Screened::Decided(Verdict::DeadLetter(letter)) => letter.hold_key().is_some(),
            Screened::Decided(_) => false,
        });
        let mut verdicts: Vec<Option<Verdict>> = Vec::with_capacity(batch.len());
        let mut released_dead = Vec::new();
        // what the batch wrote to the outbox: the fast path's rows, or that the careful path wrote
        let mut emitted = Emitted::Nothing;
        // the consumer each delivery is handled as (its metrics, the crash_after_commit point)
        let handled_as: Vec<Option<String>> = screened
            .iter()
            .map(|item| match item {
                Screened::Work(work) => Some(work.consumer.clone()),
                Screened::Decided(_) => None,
            })
            .collect();
        if needs_database {
            let outcome =
                if fast_path::eligible(&screened) && !self.injects_failure(&batch, &screened) {
                    self.handle_fast(&batch, &screened, conn).await
                } else {
                    Ok(FastOutcome::Careful(None))
                };
            let outcome = match outcome {
                Ok(FastOutcome::Committed {
                    verdicts: fast,
                    emitted: fast_emitted,
                }) => {
                    verdicts = fast;
                    for (slot, item) in verdicts.iter_mut().zip(screened) {
                        if let Screened::Decided(verdict) = item {
                            *slot = Some(verdict);
                        }
                    }
                    if !fast_emitted.is_empty() {
                        emitted = Emitted::Rows(fast_emitted);
                    }
                    Ok(())
                }
                Ok(FastOutcome::Careful(known)) => {
                    verdicts.resize_with(batch.len(), || None);
                    self.handle_in_transaction(&batch, screened, known, &mut verdicts, conn)
                        .await
                        .map(|(released, careful_emitted)| {
                            released_dead = released;
                            if careful_emitted {
                                emitted = Emitted::Unlisted;
                            }
                        })
                }
                Err(error) => Err(TxError::Database(error)),
            };
            match outcome {
                Ok(()) => {
                    if let Some(faults) = &self.settings.faults
                        && verdicts.iter().zip(&handled_as).any(|(verdict, consumer)| {
                            matches!(verdict, Some(Verdict::Handled))
                                && consumer
                                    .as_deref()
                                    .is_some_and(|consumer| faults.crashes_after_commit(consumer))
                        })
                    {
                        crash("crash_after_commit (the batch is committed, not acked)");
                    }
                }
                Err(TxError::Unavailable(error)) => {
                    tracing::info!(consumer = %self.consumer, %error, size = batch.len(),
                        "a dependency of the handler is unavailable; holding the batch until the \
                         handler is ready again");
                    return BatchResult::DependencyDown(batch);
                }
                Err(TxError::Database(error)) => {
                    self.metrics.batch_failures.increment(1);
                    if unreachable(&error) {
                        tracing::warn!(consumer = %self.consumer, %error, size = batch.len(),
                            "batch transaction failed: the database is unreachable; holding the \
                             batch until it answers");
                        return BatchResult::DatabaseDown(batch);
                    }
                    tracing::warn!(consumer = %self.consumer, %error, size = batch.len(),
                        "batch transaction failed; redelivering the whole batch");
                    let delay = self.settings.batch_failure_nak_delay;
                    join_all(
                        batch
                            .iter()
                            .map(|delivery| self.nak(delivery.as_ref(), delay)),
                    )
                    .await;
                    return BatchResult::Refused;
                }
            }
        } else {
            verdicts.extend(screened.into_iter().map(|item| match item {
                Screened::Decided(verdict) => Some(verdict),
                Screened::Work(_) => None,
            }));
        }
        match emitted {
            Emitted::Nothing => {}
            Emitted::Rows(rows) => self.relay_signal.committed_rows(&self.pool, rows).await,
            Emitted::Unlisted => self.relay_signal.committed(&self.pool).await,
        }
        self.settle(&batch, &handled_as, verdicts, released_dead)
            .await;
        BatchResult::Committed
    }

    /// Decides before handling: an invalid message, or one already past `max_attempts`, is
    /// dead-lettered; anything else is work for the transaction.
    fn screen(&self, delivery: &dyn Delivery) -> Screened {
        match self.source {
            ConsumerSource::Events => self.screen_live(delivery),
            ConsumerSource::Replay => self.screen_replayed(delivery),
        }
    }

    /// A message of the events stream, handled as the consumer of the event type its subject
    /// names (the one the dead letters and holds of that type are kept under).
    fn screen_live(&self, delivery: &dyn Delivery) -> Screened {
        let headers = delivery.headers();
        let subscribed = jwl_events::subject_type(delivery.subject())
            .filter(|ty| self.handler.subscriptions().contains(ty));
        let Some(subject_type) = subscribed else {
            // the consumer's filter lets no such subject through; never drop it silently
            return self.refuse(
                &headers,
                DeadLetterReason::Permanent,
                format!(
                    "subject {} names no event type service {} handles",
                    delivery.subject(),
                    self.service.as_str()
                ),
            );
        };
        let consumer = durable_name(self.service, subject_type);
        match jwl_events::decode(
            HeaderStyle::NEUTRAL,
            headers.iter().copied(),
            delivery.payload(),
        ) {
            Ok(envelope) if envelope.event_type() == subject_type => {
                self.screen_event(delivery, consumer, envelope, false, None)
            }
            Ok(envelope) => Screened::Decided(Verdict::DeadLetter(DeadLetter::of_message(
                &consumer,
                DeadLetterReason::Decode,
                format!(
                    "subject {} does not match the event's type {}",
                    delivery.subject(),
                    envelope.event_type().as_str()
                ),
                &headers,
                true,
            ))),
            Err(error) => Screened::Decided(Verdict::DeadLetter(DeadLetter::of_message(
                &consumer,
                DeadLetterReason::Decode,
                error.to_string(),
                &headers,
                true,
            ))),
        }
    }

    /// A message of the replay channel: a release, or an event handled as the consumer of its
    /// type (which the handler must subscribe to).
    fn screen_replayed(&self, delivery: &dyn Delivery) -> Screened {
        let headers = delivery.headers();
        let mode = match ReplayMode::from_header(jwl_events::header_value(
            &headers,
            replay::MODE_HEADER,
        )) {
            Ok(mode) => mode,
            Err(error) => return self.refuse(&headers, DeadLetterReason::Permanent, error),
        };
        if mode == ReplayMode::Release {
            return self.screen_release(delivery.subject(), &headers);
        }
        let envelope = match jwl_events::decode(
            HeaderStyle::NEUTRAL,
            headers.iter().copied(),
            delivery.payload(),
        ) {
            Ok(envelope) => envelope,
            Err(error) => {
                return self.refuse(&headers, DeadLetterReason::Decode, error.to_string());
            }
        };
        let origin = jwl_events::header_value(&headers, replay::ORIGIN_HEADER);
        let event_type = envelope.event_type();
        if !self.handler.subscriptions().contains(&event_type) {
            let mut letter = DeadLetter::of_event(
                &self.consumer,
                DeadLetterReason::Permanent,
                format!(
                    "replayed event type {} is not handled by service {}",
                    event_type.as_str(),
                    self.service.as_str()
                ),
                &envelope,
                origin,
            );
            letter.holds = false;
            return Screened::Decided(Verdict::DeadLetter(letter));
        }
        self.screen_event(
            delivery,
            durable_name(self.service, event_type),
            envelope,
            mode == ReplayMode::Rerun,
            origin.map(str::to_owned),
        )
    }

    /// A message that cannot be acted on: dead-lettered under this loop's durable consumer,
    /// holding nothing.
    fn refuse(
        &self,
        headers: &[(&str, &str)],
        reason: DeadLetterReason,
        error: String,
    ) -> Screened {
        Screened::Decided(Verdict::DeadLetter(DeadLetter::of_message(
            &self.consumer,
            reason,
            error,
            headers,
            false,
        )))
    }

    fn screen_event(
        &self,
        delivery: &dyn Delivery,
        consumer: String,
        envelope: Envelope,
        rerun: bool,
        replay_origin: Option<String>,
    ) -> Screened {
        let max_attempts = self.settings.max_attempts;
        if delivery.attempt() > max_attempts {
            return Screened::Decided(Verdict::DeadLetter(DeadLetter::of_event(
                &consumer,
                DeadLetterReason::MaxAttempts,
                format!(
                    "delivered {} times, more than max_attempts ({max_attempts})",
                    delivery.attempt()
                ),
                &envelope,
                replay_origin.as_deref(),
            )));
        }
        Screened::Work(Work {
            consumer,
            kind: WorkKind::Event {
                envelope: Box::new(envelope),
                rerun,
                replay_origin,
            },
        })
    }

    /// A `release` control message: its consumer must be one of this service's.
    fn screen_release(&self, subject: &str, headers: &[(&str, &str)]) -> Screened {
        let Some(order_id) = replay::replay_subject_order(subject) else {
            return self.refuse(
                headers,
                DeadLetterReason::Permanent,
                format!("release subject {subject} has no valid order id"),
            );
        };
        let consumer = jwl_events::header_value(headers, replay::RELEASE_CONSUMER_HEADER);
        let known = consumer.filter(|consumer| {
            self.handler
                .subscriptions()
                .iter()
                .any(|&ty| durable_name(self.service, ty) == *consumer)
        });
        let Some(consumer) = known else {
            return self.refuse(
                headers,
                DeadLetterReason::Permanent,
                format!(
                    "release names consumer {consumer:?}, which is not one of service {}",
                    self.service.as_str()
                ),
            );
        };
        let reason = jwl_events::header_value(headers, replay::RELEASE_REASON_HEADER).unwrap_or("");
        Screened::Work(Work {
            consumer: consumer.to_owned(),
            kind: WorkKind::Release {
                order_id: order_id.0,
                reason: reason.to_owned(),
            },
        })
    }

    /// Runs the batch in one transaction, a savepoint per handled message, in delivery order,
    /// and commits, all within the stall timeout (past it the connection is given up and the
    /// error is [`stall::stalled`]). Returns the parked messages that failed while being released,
    /// and whether any handler emitted events.
    async fn handle_in_transaction(
        &self,
        batch: &[Box<dyn Delivery>],
        screened: Vec<Screened>,
        mut known: Option<KnownFailure>,
        verdicts: &mut [Option<Verdict>],
        conn: &mut KeptConnection,
    ) -> Result<(Vec<ReleasedDeadLetter>, bool), TxError> {
        let waiting = Instant::now();
        let limit = self.settings.db_stall_timeout;
        let work = async |conn: &mut PgConnection| {
            let mut tx = conn.begin().await?;
            // the wait for a pooled connection when none was kept, plus one BEGIN round trip
            self.metrics
                .db_acquire
                .record(waiting.elapsed().as_secs_f64());
            let events: Vec<&Envelope> = screened
                .iter()
                .filter_map(|item| match item {
                    Screened::Work(Work {
                        kind: WorkKind::Event { envelope, .. },
                        ..
                    }) => Some(&**envelope),
                    _ => None,
                })
                .collect();
            self.handler.lock_batch(&mut tx, &events).await?;
            let mut released_dead = Vec::new();
            let mut emitted = false;
            for (index, item) in screened.into_iter().enumerate() {
                let verdict = match item {
                    Screened::Decided(verdict) => verdict,
                    Screened::Work(work) => {
                        let known_error = known
                            .take_if(|failure| failure.index == index)
                            .map(|failure| failure.error);
                        self.run_work(
                            &mut tx,
                            batch[index].as_ref(),
                            work,
                            known_error,
                            &mut released_dead,
                            &mut emitted,
                        )
                        .await?
                    }
                };
                if let Verdict::DeadLetter(letter) = &verdict
                    && let Some((order_id, event_id)) = letter.hold_key()
                {
                    holds::hold(&mut tx, &letter.consumer, order_id, event_id).await?;
                }
                verdicts[index] = Some(verdict);
            }
            tx.commit().await?;
            Ok((released_dead, emitted))
        };
        // kept when the transaction committed
        conn.run(limit, work, Result::is_ok).await
    }

    async fn run_work(
        &self,
        tx: &mut PgConnection,
        delivery: &dyn Delivery,
        work: Work,
        known_error: Option<HandlerError>,
        released_dead: &mut Vec<ReleasedDeadLetter>,
        emitted: &mut bool,
    ) -> Result<Verdict, TxError> {
        let consumer = work.consumer.as_str();
        let (envelope, rerun, replay_origin) = match work.kind {
            WorkKind::Release { order_id, reason } => {
                tracing::info!(%consumer, %order_id, %reason, "releasing the dead-letter hold");
                holds::unhold(tx, consumer, order_id).await?;
                *emitted |= self.release_if_unheld(tx, order_id, released_dead).await?;
                return Ok(Verdict::Released);
            }
            WorkKind::Event {
                envelope,
                rerun,
                replay_origin,
            } => (envelope, rerun, replay_origin),
        };
        let order_id = envelope.order_id().0;
        let holds = holds::holds_on(tx, order_id).await?;
        // the hold this event heads, if any: that hold's consumer dead-lettered it
        let head_of = holds
            .iter()
            .find(|(_, head)| *head == envelope.id.0)
            .map(|(held_consumer, _)| held_consumer.clone());
        if !holds.is_empty() && head_of.is_none() {
            let headers = delivery.headers();
            holds::park(
                tx,
                &holds::ToPark {
                    consumer,
                    order_id,
                    event_id: envelope.id.0,
                    stream_seq: delivery.stream_sequence(),
                    subject: delivery.subject(),
                    headers,
                    payload: delivery.payload(),
                },
            )
            .await?;
            return Ok(Verdict::Parked);
        }
        let target = HandlingTarget {
            service: self.service,
            consumer,
            handler: &*self.handler,
        };
        let attempt = delivery.attempt();
        let span = handle_event_span(consumer, &envelope, attempt);
        let started = Instant::now();
        let injected_failure = self
            .settings
            .faults
            .as_ref()
            .is_some_and(|faults| faults.fails_transiently(consumer, attempt));
        let outcome = if injected_failure {
            SavepointOutcome::Failed(HandlerError::transient(format!(
                "fault point transient_first: delivery {attempt} fails"
            )))
        } else if let Some(error) = known_error {
            // this delivery's handler already ran and failed in the fast path (rolled back)
            SavepointOutcome::Failed(error)
        } else {
            handle_in_savepoint(tx, &target, &envelope, attempt, rerun)
                .instrument(span.clone())
                .await?
        };
        let outcome = match outcome {
            // the whole batch is rolled back and held (see `BatchResult::DependencyDown`)
            SavepointOutcome::Failed(HandlerError::Unavailable(error)) => {
                span.record("outcome", "held");
                return Err(TxError::Unavailable(error));
            }
            outcome => outcome,
        };
        if let SavepointOutcome::Handled { emitted: events } = &outcome {
            *emitted |= !events.is_empty();
        }
        self.metrics
            .of(consumer)
            .handler_duration
            .record(started.elapsed().as_secs_f64());
        let verdict = span.in_scope(|| {
            self.judge(
                consumer,
                outcome,
                &envelope,
                attempt,
                replay_origin.as_deref(),
            )
        });
        span.record("outcome", verdict.outcome());
        // the head of the hold is handled: the order goes on
        if let Some(held_consumer) = head_of
            && matches!(verdict, Verdict::Handled | Verdict::Duplicate)
        {
            tracing::info!(consumer = %held_consumer, %order_id, event_id = %envelope.id.0,
                "the head of a dead-letter hold was handled; releasing");
            holds::unhold(tx, &held_consumer, order_id).await?;
            *emitted |= self.release_if_unheld(tx, order_id, released_dead).await?;
        }
        Ok(verdict)
    }

    /// Once no hold is left on `order` (another consumer's may remain), handles the messages
    /// parked for it in stream order, each under its own consumer, a savepoint each. The first
    /// that fails becomes the new head of a hold (and stays parked until its dead letter is
    /// published); the rest stay parked behind it. Returns whether a released one emitted events.
    async fn release_if_unheld(
        &self,
        tx: &mut PgConnection,
        order_id: Uuid,
        released_dead: &mut Vec<ReleasedDeadLetter>,
    ) -> Result<bool, TxError> {
        let mut emitted = false;
        if !holds::holds_on(tx, order_id).await?.is_empty() {
            return Ok(emitted);
        }
        for parked in holds::parked(tx, order_id).await? {
            let consumer = parked.consumer.as_str();
            let target = HandlingTarget {
                service: self.service,
                consumer,
                handler: &*self.handler,
            };
            let headers: Vec<(&str, &str)> = parked
                .headers
                .0
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str()))
                .collect();
            let replay_origin = jwl_events::header_value(&headers, replay::ORIGIN_HEADER);
            let letter = match jwl_events::decode(
                HeaderStyle::NEUTRAL,
                headers.iter().copied(),
                &parked.payload,
            ) {
                Err(error) => DeadLetter::of_message(
                    consumer,
                    DeadLetterReason::Decode,
                    error.to_string(),
                    &headers,
                    true,
                ),
                Ok(envelope) => {
                    let rerun = ReplayMode::from_header(jwl_events::header_value(
                        &headers,
                        replay::MODE_HEADER,
                    )) == Ok(ReplayMode::Rerun);
                    let span = handle_event_span(consumer, &envelope, 1);
                    match handle_in_savepoint(tx, &target, &envelope, 1, rerun)
                        .instrument(span.clone())
                        .await?
                    {
                        SavepointOutcome::Handled { emitted: events } => {
                            emitted |= !events.is_empty();
                            span.record("outcome", "ok");
                            self.metrics.of(consumer).ok.increment(1);
                            holds::unpark(tx, parked.id).await?;
                            continue;
                        }
                        SavepointOutcome::Duplicate => {
                            span.record("outcome", "duplicate");
                            self.metrics.of(consumer).duplicate.increment(1);
                            holds::unpark(tx, parked.id).await?;
                            continue;
                        }
                        SavepointOutcome::Failed(error) => {
                            span.record("outcome", "dead_lettered");
                            let (reason, error) = match error {
                                HandlerError::Permanent(reason) => {
                                    (DeadLetterReason::Permanent, reason)
                                }
                                // the release rolls back and is held with its batch
                                HandlerError::Unavailable(error) => {
                                    return Err(TxError::Unavailable(error));
                                }
                                // an acked parked message cannot be redelivered with backoff
                                HandlerError::Transient(error) => (
                                    DeadLetterReason::MaxAttempts,
                                    format!(
                                        "failed transiently while released from parking (not retried): {error}"
                                    ),
                                ),
                            };
                            DeadLetter::of_event(consumer, reason, error, &envelope, replay_origin)
                        }
                    }
                }
            };
            holds::hold(tx, consumer, order_id, parked.event_id).await?;
            holds::owe_dead_letter(tx, parked.id, letter.reason.as_str(), &letter.error).await?;
            released_dead.push(ReleasedDeadLetter { parked, letter });
            break;
        }
        Ok(emitted)
    }

    fn judge(
        &self,
        consumer: &str,
        outcome: SavepointOutcome,
        envelope: &Envelope,
        attempt: u32,
        replay_origin: Option<&str>,
    ) -> Verdict {
        let error = match outcome {
            SavepointOutcome::Handled { .. } => return Verdict::Handled,
            SavepointOutcome::Duplicate => return Verdict::Duplicate,
            SavepointOutcome::Failed(error) => error,
        };
        let dead_letter = |reason, error: String| {
            Verdict::DeadLetter(DeadLetter::of_event(
                consumer,
                reason,
                error,
                envelope,
                replay_origin,
            ))
        };
        match error {
            HandlerError::Permanent(reason) => dead_letter(DeadLetterReason::Permanent, reason),
            HandlerError::Transient(error) if attempt >= self.settings.max_attempts => {
                dead_letter(DeadLetterReason::MaxAttempts, error.to_string())
            }
            // cut short by `run_work` (the batch is held); judged as transient if it got here
            HandlerError::Transient(error) | HandlerError::Unavailable(error) => {
                tracing::info!(%consumer, event_id = %envelope.id.0, attempt,
                    %error, "handler failed transiently; will retry");
                Verdict::Retry(with_jitter(self.settings.nak_delay(attempt)))
            }
        }
    }

    /// After commit: ack, nak, or dead-letter (publish, await the ack, then term) each delivery;
    /// publish the dead letters of parked messages that failed while being released.
    async fn settle(
        &self,
        batch: &[Box<dyn Delivery>],
        handled_as: &[Option<String>],
        verdicts: Vec<Option<Verdict>>,
        released_dead: Vec<ReleasedDeadLetter>,
    ) {
        let mut settles = Vec::with_capacity(batch.len());
        let mut dead: Vec<(&dyn Delivery, DeadLetter)> = Vec::new();
        for ((delivery, verdict), consumer) in batch
            .iter()
            .map(|d| d.as_ref())
            .zip(verdicts)
            .zip(handled_as)
        {
            let metrics = self
                .metrics
                .of(consumer.as_deref().unwrap_or(&self.consumer));
            match verdict {
                Some(Verdict::Handled) => {
                    metrics.ok.increment(1);
                    settles.push(self.ack(delivery));
                }
                Some(Verdict::Duplicate) => {
                    metrics.duplicate.increment(1);
                    settles.push(self.ack(delivery));
                }
                Some(Verdict::Parked) => {
                    metrics.parked.increment(1);
                    settles.push(self.ack(delivery));
                }
                Some(Verdict::Released) => {
                    metrics.released.increment(1);
                    settles.push(self.ack(delivery));
                }
                Some(Verdict::Retry(delay)) => {
                    metrics.retried.increment(1);
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
        if !released_dead.is_empty() {
            self.dead_letter_parked(released_dead).await;
        }
    }

    async fn dead_letter(&self, dead: Vec<(&dyn Delivery, DeadLetter)>) {
        let messages: Vec<_> = dead
            .iter()
            .map(|(delivery, letter)| {
                let source = LetterSource {
                    subject: delivery.subject(),
                    headers: delivery.headers(),
                    payload: delivery.payload(),
                    stream_sequence: delivery.stream_sequence(),
                };
                dead_letter_message(letter, &source)
            })
            .collect();
        let results = self.broker.publish_batch(&messages).await;
        let mut settles = Vec::with_capacity(dead.len());
        for ((delivery, letter), result) in dead.iter().zip(results) {
            match result {
                Ok(_) => {
                    self.metrics.of(&letter.consumer).dead_lettered.increment(1);
                    count_dead_letter(&letter.consumer, letter.reason.as_str());
                    tracing::warn!(consumer = %letter.consumer, reason = %letter.reason,
                        error = %letter.error, stream_seq = delivery.stream_sequence(),
                        order_id = ?letter.order_id, event_id = ?letter.event_id,
                        "message dead-lettered");
                    settles.push(self.term(*delivery));
                }
                Err(error) => {
                    tracing::warn!(consumer = %letter.consumer, %error,
                        "could not publish a dead letter; redelivering the original");
                    settles.push(Box::pin(
                        self.nak(*delivery, self.settings.batch_failure_nak_delay),
                    ));
                }
            }
        }
        join_all(settles).await;
    }

    /// Publishes the dead letters still owed by parked messages that head a hold (their first
    /// publication, right after the release's commit, failed or never happened: a crash), so
    /// that every hold has a dead letter an operator can redrive or discard. Returns how many
    /// were owed.
    pub(super) async fn publish_owed_dead_letters(&self) -> Result<usize, sqlx::Error> {
        let owed =
            stall::with_connection(&self.pool, self.settings.db_stall_timeout, async |conn| {
                holds::owed_dead_letters(conn, OWED_DEAD_LETTER_GRACE, OWED_DEAD_LETTERS_PER_ROUND)
                    .await
            })
            .await?;
        let count = owed.len();
        let released: Vec<ReleasedDeadLetter> = owed
            .into_iter()
            .map(|owed| {
                let reason = DeadLetterReason::parse(&owed.dead_letter_reason)
                    .unwrap_or(DeadLetterReason::Permanent);
                let letter = owed_letter(&owed.parked, reason, owed.dead_letter_error);
                ReleasedDeadLetter {
                    parked: owed.parked,
                    letter,
                }
            })
            .collect();
        if !released.is_empty() {
            tracing::warn!(consumer = %self.consumer, count,
                "publishing dead letters owed by released messages that head a hold");
            self.dead_letter_parked(released).await;
        }
        Ok(count)
    }

    /// Publishes the dead letters of released parked messages that failed, and unparks each
    /// once published. One not published stays parked as the head of its hold, owing its dead
    /// letter, which [`Self::publish_owed_dead_letters`] publishes later.
    async fn dead_letter_parked(&self, released_dead: Vec<ReleasedDeadLetter>) {
        let messages: Vec<_> = released_dead
            .iter()
            .map(|dead| {
                let source = LetterSource {
                    subject: &dead.parked.subject,
                    headers: dead
                        .parked
                        .headers
                        .0
                        .iter()
                        .map(|(name, value)| (name.as_str(), value.as_str()))
                        .collect(),
                    payload: &dead.parked.payload,
                    stream_sequence: u64::try_from(dead.parked.stream_seq).unwrap_or(0),
                };
                dead_letter_message(&dead.letter, &source)
            })
            .collect();
        let results = self.broker.publish_batch(&messages).await;
        for (dead, result) in released_dead.iter().zip(results) {
            let letter = &dead.letter;
            if let Err(error) = result {
                tracing::warn!(consumer = %letter.consumer, %error, event_id = %dead.parked.event_id,
                    "could not publish the dead letter of a released message; it stays parked \
                     and is published again later");
                continue;
            }
            self.metrics.of(&letter.consumer).dead_lettered.increment(1);
            count_dead_letter(&letter.consumer, letter.reason.as_str());
            tracing::warn!(consumer = %letter.consumer, reason = %letter.reason,
                error = %letter.error, event_id = %dead.parked.event_id,
                "released message dead-lettered; its order is held again");
            let unparked =
                stall::with_connection(&self.pool, self.settings.db_stall_timeout, async |conn| {
                    holds::unpark(conn, dead.parked.id).await
                })
                .await;
            if let Err(error) = unparked {
                tracing::warn!(consumer = %letter.consumer, %error,
                    "could not unpark a dead-lettered message; it will be handled again on release");
            }
        }
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

/// The span of handling `envelope` as `consumer` (delivery `attempt`), a child of the span that
/// emitted the event (its `traceparent`), so it is in the order's trace. `outcome` is recorded
/// once known.
pub(super) fn handle_event_span(
    consumer: &str,
    envelope: &Envelope,
    attempt: u32,
) -> tracing::Span {
    let span = tracing::info_span!(
        "handle_event",
        consumer,
        event_type = envelope.event_type().as_str(),
        order_id = %envelope.order_id().0,
        event_id = %envelope.id.0,
        attempt,
        outcome = tracing::field::Empty,
        otel.kind = "consumer",
    );
    if let Some(traceparent) = &envelope.traceparent {
        trace_context::set_parent(&span, traceparent);
    }
    span
}

/// How long a dead letter may be owed before [`ConsumerLoop::publish_owed_dead_letters`] takes
/// it over from the transaction that owes it (which publishes it right after its commit).
const OWED_DEAD_LETTER_GRACE: Duration = Duration::from_secs(5);
/// Most owed dead letters published per round.
const OWED_DEAD_LETTERS_PER_ROUND: i64 = 100;

/// The dead letter owed by `parked` (built as when it failed while released).
fn owed_letter(parked: &ParkedMessage, reason: DeadLetterReason, error: String) -> DeadLetter {
    let headers: Vec<(&str, &str)> = parked
        .headers
        .0
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    match jwl_events::decode(
        HeaderStyle::NEUTRAL,
        headers.iter().copied(),
        &parked.payload,
    ) {
        Ok(envelope) => DeadLetter::of_event(
            &parked.consumer,
            reason,
            error,
            &envelope,
            jwl_events::header_value(&headers, replay::ORIGIN_HEADER),
        ),
        Err(_) => DeadLetter::of_message(&parked.consumer, reason, error, &headers, true),
    }
}

type SettleFuture<'a> = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Whether a batch failed because the database could not be reached (connection lost or
/// refused, pool exhausted, the stall timeout), rather than because of the batch's work (a
/// `Database` error: a constraint at commit, a deadlock) or an error that would repeat (a
/// decoding error): only the first is waited out without counting a delivery attempt, so a
/// batch that fails the same way every time still ends in the dead-letter stream.
fn unreachable(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    )
}

/// Adds up to 10 % to a redelivery delay, so messages that failed together spread out.
fn with_jitter(delay: Duration) -> Duration {
    delay.mul_f64(1.0 + fastrand::f64() * 0.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unreachable_database_is_waited_out_without_counting() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(unreachable(&sqlx::Error::Io(io)));
        assert!(unreachable(&stall::stalled(Duration::from_secs(1))));
        assert!(unreachable(&sqlx::Error::PoolTimedOut));
        assert!(unreachable(&sqlx::Error::PoolClosed));
        // errors that would repeat on the same batch count as attempts
        assert!(!unreachable(&sqlx::Error::RowNotFound));
        assert!(!unreachable(&sqlx::Error::Protocol(
            "unexpected message".into()
        )));
        assert!(!unreachable(&sqlx::Error::ColumnNotFound("seq".into())));
    }
}
