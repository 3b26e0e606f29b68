//! `POST /v1/orders/{id}/cancel`: 202 and one `order.cancel_requested {reason: customer}` for an
//! open order (a repeat is 202 without a second event), 409 once the order is terminal, 404 for
//! someone else's order, 401/403 without the right credentials.

mod common;

use axum::http::StatusCode;
use chrono::Utc;
use common::*;
use jwl_events::{EventType, OrderId, PaymentCaptured, Service};
use jwl_service_kit::auth::Scope;
use serde_json::json;

#[tokio::test]
async fn cancelling_an_open_order_emits_one_request() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let order_id = app.place_order().await?;
    let token = app.customer(CUSTOMER);

    let wakeups = app.edge.ctx.relay.wakeups();
    let first = app.cancel(Some(&token), &order_id.to_string()).await?;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{first:?}");
    assert_eq!(
        first.json,
        json!({"order_id": order_id.to_string(), "status": "pending"})
    );
    // the request's row is given to the relay signal after the commit: handed over where this
    // process's relay leads, else (as here, no relay runs) the relay is woken for it
    assert_ne!(app.edge.ctx.relay.wakeups(), wakeups, "the relay is told");
    let wakeups = app.edge.ctx.relay.wakeups();
    let again = app.cancel(Some(&token), &order_id.to_string()).await?;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.json, first.json);
    assert_eq!(
        app.edge.ctx.relay.wakeups(),
        wakeups,
        "a repeat writes nothing and wakes no one"
    );

    let requests = app
        .outbox_payloads(order_id, EventType::OrderCancelRequested)
        .await?;
    assert_eq!(
        requests,
        [json!({"order_id": order_id.to_string(), "reason": "customer"})]
    );
    let reason: Option<String> =
        sqlx::query_scalar("SELECT cancel_reason FROM orders WHERE order_id = $1")
            .bind(order_id.0)
            .fetch_one(&app.pool)
            .await?;
    assert_eq!(reason.as_deref(), Some("customer"));

    // the request is on the timeline; the status stays until dispatch decides
    let view = app
        .get(Some(&token), &format!("/v1/orders/{order_id}"))
        .await?;
    assert_eq!(view.json["status"], "pending");
    let types: Vec<&str> = view.json["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry["type"].as_str())
        .collect();
    assert_eq!(types, ["jwl.order.created", "jwl.order.cancel_requested"]);
    Ok(())
}

#[tokio::test]
async fn a_terminal_order_cannot_be_cancelled() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let order_id = app.place_order().await?;
    app.deliver(&event_at(
        Service::Payment,
        PaymentCaptured {
            order_id,
            amount_cents: 32200,
        },
        Utc::now(),
        1,
    ))
    .await?;
    let reply = app
        .cancel(Some(&app.admin()), &order_id.to_string())
        .await?;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{reply:?}");
    assert_eq!(
        reply.json["type"],
        "https://jiangwanli.dev/problems/conflict"
    );
    assert!(
        app.outbox_payloads(order_id, EventType::OrderCancelRequested)
            .await?
            .is_empty()
    );
    Ok(())
}

#[tokio::test]
async fn only_the_owner_or_an_admin_can_cancel() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let order_id = app.place_order().await?;
    let id = order_id.to_string();

    let stranger = app.cancel(Some(&app.customer(OTHER_CUSTOMER)), &id).await?;
    assert_eq!(stranger.status, StatusCode::NOT_FOUND);
    let unknown = app
        .cancel(Some(&app.customer(CUSTOMER)), &OrderId::new().to_string())
        .await?;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let malformed = app.cancel(Some(&app.customer(CUSTOMER)), "42").await?;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.field(), Some("id"));
    let anonymous = app.cancel(None, &id).await?;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let read_only = app
        .cancel(Some(&app.token(CUSTOMER, &[Scope::OrdersRead])), &id)
        .await?;
    assert_eq!(read_only.status, StatusCode::FORBIDDEN);
    assert!(
        app.outbox_payloads(order_id, EventType::OrderCancelRequested)
            .await?
            .is_empty()
    );

    let admin = app.cancel(Some(&app.admin()), &id).await?;
    assert_eq!(admin.status, StatusCode::ACCEPTED);
    assert_eq!(
        app.outbox_payloads(order_id, EventType::OrderCancelRequested)
            .await?
            .len(),
        1
    );
    Ok(())
}
