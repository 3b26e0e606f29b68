//! Dispatch's event handling against a real database: nearest-courier assignment within the
//! radius, waiting, cancellation (tombstone, waiting, refused after assignment), the deadline
//! timer under `run`, duplicates, and 50 concurrent waybills against 10 couriers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use jwl_events::{
    CancelReason, CourierAssigned, DispatchFailed, DispatchFailureReason, EventData, EventType,
    WaybillId,
};
use jwl_outbox::{HandlerError, OutboxError, Processed};
use jwl_service_kit::Settings;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn assigned(events: &[EventData]) -> &CourierAssigned {
    match events {
        [EventData::CourierAssigned(assigned)] => assigned,
        other => panic!("expected one courier_assigned, got {other:?}"),
    }
}

fn failed(events: &[EventData]) -> &DispatchFailed {
    match events {
        [EventData::DispatchFailed(failed)] => failed,
        other => panic!("expected one dispatch.failed, got {other:?}"),
    }
}

#[tokio::test]
async fn the_nearest_available_courier_within_the_radius_is_assigned() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.report("far", km_east(4.0)).await;
    h.report("near", km_east(0.5)).await;
    h.report("mid", km_east(-2.0)).await;

    let first = waybill_created(PICKUP);
    let events = h.emitted(&first).await?;
    let assignment = assigned(&events);
    assert_eq!(assignment.courier_id.as_str(), "near");
    assert_eq!(assignment.waybill_id, created(&first).waybill_id);
    assert!(
        (assignment.distance_km - 0.5).abs() < 0.01,
        "{assignment:?}"
    );
    assert_eq!(
        h.waybill(assignment.waybill_id).await?,
        ("assigned".to_owned(), Some("near".to_owned()), None)
    );
    assert_eq!(h.live_waybills("near").await?, 1);

    // `near` is full (capacity 1): the next waybill goes to the next nearest, then the next.
    let events = h.emitted(&waybill_created(PICKUP)).await?;
    assert_eq!(assigned(&events).courier_id.as_str(), "mid");
    let events = h.emitted(&waybill_created(PICKUP)).await?;
    assert_eq!(assigned(&events).courier_id.as_str(), "far");

    // Everyone is busy: the fourth waits.
    let fourth = waybill_created(PICKUP);
    assert!(h.emitted(&fourth).await?.is_empty());
    assert_eq!(h.waybill(created(&fourth).waybill_id).await?.0, "waiting");
    Ok(())
}

#[tokio::test]
async fn a_courier_outside_the_radius_is_ignored() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.report("outside", km_east(5.3)).await;
    let event = waybill_created(PICKUP);
    assert!(h.emitted(&event).await?.is_empty());
    assert_eq!(
        h.waybill(created(&event).waybill_id).await?,
        ("waiting".to_owned(), None, None)
    );
    assert_eq!(h.live_waybills("outside").await?, 0);
    Ok(())
}

#[tokio::test]
async fn duplicates_assign_once_and_a_second_waybill_for_the_order_is_refused() -> anyhow::Result<()>
{
    let h = Harness::start().await?;
    h.report("c1", km_east(1.0)).await;
    h.report("c2", km_east(1.5)).await;
    let event = waybill_created(PICKUP);
    assert_eq!(
        assigned(&h.emitted(&event).await?).courier_id.as_str(),
        "c1"
    );

    // Redelivery: the inbox drops it. A re-emitted copy (new event id): already known.
    assert!(matches!(h.handle(&event).await?, Processed::Duplicate));
    let mut copy = event.clone();
    copy.id = jwl_events::EventId::new();
    assert!(h.emitted(&copy).await?.is_empty());
    assert_eq!(
        (h.live_waybills("c1").await?, h.live_waybills("c2").await?),
        (1, 0)
    );

    // Another waybill id for the same order contradicts dispatch's state.
    let other = waybill_created_for(created(&event).order_id, PICKUP);
    let error = h.handle(&other).await.unwrap_err();
    assert!(
        matches!(error, OutboxError::Handler(HandlerError::Permanent(_))),
        "{error}"
    );
    assert_eq!(h.live_waybills("c2").await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_cancel_before_the_waybill_fails_it_on_arrival() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.report("c1", km_east(0.2)).await;
    let event = waybill_created(PICKUP);
    let order_id = created(&event).order_id;

    let cancel = cancel_requested(order_id, CancelReason::Customer);
    assert!(h.emitted(&cancel).await?.is_empty());
    // A second cancellation (deadline) does not change the tombstone's reason.
    assert!(
        h.emitted(&cancel_requested(order_id, CancelReason::Deadline))
            .await?
            .is_empty()
    );

    let events = h.emitted(&event).await?;
    let failure = failed(&events);
    assert_eq!(
        (failure.order_id, failure.waybill_id, failure.reason),
        (
            order_id,
            created(&event).waybill_id,
            DispatchFailureReason::Customer
        )
    );
    assert_eq!(
        h.waybill(failure.waybill_id).await?,
        ("failed".to_owned(), None, Some("customer".to_owned()))
    );
    assert_eq!(h.live_waybills("c1").await?, 0, "the courier was not taken");
    Ok(())
}

#[tokio::test]
async fn a_cancel_fails_a_waiting_waybill_at_once() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let event = waybill_created(PICKUP);
    let created = created(&event).clone();
    assert!(h.emitted(&event).await?.is_empty());

    let events = h
        .emitted(&cancel_requested(created.order_id, CancelReason::Deadline))
        .await?;
    let failure = failed(&events);
    assert_eq!(
        (failure.waybill_id, failure.reason),
        (created.waybill_id, DispatchFailureReason::Deadline)
    );
    // Once failed, nothing more: not another cancel, not a courier turning up.
    assert!(
        h.emitted(&cancel_requested(created.order_id, CancelReason::Customer))
            .await?
            .is_empty()
    );
    let body = h.report("late", km_east(0.1)).await;
    assert_eq!(body["assigned"], serde_json::json!([]));
    assert_eq!(
        h.waybill(created.waybill_id).await?,
        ("failed".to_owned(), None, Some("deadline".to_owned()))
    );
    Ok(())
}

#[tokio::test]
async fn a_cancel_after_the_assignment_is_refused() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.report("c1", km_east(0.3)).await;
    let event = waybill_created(PICKUP);
    let created = created(&event).clone();
    assigned(&h.emitted(&event).await?);

    let events = h
        .emitted(&cancel_requested(created.order_id, CancelReason::Customer))
        .await?;
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(
        h.waybill(created.waybill_id).await?,
        ("assigned".to_owned(), Some("c1".to_owned()), None)
    );
    assert!(h.outbox_of(EventType::DispatchFailed).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn the_deadline_timer_fails_waiting_waybills() -> anyhow::Result<()> {
    let h = Harness::with_settings(Settings {
        dispatch_deadline: Duration::from_millis(400),
        ..Settings::default()
    })
    .await?;
    let event = waybill_created(PICKUP).with_traceparent(TRACEPARENT);
    let waybill_id = created(&event).waybill_id;
    assert!(h.emitted(&event).await?.is_empty());

    let shutdown = CancellationToken::new();
    let running = tokio::spawn(jwl_dispatch::run(h.edge.ctx.clone(), shutdown.clone()));
    jwl_testkit::eventually("the waybill fails", Duration::from_secs(10), || async {
        h.waybill(waybill_id)
            .await
            .ok()
            .filter(|(status, _, _)| status == "failed")
    })
    .await?;
    shutdown.cancel();
    running.await??;

    assert_eq!(
        h.waybill(waybill_id).await?,
        ("failed".to_owned(), None, Some("no_courier".to_owned()))
    );
    let failures = h.outbox_of(EventType::DispatchFailed).await?;
    let [failure] = failures.as_slice() else {
        panic!("expected one dispatch.failed, got {failures:?}");
    };
    assert!(matches!(
        &failure.data,
        EventData::DispatchFailed(DispatchFailed {
            waybill_id: id,
            reason: DispatchFailureReason::NoCourier,
            ..
        }) if *id == waybill_id
    ));
    assert_eq!(failure.causation_id, Some(event.id));
    assert_eq!(failure.traceparent.as_deref(), Some(TRACEPARENT));

    // A failed waybill is not offered to a courier that turns up later.
    let body = h.report("late", km_east(0.1)).await;
    assert_eq!(body["assigned"], serde_json::json!([]));
    Ok(())
}

#[tokio::test]
async fn fifty_concurrent_waybills_never_over_assign_ten_couriers() -> anyhow::Result<()> {
    let h = Arc::new(Harness::start().await?);
    let couriers: Vec<String> = (0..10).map(|i| format!("c{i:02}")).collect();
    let events: Vec<_> = (0..50)
        .map(|i| waybill_created(km_east(f64::from(i % 7) * 0.1)))
        .collect();

    // Couriers come online while the waybills are being dispatched.
    let mut tasks = JoinSet::new();
    for (i, event) in events.iter().enumerate() {
        let (harness, event) = (h.clone(), event.clone());
        tasks.spawn(async move { harness.handle(&event).await.map(|_| ()) });
        if i % 5 == 0 {
            let (harness, courier) = (h.clone(), couriers[i / 5].clone());
            tasks.spawn(async move {
                harness
                    .report(&courier, km_east(1.0 + (i as f64) * 0.05))
                    .await;
                Ok(())
            });
        }
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }

    // Every courier reports once more, taking what it can of the waiting waybills.
    for (i, courier) in couriers.iter().enumerate() {
        h.report(courier, km_east(1.0 + (i as f64) * 0.05)).await;
    }

    let per_courier: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT c.courier_id, c.live_waybills,
                (SELECT count(*) FROM waybills w WHERE w.courier_id = c.courier_id)
         FROM couriers c ORDER BY c.courier_id",
    )
    .fetch_all(&h.pool)
    .await?;
    assert_eq!(per_courier.len(), 10);
    for (courier, live, held) in &per_courier {
        assert_eq!((*live, *held), (1, 1), "courier {courier}");
    }
    let by_status: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM waybills GROUP BY status ORDER BY status")
            .fetch_all(&h.pool)
            .await?;
    assert_eq!(
        by_status,
        [("assigned".to_owned(), 10), ("waiting".to_owned(), 40)]
    );
    let assignments = h.outbox_of(EventType::CourierAssigned).await?;
    assert_eq!(assignments.len(), 10);
    let mut assigned_waybills: Vec<WaybillId> = assignments
        .iter()
        .map(|event| match &event.data {
            EventData::CourierAssigned(assigned) => assigned.waybill_id,
            other => panic!("{other:?}"),
        })
        .collect();
    assigned_waybills.sort();
    assigned_waybills.dedup();
    assert_eq!(assigned_waybills.len(), 10, "each waybill assigned once");
    Ok(())
}
