//! [`DispatchHandler`]: assigns couriers on `waybill_created` and decides cancellations on
//! `order.cancel_requested`.
//!
//! Both handlers take the order's advisory lock first ([`store::lock_order`]), so a
//! cancellation and the waybill it targets are decided one after the other: a cancellation
//! that finds no waybill leaves a tombstone, and the waybill that arrives later sees it.

use std::sync::Arc;

use async_trait::async_trait;
use jwl_events::{
    CourierAssigned, DispatchFailed, Envelope, EventData, EventType, OrderCancelRequested, Service,
    WaybillCreated,
};
use jwl_outbox::{Handler, HandlerContext, HandlerError};
use jwl_service_kit::Settings;

use crate::dispatcher;
use crate::domain::{self, OnCancel, OnWaybillCreated};
use crate::error::DispatchError;
use crate::store::{self, NewWaybill, Placement};

/// The event types dispatch consumes: its row of the catalogue's table of who consumes what
/// ([`Service::subscriptions`]).
pub const SUBSCRIPTIONS: &[EventType] = Service::Dispatch.subscriptions();

/// Dispatch's event handler.
#[derive(Debug, Clone)]
pub struct DispatchHandler {
    settings: Arc<Settings>,
}

impl DispatchHandler {
    /// A handler using the radius, capacity and dispatch deadline of `settings`.
    pub fn new(settings: Arc<Settings>) -> Self {
        Self { settings }
    }
}

#[async_trait]
impl Handler for DispatchHandler {
    fn subscriptions(&self) -> &'static [EventType] {
        SUBSCRIPTIONS
    }

    async fn handle(
        &self,
        ctx: &mut HandlerContext<'_>,
        event: &Envelope,
    ) -> Result<(), HandlerError> {
        match &event.data {
            EventData::WaybillCreated(created) => self.on_created(ctx, event, created).await,
            EventData::OrderCancelRequested(cancel) => on_cancel(ctx, event, cancel).await,
            other => Err(HandlerError::permanent(format!(
                "dispatch does not consume {}",
                other.event_type().as_str()
            ))),
        }
    }
}

impl DispatchHandler {
    async fn on_created(
        &self,
        ctx: &mut HandlerContext<'_>,
        event: &Envelope,
        created: &WaybillCreated,
    ) -> Result<(), HandlerError> {
        let order_id = created.order_id;
        store::lock_order(ctx.db(), order_id).await?;
        let (known, tombstone) = store::order_on_arrival(ctx.db(), order_id).await?;
        let decision =
            domain::on_waybill_created(created.waybill_id, known.map(|(id, _)| id), tombstone);
        let new = NewWaybill {
            waybill_id: created.waybill_id,
            order_id,
            pickup: created.pickup,
            pickup_cell: domain::cell_of(&created.pickup).map_err(DispatchError::from)?,
            deadline: domain::waiting_deadline(event.time, self.settings.dispatch_deadline),
            cause_event_id: event.id,
            // this handler's span (a child of the event's), so later assignments and the
            // deadline timer's failure hang under dispatch in the order's trace
            cause_traceparent: jwl_outbox::trace_context::current_traceparent()
                .or_else(|| event.traceparent.clone()),
        };
        match decision {
            OnWaybillCreated::AlreadyKnown => Ok(()),
            OnWaybillCreated::Conflict(known) => Err(HandlerError::permanent(format!(
                "order {order_id} already has waybill {known}, not {}",
                created.waybill_id
            ))),
            OnWaybillCreated::FailAtOnce(reason) => {
                store::insert_waybill(ctx.db(), &new, &Placement::Failed(reason)).await?;
                tracing::info!(%order_id, waybill_id = %created.waybill_id, ?reason,
                    "order was cancelled before its waybill arrived; failing it");
                ctx.emit(DispatchFailed {
                    order_id,
                    waybill_id: created.waybill_id,
                    reason,
                });
                Ok(())
            }
            OnWaybillCreated::Dispatch => {
                match dispatcher::reserve_nearest(ctx.db(), &created.pickup, &self.settings).await?
                {
                    Some(courier) => {
                        let assigned = CourierAssigned {
                            order_id,
                            waybill_id: created.waybill_id,
                            courier_id: courier.courier_id.clone(),
                            distance_km: courier.distance_km,
                        };
                        store::insert_waybill(ctx.db(), &new, &Placement::Assigned(courier))
                            .await?;
                        ctx.emit(assigned);
                        Ok(())
                    }
                    None => {
                        store::insert_waybill(ctx.db(), &new, &Placement::Waiting).await?;
                        tracing::info!(%order_id, waybill_id = %created.waybill_id,
                            deadline = %new.deadline, "no courier available; waiting");
                        Ok(())
                    }
                }
            }
        }
    }
}

async fn on_cancel(
    ctx: &mut HandlerContext<'_>,
    event: &Envelope,
    cancel: &OrderCancelRequested,
) -> Result<(), HandlerError> {
    let order_id = cancel.order_id;
    store::lock_order(ctx.db(), order_id).await?;
    let current = store::order_waybill(ctx.db(), order_id).await?;
    match domain::on_cancel_requested(current, cancel.reason) {
        OnCancel::FailNow(waybill_id, reason) => {
            if store::fail_waiting(ctx.db(), waybill_id, reason).await? {
                ctx.emit(DispatchFailed {
                    order_id,
                    waybill_id,
                    reason,
                });
            }
            Ok(())
        }
        OnCancel::Tombstone(reason) => {
            store::insert_tombstone(ctx.db(), order_id, reason, event.id).await?;
            tracing::info!(%order_id, ?reason, "cancellation before the waybill; tombstone recorded");
            Ok(())
        }
        OnCancel::Refuse => {
            tracing::info!(%order_id, reason = ?cancel.reason,
                "cancellation refused: a courier is already assigned");
            Ok(())
        }
        OnCancel::AlreadyFailed => Ok(()),
    }
}
