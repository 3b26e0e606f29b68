//! The common case of a batch, in a handful of statements whatever its size: one transaction, one
//! statement that looks up the holds on all its orders and, unless one is held, inserts the
//! inbox rows of the whole batch (finding the duplicates), then each handler in delivery order
//! directly in the transaction — no savepoint per message — and one outbox insert of all the
//! events they emitted.
//!
//! It only takes batches that need none of the careful path's machinery (no release, no rerun, no
//! dead letter that would hold its order, no order already held), and it gives up at the first
//! sign of trouble — a handler that fails or panics, an SQL error, an injected fault — by rolling
//! the whole transaction back and returning [`FastOutcome::Careful`]: the caller then runs the
//! same batch through the savepoint-per-message path, which decides each message on its own. The
//! failure the fast path saw is handed over ([`KnownFailure`]) and judged there without running
//! that handler a second time for the same delivery; the messages before it run again (their
//! work was rolled back). So a failure costs one extra round, and the common case pays no
//! savepoints at all.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use jwl_events::Envelope;
use sqlx::Connection as _;
use sqlx::PgConnection;
use tokio::time::Instant;
use tracing::Instrument;
use uuid::Uuid;

use super::ConsumerLoop;
use super::batch::{Screened, Verdict, Work, WorkKind, handle_event_span};
use crate::enqueue::{OutboxRow, insert_rows};
use crate::handler::{BatchContext, BatchHandler, HandlerContext, HandlerError};
use crate::inbox::panic_text;
use crate::inbox::{self, BatchClaim};
use crate::relay::Enqueued;
use crate::stall::KeptConnection;
use crate::trace_context::traceparent_of;
use crate::transport::Delivery;

/// What the fast path did with a batch.
pub(super) enum FastOutcome {
    /// Committed: a verdict for every delivery that was work (`None` where the screening had
    /// decided already), and whether any handler emitted events.
    Committed {
        verdicts: Vec<Option<Verdict>>,
        /// The outbox rows of the events the handlers emitted.
        emitted: Enqueued,
    },
    /// Nothing was committed: run the batch through the careful path, which takes this failure
    /// as the outcome of that delivery's handler.
    Careful(Option<KnownFailure>),
}

/// A handler failure the fast path saw: delivery `index` of the batch failed with `error` (its
/// work rolled back with the rest).
pub(super) struct KnownFailure {
    pub index: usize,
    pub error: HandlerError,
}

/// Whether the fast path can take `screened`: only events handled through the inbox, and
/// decisions that touch no hold.
pub(super) fn eligible(screened: &[Screened]) -> bool {
    screened.iter().all(|item| match item {
        Screened::Work(Work {
            kind: WorkKind::Event { rerun, .. },
            ..
        }) => !rerun,
        Screened::Work(_) => false,
        Screened::Decided(Verdict::DeadLetter(letter)) => letter.hold_key().is_none(),
        Screened::Decided(_) => true,
    })
}

impl ConsumerLoop {
    /// Whether a fault point will fail one of the batch's handlers (the careful path injects it,
    /// under a savepoint; going there at once keeps the others from running twice).
    pub(super) fn injects_failure(
        &self,
        batch: &[Box<dyn Delivery>],
        screened: &[Screened],
    ) -> bool {
        let Some(faults) = &self.settings.faults else {
            return false;
        };
        screened
            .iter()
            .zip(batch)
            .any(|(item, delivery)| match item {
                Screened::Work(work) => {
                    faults.fails_transiently(&work.consumer, delivery.attempt())
                }
                Screened::Decided(_) => false,
            })
    }

    /// Runs an [`eligible`] batch the fast way, within the stall timeout. `Err` fails the batch
    /// as on the careful path: a lost connection, a stall, or a refusal at commit (which no
    /// savepoint could isolate). A database error before the commit means
    /// [`FastOutcome::Careful`].
    pub(super) async fn handle_fast(
        &self,
        batch: &[Box<dyn Delivery>],
        screened: &[Screened],
        conn: &mut KeptConnection,
    ) -> Result<FastOutcome, sqlx::Error> {
        let waiting = Instant::now();
        let limit = self.settings.db_stall_timeout;
        let work = async |conn: &mut PgConnection| {
            let mut tx = conn.begin().await?;
            self.metrics
                .db_acquire
                .record(waiting.elapsed().as_secs_f64());
            let events: Vec<(usize, &str, &jwl_events::Envelope)> = screened
                .iter()
                .enumerate()
                .filter_map(|(index, item)| match item {
                    Screened::Work(Work {
                        consumer,
                        kind: WorkKind::Event { envelope, .. },
                    }) => Some((index, consumer.as_str(), &**envelope)),
                    _ => None,
                })
                .collect();
            let orders: Vec<Uuid> = events.iter().map(|(_, _, env)| env.order_id().0).collect();
            let keys: Vec<(&str, Uuid)> = events
                .iter()
                .map(|(_, consumer, env)| (*consumer, env.id.0))
                .collect();
            let mut fresh: HashSet<(String, Uuid)> =
                match inbox::claim_unless_held(&mut tx, &keys, &orders).await? {
                    BatchClaim::Fresh(fresh) => fresh,
                    BatchClaim::Held => {
                        tx.rollback().await?;
                        return Ok(Ok(FastOutcome::Careful(None)));
                    }
                };

            // the decided ones are the caller's to fill in
            let mut verdicts: Vec<Option<Verdict>> = Vec::with_capacity(screened.len());
            verdicts.resize_with(screened.len(), || None);
            let mut todo = Vec::with_capacity(events.len());
            for (index, consumer, envelope) in events {
                if fresh.remove(&(consumer.to_owned(), envelope.id.0)) {
                    todo.push((index, consumer, envelope));
                } else {
                    verdicts[index] = Some(Verdict::Duplicate);
                }
            }
            let fresh_events: Vec<&jwl_events::Envelope> =
                todo.iter().map(|&(_, _, envelope)| envelope).collect();
            self.handler.lock_batch(&mut tx, &fresh_events).await?;
            let handled = match self.handler.batch() {
                Some(batch_handler) if todo.len() >= 2 && batch_handler.takes(&fresh_events) => {
                    self.run_together(&mut tx, batch_handler, batch, &todo)
                        .await
                }
                _ => self.run_one_by_one(&mut tx, batch, &todo).await,
            };
            let emitted = match handled {
                Ok(emitted) => emitted,
                Err(failure) => {
                    tx.rollback().await?;
                    return Ok(Ok(FastOutcome::Careful(failure)));
                }
            };
            for (index, _, _) in todo {
                verdicts[index] = Some(Verdict::Handled);
            }
            // A handler that swallowed an SQL error leaves the transaction aborted, and COMMIT
            // of an aborted transaction rolls back without an error: the next statement fails
            // instead, the outbox insert of the batch's events if it emitted any.
            let emitted = if emitted.is_empty() {
                sqlx::query("SELECT 1").execute(&mut *tx).await?;
                Enqueued::default()
            } else {
                insert_rows(&mut tx, &emitted).await?
            };
            // refused at commit (e.g. a deferred constraint): no savepoint could isolate that, so
            // this is the batch's failure, as it would be on the careful path
            if let Err(error) = tx.commit().await {
                return Ok(Err(error));
            }
            Ok(Ok(FastOutcome::Committed { verdicts, emitted }))
        };
        // kept when the transaction committed or was rolled back on purpose (the careful path
        // goes on with it); not after a refused commit or an error (the pool then sends the
        // rollback and checks it)
        let result = conn
            .run(limit, work, |result| matches!(result, Ok(Ok(_))))
            .await;
        match result {
            // refused at commit: the batch failed
            Ok(committed) => committed,
            // the database refused something before the commit (a handler that swallowed an SQL
            // error, say): let the careful path find which message it was
            Err(sqlx::Error::Database(error)) => {
                tracing::debug!(consumer = %self.consumer, %error,
                    "fast path refused by the database; handling the batch message by message");
                Ok(FastOutcome::Careful(None))
            }
            Err(other) => Err(other),
        }
    }

    /// Runs the handler on each of `todo` in turn; `Ok` with the events they emitted (still to be
    /// written to the outbox) if all succeeded, else the first failure (the transaction must then
    /// be rolled back).
    async fn run_one_by_one(
        &self,
        tx: &mut PgConnection,
        batch: &[Box<dyn Delivery>],
        todo: &[(usize, &str, &Envelope)],
    ) -> Result<Vec<OutboxRow>, Option<KnownFailure>> {
        let mut emitted = Vec::new();
        for &(index, consumer, envelope) in todo {
            let attempt = batch[index].attempt();
            let span = handle_event_span(consumer, envelope, attempt);
            let started = Instant::now();
            let mut ctx = HandlerContext::new(tx, self.service, envelope, attempt);
            let result = AssertUnwindSafe(self.handler.handle(&mut ctx, envelope))
                .catch_unwind()
                .instrument(span.clone())
                .await;
            emitted.extend(ctx.into_emitted().rows);
            self.metrics
                .of(consumer)
                .handler_duration
                .record(started.elapsed().as_secs_f64());
            if let Some(error) = failure(result) {
                return Err(Some(KnownFailure { index, error }));
            }
            span.record("outcome", Verdict::Handled.outcome());
        }
        Ok(emitted)
    }

    /// Runs the handler's batch way on all of `todo` at once, under one `handle_batch` span, with
    /// a `handle_event` span per event (children of their events' traces, as one by one; the
    /// events emitted in reaction to one are its span's children). `Ok` with the events the
    /// batch way emitted (still to be written to the outbox) if it succeeded; `Err(None)` if not:
    /// which event failed is not known, the careful path finds out.
    async fn run_together(
        &self,
        tx: &mut PgConnection,
        batch_handler: &dyn BatchHandler,
        batch: &[Box<dyn Delivery>],
        todo: &[(usize, &str, &Envelope)],
    ) -> Result<Vec<OutboxRow>, Option<KnownFailure>> {
        let span = tracing::info_span!(
            "handle_batch",
            consumer = %self.consumer,
            events = todo.len(),
            outcome = tracing::field::Empty,
        );
        let event_spans: Vec<tracing::Span> = todo
            .iter()
            .map(|&(index, consumer, envelope)| {
                let event_span = handle_event_span(consumer, envelope, batch[index].attempt());
                event_span.follows_from(&span);
                event_span
            })
            .collect();
        let traceparents = todo
            .iter()
            .zip(&event_spans)
            .map(|(&(_, _, envelope), event_span)| (envelope.id, traceparent_of(event_span)))
            .collect();
        let envelopes: Vec<&Envelope> = todo.iter().map(|&(_, _, envelope)| envelope).collect();
        let started = Instant::now();
        let mut ctx = BatchContext::new(tx, self.service, traceparents);
        let result = AssertUnwindSafe(batch_handler.handle_batch(&mut ctx, &envelopes))
            .catch_unwind()
            .instrument(span.clone())
            .await;
        let per_event = started.elapsed().as_secs_f64() / todo.len() as f64;
        if let Some(error) = failure(result) {
            span.record("outcome", "failed");
            tracing::debug!(parent: &span, %error, "batch way failed; handling one by one");
            return Err(None);
        }
        span.record("outcome", Verdict::Handled.outcome());
        for (&(_, consumer, _), event_span) in todo.iter().zip(&event_spans) {
            event_span.record("outcome", Verdict::Handled.outcome());
            self.metrics.of(consumer).handler_duration.record(per_event);
        }
        Ok(ctx.into_emitted().rows)
    }
}

/// The error of a handler's result, a panic counting as a transient one.
fn failure(
    result: Result<Result<(), HandlerError>, Box<dyn std::any::Any + Send>>,
) -> Option<HandlerError> {
    match result {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error),
        Err(panic) => Some(HandlerError::transient(format!(
            "handler panicked: {}",
            panic_text(&panic)
        ))),
    }
}
