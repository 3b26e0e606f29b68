//! [`OrderReadModel`]: the order status read model, fed by every saga event the order service
//! does not emit itself. Each event is appended to the order's timeline (once, by event id) and
//! moved through [`domain::apply_event`] under a lock of the order's row: two statements per
//! event (lock and append in one, then the update when the status changes), or two per batch
//! when the consumer hands it several at once ([`BatchHandler`]).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use jwl_events::{Envelope, EventType, OrderId, Service};
use jwl_outbox::{BatchContext, BatchHandler, Handler, HandlerContext, HandlerError};

use crate::domain::{self, ReadModelState};
use crate::store::{self, StoreError};

/// Every event type except those the order service emits (`order.created`,
/// `order.cancel_requested`), whose timeline rows it writes in its own transactions: its row of
/// the catalogue's table of who consumes what ([`Service::subscriptions`]).
pub const SUBSCRIPTIONS: &[EventType] = Service::Order.subscriptions();

/// How long a batch of the read model waits for more events after its first one. The read model
/// emits nothing and no service waits on it, so below saturation it need not commit each event
/// on its own: at 50 orders/s it made a third of the database's commits (one per saga event),
/// each a WAL flush the saga's own transactions queued behind. A status read through the API is
/// at most this much later.
pub const LINGER: Duration = Duration::from_millis(20);

/// Histogram of the time from `order.created` to the order's first terminal status, by outcome.
pub const SAGA_DURATION_METRIC: &str = "jwl_saga_duration_seconds";

/// Records one saga's duration. (If the transaction then rolls back and the event is
/// redelivered, the saga is counted twice: rare, and harmless for a latency distribution.)
fn record_saga_duration(outcome: &'static str, took: chrono::TimeDelta) {
    let seconds = took.num_milliseconds().max(0) as f64 / 1000.0;
    metrics::histogram!(SAGA_DURATION_METRIC, "outcome" => outcome).record(seconds);
}

/// The handler keeping `orders` (status, reason, waybill, courier) and `order_timeline` current.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderReadModel;

#[async_trait]
impl Handler for OrderReadModel {
    fn subscriptions(&self) -> &'static [EventType] {
        SUBSCRIPTIONS
    }

    async fn handle(
        &self,
        ctx: &mut HandlerContext<'_>,
        event: &Envelope,
    ) -> Result<(), HandlerError> {
        let order_id = event.order_id();
        let conn = ctx.db();
        // The order's row is committed before its order.created is published, so every later
        // event finds it; an unknown order is an event from elsewhere and retrying cannot help.
        let Some(order) = store::lock_and_record(conn, event)
            .await
            .map_err(store_error)?
        else {
            return Err(HandlerError::permanent(format!(
                "{} for unknown order {order_id}",
                event.event_type()
            )));
        };
        if let Some(next) = advance(&order, &order.state, event) {
            store::update_read_model(conn, order_id, &next).await?;
        }
        Ok(())
    }

    fn batch(&self) -> Option<&dyn BatchHandler> {
        Some(self)
    }

    /// [`LINGER`]: no service waits on the read model.
    fn linger(&self) -> Duration {
        LINGER
    }
}

/// A batch in two statements, whatever its size: lock every order of the batch and append
/// every event to its timeline, then (after moving each order through its events in delivery
/// order, in memory) write the orders that changed.
#[async_trait]
impl BatchHandler for OrderReadModel {
    async fn handle_batch(
        &self,
        ctx: &mut BatchContext<'_>,
        events: &[&Envelope],
    ) -> Result<(), HandlerError> {
        let orders = store::lock_and_record_all(ctx.db(), events)
            .await
            .map_err(store_error)?;
        let mut states: HashMap<OrderId, ReadModelState> = HashMap::new();
        for event in events {
            let order_id = event.order_id();
            let Some(order) = orders.get(&order_id) else {
                // the one-by-one way dead-letters it
                return Err(HandlerError::permanent(format!(
                    "{} for unknown order {order_id}",
                    event.event_type()
                )));
            };
            let current = states.get(&order_id).unwrap_or(&order.state);
            if let Some(next) = advance(order, current, event) {
                states.insert(order_id, next);
            }
        }
        let updates: Vec<(OrderId, ReadModelState)> = states
            .into_iter()
            .filter(|(order_id, state)| orders.get(order_id).is_some_and(|o| o.state != *state))
            .collect();
        store::update_read_models(ctx.db(), &updates).await?;
        Ok(())
    }
}

/// The order's read model after `event`, if it changes it from `current`; records the saga's
/// duration when the order becomes terminal.
fn advance(
    order: &store::LockedOrder,
    current: &ReadModelState,
    event: &Envelope,
) -> Option<ReadModelState> {
    let next = domain::apply_event(current, &event.data);
    if next == *current {
        return None;
    }
    if next.status.is_terminal() && !current.status.is_terminal() {
        record_saga_duration(next.status.as_str(), event.time - order.created_at);
    }
    tracing::debug!(
        order_id = %event.order_id(),
        event_type = %event.event_type(),
        from = current.status.as_str(),
        to = next.status.as_str(),
        "order read model updated"
    );
    Some(next)
}

fn store_error(error: StoreError) -> HandlerError {
    match error {
        StoreError::Database(error) => error.into(),
        invalid @ StoreError::InvalidRow { .. } => HandlerError::permanent(invalid.to_string()),
    }
}
