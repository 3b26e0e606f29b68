//! Fulfillment's batch way against a real database: a batch of `inventory.reserved`,
//! `courier_assigned` and `delivered` taken together ends exactly where the same events one by
//! one end (new waybills, a repeated reservation, assignments, a delivery that overtakes its
//! assignment, repeats), and a batch it does not take or cannot cover changes nothing.

mod common;

use common::{assigned, delivered, failed, handle, pool, reserved};
use jwl_events::{Envelope, EventData, OrderId, WaybillId};
use jwl_fulfillment::{FulfillmentHandler, SERVICE};
use jwl_outbox::OutboxError;
use jwl_testkit::service::outbox_events;
use sqlx::PgPool;

/// A new delivery of the same event (a new id, past the inbox).
fn again(event: &Envelope) -> Envelope {
    Envelope::new(event.source, event.data.clone())
}

async fn process_batch(pool: &PgPool, batch: &[Envelope]) -> Result<(), OutboxError> {
    let events: Vec<&Envelope> = batch.iter().collect();
    jwl_outbox::process_batch(pool, SERVICE, &FulfillmentHandler, &events)
        .await
        .map(|_| ())
}

/// The waybill id of `order` in `pool` (waybill ids are drawn anew in each database).
async fn waybill_of(pool: &PgPool, order: OrderId) -> WaybillId {
    let id = sqlx::query_scalar("SELECT waybill_id FROM waybills WHERE order_id = $1")
        .bind(order.0)
        .fetch_one(pool)
        .await
        .unwrap();
    WaybillId(id)
}

/// Each waybill's `(order_id, status, courier_id, pickup_lat)`, and the outbox's events in
/// order as (type, order), with each `waybill_created` checked against its row.
type Outcome = (
    Vec<(String, String, Option<String>, Option<f64>)>,
    Vec<(String, OrderId)>,
);

async fn outcome(pool: &PgPool) -> Outcome {
    let waybills = sqlx::query_as(
        "SELECT order_id::text, status, courier_id, pickup_lat FROM waybills ORDER BY order_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut events = Vec::new();
    for event in outbox_events(pool).await.unwrap() {
        if let EventData::WaybillCreated(created) = &event.data {
            assert_eq!(waybill_of(pool, created.order_id).await, created.waybill_id);
        }
        events.push((event.event_type().as_str().to_owned(), event.order_id()));
    }
    (waybills, events)
}

#[tokio::test]
async fn a_batch_handled_together_ends_where_one_by_one_ends() {
    let (alone, together) = (pool().await.unwrap(), pool().await.unwrap());
    let [a, b, c, d] = [(); 4].map(|()| OrderId::new());
    let first = [reserved(a), reserved(b), reserved(c)];
    // the later batches name each database's own waybill ids
    let second = async |pool: &PgPool| {
        [
            assigned(a, waybill_of(pool, a).await),
            delivered(b, waybill_of(pool, b).await),
            reserved(c),
            reserved(d),
        ]
    };
    let third = async |pool: &PgPool| {
        [
            delivered(a, waybill_of(pool, a).await),
            assigned(b, waybill_of(pool, b).await),
            assigned(d, waybill_of(pool, d).await),
        ]
    };

    for event in &first {
        handle(&alone, event).await.unwrap();
    }
    for event in &second(&alone).await {
        handle(&alone, event).await.unwrap();
    }
    let third_alone = third(&alone).await;
    for event in third_alone.iter().chain([&again(&third_alone[2])]) {
        handle(&alone, event).await.unwrap();
    }

    process_batch(&together, &first).await.unwrap();
    process_batch(&together, &second(&together).await)
        .await
        .unwrap();
    let third_together = third(&together).await;
    process_batch(&together, &third_together).await.unwrap();
    process_batch(&together, &[again(&third_together[2])])
        .await
        .unwrap();

    let (one_by_one, batched) = (outcome(&alone).await, outcome(&together).await);
    assert_eq!(batched, one_by_one);
    // and the case is what it says
    let mut statuses: Vec<&str> = batched.0.iter().map(|row| row.1.as_str()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, ["assigned", "delivered", "delivered", "open"]);
    let created: Vec<OrderId> = batched.1.iter().map(|(_, order)| *order).collect();
    assert_eq!(created, [a, b, c, d]);
}

#[tokio::test]
async fn a_batch_the_batch_way_cannot_take_is_refused_and_nothing_changes() {
    let pool = pool().await.unwrap();
    let (open, tombstoned, cancelled) = (OrderId::new(), OrderId::new(), OrderId::new());
    handle(&pool, &reserved(open)).await.unwrap();
    let open_waybill = waybill_of(&pool, open).await;
    handle(&pool, &failed(tombstoned, WaybillId::new()))
        .await
        .unwrap();
    handle(&pool, &reserved(cancelled)).await.unwrap();
    let cancelled_waybill = waybill_of(&pool, cancelled).await;
    handle(&pool, &failed(cancelled, cancelled_waybill))
        .await
        .unwrap();
    let before = outcome(&pool).await;

    // the batch way takes reservations, assignments and deliveries, each order once (refused
    // for good); a reservation after its tombstone, an event of a waybill that does not exist
    // or is another, an assignment of a cancelled waybill fail the batch whole (transiently),
    // after a fresh reservation before them was decided, and one by one then decides each
    let fresh = OrderId::new();
    for (batch, permanent) in [
        (vec![reserved(fresh), failed(open, open_waybill)], true),
        (
            vec![reserved(fresh), assigned(fresh, WaybillId::new())],
            true,
        ),
        (vec![reserved(fresh), reserved(tombstoned)], false),
        (
            vec![reserved(fresh), assigned(OrderId::new(), WaybillId::new())],
            false,
        ),
        (
            vec![reserved(fresh), assigned(open, WaybillId::new())],
            false,
        ),
        (
            vec![reserved(fresh), delivered(cancelled, cancelled_waybill)],
            false,
        ),
    ] {
        let result = process_batch(&pool, &batch).await;
        jwl_testkit::service::assert_batch_refused(&result, permanent);
    }
    assert_eq!(outcome(&pool).await, before);
}
