//! The deadline timer: fails waiting waybills whose dispatch deadline has passed
//! (`dispatch.failed`, reason `no_courier`), in batches, every [`domain::timer_interval`].
//!
//! Replicas can all run it: rows are claimed with `FOR UPDATE SKIP LOCKED`, and a waybill
//! being assigned or cancelled at that moment is skipped and looked at again on the next tick.

use jwl_outbox::{Enqueued, RelaySignal};
use std::sync::Arc;

use chrono::Utc;
use jwl_events::{DispatchFailed, DispatchFailureReason, Envelope};
use jwl_service_kit::Settings;
use std::time::Duration;

use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::SERVICE;
use crate::domain;
use crate::error::DispatchError;
use crate::store;

/// Most waybills failed in one transaction.
const BATCH_SIZE: i64 = 100;

/// Runs the timer until `shutdown`. Errors (database down, or silent past `stall_timeout`) are
/// logged and retried next tick.
pub async fn run(
    pool: PgPool,
    relay: RelaySignal,
    settings: Arc<Settings>,
    stall_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(domain::timer_interval(settings.dispatch_deadline));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match fail_overdue(&pool, &relay, stall_timeout).await {
            Ok(0) => {}
            Ok(failed) => {
                tracing::info!(failed, "failed waybills past their dispatch deadline")
            }
            Err(error) => tracing::warn!(%error, "deadline timer round failed; retrying"),
        }
    }
}

/// Fails every overdue waiting waybill, one batch per transaction (each within `stall_timeout`);
/// how many it failed.
async fn fail_overdue(
    pool: &PgPool,
    relay: &RelaySignal,
    stall_timeout: Duration,
) -> Result<usize, DispatchError> {
    let mut total = 0;
    loop {
        let (failed, emitted) =
            jwl_outbox::stall::with_connection(pool, stall_timeout, fail_batch).await?;
        relay.committed_rows(pool, emitted).await;
        total += failed;
        if i64::try_from(failed).unwrap_or(i64::MAX) < BATCH_SIZE {
            return Ok(total);
        }
    }
}

/// Fails up to [`BATCH_SIZE`] overdue waybills in one transaction; how many it failed, and the
/// outbox rows of their `dispatch_failed` events.
async fn fail_batch(conn: &mut PgConnection) -> Result<(usize, Enqueued), DispatchError> {
    let mut tx = conn.begin().await?;
    let overdue = store::fail_overdue(&mut tx, Utc::now(), BATCH_SIZE).await?;
    let mut events = Vec::with_capacity(overdue.len());
    for waybill in &overdue {
        let mut event = Envelope::new(
            SERVICE,
            DispatchFailed {
                order_id: waybill.order_id,
                waybill_id: waybill.waybill_id,
                reason: DispatchFailureReason::NoCourier,
            }
            .into(),
        );
        // Born from the timer, acting on the `waybill_created` that started the wait.
        event.causation_id = Some(waybill.cause_event_id);
        event.traceparent.clone_from(&waybill.cause_traceparent);
        events.push(event);
    }
    let emitted = jwl_outbox::enqueue_all(&mut tx, &events).await?;
    tx.commit().await?;
    Ok((overdue.len(), emitted))
}
