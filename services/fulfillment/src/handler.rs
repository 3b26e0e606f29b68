//! [`FulfillmentHandler`]: creates waybills on `inventory.reserved`, cancels them on
//! `dispatch.failed` and follows dispatch's `courier_assigned` and `delivered`.
//!
//! Every handler locks the order's waybill row first (`SELECT … FOR UPDATE`), lets
//! [`crate::domain`] decide, and then changes the row conditionally, so redeliveries, repeated
//! events and events handled out of order change nothing twice.

use async_trait::async_trait;
use jwl_events::{
    CourierAssigned, Delivered, DispatchFailed, Envelope, EventData, EventType, InventoryReserved,
    OrderId, Service, WaybillCancelled, WaybillCreated, WaybillId,
};
use jwl_outbox::{Handler, HandlerContext, HandlerError};

use crate::domain::{self, OnDispatchFailed, OnReserved, Step, WaybillStatus};
use crate::store::{self, StoreError, Waybill};

/// The event types fulfillment consumes: its row of the catalogue's table of who consumes what
/// ([`Service::subscriptions`]).
pub const SUBSCRIPTIONS: &[EventType] = Service::Fulfillment.subscriptions();

/// Fulfillment's event handler (stateless: everything lives in the database).
#[derive(Debug, Clone, Copy, Default)]
pub struct FulfillmentHandler;

impl From<StoreError> for HandlerError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Database(error) => HandlerError::from(error),
            unknown @ StoreError::UnknownStatus { .. } => {
                HandlerError::permanent(unknown.to_string())
            }
        }
    }
}

#[async_trait]
impl Handler for FulfillmentHandler {
    fn subscriptions(&self) -> &'static [EventType] {
        SUBSCRIPTIONS
    }

    async fn handle(
        &self,
        ctx: &mut HandlerContext<'_>,
        event: &Envelope,
    ) -> Result<(), HandlerError> {
        match &event.data {
            EventData::InventoryReserved(reserved) => on_reserved(ctx, reserved).await,
            EventData::DispatchFailed(failed) => on_failed(ctx, failed).await,
            EventData::CourierAssigned(assigned) => on_assigned(ctx, assigned).await,
            EventData::Delivered(delivered) => on_delivered(ctx, delivered).await,
            other => Err(HandlerError::permanent(format!(
                "fulfillment does not consume {}",
                other.event_type().as_str()
            ))),
        }
    }
}

async fn on_reserved(
    ctx: &mut HandlerContext<'_>,
    reserved: &InventoryReserved,
) -> Result<(), HandlerError> {
    let existing = store::lock_by_order(ctx.db(), reserved.order_id).await?;
    match domain::on_inventory_reserved(existing.as_ref().map(|w| w.status)) {
        OnReserved::Create => {
            let waybill_id = WaybillId::new();
            let inserted = store::insert_open(
                ctx.db(),
                waybill_id,
                reserved.order_id,
                reserved.pickup,
                reserved.dropoff,
            )
            .await?;
            if !inserted {
                // Another transaction created this order's waybill (or its tombstone) since we
                // looked; decide again once it is visible.
                return Err(HandlerError::transient(format!(
                    "order {} got a waybill concurrently",
                    reserved.order_id
                )));
            }
            ctx.emit(WaybillCreated {
                order_id: reserved.order_id,
                waybill_id,
                pickup: reserved.pickup,
                dropoff: reserved.dropoff,
            });
            Ok(())
        }
        OnReserved::CompleteTombstone => {
            if let Some(tombstone) = existing {
                tracing::info!(order_id = %reserved.order_id, waybill_id = %tombstone.waybill_id,
                    "dispatch failed before the reservation; no live waybill is created");
                store::complete_tombstone(
                    ctx.db(),
                    tombstone.waybill_id,
                    reserved.pickup,
                    reserved.dropoff,
                )
                .await?;
            }
            Ok(())
        }
        OnReserved::AlreadyCreated => {
            tracing::debug!(order_id = %reserved.order_id, "waybill already exists");
            Ok(())
        }
    }
}

async fn on_failed(
    ctx: &mut HandlerContext<'_>,
    failed: &DispatchFailed,
) -> Result<(), HandlerError> {
    let existing = locked_waybill(ctx, failed.order_id, failed.waybill_id).await?;
    let cancelled = WaybillCancelled {
        order_id: failed.order_id,
        waybill_id: failed.waybill_id,
    };
    match domain::on_dispatch_failed(existing.as_ref().map(|w| w.status)) {
        OnDispatchFailed::Cancel => {
            store::transition(
                ctx.db(),
                failed.waybill_id,
                WaybillStatus::Open,
                WaybillStatus::Cancelled,
                None,
            )
            .await?;
            ctx.emit(cancelled);
            Ok(())
        }
        OnDispatchFailed::Tombstone => {
            if !store::insert_tombstone(ctx.db(), failed.waybill_id, failed.order_id).await? {
                return Err(HandlerError::transient(format!(
                    "order {} got a waybill concurrently",
                    failed.order_id
                )));
            }
            tracing::info!(order_id = %failed.order_id, waybill_id = %failed.waybill_id,
                "dispatch failed before the waybill exists; recorded a cancelled tombstone");
            ctx.emit(cancelled);
            Ok(())
        }
        OnDispatchFailed::AlreadyCancelled => Ok(()),
        OnDispatchFailed::Ignore => Err(HandlerError::permanent(format!(
            "dispatch.failed ({:?}) for waybill {} of order {}, which has a courier; not cancelling",
            failed.reason, failed.waybill_id, failed.order_id
        ))),
    }
}

async fn on_assigned(
    ctx: &mut HandlerContext<'_>,
    assigned: &CourierAssigned,
) -> Result<(), HandlerError> {
    let waybill = existing_waybill(ctx, assigned.order_id, assigned.waybill_id).await?;
    let step = domain::on_courier_assigned(waybill.status);
    apply_step(
        ctx,
        &waybill,
        step,
        &assigned.courier_id,
        "courier_assigned",
    )
    .await
}

async fn on_delivered(
    ctx: &mut HandlerContext<'_>,
    delivered: &Delivered,
) -> Result<(), HandlerError> {
    let waybill = existing_waybill(ctx, delivered.order_id, delivered.waybill_id).await?;
    let step = domain::on_delivered(waybill.status);
    apply_step(ctx, &waybill, step, &delivered.courier_id, "delivered").await
}

async fn apply_step(
    ctx: &mut HandlerContext<'_>,
    waybill: &Waybill,
    step: Step,
    courier_id: &jwl_events::CourierId,
    event_name: &str,
) -> Result<(), HandlerError> {
    match step {
        Step::MoveTo(to) => {
            store::transition(
                ctx.db(),
                waybill.waybill_id,
                waybill.status,
                to,
                Some(courier_id),
            )
            .await?;
        }
        Step::Stay => {}
        Step::Refuse => {
            return Err(HandlerError::permanent(format!(
                "{event_name} contradicts waybill {}, which is {}",
                waybill.waybill_id, waybill.status
            )));
        }
    }
    Ok(())
}

/// The order's waybill, locked, checked to be `waybill_id`.
async fn locked_waybill(
    ctx: &mut HandlerContext<'_>,
    order_id: OrderId,
    waybill_id: WaybillId,
) -> Result<Option<Waybill>, HandlerError> {
    let existing = store::lock_by_order(ctx.db(), order_id).await?;
    match existing {
        Some(waybill) if waybill.waybill_id != waybill_id => Err(HandlerError::permanent(format!(
            "order {order_id} has waybill {}, not {waybill_id}",
            waybill.waybill_id
        ))),
        other => Ok(other),
    }
}

/// Like [`locked_waybill`], but the waybill must exist: dispatch only reports on waybills it
/// learned from `waybill_created`, which commits together with the row; a miss is retried.
async fn existing_waybill(
    ctx: &mut HandlerContext<'_>,
    order_id: OrderId,
    waybill_id: WaybillId,
) -> Result<Waybill, HandlerError> {
    locked_waybill(ctx, order_id, waybill_id)
        .await?
        .ok_or_else(|| HandlerError::transient(format!("unknown waybill {waybill_id}")))
}
