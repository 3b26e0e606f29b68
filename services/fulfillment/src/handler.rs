//! [`FulfillmentHandler`]: creates waybills on `inventory.reserved`, cancels them on
//! `dispatch.failed` and follows dispatch's `courier_assigned` and `delivered`.
//!
//! Every handler locks the order's waybill row first (`SELECT … FOR UPDATE`), lets
//! [`crate::domain`] decide, and then changes the row conditionally, so redeliveries, repeated
//! events and events handled out of order change nothing twice.
//!
//! A batch of `inventory.reserved`, `courier_assigned` and `delivered` (each order once) is taken
//! together ([`BatchHandler`]): one statement locks the batch's waybills, one inserts the new
//! ones, one applies the moves. A case the batch way does not cover (a tombstone, a waybill that
//! is missing, another or cancelled) fails the batch before anything is written, and one by one
//! then decides each event.

use async_trait::async_trait;
use jwl_events::{
    CourierAssigned, CourierId, Delivered, DispatchFailed, Envelope, EventData, EventType,
    InventoryReserved, OrderId, Service, WaybillCancelled, WaybillCreated, WaybillId,
};
use jwl_outbox::{BatchContext, BatchHandler, Handler, HandlerContext, HandlerError};

use crate::domain::{self, OnDispatchFailed, OnReserved, Step, WaybillStatus};
use crate::store::{self, Move, NewWaybill, StoreError, Waybill};

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

    fn batch(&self) -> Option<&dyn BatchHandler> {
        Some(self)
    }
}

#[async_trait]
impl BatchHandler for FulfillmentHandler {
    /// Batches of `inventory.reserved`, `courier_assigned` and `delivered` only, each order at
    /// most once (a `dispatch.failed`, rare, sends the batch one by one).
    fn takes(&self, events: &[&Envelope]) -> bool {
        jwl_outbox::each_order_once(events, |data| {
            matches!(
                data,
                EventData::InventoryReserved(_)
                    | EventData::CourierAssigned(_)
                    | EventData::Delivered(_)
            )
        })
    }

    /// Locks the batch's waybills and decides every event; then inserts the new waybills and
    /// applies the moves, and emits `waybill_created` in delivery order, as one by one.
    async fn handle_batch(
        &self,
        ctx: &mut BatchContext<'_>,
        events: &[&Envelope],
    ) -> Result<(), HandlerError> {
        let orders: Vec<OrderId> = events.iter().map(|event| event.order_id()).collect();
        let waybills = store::lock_by_orders(ctx.db(), &orders).await?;
        let mut created: Vec<(&Envelope, NewWaybill)> = Vec::new();
        let mut moves: Vec<Move<'_>> = Vec::new();
        for event in events {
            let existing = waybills.get(&event.order_id());
            let not_covered = |what: &str| {
                Err(HandlerError::transient(format!(
                    "the batch way does not cover {what} (order {})",
                    event.order_id()
                )))
            };
            let forward = match &event.data {
                EventData::InventoryReserved(reserved) => {
                    match domain::on_inventory_reserved(existing.map(|w| w.status)) {
                        OnReserved::Create => created.push((
                            event,
                            NewWaybill {
                                waybill_id: WaybillId::new(),
                                order_id: reserved.order_id,
                                pickup: reserved.pickup,
                                dropoff: reserved.dropoff,
                            },
                        )),
                        OnReserved::AlreadyCreated => {}
                        OnReserved::CompleteTombstone => {
                            return not_covered("a reservation after its tombstone");
                        }
                    }
                    continue;
                }
                EventData::CourierAssigned(assigned) => (
                    assigned.waybill_id,
                    &assigned.courier_id,
                    domain::on_courier_assigned as fn(WaybillStatus) -> Step,
                ),
                EventData::Delivered(delivered) => (
                    delivered.waybill_id,
                    &delivered.courier_id,
                    domain::on_delivered as fn(WaybillStatus) -> Step,
                ),
                other => {
                    return Err(HandlerError::permanent(format!(
                        "the batch way does not take {}",
                        other.event_type()
                    )));
                }
            };
            let (waybill_id, courier_id, decide) = forward;
            let Some(waybill) = existing.filter(|w| w.waybill_id == waybill_id) else {
                return not_covered("an event of a waybill it does not hold");
            };
            match decide(waybill.status) {
                Step::MoveTo(to) => moves.push(Move {
                    waybill_id,
                    from: waybill.status,
                    to,
                    courier_id: Some(courier_id),
                }),
                Step::Stay => {}
                Step::Refuse => return not_covered("an event that contradicts its waybill"),
            }
        }

        if !created.is_empty() {
            let new: Vec<NewWaybill> = created.iter().map(|(_, waybill)| *waybill).collect();
            let inserted = store::insert_open(ctx.db(), &new).await?;
            HandlerError::unless_all_applied(
                inserted,
                new.len(),
                "waybills were created concurrently",
            )?;
        }
        if !moves.is_empty() {
            let moved = store::transition(ctx.db(), &moves).await?;
            HandlerError::unless_all_applied(moved, moves.len(), "waybills changed concurrently")?;
        }
        for (event, waybill) in created {
            ctx.emit(event, waybill_created(&waybill));
        }
        Ok(())
    }
}

fn waybill_created(waybill: &NewWaybill) -> WaybillCreated {
    WaybillCreated {
        order_id: waybill.order_id,
        waybill_id: waybill.waybill_id,
        pickup: waybill.pickup,
        dropoff: waybill.dropoff,
    }
}

async fn on_reserved(
    ctx: &mut HandlerContext<'_>,
    reserved: &InventoryReserved,
) -> Result<(), HandlerError> {
    let existing = store::lock_by_order(ctx.db(), reserved.order_id).await?;
    match domain::on_inventory_reserved(existing.as_ref().map(|w| w.status)) {
        OnReserved::Create => {
            let waybill = NewWaybill {
                waybill_id: WaybillId::new(),
                order_id: reserved.order_id,
                pickup: reserved.pickup,
                dropoff: reserved.dropoff,
            };
            // Not inserted: another transaction created this order's waybill (or its
            // tombstone) since we looked; decide again once it is visible.
            HandlerError::unless_inserted(
                store::insert_open(ctx.db(), &[waybill]).await? == 1,
                format_args!("the waybill of order {}", reserved.order_id),
            )?;
            ctx.emit(waybill_created(&waybill));
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
                &[Move {
                    waybill_id: failed.waybill_id,
                    from: WaybillStatus::Open,
                    to: WaybillStatus::Cancelled,
                    courier_id: None,
                }],
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
    courier_id: &CourierId,
    event_name: &str,
) -> Result<(), HandlerError> {
    match step {
        Step::MoveTo(to) => {
            store::transition(
                ctx.db(),
                &[Move {
                    waybill_id: waybill.waybill_id,
                    from: waybill.status,
                    to,
                    courier_id: Some(courier_id),
                }],
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
