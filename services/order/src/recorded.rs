//! Writing back what the order service's own routes and timer did when they emitted a recorded
//! event: the rows `POST /v1/orders` inserts for `order.created`, and the cancel request
//! `POST /v1/orders/{id}/cancel` (or the deadline timer) marks for `order.cancel_requested`,
//! each with its timeline entry. Sandbox replay uses it to give the order read model the rows it
//! expects, through this crate's own SQL rather than a second copy of it.

use jwl_events::{Envelope, EventData};
use sqlx::PgConnection;

use crate::domain::ValidOrder;
use crate::store::{self, NewOrder};

/// Applies `event` as the route or timer that emitted it did. Idempotent; events the order
/// service does not emit from a route or timer are left alone (`false`).
pub async fn record_emitted(
    conn: &mut PgConnection,
    event: &Envelope,
) -> Result<bool, sqlx::Error> {
    match &event.data {
        EventData::OrderCreated(created) => {
            // the timeline refers to the order: the order first, unless this was done before
            if !store::timeline_has(conn, event).await? {
                let order = ValidOrder {
                    items: created.items.clone(),
                    amount_cents: created.amount_cents,
                    pickup: created.pickup,
                    dropoff: created.dropoff,
                    payment_token: created.payment_token.clone(),
                };
                let new = NewOrder {
                    order_id: created.order_id,
                    customer_id: &created.customer_id,
                    order: &order,
                    deadline: created.deadline,
                    created_at: event.time,
                    traceparent: None,
                };
                store::insert_order(conn, &new).await?;
                store::insert_timeline(conn, event).await?;
            }
            Ok(true)
        }
        EventData::OrderCancelRequested(cancel) => {
            if store::insert_timeline(conn, event).await? {
                store::mark_cancel_requested(
                    conn,
                    cancel.order_id,
                    cancel.reason.into(),
                    event.time,
                )
                .await?;
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}
