//! Dispatch's batch way against a real database: a batch of `waybill_created` taken together
//! ends exactly where the same events one by one end (couriers taken greedily in delivery
//! order, a waybill failed by an earlier cancellation, a repeated waybill, one left waiting),
//! and a batch it does not take or cannot handle changes nothing.

mod common;

use std::time::Duration;

use common::*;
use jwl_dispatch::SERVICE;
use jwl_events::{CancelReason, Envelope, EventData, OrderId};
use jwl_outbox::{HandlerError, OutboxError};
use jwl_service_kit::Settings;

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

/// Each waybill's `(waybill_id, status, courier_id)` and each courier's live waybills.
async fn placements(
    h: &Harness,
) -> anyhow::Result<(Vec<(String, String, Option<String>)>, Vec<(String, i32)>)> {
    let waybills = sqlx::query_as(
        "SELECT waybill_id::text, status, courier_id FROM waybills ORDER BY waybill_id",
    )
    .fetch_all(&h.pool)
    .await?;
    let couriers =
        sqlx::query_as("SELECT courier_id, live_waybills FROM couriers ORDER BY courier_id")
            .fetch_all(&h.pool)
            .await?;
    Ok((waybills, couriers))
}

/// The courier each waybill of `batch` holds, in the batch's order.
async fn couriers_of(h: &Harness, batch: &[Envelope]) -> anyhow::Result<Vec<Option<String>>> {
    let mut couriers = Vec::new();
    for event in batch {
        let courier: Option<String> =
            sqlx::query_scalar("SELECT courier_id FROM waybills WHERE waybill_id = $1")
                .bind(created(event).waybill_id.0)
                .fetch_one(&h.pool)
                .await?;
        couriers.push(courier);
    }
    Ok(couriers)
}

#[tokio::test]
async fn a_batch_past_the_first_search_and_sharing_couriers_ends_where_one_by_one_ends()
-> anyhow::Result<()> {
    // 11 couriers 0.25 km apart east of the pickup, 2 slots each: the batch's first search
    // fetches a few couriers per pickup, which the earlier waybills fill, so the later ones must
    // search further; the first couriers are each picked twice (taken two slots at once)
    let settings = Settings {
        courier_capacity: 2,
        ..Settings::default()
    };
    let couriers: Vec<(String, f64)> = (1..=11)
        .map(|k| (format!("c{k:02}"), 0.25 * f64::from(k)))
        .collect();
    let (alone, together) = (
        Harness::with_settings(settings.clone()).await?,
        Harness::with_settings(settings).await?,
    );
    for h in [&alone, &together] {
        for (courier, km) in &couriers {
            h.report(courier, km_east(*km)).await;
        }
    }
    let batch: Vec<Envelope> = (0..23).map(|_| waybill_created(PICKUP)).collect();

    for event in &batch {
        alone.handle(event).await?;
    }
    let events: Vec<&Envelope> = batch.iter().collect();
    jwl_outbox::process_batch(&together.pool, SERVICE, &together.handler, &events).await?;

    assert_eq!(placements(&together).await?, placements(&alone).await?);
    // and the case is what it says: two waybills per courier, nearest first; the last waits
    let mut expected: Vec<Option<String>> = couriers
        .iter()
        .flat_map(|(courier, _)| [Some(courier.clone()), Some(courier.clone())])
        .collect();
    expected.push(None);
    assert_eq!(couriers_of(&together, &batch).await?, expected);
    Ok(())
}

#[tokio::test]
async fn a_courier_taken_between_the_batch_search_and_its_take_is_searched_past()
-> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.report("c1", km_east(0.5)).await;
    h.report("c2", km_east(1.0)).await;
    h.report("c3", km_east(20.0)).await;
    // another transaction fills c1 and holds its row: the batch's search still sees c1 free
    // and picks it, its take waits for that transaction and then finds c1 full
    let mut other = h.pool.begin().await?;
    sqlx::query("UPDATE couriers SET live_waybills = 1 WHERE courier_id = 'c1'")
        .execute(&mut *other)
        .await?;

    let first = waybill_created(PICKUP);
    let second = waybill_created(km_east(20.0));
    let batch = [first.clone(), second.clone()];
    let (pool, handler) = (h.pool.clone(), h.handler.clone());
    let handling = tokio::spawn(async move {
        let events: Vec<&Envelope> = batch.iter().collect();
        jwl_outbox::process_batch(&pool, SERVICE, &handler, &events).await
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'",
        )
        .fetch_one(&h.pool)
        .await?;
        if waiting > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the batch never waited for the courier's row"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    other.commit().await?;
    handling.await??;

    // the first waybill searched again and took c2, the nearest courier left; the second kept
    // c3, taken in the same statement as the refused c1
    assert_eq!(
        couriers_of(&h, &[first, second]).await?,
        [Some("c2".to_owned()), Some("c3".to_owned())]
    );
    for courier in ["c1", "c2", "c3"] {
        assert_eq!(h.live_waybills(courier).await?, 1, "{courier}");
    }
    Ok(())
}
