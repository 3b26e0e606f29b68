//! The payment handler against a real database, driven through `jwl_outbox::process_one`:
//! authorise, decline, capture, void, duplicates, tombstones and refused transitions, checked in
//! the `payments` table and in the outbox.

mod common;

use common::{courier_assigned, deliver, inventory_rejected, migrated_pool, order_created};
use jwl_events::{
    DispatchFailed, DispatchFailureReason, Envelope, EventData, EventType, OrderId, Service,
    WaybillId,
};
use jwl_outbox::{HandlerError, OutboxError, Processed};
use jwl_testkit::service::outbox_events;
use sqlx::PgPool;

fn dispatch_failed(order_id: OrderId) -> Envelope {
    Envelope::new(
        Service::Dispatch,
        DispatchFailed {
            order_id,
            waybill_id: WaybillId::new(),
            reason: DispatchFailureReason::NoCourier,
        }
        .into(),
    )
}

/// Every event in the outbox, decoded, in enqueue order.
async fn outbox(pool: &PgPool) -> Vec<Envelope> {
    outbox_events(pool).await.unwrap()
}

fn types(events: &[Envelope]) -> Vec<EventType> {
    events.iter().map(Envelope::event_type).collect()
}

/// `(status, amount_cents, decline_reason)` of the order's row, if any.
async fn payment_row(
    pool: &PgPool,
    order_id: OrderId,
) -> Option<(String, Option<i64>, Option<String>)> {
    sqlx::query_as("SELECT status, amount_cents, decline_reason FROM payments WHERE order_id = $1")
        .bind(order_id.0)
        .fetch_optional(pool)
        .await
        .unwrap()
}

async fn status(pool: &PgPool, order_id: OrderId) -> Option<String> {
    payment_row(pool, order_id).await.map(|row| row.0)
}

/// A permanent refusal whose reason contains `reason` (dead-lettered by the consumer).
fn assert_refused(result: Result<Processed, OutboxError>, reason: &str) {
    match result {
        Err(OutboxError::Handler(HandlerError::Permanent(refusal))) => {
            assert!(refusal.contains(reason), "{refusal}")
        }
        other => panic!("expected a permanent refusal ({reason}), got {other:?}"),
    }
}

fn handled(processed: Processed) -> Vec<Envelope> {
    match processed {
        Processed::Handled { emitted } => emitted,
        Processed::Duplicate => panic!("expected the handler to run, got a duplicate"),
    }
}

#[tokio::test]
async fn authorizes_then_captures_once_a_courier_is_assigned() {
    let pool = migrated_pool().await.unwrap();
    let created = order_created("tok_ok");
    let order_id = created.order_id();

    handled(deliver(&pool, &created).await.unwrap());
    assert_eq!(
        payment_row(&pool, order_id).await,
        Some(("authorized".to_owned(), Some(32_200), None))
    );
    let events = outbox(&pool).await;
    assert_eq!(types(&events), [EventType::PaymentAuthorized]);
    let EventData::PaymentAuthorized(authorized) = &events[0].data else {
        unreachable!()
    };
    let EventData::OrderCreated(order) = &created.data else {
        unreachable!()
    };
    assert_eq!(authorized.order_id, order_id);
    assert_eq!(authorized.amount_cents, 32_200);
    assert_eq!(authorized.items, order.items);
    assert_eq!(
        (authorized.pickup, authorized.dropoff),
        (order.pickup, order.dropoff)
    );
    assert_eq!(events[0].source, Service::Payment);
    assert_eq!(events[0].causation_id, Some(created.id));

    let assigned = courier_assigned(order_id);
    handled(deliver(&pool, &assigned).await.unwrap());
    assert_eq!(status(&pool, order_id).await.as_deref(), Some("captured"));
    let events = outbox(&pool).await;
    assert_eq!(
        types(&events),
        [EventType::PaymentAuthorized, EventType::PaymentCaptured]
    );
    assert_eq!(
        events[1].data,
        EventData::PaymentCaptured(jwl_events::PaymentCaptured {
            order_id,
            amount_cents: 32_200
        })
    );
    assert_eq!(events[1].causation_id, Some(assigned.id));
    let timestamps: (bool, bool) = sqlx::query_as(
        "SELECT authorized_at IS NOT NULL, captured_at IS NOT NULL FROM payments WHERE order_id = $1",
    )
    .bind(order_id.0)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(timestamps, (true, true));
}

#[tokio::test]
async fn the_decline_token_is_declined_and_never_captured() {
    let pool = migrated_pool().await.unwrap();
    let created = order_created("tok_decline");
    let order_id = created.order_id();

    handled(deliver(&pool, &created).await.unwrap());
    assert_eq!(
        payment_row(&pool, order_id).await,
        Some((
            "declined".to_owned(),
            Some(32_200),
            Some("card_declined".to_owned())
        ))
    );
    let events = outbox(&pool).await;
    assert_eq!(
        events.iter().map(|e| e.data.clone()).collect::<Vec<_>>(),
        [EventData::PaymentDeclined(jwl_events::PaymentDeclined {
            order_id,
            amount_cents: 32_200,
            reason: "card_declined".to_owned()
        })]
    );

    // a courier for a declined order contradicts the saga: refused for good; a void finds
    // nothing to do
    assert_refused(
        deliver(&pool, &courier_assigned(order_id)).await,
        "is declined and cannot be captured",
    );
    handled(deliver(&pool, &inventory_rejected(order_id)).await.unwrap());
    assert_eq!(status(&pool, order_id).await.as_deref(), Some("declined"));
    assert_eq!(outbox(&pool).await.len(), 1, "nothing to capture or void");
}

#[tokio::test]
async fn duplicate_deliveries_have_one_effect() {
    let pool = migrated_pool().await.unwrap();
    let created = order_created("tok_ok");
    let order_id = created.order_id();

    handled(deliver(&pool, &created).await.unwrap());
    // the same event again: the inbox absorbs it
    assert!(matches!(
        deliver(&pool, &created).await.unwrap(),
        Processed::Duplicate
    ));
    // a second order.created for the same order (another event id): the handler ignores it
    let mut again = order_created("tok_decline");
    let EventData::OrderCreated(order) = &mut again.data else {
        unreachable!()
    };
    order.order_id = order_id;
    assert!(handled(deliver(&pool, &again).await.unwrap()).is_empty());
    assert_eq!(status(&pool, order_id).await.as_deref(), Some("authorized"));

    // two courier assignments (e.g. a replay): captured once
    let first = courier_assigned(order_id);
    assert_eq!(handled(deliver(&pool, &first).await.unwrap()).len(), 1);
    assert!(matches!(
        deliver(&pool, &first).await.unwrap(),
        Processed::Duplicate
    ));
    assert!(handled(deliver(&pool, &courier_assigned(order_id)).await.unwrap()).is_empty());

    assert_eq!(
        types(&outbox(&pool).await),
        [EventType::PaymentAuthorized, EventType::PaymentCaptured]
    );
    assert_eq!(status(&pool, order_id).await.as_deref(), Some("captured"));
}

#[tokio::test]
async fn voids_once_when_inventory_rejects_or_dispatch_fails() {
    let pool = migrated_pool().await.unwrap();
    let created = order_created("tok_ok");
    let order_id = created.order_id();
    handled(deliver(&pool, &created).await.unwrap());

    let rejected = inventory_rejected(order_id);
    let emitted = handled(deliver(&pool, &rejected).await.unwrap());
    assert_eq!(emitted.len(), 1);
    assert_eq!(status(&pool, order_id).await.as_deref(), Some("voided"));
    // a later dispatch.failed for the same order voids nothing more
    assert!(handled(deliver(&pool, &dispatch_failed(order_id)).await.unwrap()).is_empty());

    let events = outbox(&pool).await;
    assert_eq!(
        types(&events),
        [EventType::PaymentAuthorized, EventType::PaymentVoided]
    );
    assert_eq!(
        events[1].data,
        EventData::PaymentVoided(jwl_events::PaymentVoided {
            order_id,
            amount_cents: 32_200
        })
    );
    assert_eq!(events[1].causation_id, Some(rejected.id));

    // dispatch.failed voids an authorised payment too
    let other = order_created("tok_ok");
    handled(deliver(&pool, &other).await.unwrap());
    handled(
        deliver(&pool, &dispatch_failed(other.order_id()))
            .await
            .unwrap(),
    );
    assert_eq!(
        status(&pool, other.order_id()).await.as_deref(),
        Some("voided")
    );
}

#[tokio::test]
async fn a_void_before_the_authorization_leaves_a_tombstone_and_the_order_is_declined() {
    let pool = migrated_pool().await.unwrap();
    let created = order_created("tok_ok");
    let order_id = created.order_id();

    // the compensation overtakes order.created
    assert!(handled(deliver(&pool, &dispatch_failed(order_id)).await.unwrap()).is_empty());
    assert_eq!(
        payment_row(&pool, order_id).await,
        Some(("void_requested".to_owned(), None, None))
    );
    assert!(outbox(&pool).await.is_empty());
    // another void request changes nothing
    assert!(handled(deliver(&pool, &inventory_rejected(order_id)).await.unwrap()).is_empty());

    // the late order.created is declined without authorising
    let emitted = handled(deliver(&pool, &created).await.unwrap());
    assert_eq!(emitted.len(), 1);
    assert_eq!(
        payment_row(&pool, order_id).await,
        Some((
            "declined".to_owned(),
            Some(32_200),
            Some("order_cancelled_before_authorization".to_owned())
        ))
    );
    // and can never be captured: a courier for it is a contradiction, refused for good
    assert_refused(
        deliver(&pool, &courier_assigned(order_id)).await,
        "is declined and cannot be captured",
    );
    let events = outbox(&pool).await;
    assert_eq!(types(&events), [EventType::PaymentDeclined]);
    assert_eq!(events[0].causation_id, Some(created.id));
    assert_eq!(status(&pool, order_id).await.as_deref(), Some("declined"));
}

#[tokio::test]
async fn a_voided_payment_is_never_captured_and_a_captured_one_never_voided() {
    let pool = migrated_pool().await.unwrap();

    let voided = order_created("tok_ok");
    handled(deliver(&pool, &voided).await.unwrap());
    handled(
        deliver(&pool, &dispatch_failed(voided.order_id()))
            .await
            .unwrap(),
    );
    // a contradiction: refused for good (dead-lettered by the consumer, so it alerts)
    assert_refused(
        deliver(&pool, &courier_assigned(voided.order_id())).await,
        "is voided and cannot be captured",
    );
    assert_eq!(
        status(&pool, voided.order_id()).await.as_deref(),
        Some("voided")
    );

    let captured = order_created("tok_ok");
    handled(deliver(&pool, &captured).await.unwrap());
    handled(
        deliver(&pool, &courier_assigned(captured.order_id()))
            .await
            .unwrap(),
    );
    assert_refused(
        deliver(&pool, &dispatch_failed(captured.order_id())).await,
        "which is captured",
    );
    assert_eq!(
        status(&pool, captured.order_id()).await.as_deref(),
        Some("captured")
    );

    let counts: (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE subject LIKE 'jwl.evt.payment.captured.%'),
                count(*) FILTER (WHERE subject LIKE 'jwl.evt.payment.voided.%')
         FROM outbox",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(counts, (1, 1));
}

#[tokio::test]
async fn a_capture_before_any_authorization_is_retried_later() {
    let pool = migrated_pool().await.unwrap();
    let created = order_created("tok_ok");
    let order_id = created.order_id();
    let assigned = courier_assigned(order_id);

    let error = deliver(&pool, &assigned).await.unwrap_err();
    assert!(
        matches!(error, OutboxError::Handler(HandlerError::Transient(_))),
        "{error:?}"
    );
    assert_eq!(status(&pool, order_id).await, None, "nothing was recorded");

    // once authorised, the redelivered assignment captures (the inbox did not keep it)
    handled(deliver(&pool, &created).await.unwrap());
    assert_eq!(handled(deliver(&pool, &assigned).await.unwrap()).len(), 1);
    assert_eq!(status(&pool, order_id).await.as_deref(), Some("captured"));
}

#[tokio::test]
async fn an_event_payment_does_not_consume_is_refused_for_good() {
    let pool = migrated_pool().await.unwrap();
    let created = order_created("tok_ok");
    let foreign = Envelope::new(
        Service::Payment,
        jwl_events::PaymentCaptured {
            order_id: created.order_id(),
            amount_cents: 1,
        }
        .into(),
    );
    let error = deliver(&pool, &foreign).await.unwrap_err();
    assert!(
        matches!(error, OutboxError::Handler(HandlerError::Permanent(_))),
        "{error:?}"
    );
}

#[tokio::test]
async fn migrations_can_run_again() {
    let pool = migrated_pool().await.unwrap();
    jwl_payment::migrate(&pool).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables
         WHERE table_schema = 'jwl_payment' AND table_name IN ('payments', 'outbox', 'inbox')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 3);
}

#[test]
fn consumes_creation_assignment_and_the_two_compensations_only() {
    use jwl_outbox::Handler;
    let handler = jwl_payment::PaymentHandler::new(std::sync::Arc::new(
        jwl_payment::SimulatedProcessor::new(),
    ));
    assert_eq!(
        handler.subscriptions(),
        [
            EventType::OrderCreated,
            EventType::CourierAssigned,
            EventType::InventoryRejected,
            EventType::DispatchFailed,
        ]
    );
}
