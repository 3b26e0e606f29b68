//! Fulfillment against a real database: waybill creation, the transitions driven by dispatch's
//! events, duplicates and out-of-order events, the tombstone for an early `dispatch.failed`,
//! and `GET /v1/waybills/{id}` through the real HTTP edge.

mod common;

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use common::{assigned, create, delivered, emitted, failed, handle, point, pool, reserved};
use jwl_events::{EventData, OrderId, Service, WaybillId};
use jwl_outbox::{MessagingSettings, OutboxError, Processed};
use jwl_service_kit::Settings;
use jwl_service_kit::auth::Scope;
use jwl_testkit::service::EdgeApp;
use serde_json::Value;
use sqlx::PgPool;

async fn status(pool: &PgPool, order_id: OrderId) -> anyhow::Result<(String, Option<String>)> {
    Ok(
        sqlx::query_as("SELECT status, courier_id FROM waybills WHERE order_id = $1")
            .bind(order_id.0)
            .fetch_one(pool)
            .await?,
    )
}

#[tokio::test]
async fn reservation_creates_exactly_one_waybill() -> anyhow::Result<()> {
    let pool = pool().await?;
    let order_id = OrderId::new();
    let first = reserved(order_id);
    let events = emitted(&pool, &first).await?;
    let [EventData::WaybillCreated(created)] = events.as_slice() else {
        panic!("expected waybill_created, got {events:?}");
    };
    assert_eq!(created.order_id, order_id);
    assert_eq!(created.pickup, point(31.2304, 121.4737));
    assert_eq!(created.dropoff, point(31.2243, 121.4768));
    assert_eq!(status(&pool, order_id).await?, ("open".to_owned(), None));

    // The same event again is deduplicated by the inbox; a repeated reservation (new event id)
    // finds the waybill and emits nothing.
    assert!(matches!(handle(&pool, &first).await?, Processed::Duplicate));
    assert!(emitted(&pool, &reserved(order_id)).await?.is_empty());
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM waybills")
        .fetch_one(&pool)
        .await?;
    assert_eq!(count, 1);
    Ok(())
}

#[tokio::test]
async fn assignment_then_delivery_and_repeats_change_nothing() -> anyhow::Result<()> {
    let pool = pool().await?;
    let order_id = OrderId::new();
    let waybill_id = create(&pool, order_id).await?;

    assert!(
        emitted(&pool, &assigned(order_id, waybill_id))
            .await?
            .is_empty()
    );
    assert_eq!(
        status(&pool, order_id).await?,
        ("assigned".to_owned(), Some("courier-07".to_owned()))
    );
    emitted(&pool, &assigned(order_id, waybill_id)).await?;
    assert_eq!(status(&pool, order_id).await?.0, "assigned");

    emitted(&pool, &delivered(order_id, waybill_id)).await?;
    assert_eq!(status(&pool, order_id).await?.0, "delivered");
    // A late assignment does not leave `delivered`; a late failure contradicts it and is
    // refused for good (dead-lettered, so it alerts).
    let error = handle(&pool, &failed(order_id, waybill_id))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, OutboxError::Handler(jwl_outbox::HandlerError::Permanent(reason))
            if reason.contains("which has a courier")),
        "{error}"
    );
    emitted(&pool, &assigned(order_id, waybill_id)).await?;
    assert_eq!(
        status(&pool, order_id).await?,
        ("delivered".to_owned(), Some("courier-07".to_owned()))
    );
    Ok(())
}

#[tokio::test]
async fn delivery_may_overtake_the_assignment() -> anyhow::Result<()> {
    let pool = pool().await?;
    let order_id = OrderId::new();
    let waybill_id = create(&pool, order_id).await?;
    emitted(&pool, &delivered(order_id, waybill_id)).await?;
    emitted(&pool, &assigned(order_id, waybill_id)).await?;
    assert_eq!(
        status(&pool, order_id).await?,
        ("delivered".to_owned(), Some("courier-07".to_owned()))
    );
    Ok(())
}

#[tokio::test]
async fn dispatch_failure_cancels_once() -> anyhow::Result<()> {
    let pool = pool().await?;
    let order_id = OrderId::new();
    let waybill_id = create(&pool, order_id).await?;

    let events = emitted(&pool, &failed(order_id, waybill_id)).await?;
    let [EventData::WaybillCancelled(cancelled)] = events.as_slice() else {
        panic!("expected waybill_cancelled, got {events:?}");
    };
    assert_eq!(
        (cancelled.order_id, cancelled.waybill_id),
        (order_id, waybill_id)
    );
    assert_eq!(status(&pool, order_id).await?.0, "cancelled");

    // A second failure (another event) emits nothing; a courier event cannot revive it: it
    // contradicts the cancellation and is refused for good (dead-lettered, so it alerts).
    assert!(
        emitted(&pool, &failed(order_id, waybill_id))
            .await?
            .is_empty()
    );
    let error = handle(&pool, &assigned(order_id, waybill_id))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, OutboxError::Handler(jwl_outbox::HandlerError::Permanent(reason))
            if reason.contains("courier_assigned contradicts")),
        "{error}"
    );
    assert_eq!(
        status(&pool, order_id).await?,
        ("cancelled".to_owned(), None)
    );
    Ok(())
}

#[tokio::test]
async fn failure_before_reservation_leaves_a_tombstone() -> anyhow::Result<()> {
    let pool = pool().await?;
    let order_id = OrderId::new();
    let waybill_id = WaybillId::new();

    let events = emitted(&pool, &failed(order_id, waybill_id)).await?;
    assert!(
        matches!(events.as_slice(), [EventData::WaybillCancelled(c)] if c.waybill_id == waybill_id),
        "{events:?}"
    );
    // The late reservation creates no live waybill and emits nothing.
    assert!(emitted(&pool, &reserved(order_id)).await?.is_empty());
    let (id, status, pickup_lat): (uuid::Uuid, String, Option<f64>) =
        sqlx::query_as("SELECT waybill_id, status, pickup_lat FROM waybills WHERE order_id = $1")
            .bind(order_id.0)
            .fetch_one(&pool)
            .await?;
    assert_eq!(
        (WaybillId(id), status.as_str(), pickup_lat),
        (waybill_id, "cancelled", Some(31.2304))
    );
    Ok(())
}

#[tokio::test]
async fn an_event_naming_another_waybill_of_the_order_is_refused() -> anyhow::Result<()> {
    let pool = pool().await?;
    let order_id = OrderId::new();
    create(&pool, order_id).await?;
    let error = handle(&pool, &assigned(order_id, WaybillId::new()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            OutboxError::Handler(jwl_outbox::HandlerError::Permanent(_))
        ),
        "{error}"
    );
    assert_eq!(status(&pool, order_id).await?.0, "open");
    Ok(())
}

const SECRET: &[u8] = b"fulfillment-test-secret-0123456789abcdef";

async fn get(app: &Router, uri: &str, token: Option<&str>) -> (StatusCode, Value) {
    let reply = jwl_testkit::service::get(app, uri, token).await.unwrap();
    (reply.status, reply.json)
}

#[tokio::test]
async fn admins_read_waybills_over_http() -> anyhow::Result<()> {
    let pool = pool().await?;
    let edge = EdgeApp::start(
        Service::Fulfillment,
        pool.clone(),
        MessagingSettings::default(),
        Settings::default(),
        SECRET,
        jwl_fulfillment::router,
    )
    .await?;
    let app = &edge.router;
    let hour = Duration::from_secs(3600);
    let admin = edge.token("ops", &[Scope::Admin], hour)?;
    let customer = edge.token("cust-1", &[Scope::OrdersRead], hour)?;

    let order_id = OrderId::new();
    let waybill_id = create(&pool, order_id).await?;
    emitted(&pool, &assigned(order_id, waybill_id)).await?;

    let uri = format!("/v1/waybills/{waybill_id}");
    let (status, body) = get(app, &uri, Some(&admin)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        serde_json::json!({
            "waybill_id": waybill_id.to_string(),
            "order_id": order_id.to_string(),
            "status": "assigned",
            "courier_id": "courier-07",
        })
    );

    assert_eq!(get(app, &uri, None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        get(app, &uri, Some(&customer)).await.0,
        StatusCode::FORBIDDEN
    );
    let unknown = format!("/v1/waybills/{}", WaybillId::new());
    assert_eq!(
        get(app, &unknown, Some(&admin)).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, body) = get(app, "/v1/waybills/nope", Some(&admin)).await;
    assert_eq!(
        (status, &body["field"]),
        (StatusCode::BAD_REQUEST, &Value::from("id"))
    );
    Ok(())
}
