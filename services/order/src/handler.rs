//! [`OrderReadModel`]: the order status read model, fed by every saga event the order service
//! does not emit itself. Each event is appended to the order's timeline (once, by event id) and
//! moved through [`domain::apply_event`] under a lock of the order's row: two statements per
//! event (lock and append in one, then the update when the status changes).

use async_trait::async_trait;
use jwl_events::{Envelope, EventType};
use jwl_outbox::{Handler, HandlerContext, HandlerError};

use crate::domain;
use crate::store::{self, StoreError};

/// Every event type except those the order service emits (`order.created`,
/// `order.cancel_requested`), whose timeline rows it writes in its own transactions.
pub const SUBSCRIPTIONS: &[EventType] = &[
    EventType::PaymentAuthorized,
    EventType::PaymentDeclined,
    EventType::PaymentCaptured,
    EventType::PaymentVoided,
    EventType::InventoryReserved,
    EventType::InventoryRejected,
    EventType::InventoryReleased,
    EventType::WaybillCreated,
    EventType::WaybillCancelled,
    EventType::CourierAssigned,
    EventType::DispatchFailed,
    EventType::Delivered,
];

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
        let next = domain::apply_event(&order.state, &event.data);
        if next != order.state {
            store::update_read_model(conn, order_id, &next).await?;
            if next.status.is_terminal() && !order.state.status.is_terminal() {
                record_saga_duration(next.status.as_str(), event.time - order.created_at);
            }
            tracing::info!(
                %order_id,
                event_type = %event.event_type(),
                from = order.state.status.as_str(),
                to = next.status.as_str(),
                "order read model updated"
            );
        }
        Ok(())
    }
}

fn store_error(error: StoreError) -> HandlerError {
    match error {
        StoreError::Database(error) => error.into(),
        invalid @ StoreError::InvalidRow { .. } => HandlerError::permanent(invalid.to_string()),
    }
}
