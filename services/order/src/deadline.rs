//! The deadline timer: orders that are not terminal by their deadline get one
//! `order.cancel_requested {reason: deadline}`.
//!
//! Every run claims overdue orders in one transaction (`FOR UPDATE SKIP LOCKED`, at most
//! [`BATCH`]), marks them cancel-requested and enqueues their events, so any number of replicas
//! can run it at once and each order gets its event exactly once.

use std::time::Duration;

use chrono::{SubsecRound, Utc};
use jwl_events::{CancelReason, Envelope, OrderCancelRequested};
use jwl_outbox::{Enqueued, OutboxError, RelaySignal};
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::SERVICE;
use crate::domain;
use crate::store;

/// Most orders claimed by one run; a full batch is followed by another run at once.
const BATCH: usize = 100;

/// Runs the timer every `deadline_sweep_period(order_deadline)` until `shutdown`, each run
/// within `stall_timeout`. Failures are logged and retried on the next run.
pub(crate) async fn run(
    pool: PgPool,
    relay: RelaySignal,
    order_deadline: Duration,
    stall_timeout: Duration,
    shutdown: CancellationToken,
) {
    let period = domain::deadline_sweep_period(order_deadline);
    while !shutdown.is_cancelled() {
        let run = jwl_outbox::stall::with_connection(&pool, stall_timeout, cancel_overdue_orders);
        let claimed = match run.await {
            Ok((claimed, emitted)) => {
                relay.committed_rows(&pool, emitted).await;
                Ok(claimed)
            }
            Err(error) => Err(error),
        };
        let wait = match claimed {
            Ok(claimed) if claimed >= BATCH => Duration::ZERO,
            Ok(_) => period,
            Err(error) => {
                tracing::warn!(%error, "deadline timer run failed; retrying");
                period
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One run: claims up to [`BATCH`] overdue orders and requests their cancellation; returns how
/// many it claimed, and the outbox rows of their `order.cancel_requested` events.
async fn cancel_overdue_orders(conn: &mut PgConnection) -> Result<(usize, Enqueued), OutboxError> {
    let now = Utc::now().trunc_subsecs(6);
    let mut tx = conn.begin().await?;
    let overdue = store::claim_overdue_orders(&mut tx, now, BATCH as i64).await?;
    let mut events = Vec::with_capacity(overdue.len());
    for (order_id, traceparent) in &overdue {
        let order_id = *order_id;
        let event = Envelope {
            time: now,
            // in the order's trace, not a trace of its own
            traceparent: traceparent.clone(),
            ..Envelope::new(
                SERVICE,
                OrderCancelRequested {
                    order_id,
                    reason: CancelReason::Deadline,
                }
                .into(),
            )
        };
        store::insert_timeline(&mut tx, &event).await?;
        events.push(event);
    }
    let emitted = jwl_outbox::enqueue_all(&mut tx, &events).await?;
    tx.commit().await?;
    for (order_id, _) in &overdue {
        tracing::info!(%order_id, "order deadline passed; cancellation requested");
    }
    metrics::counter!("jwl_order_cancel_requests_total", "reason" => "deadline")
        .increment(overdue.len() as u64);
    Ok((overdue.len(), emitted))
}
