//! Dispatch's courier routes through the real HTTP edge: a location update assigns waiting
//! waybills in range, a delivery frees capacity and takes the next waybill, and the routes'
//! validation and authorization.

mod common;

use axum::http::{Method, StatusCode};
use common::*;
use jwl_events::{EventData, EventType, WaybillId};
use jwl_service_kit::Settings;
use jwl_service_kit::auth::Scope;
use serde_json::{Value, json};

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[tokio::test]
async fn a_location_update_assigns_waiting_waybills_in_range() -> anyhow::Result<()> {
    let h = Harness::with_settings(Settings {
        courier_capacity: 2,
        ..Settings::default()
    })
    .await?;
    // Three waybills wait; the farthest is 1 km from the courier's final position, the other
    // two 0.3 km, and of those the older one (earlier deadline) comes first.
    let older = waybill_created(km_east(0.3)).with_traceparent(TRACEPARENT);
    let mut newer = waybill_created(km_east(0.3));
    newer.time = older.time + chrono::TimeDelta::milliseconds(1);
    let farther = waybill_created(km_east(1.0));
    for event in [&older, &newer, &farther] {
        assert!(h.emitted(event).await?.is_empty());
    }

    // Out of range: nothing, and the relay is left asleep (most location updates assign
    // nothing: waking it for each would cost a claim per update)
    let wakeups = h.edge.ctx.relay.wakeups();
    let body = h.report("c1", km_east(-6.0)).await;
    assert_eq!(body["assigned"], json!([]));
    assert_eq!(body["live_waybills"], 0);
    assert_eq!(h.edge.ctx.relay.wakeups(), wakeups);

    let body = h.report("c1", km_east(0.0)).await;
    // the assignments' events are committed: the relay is woken for them
    assert!(h.edge.ctx.relay.wakeups() != wakeups);
    let (lat, lon) = km_east(0.0);
    assert_eq!(
        body,
        json!({
            "courier_id": "c1",
            "lat": lat,
            "lon": lon,
            "live_waybills": 2,
            "assigned": [created(&older).waybill_id, created(&newer).waybill_id],
        })
    );
    assert_eq!(
        h.waybill(created(&older).waybill_id).await?,
        ("assigned".to_owned(), Some("c1".to_owned()), None)
    );
    assert_eq!(h.waybill(created(&farther).waybill_id).await?.0, "waiting");

    // The assignment events are in the outbox, in the same transaction: born from a request
    // (no cause) but continuing the order's trace.
    let events = h.outbox_of(EventType::CourierAssigned).await?;
    assert_eq!(events.len(), 2);
    let first = &events[0];
    assert_eq!(first.causation_id, None);
    assert_eq!(first.traceparent.as_deref(), Some(TRACEPARENT));
    match &first.data {
        EventData::CourierAssigned(assigned) => {
            assert_eq!(assigned.waybill_id, created(&older).waybill_id);
            assert_eq!(assigned.order_id, created(&older).order_id);
            assert!((assigned.distance_km - 0.3).abs() < 0.01);
        }
        other => panic!("{other:?}"),
    }

    // Full: another report takes nothing more.
    let body = h.report("c1", km_east(0.9)).await;
    assert_eq!(
        (&body["assigned"], &body["live_waybills"]),
        (&json!([]), &json!(2))
    );
    Ok(())
}

#[tokio::test]
async fn a_delivery_frees_capacity_for_the_next_waybill() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.report("c1", km_east(0.2)).await;
    h.report("c2", km_east(0.4)).await;
    let first = waybill_created(PICKUP);
    h.emitted(&first).await?;
    let first_id = created(&first).waybill_id;
    h.emitted(&waybill_created(PICKUP)).await?; // to c2
    let waiting = waybill_created(km_east(0.1));
    assert!(h.emitted(&waiting).await?.is_empty());

    // Not c2's waybill; unknown waybill; malformed waybill id.
    let (status, body) = h.deliver("c2", first_id).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        h.deliver("c1", WaybillId::new()).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, body) = h
        .send(
            Method::POST,
            "/v1/couriers/c1/deliveries/not-a-uuid",
            Some(&h.courier_token("c1")),
            None,
        )
        .await;
    assert_eq!(
        (status, &body["field"]),
        (StatusCode::BAD_REQUEST, &json!("waybill_id"))
    );

    let (status, body) = h.deliver("c1", first_id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["waybill_id"], json!(first_id));
    assert_eq!(body["status"], "delivered");
    assert_eq!(body["assigned"], json!([created(&waiting).waybill_id]));
    assert_eq!(body["live_waybills"], 1);
    assert_eq!(h.waybill(first_id).await?.0, "delivered");
    assert_eq!(
        h.waybill(created(&waiting).waybill_id).await?,
        ("assigned".to_owned(), Some("c1".to_owned()), None)
    );
    assert_eq!(h.live_waybills("c1").await?, 1);

    let delivered = h.outbox_of(EventType::Delivered).await?;
    assert!(
        matches!(delivered.as_slice(), [event] if matches!(&event.data,
            EventData::Delivered(d) if d.waybill_id == first_id && d.courier_id.as_str() == "c1")),
        "{delivered:?}"
    );

    // Delivering again is a conflict and changes nothing.
    let (status, _) = h.deliver("c1", first_id).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(h.live_waybills("c1").await?, 1);
    assert_eq!(h.outbox_of(EventType::Delivered).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn location_updates_are_validated_and_authorized() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let own = h.courier_token("c1");
    let put = |token: Option<String>, id: &'static str, body: Value| {
        let h = &h;
        async move {
            h.send(
                Method::PUT,
                &format!("/v1/couriers/{id}/location"),
                token.as_deref(),
                Some(body.to_string()),
            )
            .await
        }
    };
    let ok_body = json!({"lat": 31.2, "lon": 121.4});

    for (body, field) in [
        (json!({"lat": 90.5, "lon": 121.4}), "lat"),
        (json!({"lat": 31.2, "lon": -180.1}), "lon"),
        (json!({"lat": "31.2", "lon": 121.4}), "lat"),
        (json!({"lat": 31.2}), "lon"),
    ] {
        let (status, problem) = put(Some(own.clone()), "c1", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        assert_eq!(problem["field"], field, "{problem}");
    }
    let (status, problem) = put(
        Some(own.clone()),
        "c1",
        json!({"lat": 31.2, "lon": 121.4, "alt": 4}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("alt"),
        "{problem}"
    );
    let (status, problem) = put(Some(own.clone()), "c.1", ok_body.clone()).await;
    assert_eq!(
        (status, &problem["field"]),
        (StatusCode::BAD_REQUEST, &json!("id"))
    );

    assert_eq!(
        put(None, "c1", ok_body.clone()).await.0,
        StatusCode::UNAUTHORIZED
    );
    let someone_else = h.courier_token("c2");
    assert_eq!(
        put(Some(someone_else), "c1", ok_body.clone()).await.0,
        StatusCode::FORBIDDEN
    );
    let without_scope = h.token("c1", &[Scope::OrdersWrite]);
    assert_eq!(
        put(Some(without_scope), "c1", ok_body.clone()).await.0,
        StatusCode::FORBIDDEN
    );
    let admin = h.token("ops", &[Scope::Admin]);
    assert_eq!(
        put(Some(admin.clone()), "c1", ok_body.clone()).await.0,
        StatusCode::OK
    );
    assert_eq!(
        put(Some(own.clone()), "c1", ok_body).await.0,
        StatusCode::OK
    );

    // Reading a courier: itself or an admin.
    let uri = "/v1/couriers/c1";
    let (status, body) = h.send(Method::GET, uri, Some(&own), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"courier_id": "c1", "lat": 31.2, "lon": 121.4, "live_waybills": 0})
    );
    assert_eq!(
        h.send(Method::GET, uri, Some(&admin), None).await.0,
        StatusCode::OK
    );
    let other = h.courier_token("c2");
    assert_eq!(
        h.send(Method::GET, uri, Some(&other), None).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        h.send(Method::GET, "/v1/couriers/nobody", Some(&admin), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    Ok(())
}
