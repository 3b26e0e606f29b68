//! The inventory service's event handler: reserve on `payment.authorized`, release on
//! `dispatch.failed`, commit on `payment.captured`.
//!
//! Each event tries its common transition first, in one conditional statement (reserve an order
//! inventory has not heard of, ship a reserved one); when that does not apply, it locks the
//! order's reservation row, asks [`crate::domain`] which transition is allowed, and applies it.
//! Every consumer batch has locked its stock and order rows first ([`Handler::lock_batch`]), so
//! the state cannot change in between. The emitted event commits with the stock change.
//!
//! A batch of reservations and captures only ([`BatchHandler`]) is handled together: its orders
//! decided in delivery order against the stock, then recorded in one statement and shipped in
//! another, whatever the batch's size.

use std::collections::BTreeSet;

use async_trait::async_trait;
use jwl_events::{
    Envelope, EventData, EventType, InventoryRejected, InventoryReleased, InventoryReserved,
    OrderId, PaymentAuthorized, Service,
};
use jwl_outbox::{BatchContext, BatchHandler, Handler, HandlerContext, HandlerError};

use crate::domain::{
    self, AuthorizedDecision, CommitDecision, Line, ReleaseDecision, ReservationDecision,
};
use crate::store::{self, NewOrder};

/// The event types inventory consumes: its row of the catalogue's table of who consumes what
/// ([`Service::subscriptions`]).
pub const SUBSCRIPTIONS: &[EventType] = Service::Inventory.subscriptions();

/// Counter of reservation transitions, labelled `outcome`.
const OUTCOMES_METRIC: &str = "jwl_inventory_outcomes_total";

/// Why the handler could not apply an event now (all transient: a retry can succeed).
#[derive(Debug, thiserror::Error)]
pub enum InventoryHandlingError {
    /// `payment.captured` arrived but nothing is recorded for the order yet.
    #[error("order {0} has no reservation yet; the commit waits for it")]
    NotReservedYet(OrderId),
}

/// Handles the saga events inventory consumes.
#[derive(Debug, Clone, Copy, Default)]
pub struct InventoryHandler;

impl InventoryHandler {
    /// The common case first: inventory has not heard of the order, so its stock is locked,
    /// the reservation decided and recorded in one statement that inserts the order's row.
    /// Only if that row already exists (a redelivery the inbox did not see, or the tombstone
    /// of a dispatch failure that came first) is the order's state read and the domain asked.
    async fn on_payment_authorized(
        &self,
        ctx: &mut HandlerContext<'_>,
        payment: &PaymentAuthorized,
    ) -> Result<(), HandlerError> {
        let order_id = payment.order_id;
        let lines = domain::merge_lines(&payment.items);
        let skus: Vec<String> = lines.iter().map(|line| line.sku.clone()).collect();
        let stock = store::lock_stock(ctx.db(), &skus).await?;
        let decision = domain::decide_reservation(lines, &stock);
        let new = NewOrder {
            order_id,
            items: &payment.items,
            decision: &decision,
        };
        if store::record_orders(ctx.db(), &[new]).await? == 1 {
            emit_decision(payment, decision, |data| ctx.emit(data));
            return Ok(());
        }
        let current = store::lock_order(ctx.db(), order_id).await?;
        match domain::on_payment_authorized(current) {
            AuthorizedDecision::Reserve => {
                // the insert found a row that the read does not: it cannot vanish in between
                return Err(HandlerError::transient(format!(
                    "the reservation of order {order_id} conflicted with a row that is gone"
                )));
            }
            AuthorizedDecision::SkipReleased => {
                tracing::info!(%order_id,
                    "dispatch failed before the reservation; reserving nothing");
            }
            AuthorizedDecision::AlreadyHandled => {
                tracing::debug!(%order_id, state = ?current, "order already handled; ignoring");
            }
        }
        Ok(())
    }

    async fn on_dispatch_failed(
        &self,
        ctx: &mut HandlerContext<'_>,
        order_id: OrderId,
    ) -> Result<(), HandlerError> {
        let current = store::lock_order(ctx.db(), order_id).await?;
        match domain::on_dispatch_failed(current) {
            ReleaseDecision::Release => {
                if let Some(items) = store::release(ctx.db(), order_id).await? {
                    ctx.emit(InventoryReleased { order_id, items });
                    count("released");
                }
            }
            ReleaseDecision::RecordTombstone => {
                let inserted = store::insert_release_requested(ctx.db(), order_id).await?;
                HandlerError::unless_inserted(
                    inserted,
                    format_args!("the reservation of order {order_id}"),
                )?;
                tracing::info!(%order_id,
                    "release requested before any reservation; the reservation will be skipped");
            }
            ReleaseDecision::NothingReserved | ReleaseDecision::AlreadyReleased => {
                tracing::debug!(%order_id, state = ?current, "nothing to release");
            }
            ReleaseDecision::RefuseCommitted => {
                // dispatch never fails an order it assigned a courier to, and only an assigned
                // order is captured, then committed: a contradiction
                return Err(HandlerError::permanent(format!(
                    "dispatch failed for order {order_id}, whose stock has shipped; not releasing"
                )));
            }
        }
        Ok(())
    }

    /// The common case first: the order is reserved, and one statement ships it. Only if it
    /// was not is its state read and the domain asked why.
    async fn on_payment_captured(
        &self,
        ctx: &mut HandlerContext<'_>,
        order_id: OrderId,
    ) -> Result<(), HandlerError> {
        if store::commit(ctx.db(), &[order_id]).await? == 1 {
            count("committed");
            return Ok(());
        }
        let current = store::lock_order(ctx.db(), order_id).await?;
        match domain::on_payment_captured(current) {
            CommitDecision::Commit => {
                // the commit found it not reserved, under the batch's lock on its row
                return Err(HandlerError::transient(format!(
                    "order {order_id} was not reserved when committed but is now"
                )));
            }
            CommitDecision::AlreadyCommitted => {
                tracing::debug!(%order_id, "already committed; ignoring");
            }
            CommitDecision::Refuse => {
                return Err(HandlerError::permanent(format!(
                    "payment captured for order {order_id}, which has nothing reserved ({}); \
                     not committing",
                    current.map_or("absent", domain::OrderState::as_str)
                )));
            }
            CommitDecision::AwaitReservation => {
                return Err(HandlerError::transient(
                    InventoryHandlingError::NotReservedYet(order_id),
                ));
            }
        }
        Ok(())
    }
}

/// Emits (through `emit`) what inventory tells of `decision`, recorded for `payment`'s order.
fn emit_decision(
    payment: &PaymentAuthorized,
    decision: ReservationDecision,
    mut emit: impl FnMut(EventData),
) {
    let order_id = payment.order_id;
    match decision {
        ReservationDecision::Reserve(_) => {
            emit(
                InventoryReserved {
                    order_id,
                    items: payment.items.clone(),
                    pickup: payment.pickup,
                    dropoff: payment.dropoff,
                }
                .into(),
            );
            count("reserved");
        }
        ReservationDecision::Reject { unavailable_skus } => {
            tracing::info!(%order_id, ?unavailable_skus, "out of stock; rejected");
            emit(
                InventoryRejected {
                    order_id,
                    unavailable_skus,
                }
                .into(),
            );
            count("rejected");
        }
    }
}

fn count(outcome: &'static str) {
    count_many(outcome, 1);
}

fn count_many(outcome: &'static str, n: u64) {
    metrics::counter!(OUTCOMES_METRIC, "outcome" => outcome).increment(n);
}

/// The common case of a batch in a few statements, whatever its size: reserve (or reject) the
/// orders inventory has not heard of, and ship the reserved ones whose payment was captured.
#[async_trait]
impl BatchHandler for InventoryHandler {
    /// Batches of `payment.authorized` and `payment.captured` only, each order at most once
    /// (a `dispatch.failed`, rare, sends the batch one by one).
    fn takes(&self, events: &[&Envelope]) -> bool {
        jwl_outbox::each_order_once(events, |data| {
            matches!(
                data,
                EventData::PaymentAuthorized(_) | EventData::PaymentCaptured(_)
            )
        })
    }

    /// Decides the reservations in delivery order against the batch's stock, each taking its
    /// stock before the next is decided (as one by one), records them all, then ships the
    /// captured orders. If any order already had a reservation row, or a captured one was not
    /// reserved, this fails and the batch is handled one by one, which knows what to do.
    async fn handle_batch(
        &self,
        ctx: &mut BatchContext<'_>,
        events: &[&Envelope],
    ) -> Result<(), HandlerError> {
        let mut authorized = Vec::new();
        let mut captured = Vec::new();
        for event in events {
            match &event.data {
                EventData::PaymentAuthorized(payment) => authorized.push((*event, payment)),
                EventData::PaymentCaptured(capture) => captured.push(capture.order_id),
                other => {
                    return Err(HandlerError::permanent(format!(
                        "the batch way does not take {}",
                        other.event_type()
                    )));
                }
            }
        }
        if !authorized.is_empty() {
            let lines: Vec<Vec<Line>> = authorized
                .iter()
                .map(|(_, payment)| domain::merge_lines(&payment.items))
                .collect();
            let skus: BTreeSet<String> = lines.iter().flatten().map(|l| l.sku.clone()).collect();
            let skus: Vec<String> = skus.into_iter().collect();
            let mut stock = store::lock_stock(ctx.db(), &skus).await?;
            let decisions = domain::decide_reservations(lines, &mut stock);
            let new: Vec<NewOrder<'_>> = authorized
                .iter()
                .zip(&decisions)
                .map(|((_, payment), decision)| NewOrder {
                    order_id: payment.order_id,
                    items: &payment.items,
                    decision,
                })
                .collect();
            let recorded = store::record_orders(ctx.db(), &new).await?;
            HandlerError::unless_all_applied(
                recorded,
                new.len(),
                "orders already had a reservation row",
            )?;
            for ((cause, payment), decision) in authorized.iter().zip(decisions) {
                emit_decision(payment, decision, |data| ctx.emit(cause, data));
            }
        }
        if !captured.is_empty() {
            let committed = store::commit(ctx.db(), &captured).await?;
            HandlerError::unless_all_applied(
                committed,
                captured.len(),
                "captured orders were not reserved",
            )?;
            count_many("committed", committed);
        }
        Ok(())
    }
}

#[async_trait]
impl Handler for InventoryHandler {
    fn subscriptions(&self) -> &'static [EventType] {
        SUBSCRIPTIONS
    }

    /// One batch at a time: a reservation locks the stock rows of its SKUs until the batch
    /// commits, and with popular SKUs concurrent batches only queue behind each other's locks
    /// (measured: a 4-worker inventory convoyed into 30 s stalls at 100 orders/s).
    fn max_workers(&self) -> usize {
        1
    }

    /// Locks what the batch will touch, stock first (in SKU order), then the orders' rows (in
    /// order id order). Replicas of inventory run a batch each at once; without this, two
    /// batches whose orders share popular SKUs in another order deadlocked, and PostgreSQL
    /// broke each deadlock after `deadlock_timeout` by failing a whole batch, which was then
    /// retried into the next one (measured: 2 replicas at 200 orders/s, Zipf SKUs, finished
    /// under 10 sagas/s).
    async fn lock_batch(
        &self,
        conn: &mut sqlx::PgConnection,
        events: &[&Envelope],
    ) -> Result<(), sqlx::Error> {
        let mut reserving = Vec::new();
        let mut settling = Vec::new();
        let mut orders = Vec::with_capacity(events.len());
        for event in events {
            match &event.data {
                EventData::PaymentAuthorized(payment) => {
                    reserving.extend(payment.items.iter().map(|item| item.sku.clone()));
                    orders.push(payment.order_id);
                }
                EventData::DispatchFailed(failed) => {
                    settling.push(failed.order_id);
                    orders.push(failed.order_id);
                }
                EventData::PaymentCaptured(captured) => {
                    settling.push(captured.order_id);
                    orders.push(captured.order_id);
                }
                _ => {}
            }
        }
        if orders.is_empty() {
            return Ok(());
        }
        store::lock_for_batch(conn, &reserving, &settling, &orders).await
    }

    fn batch(&self) -> Option<&dyn BatchHandler> {
        Some(self)
    }

    async fn handle(
        &self,
        ctx: &mut HandlerContext<'_>,
        event: &Envelope,
    ) -> Result<(), HandlerError> {
        match &event.data {
            EventData::PaymentAuthorized(payment) => self.on_payment_authorized(ctx, payment).await,
            EventData::DispatchFailed(failed) => {
                self.on_dispatch_failed(ctx, failed.order_id).await
            }
            EventData::PaymentCaptured(captured) => {
                self.on_payment_captured(ctx, captured.order_id).await
            }
            other => Err(HandlerError::permanent(format!(
                "inventory does not consume {}",
                other.event_type()
            ))),
        }
    }
}
