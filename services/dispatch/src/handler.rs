//! [`DispatchHandler`]: assigns couriers on `waybill_created` and decides cancellations on
//! `order.cancel_requested`.
//!
//! Both handlers take the order's advisory lock first ([`store::lock_order`]), so a
//! cancellation and the waybill it targets are decided one after the other: a cancellation
//! that finds no waybill leaves a tombstone, and the waybill that arrives later sees it.
//!
//! A batch of `waybill_created` (each order once) is taken together ([`BatchHandler`]): one
//! statement locks all its orders, one reads their state, one locks the matching areas of all
//! their searches, one finds the nearest available couriers of every pickup, one takes the
//! capacity picked from them (in delivery order, as one by one would), one inserts all the
//! waybills.

use std::sync::Arc;

use async_trait::async_trait;
use jwl_events::{
    CourierAssigned, DispatchFailed, DispatchFailureReason, Envelope, EventData, EventType,
    GeoPoint, OrderCancelRequested, OrderId, Service, WaybillCreated,
};
use jwl_outbox::{BatchContext, BatchHandler, Handler, HandlerContext, HandlerError};
use jwl_service_kit::Settings;
use sqlx::PgConnection;

use crate::dispatcher;
use crate::domain::{self, CourierSearch, MatchingArea, OnCancel, OnWaybillCreated};
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
            EventData::WaybillCreated(created) => {
                let arriving = Arriving {
                    event,
                    created,
                    // this handler's span (a child of the event's), so later assignments and
                    // the deadline timer's failure hang under dispatch in the order's trace
                    traceparent: jwl_outbox::trace_context::current_traceparent()
                        .or_else(|| event.traceparent.clone()),
                };
                for data in self
                    .on_arrivals(ctx.db(), &[arriving])
                    .await?
                    .into_iter()
                    .flatten()
                {
                    ctx.emit(data);
                }
                Ok(())
            }
            EventData::OrderCancelRequested(cancel) => on_cancel(ctx, event, cancel).await,
            other => Err(HandlerError::permanent(format!(
                "dispatch does not consume {}",
                other.event_type().as_str()
            ))),
        }
    }

    fn batch(&self) -> Option<&dyn BatchHandler> {
        Some(self)
    }
}

#[async_trait]
impl BatchHandler for DispatchHandler {
    /// Batches of `waybill_created` only, each order at most once (a cancellation, rare, sends
    /// the batch one by one).
    fn takes(&self, events: &[&Envelope]) -> bool {
        jwl_outbox::each_order_once(events, |data| matches!(data, EventData::WaybillCreated(_)))
    }

    /// The same as one by one, in fewer statements: see [`DispatchHandler::on_arrivals`].
    async fn handle_batch(
        &self,
        ctx: &mut BatchContext<'_>,
        events: &[&Envelope],
    ) -> Result<(), HandlerError> {
        let mut arrivals = Vec::with_capacity(events.len());
        for event in events {
            let EventData::WaybillCreated(created) = &event.data else {
                return Err(HandlerError::permanent(format!(
                    "the batch way does not take {}",
                    event.event_type()
                )));
            };
            arrivals.push(Arriving {
                event,
                created,
                traceparent: ctx
                    .traceparent(event)
                    .map(str::to_owned)
                    .or_else(|| event.traceparent.clone()),
            });
        }
        let emitted = self.on_arrivals(ctx.db(), &arrivals).await?;
        for (arriving, data) in arrivals.iter().zip(emitted) {
            if let Some(data) = data {
                ctx.emit(arriving.event, data);
            }
        }
        Ok(())
    }
}

/// A `waybill_created` being handled, and the trace context its waybill's later events
/// continue (the span of the handler that took it).
struct Arriving<'e> {
    event: &'e Envelope,
    created: &'e WaybillCreated,
    traceparent: Option<String>,
}

/// What to do with an arriving waybill, once its order's state is known.
enum Plan {
    /// Already known (a repeated event): nothing.
    Skip,
    /// Record it failed: the order was cancelled before it arrived.
    Fail(DispatchFailureReason),
    /// Find it a courier in this search's area.
    Dispatch(CourierSearch),
}

impl DispatchHandler {
    /// Handles arriving waybills in delivery order, in a few statements whatever their number:
    /// locks their orders and reads what dispatch knows of them (two statements), locks the
    /// matching areas of those to dispatch (one), finds each its courier in turn (each search
    /// sees the capacity the ones before it took, as one by one: two statements for all,
    /// [`dispatcher::reserve_all_locked`]), and inserts the waybills (one).
    /// Returns the event each one emits. An order that already has another waybill fails it
    /// all, permanently (one by one, that waybill alone is dead-lettered).
    async fn on_arrivals(
        &self,
        conn: &mut PgConnection,
        arrivals: &[Arriving<'_>],
    ) -> Result<Vec<Option<EventData>>, HandlerError> {
        let orders: Vec<OrderId> = arrivals.iter().map(|a| a.created.order_id).collect();
        store::lock_orders(conn, &orders).await?;
        let states = store::orders_on_arrival(conn, &orders).await?;
        let mut plans = Vec::with_capacity(arrivals.len());
        for (arriving, (known, tombstone)) in arrivals.iter().zip(states) {
            let created = arriving.created;
            plans.push(
                match domain::on_waybill_created(created.waybill_id, known, tombstone) {
                    OnWaybillCreated::AlreadyKnown => Plan::Skip,
                    OnWaybillCreated::Conflict(known) => {
                        return Err(HandlerError::permanent(format!(
                            "order {} already has waybill {known}, not {}",
                            created.order_id, created.waybill_id
                        )));
                    }
                    OnWaybillCreated::FailAtOnce(reason) => Plan::Fail(reason),
                    OnWaybillCreated::Dispatch => Plan::Dispatch(
                        domain::courier_search(&created.pickup, self.settings.dispatch_radius_km)
                            .map_err(DispatchError::from)?,
                    ),
                },
            );
        }
        let areas: Vec<MatchingArea> = plans
            .iter()
            .filter_map(|plan| match plan {
                Plan::Dispatch(search) => Some(search.matching_areas.iter().copied()),
                _ => None,
            })
            .flatten()
            .collect();
        if !areas.is_empty() {
            store::lock_areas_for_waybill(conn, &areas).await?;
        }

        let searches: Vec<(&GeoPoint, &CourierSearch)> = arrivals
            .iter()
            .zip(&plans)
            .filter_map(|(arriving, plan)| match plan {
                Plan::Dispatch(search) => Some((&arriving.created.pickup, search)),
                _ => None,
            })
            .collect();
        let mut reserved = dispatcher::reserve_all_locked(conn, &searches, &self.settings)
            .await?
            .into_iter();

        let mut waybills = Vec::with_capacity(arrivals.len());
        let mut emitted = Vec::with_capacity(arrivals.len());
        for (arriving, plan) in arrivals.iter().zip(plans) {
            let created = arriving.created;
            let order_id = created.order_id;
            let waybill_id = created.waybill_id;
            let (placement, event) = match plan {
                Plan::Skip => {
                    emitted.push(None);
                    continue;
                }
                Plan::Fail(reason) => {
                    tracing::info!(%order_id, %waybill_id, ?reason,
                        "order was cancelled before its waybill arrived; failing it");
                    let failed = DispatchFailed {
                        order_id,
                        waybill_id,
                        reason,
                    };
                    (Placement::Failed(reason), Some(failed.into()))
                }
                Plan::Dispatch(_) => match reserved.next().flatten() {
                    Some(courier) => {
                        let assigned = CourierAssigned {
                            order_id,
                            waybill_id,
                            courier_id: courier.courier_id.clone(),
                            distance_km: courier.distance_km,
                        };
                        (Placement::Assigned(courier), Some(assigned.into()))
                    }
                    None => {
                        tracing::info!(%order_id, %waybill_id,
                                "no courier available; waiting");
                        (Placement::Waiting, None)
                    }
                },
            };
            let new = NewWaybill {
                waybill_id,
                order_id,
                pickup: created.pickup,
                pickup_cell: domain::cell_of(&created.pickup).map_err(DispatchError::from)?,
                deadline: domain::waiting_deadline(
                    arriving.event.time,
                    self.settings.dispatch_deadline,
                ),
                cause_event_id: arriving.event.id,
                cause_traceparent: arriving.traceparent.clone(),
            };
            waybills.push((new, placement));
            emitted.push(event);
        }
        if !waybills.is_empty() {
            store::insert_waybills(conn, &waybills).await?;
        }
        Ok(emitted)
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
