//! Payment's batch way against a real database: a batch of `order.created` and
//! `dispatch.courier_assigned` taken together ends exactly where the same events one by one
//! end (approvals, a decline, a repeated order, captures, a repeated capture), and a batch it
//! does not take or cannot cover changes nothing.

mod common;

use std::sync::Arc;

use common::{courier_assigned, deliver, inventory_rejected, migrated_pool, order_created};
use jwl_events::{Envelope, EventData, OrderId};
use jwl_outbox::OutboxError;
use jwl_payment::{PaymentHandler, SERVICE, SimulatedProcessor};
use jwl_testkit::service::outbox_events;
use sqlx::PgPool;

/// A new delivery of the same event (a new id, past the inbox).
fn again(event: &Envelope) -> Envelope {
    Envelope::new(event.source, event.data.clone())
}

async fn process_batch(pool: &PgPool, batch: &[&Envelope]) -> Result<(), OutboxError> {
    let handler = PaymentHandler::new(Arc::new(SimulatedProcessor::new()));
    jwl_outbox::process_batch(pool, SERVICE, &handler, batch)
        .await
        .map(|_| ())
}

/// Each payment's `(order_id, status, amount_cents, decline_reason)`, and the outbox's events
/// in order.
type Outcome = (
    Vec<(String, String, Option<i64>, Option<String>)>,
    Vec<EventData>,
);

async fn outcome(pool: &PgPool) -> Outcome {
    let payments = sqlx::query_as(
        "SELECT order_id::text, status, amount_cents, decline_reason FROM payments
         ORDER BY order_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let events = outbox_events(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|event| event.data)
        .collect();
    (payments, events)
}

#[tokio::test]
async fn a_batch_handled_together_ends_where_one_by_one_ends() {
    let (alone, together) = (
        migrated_pool().await.unwrap(),
        migrated_pool().await.unwrap(),
    );
    // first: two approvals, a decline; then captures of both approved orders, one of them
    // repeated later, with a new order and a repeated order.created in the same batch
    let ok = [order_created("tok_ok"), order_created("tok_visa")];
    let declined = order_created("tok_decline");
    let first = [ok[0].clone(), declined.clone(), ok[1].clone()];
    let capture = courier_assigned(ok[0].order_id());
    let second = [
        capture.clone(),
        order_created("tok_ok"),
        again(&declined),
        courier_assigned(ok[1].order_id()),
    ];
    let third = [again(&capture), order_created("tok_decline")];

    for event in first.iter().chain(&second).chain(&third) {
        deliver(&alone, event).await.unwrap();
    }
    for batch in [&first[..], &second[..], &third[..]] {
        let events: Vec<&Envelope> = batch.iter().collect();
        process_batch(&together, &events).await.unwrap();
    }

    let (one_by_one, batched) = (outcome(&alone).await, outcome(&together).await);
    assert_eq!(batched, one_by_one);
    // and the case is what it says
    let mut statuses: Vec<&str> = batched.0.iter().map(|row| row.1.as_str()).collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        ["authorized", "captured", "captured", "declined", "declined"]
    );
    let kinds: Vec<&str> = batched
        .1
        .iter()
        .map(|data| data.event_type().as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "jwl.payment.authorized",
            "jwl.payment.declined",
            "jwl.payment.authorized",
            "jwl.payment.captured",
            "jwl.payment.authorized",
            "jwl.payment.captured",
            "jwl.payment.declined",
        ]
    );
}

#[tokio::test]
async fn a_batch_the_batch_way_cannot_take_is_refused_and_nothing_changes() {
    let pool = migrated_pool().await.unwrap();
    let declined = order_created("tok_decline");
    deliver(&pool, &declined).await.unwrap();
    let voided_first = order_created("tok_ok");
    deliver(&pool, &inventory_rejected(voided_first.order_id()))
        .await
        .unwrap();
    let before = outcome(&pool).await;

    // the batch way takes order.created and courier_assigned, each order once (refused for
    // good); an order.created after its void, a capture before the authorisation or of a
    // declined payment fail the batch whole (transiently), after the fresh order before them
    // was authorised, and one by one then decides each
    let fresh = order_created("tok_ok");
    for (batch, permanent) in [
        (vec![&fresh, &inventory_rejected(OrderId::new())], true),
        (vec![&fresh, &courier_assigned(fresh.order_id())], true),
        (vec![&fresh, &voided_first], false),
        (vec![&fresh, &courier_assigned(OrderId::new())], false),
        (vec![&fresh, &courier_assigned(declined.order_id())], false),
    ] {
        let result = process_batch(&pool, &batch).await;
        jwl_testkit::service::assert_batch_refused(&result, permanent);
    }
    assert_eq!(outcome(&pool).await, before);
}
