//! The inbox path shared by the consumer loop and [`process_one`] (and [`process_batch`] for a
//! handler's batch way): under a savepoint, record `(consumer, event_id)` in the inbox, skip
//! duplicates, run the handler, write the events it emitted to the outbox, keep or undo its work.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use jwl_events::{Envelope, Service};
use sqlx::{Acquire, PgConnection, PgPool};
use uuid::Uuid;

use crate::enqueue::insert_rows;
use crate::error::OutboxError;
use crate::handler::{BatchContext, Handler, HandlerContext, HandlerError};

/// Result of [`process_one`].
#[derive(Debug)]
pub enum Processed {
    /// The handler ran and its work committed; these events were enqueued.
    Handled { emitted: Vec<Envelope> },
    /// The inbox already had this event for this consumer; the handler did not run.
    Duplicate,
}

/// Who handles an event: the service, its consumer (inbox) name and the handler.
pub(crate) struct HandlingTarget<'h> {
    pub service: Service,
    pub consumer: &'h str,
    pub handler: &'h dyn Handler,
}

/// What happened to one event under its savepoint.
pub(crate) enum SavepointOutcome {
    Handled {
        emitted: Vec<Envelope>,
    },
    Duplicate,
    /// The handler failed; its work (and the inbox row) were rolled back to the savepoint.
    Failed(HandlerError),
}

/// Runs one event under a savepoint of the transaction open on `conn`. With `rerun`, the inbox
/// row of (consumer, event) is deleted first, so the handler runs again.
///
/// `Err` means the transaction itself can no longer be trusted (the framework's own SQL failed,
/// e.g. the connection dropped): the caller must roll the whole transaction back.
pub(crate) async fn handle_in_savepoint(
    conn: &mut PgConnection,
    target: &HandlingTarget<'_>,
    event: &Envelope,
    attempt: u32,
    rerun: bool,
) -> Result<SavepointOutcome, sqlx::Error> {
    let mut savepoint = conn.begin().await?;
    if rerun {
        // forgotten only if the handler succeeds again: a failure rolls this back too
        sqlx::query("DELETE FROM inbox WHERE consumer = $1 AND event_id = $2")
            .bind(target.consumer)
            .bind(event.id.0)
            .execute(&mut *savepoint)
            .await?;
    }
    let inserted = sqlx::query(
        "INSERT INTO inbox (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(target.consumer)
    .bind(event.id.0)
    .execute(&mut *savepoint)
    .await?
    .rows_affected()
        == 1;
    if !inserted {
        savepoint.rollback().await?;
        return Ok(SavepointOutcome::Duplicate);
    }

    let mut ctx = HandlerContext::new(&mut savepoint, target.service, event, attempt);
    let result = AssertUnwindSafe(target.handler.handle(&mut ctx, event))
        .catch_unwind()
        .await;
    let emitted = ctx.into_emitted();
    let failure = match result {
        Ok(Ok(())) => match async {
            insert_rows(&mut savepoint, &emitted.rows).await?;
            savepoint.commit().await
        }
        .await
        {
            Ok(()) => {
                return Ok(SavepointOutcome::Handled {
                    emitted: emitted.envelopes,
                });
            }
            // The handler reported success over an aborted transaction (it swallowed an SQL
            // error), or the outbox refused its events. The failed RELEASE leaves the savepoint
            // open; dropping it rolls it back.
            Err(sqlx::Error::Database(error)) => {
                return Ok(SavepointOutcome::Failed(HandlerError::transient(format!(
                    "handler returned Ok but its transaction was aborted or its events refused: {error}"
                ))));
            }
            Err(other) => return Err(other),
        },
        Ok(Err(error)) => error,
        Err(panic) => HandlerError::transient(format!("handler panicked: {}", panic_text(&panic))),
    };
    savepoint.rollback().await?;
    Ok(SavepointOutcome::Failed(failure))
}

/// The fast path's claim of a batch ([`claim_unless_held`]).
pub(crate) enum BatchClaim {
    /// Some order of the batch is held behind a dead letter (for any consumer of this service):
    /// nothing was recorded, the batch must take the careful path.
    Held,
    /// The (consumer, event id) keys that were new; the others were handled before (or repeat
    /// within the batch: the first wins).
    Fresh(HashSet<(String, Uuid)>),
}

/// In one statement: unless one of `orders` is held, records every (consumer, event id) of
/// `keys` in the inbox and returns those that were new. The hold check is a plain read, as the
/// fast path needs (a hold it sees, even one being deleted, sends the batch to the careful path,
/// which reads it again with a lock). Rows are inserted in key order, so two transactions
/// claiming overlapping keys lock them in the same order.
pub(crate) async fn claim_unless_held(
    conn: &mut PgConnection,
    keys: &[(&str, Uuid)],
    orders: &[Uuid],
) -> Result<BatchClaim, sqlx::Error> {
    let mut sorted = keys.to_vec();
    sorted.sort_unstable();
    let (consumers, events): (Vec<&str>, Vec<Uuid>) = sorted.into_iter().unzip();
    let (held, consumers, events): (bool, Vec<String>, Vec<Uuid>) = sqlx::query_as(
        "WITH held AS (
             SELECT EXISTS (SELECT 1 FROM dead_letter_holds WHERE order_id = ANY($3)) AS some_held
         ), claimed AS (
             INSERT INTO inbox (consumer, event_id)
             SELECT key.consumer, key.event_id
             FROM unnest($1::text[], $2::uuid[]) WITH ORDINALITY AS key (consumer, event_id, n)
             WHERE NOT (SELECT some_held FROM held)
             ORDER BY key.n
             ON CONFLICT DO NOTHING
             RETURNING consumer, event_id
         )
         SELECT (SELECT some_held FROM held),
                coalesce(array_agg(consumer), '{}'),
                coalesce(array_agg(event_id), '{}')
         FROM claimed",
    )
    .bind(consumers)
    .bind(events)
    .bind(orders)
    .fetch_one(conn)
    .await?;
    if held {
        return Ok(BatchClaim::Held);
    }
    Ok(BatchClaim::Fresh(
        consumers.into_iter().zip(events).collect(),
    ))
}

pub(crate) fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload")
}

/// Handles `event` exactly as the consumer loop would (inbox, handler, outbox, in one
/// transaction), without a broker, as `consumer`. For handler tests against a real database and
/// for replay tools. A handler failure is returned as [`OutboxError::Handler`] and nothing is
/// committed.
pub async fn process_one(
    pool: &PgPool,
    service: Service,
    handler: &dyn Handler,
    consumer: &str,
    event: &Envelope,
) -> Result<Processed, OutboxError> {
    let target = HandlingTarget {
        service,
        consumer,
        handler,
    };
    let mut tx = pool.begin().await?;
    let processed = match handle_in_savepoint(&mut tx, &target, event, 1, false).await? {
        SavepointOutcome::Handled { emitted } => Processed::Handled { emitted },
        SavepointOutcome::Duplicate => Processed::Duplicate,
        SavepointOutcome::Failed(error) => return Err(OutboxError::Handler(error)),
    };
    tx.commit().await?;
    Ok(processed)
}

/// Handles the fresh ones of `events` together with `handler`'s batch way
/// ([`Handler::batch`]) exactly as the consumer's fast path would (inbox, batch way, outbox, in
/// one transaction), without a broker, each event as the durable consumer of its type in
/// `service`. Events the inbox has already seen are skipped. For tests of a batch way against a
/// real database. Returns the events emitted; a handler without a batch way, a batch it does not
/// take, an order held behind a dead letter or a failure of the batch way is an
/// [`OutboxError::Handler`], and nothing is committed then.
pub async fn process_batch(
    pool: &PgPool,
    service: Service,
    handler: &dyn Handler,
    events: &[&Envelope],
) -> Result<Vec<Envelope>, OutboxError> {
    let Some(batch_way) = handler.batch() else {
        return Err(HandlerError::permanent("the handler has no batch way").into());
    };
    let consumers: Vec<String> = events
        .iter()
        .map(|event| crate::durable_name(service, event.event_type()))
        .collect();
    let keys: Vec<(&str, Uuid)> = consumers
        .iter()
        .zip(events)
        .map(|(consumer, event)| (consumer.as_str(), event.id.0))
        .collect();
    let orders: Vec<Uuid> = events.iter().map(|event| event.order_id().0).collect();
    let mut tx = pool.begin().await?;
    let mut fresh = match claim_unless_held(&mut tx, &keys, &orders).await? {
        BatchClaim::Fresh(fresh) => fresh,
        BatchClaim::Held => {
            return Err(HandlerError::permanent("an order of the batch is held").into());
        }
    };
    let events: Vec<&Envelope> = keys
        .iter()
        .zip(events)
        .filter(|((consumer, id), _)| fresh.remove(&((*consumer).to_owned(), *id)))
        .map(|(_, event)| *event)
        .collect();
    if !batch_way.takes(&events) {
        return Err(HandlerError::permanent("the batch way does not take these events").into());
    }
    handler.lock_batch(&mut tx, &events).await?;
    let spans = events.iter().map(|event| (event.id, None)).collect();
    let mut ctx = BatchContext::new(&mut tx, service, spans);
    batch_way.handle_batch(&mut ctx, &events).await?;
    let emitted = ctx.into_emitted();
    insert_rows(&mut tx, &emitted.rows).await?;
    tx.commit().await?;
    Ok(emitted.envelopes)
}
