//! Dispatch's batch way against a real database: a batch of `waybill_created` taken together
//! ends exactly where the same events one by one end (couriers taken greedily in delivery
//! order, a waybill failed by an earlier cancellation, a repeated waybill, one left waiting),
//! and a batch it does not take or cannot handle changes nothing.

mod common;

use common::*;
use jwl_dispatch::SERVICE;
use jwl_events::{CancelReason, Envelope, EventData, OrderId};
use jwl_outbox::{HandlerError, OutboxError};

/// Couriers 0.5, 1, 2 and 3 km east of the pickup, capacity 1 each.
const COURIERS: [(&str, f64); 4] = [("c1", 0.5), ("c2", 1.0), ("c3", 2.0), ("c4", 3.0)];

/// Each waybill's `(waybill_id, order_id, status, courier_id, distance_km, failure_reason)`.
type Waybills = Vec<(
    String,
    String,
    String,
    Option<String>,
    Option<f64>,
    Option<String>,
)>;

/// What a dispatch database ended with: the waybills, each courier's live waybills, and the
/// outbox's events as `(type, data)` in order.
async fn outcome(h: &Harness) -> anyhow::Result<(Waybills, Vec<i32>, Vec<(String, EventData)>)> {
    let waybills: Waybills = sqlx::query_as(
        "SELECT waybill_id::text, order_id::text, status, courier_id, distance_km, failure_reason
         FROM waybills ORDER BY waybill_id",
    )
    .fetch_all(&h.pool)
    .await?;
    let mut live = Vec::new();
    for (courier, _) in COURIERS {
        live.push(h.live_waybills(courier).await?);
    }
    let events = h
        .outbox()
        .await?
        .into_iter()
        .map(|event| (event.event_type().as_str().to_owned(), event.data))
        .collect();
    Ok((waybills, live, events))
}

/// A harness with the couriers on the map and, handled one by one, a cancellation of
/// `cancelled` and the waybill `known`.
async fn seeded(cancelled: OrderId, known: &Envelope) -> anyhow::Result<Harness> {
    let h = Harness::start().await?;
    for (courier, km) in COURIERS {
        h.report(courier, km_east(km)).await;
    }
    h.handle(&cancel_requested(cancelled, CancelReason::Customer))
        .await?;
    h.handle(known).await?;
    Ok(h)
}

#[tokio::test]
async fn a_batch_handled_together_ends_where_one_by_one_ends() -> anyhow::Result<()> {
    let cancelled = OrderId::new();
    let known = waybill_created(PICKUP);
    let (alone, together) = (
        seeded(cancelled, &known).await?,
        seeded(cancelled, &known).await?,
    );
    // `known` took c1. Then, in delivery order: w1 at the pickup takes c2; the cancelled
    // order's waybill fails; `known` again (a new delivery past the inbox) changes nothing; w2,
    // 3 km east, takes c4 there; w3 at the pickup takes c3, the nearest left; w4 finds nobody.
    let again = Envelope::new(known.source, known.data.clone());
    let batch = [
        waybill_created(PICKUP),
        waybill_created_for(cancelled, PICKUP),
        again,
        waybill_created(km_east(3.0)),
        waybill_created(PICKUP),
        waybill_created(PICKUP),
    ];

    for event in &batch {
        alone.handle(event).await?;
    }
    let events: Vec<&Envelope> = batch.iter().collect();
    jwl_outbox::process_batch(&together.pool, SERVICE, &together.handler, &events).await?;

    let (one_by_one, batched) = (outcome(&alone).await?, outcome(&together).await?);
    assert_eq!(batched, one_by_one);
    // and the case is what it says
    let placed: Vec<(String, Option<String>)> =
        [&batch[0], &batch[1], &batch[3], &batch[4], &batch[5]]
            .into_iter()
            .map(|event| {
                let id = created(event).waybill_id.to_string();
                let row = batched.0.iter().find(|row| row.0 == id).expect("stored");
                (row.2.clone(), row.3.clone())
            })
            .collect();
    let courier = |id: &str| Some(id.to_owned());
    assert_eq!(
        placed,
        [
            ("assigned".to_owned(), courier("c2")),
            ("failed".to_owned(), None),
            ("assigned".to_owned(), courier("c4")),
            ("assigned".to_owned(), courier("c3")),
            ("waiting".to_owned(), None),
        ]
    );
    assert_eq!(batched.1, [1, 1, 1, 1]);
    Ok(())
}

#[tokio::test]
async fn a_batch_the_batch_way_cannot_take_is_refused_and_nothing_changes() -> anyhow::Result<()> {
    let cancelled = OrderId::new();
    let known = waybill_created(PICKUP);
    let h = seeded(cancelled, &known).await?;
    let before = outcome(&h).await?;

    // the batch way takes waybills, each order once (refused for good); a second waybill for
    // an order that has one fails the batch whole (permanently), after the fresh waybill
    // before it had taken a courier, and one by one then dead-letters that event alone
    let fresh = waybill_created(PICKUP);
    let other_waybill = waybill_created_for(created(&known).order_id, PICKUP);
    for batch in [
        vec![
            &fresh,
            &cancel_requested(OrderId::new(), CancelReason::Customer),
        ],
        vec![
            &fresh,
            &waybill_created_for(created(&fresh).order_id, PICKUP),
        ],
        vec![&fresh, &other_waybill],
    ] {
        let result = jwl_outbox::process_batch(&h.pool, SERVICE, &h.handler, &batch).await;
        assert!(
            matches!(
                result,
                Err(OutboxError::Handler(HandlerError::Permanent(_)))
            ),
            "{result:?}"
        );
    }
    assert_eq!(outcome(&h).await?, before);
    Ok(())
}
