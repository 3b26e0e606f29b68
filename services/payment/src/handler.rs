//! The payment service's event handler: authorise on `order.created`, capture on
//! `dispatch.courier_assigned`, void on `inventory.rejected` / `dispatch.failed`.
//!
//! Each event locks the order's payment row, asks [`crate::domain`] which transition is allowed,
//! and applies it with a conditional write; the emitted event commits with the state change.
//! Authorisation, capture and void are calls to the card processor, keyed by the order; a
//! processor behind an open circuit breaker makes the handler report its dependency unavailable
//! (the consumer holds its messages, no attempt spent) and not ready until the breaker lets a
//! call through again.
//!
//! A batch of `order.created` and `dispatch.courier_assigned` (each order once) is taken
//! together ([`BatchHandler`]): one statement locks all its payments, one records the
//! authorisations' answers, one captures; the processor is still asked once per order.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use jwl_events::{
    Envelope, EventData, EventType, OrderCreated, OrderId, PaymentAuthorized, PaymentCaptured,
    PaymentDeclined, PaymentVoided, Service,
};
use jwl_outbox::{BatchContext, BatchHandler, Handler, HandlerContext, HandlerError};

use crate::domain::{self, CaptureDecision, OrderCreatedDecision, VoidDecision};
use crate::processor::{Authorization, CardProcessor, IdempotencyKey, ProcessorError};
use crate::store;

/// The event types payment consumes: its row of the catalogue's table of who consumes what
/// ([`Service::subscriptions`]).
pub const SUBSCRIPTIONS: &[EventType] = Service::Payment.subscriptions();

/// Counter of payment transitions, labelled `outcome`.
const OUTCOMES_METRIC: &str = "jwl_payment_outcomes_total";

/// Why the handler could not apply an event now (all transient: a retry can succeed).
#[derive(Debug, thiserror::Error)]
pub enum PaymentHandlingError {
    /// `dispatch.courier_assigned` arrived but the order has no payment yet.
    #[error("order {0} has no payment yet; the capture waits for its authorisation")]
    NotAuthorizedYet(OrderId),
    /// The batch way met a case it leaves to one by one (which then decides it).
    #[error("the batch way does not cover {0}")]
    NotCovered(String),
}

/// Handles the saga events payment consumes, with the given card processor.
pub struct PaymentHandler {
    processor: Arc<dyn CardProcessor>,
}

impl PaymentHandler {
    pub fn new(processor: Arc<dyn CardProcessor>) -> Self {
        Self { processor }
    }

    async fn on_order_created(
        &self,
        ctx: &mut HandlerContext<'_>,
        order: &OrderCreated,
    ) -> Result<(), HandlerError> {
        let order_id = order.order_id;
        let current = store::lock_state(ctx.db(), order_id).await?;
        match domain::on_order_created(current) {
            OrderCreatedDecision::Authorize => {
                // this transaction may still roll back after the processor answered; the
                // redelivered event then asks again under the same key, and gets the same
                // answer without a second hold
                let authorization = self
                    .processor
                    .authorize(
                        &IdempotencyKey::authorization(order_id),
                        &order.payment_token,
                        order.amount_cents,
                    )
                    .await
                    .map_err(processor_failure)?;
                let data = answer_event(order, authorization);
                let answered: Vec<store::Answered<'_>> = answered_of(&data).into_iter().collect();
                let recorded = store::insert_answered(ctx.db(), &answered).await?;
                HandlerError::unless_inserted(
                    recorded == 1,
                    format_args!("the payment of order {order_id}"),
                )?;
                count(outcome_of(&data));
                ctx.emit(data);
            }
            OrderCreatedDecision::DeclineCancelled => {
                let reason = domain::CANCELLED_BEFORE_AUTHORIZATION;
                // the row is locked and was a tombstone, so this update happens
                if store::decline_void_requested(ctx.db(), order_id, order.amount_cents, reason)
                    .await?
                {
                    tracing::info!(%order_id, "order was cancelled before authorisation; declined");
                    ctx.emit(PaymentDeclined {
                        order_id,
                        amount_cents: order.amount_cents,
                        reason: reason.to_owned(),
                    });
                    count("declined");
                }
            }
            OrderCreatedDecision::AlreadyHandled => {
                tracing::debug!(%order_id, "order already has a payment; ignoring order.created");
            }
        }
        Ok(())
    }

    async fn on_courier_assigned(
        &self,
        ctx: &mut HandlerContext<'_>,
        order_id: OrderId,
    ) -> Result<(), HandlerError> {
        let current = store::lock_state(ctx.db(), order_id).await?;
        match domain::on_capture_requested(current) {
            CaptureDecision::Capture => {
                if let Some(amount_cents) = store::capture(ctx.db(), order_id).await? {
                    // undone with the savepoint if the processor does not answer
                    self.processor
                        .capture(&IdempotencyKey::capture(order_id), amount_cents)
                        .await
                        .map_err(processor_failure)?;
                    ctx.emit(PaymentCaptured {
                        order_id,
                        amount_cents,
                    });
                    count("captured");
                }
            }
            CaptureDecision::AlreadyCaptured => {
                tracing::debug!(%order_id, "payment already captured; ignoring");
            }
            CaptureDecision::Refuse => {
                // a contradiction, not a race: dispatch assigns a courier only to an order whose
                // stock was reserved after its authorisation, and no void follows an assignment
                return Err(HandlerError::permanent(format!(
                    "courier assigned to order {order_id}, whose payment is {} and cannot be \
                     captured",
                    state_name(current)
                )));
            }
            CaptureDecision::AwaitAuthorization => {
                return Err(HandlerError::transient(
                    PaymentHandlingError::NotAuthorizedYet(order_id),
                ));
            }
        }
        Ok(())
    }

    async fn on_void_requested(
        &self,
        ctx: &mut HandlerContext<'_>,
        order_id: OrderId,
        cause: EventType,
    ) -> Result<(), HandlerError> {
        let current = store::lock_state(ctx.db(), order_id).await?;
        match domain::on_void_requested(current) {
            VoidDecision::Void => {
                if let Some(amount_cents) = store::void(ctx.db(), order_id).await? {
                    self.processor
                        .void(&IdempotencyKey::void(order_id), amount_cents)
                        .await
                        .map_err(processor_failure)?;
                    ctx.emit(PaymentVoided {
                        order_id,
                        amount_cents,
                    });
                    count("voided");
                }
            }
            VoidDecision::RecordTombstone => {
                let inserted = store::insert_void_requested(ctx.db(), order_id).await?;
                HandlerError::unless_inserted(
                    inserted,
                    format_args!("the payment of order {order_id}"),
                )?;
                tracing::info!(%order_id, %cause,
                    "void requested before authorisation; the order will be declined");
            }
            VoidDecision::AlreadyVoided | VoidDecision::NothingToVoid => {
                tracing::debug!(%order_id, state = ?current, %cause, "nothing to void");
            }
            VoidDecision::RefuseCaptured => {
                return Err(HandlerError::permanent(format!(
                    "{cause} asks to void the payment of order {order_id}, which is captured"
                )));
            }
        }
        Ok(())
    }
}

/// The payment's state as the dead letter of a contradiction names it.
fn state_name(state: Option<domain::PaymentState>) -> &'static str {
    state.map_or("absent", domain::PaymentState::as_str)
}

/// A processor that is unavailable (breaker open) holds the message without an attempt; one
/// that failed while the breaker is closed is a transient failure of this message.
fn processor_failure(error: ProcessorError) -> HandlerError {
    match error {
        ProcessorError::Unavailable(_) => HandlerError::unavailable(error),
        ProcessorError::Failed(_) | ProcessorError::TimedOut(_) => HandlerError::transient(error),
    }
}

fn count(outcome: &'static str) {
    metrics::counter!(OUTCOMES_METRIC, "outcome" => outcome).increment(1);
}

#[async_trait]
impl Handler for PaymentHandler {
    fn subscriptions(&self) -> &'static [EventType] {
        SUBSCRIPTIONS
    }

    async fn ready(&self) {
        self.processor.ready().await;
    }

    async fn handle(
        &self,
        ctx: &mut HandlerContext<'_>,
        event: &Envelope,
    ) -> Result<(), HandlerError> {
        match &event.data {
            EventData::OrderCreated(order) => self.on_order_created(ctx, order).await,
            EventData::CourierAssigned(assigned) => {
                self.on_courier_assigned(ctx, assigned.order_id).await
            }
            EventData::InventoryRejected(rejected) => {
                self.on_void_requested(ctx, rejected.order_id, event.event_type())
                    .await
            }
            EventData::DispatchFailed(failed) => {
                self.on_void_requested(ctx, failed.order_id, event.event_type())
                    .await
            }
            other => Err(HandlerError::permanent(format!(
                "payment does not consume {}",
                other.event_type()
            ))),
        }
    }

    fn batch(&self) -> Option<&dyn BatchHandler> {
        Some(self)
    }
}

/// What the batch way does with one event of its batch.
enum Step<'e> {
    Authorize(&'e OrderCreated),
    Capture(OrderId),
    /// Already handled (a duplicate): nothing.
    Skip,
}

#[async_trait]
impl BatchHandler for PaymentHandler {
    /// Batches of `order.created` and `dispatch.courier_assigned` only, each order at most
    /// once (a void request, rare, sends the batch one by one).
    fn takes(&self, events: &[&Envelope]) -> bool {
        jwl_outbox::each_order_once(events, |data| {
            matches!(
                data,
                EventData::OrderCreated(_) | EventData::CourierAssigned(_)
            )
        })
    }

    /// Locks the batch's payments and decides every event first; then asks the processor for
    /// each new order's authorisation in delivery order and records the answers, and captures
    /// the assigned orders and asks the processor for each capture, as one by one. An order in a
    /// state the common case does not cover (a void requested before its authorisation, a
    /// capture to refuse or to wait for) fails the batch before the processor is asked, and one
    /// by one then decides each event.
    async fn handle_batch(
        &self,
        ctx: &mut BatchContext<'_>,
        events: &[&Envelope],
    ) -> Result<(), HandlerError> {
        let orders: Vec<OrderId> = events.iter().map(|event| event.order_id()).collect();
        let states = store::lock_states(ctx.db(), &orders).await?;
        let mut steps = Vec::with_capacity(events.len());
        for (event, current) in events.iter().zip(states) {
            let not_covered = |what: &str| {
                Err(HandlerError::transient(PaymentHandlingError::NotCovered(
                    format!(
                        "{what} (order {}, payment {})",
                        event.order_id(),
                        state_name(current)
                    ),
                )))
            };
            steps.push(match &event.data {
                EventData::OrderCreated(order) => match domain::on_order_created(current) {
                    OrderCreatedDecision::Authorize => Step::Authorize(order),
                    OrderCreatedDecision::AlreadyHandled => Step::Skip,
                    OrderCreatedDecision::DeclineCancelled => {
                        return not_covered("an order.created after its void");
                    }
                },
                EventData::CourierAssigned(assigned) => {
                    match domain::on_capture_requested(current) {
                        CaptureDecision::Capture => Step::Capture(assigned.order_id),
                        CaptureDecision::AlreadyCaptured => Step::Skip,
                        CaptureDecision::Refuse | CaptureDecision::AwaitAuthorization => {
                            return not_covered("a capture that cannot happen now");
                        }
                    }
                }
                other => {
                    return Err(HandlerError::permanent(format!(
                        "the batch way does not take {}",
                        other.event_type()
                    )));
                }
            });
        }

        // the events to emit, in delivery order
        let mut emitted: Vec<Option<EventData>> = Vec::with_capacity(events.len());
        for step in &steps {
            let Step::Authorize(order) = step else {
                emitted.push(None);
                continue;
            };
            let authorization = self
                .processor
                .authorize(
                    &IdempotencyKey::authorization(order.order_id),
                    &order.payment_token,
                    order.amount_cents,
                )
                .await
                .map_err(processor_failure)?;
            emitted.push(Some(answer_event(order, authorization)));
        }
        let answered: Vec<store::Answered<'_>> =
            emitted.iter().flatten().filter_map(answered_of).collect();
        if !answered.is_empty() {
            let recorded = store::insert_answered(ctx.db(), &answered).await?;
            HandlerError::unless_all_applied(
                recorded,
                answered.len(),
                "payments were recorded concurrently",
            )?;
        }

        let to_capture: Vec<OrderId> = steps
            .iter()
            .filter_map(|step| match step {
                Step::Capture(order_id) => Some(*order_id),
                _ => None,
            })
            .collect();
        if !to_capture.is_empty() {
            let captured: HashMap<OrderId, i64> = store::capture_many(ctx.db(), &to_capture)
                .await?
                .into_iter()
                .collect();
            HandlerError::unless_all_applied(
                captured.len() as u64,
                to_capture.len(),
                "payments changed concurrently",
            )?;
            // in delivery order, as one by one
            for (step, slot) in steps.iter().zip(emitted.iter_mut()) {
                let Step::Capture(order_id) = step else {
                    continue;
                };
                let amount_cents = captured.get(order_id).copied().ok_or_else(|| {
                    HandlerError::transient(PaymentHandlingError::NotCovered(format!(
                        "order {order_id} was not captured"
                    )))
                })?;
                // undone with the batch if the processor does not answer
                self.processor
                    .capture(&IdempotencyKey::capture(*order_id), amount_cents)
                    .await
                    .map_err(processor_failure)?;
                *slot = Some(
                    PaymentCaptured {
                        order_id: *order_id,
                        amount_cents,
                    }
                    .into(),
                );
            }
        }

        for (event, data) in events.iter().zip(emitted) {
            if let Some(data) = data {
                count(outcome_of(&data));
                ctx.emit(event, data);
            }
        }
        Ok(())
    }
}

/// The event that records the processor's answer to `order`'s authorisation.
fn answer_event(order: &OrderCreated, authorization: Authorization) -> EventData {
    match authorization {
        Authorization::Approved => PaymentAuthorized {
            order_id: order.order_id,
            amount_cents: order.amount_cents,
            items: order.items.clone(),
            pickup: order.pickup,
            dropoff: order.dropoff,
        }
        .into(),
        Authorization::Declined { reason } => PaymentDeclined {
            order_id: order.order_id,
            amount_cents: order.amount_cents,
            reason,
        }
        .into(),
    }
}

/// The payment to record for an answer event of [`answer_event`]; `None` for another event.
fn answered_of(data: &EventData) -> Option<store::Answered<'_>> {
    match data {
        EventData::PaymentAuthorized(paid) => Some(store::Answered {
            order_id: paid.order_id,
            amount_cents: paid.amount_cents,
            decline_reason: None,
        }),
        EventData::PaymentDeclined(declined) => Some(store::Answered {
            order_id: declined.order_id,
            amount_cents: declined.amount_cents,
            decline_reason: Some(&declined.reason),
        }),
        _ => None,
    }
}

/// The `outcome` label of an emitted payment event.
fn outcome_of(data: &EventData) -> &'static str {
    match data {
        EventData::PaymentAuthorized(_) => "authorized",
        EventData::PaymentDeclined(_) => "declined",
        EventData::PaymentVoided(_) => "voided",
        _ => "captured",
    }
}
