//! The deadline timer inside `jwl_order::run`, with two replicas running at once: every open
//! order past its deadline gets exactly one `order.cancel_requested {reason: deadline}`; orders
//! already cancelled by the customer or terminal get none.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use jwl_events::{EventType, OrderId, PaymentCaptured, Service};
use jwl_service_kit::Settings;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

async fn cancel_requests(app: &TestApp, order_id: OrderId) -> anyhow::Result<Vec<Value>> {
    app.outbox_payloads(order_id, EventType::OrderCancelRequested)
        .await
}

async fn wait_for_cancel_request(app: &TestApp, order_id: OrderId) -> anyhow::Result<()> {
    jwl_testkit::eventually("the deadline cancel request", SOON, || async {
        cancel_requests(app, order_id)
            .await
            .is_ok_and(|requests| !requests.is_empty())
    })
    .await
}

#[tokio::test]
async fn overdue_orders_get_exactly_one_cancel_request() -> anyhow::Result<()> {
    let app = TestApp::start_with(Settings {
        order_deadline: Duration::from_millis(200),
        ..Settings::default()
    })
    .await?;
    let overdue = app.place_order().await?;
    let cancelled_by_customer = app.place_order().await?;
    let dispatched = app.place_order().await?;
    let cancel = app
        .cancel(
            Some(&app.customer(CUSTOMER)),
            &cancelled_by_customer.to_string(),
        )
        .await?;
    assert_eq!(cancel.status, axum::http::StatusCode::ACCEPTED);
    app.deliver(&event_at(
        Service::Payment,
        PaymentCaptured {
            order_id: dispatched,
            amount_cents: 32200,
        },
        Utc::now(),
        0,
    ))
    .await?;

    // the order's trace, as the request that created it would have left it with tracing on
    let order_trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    sqlx::query("UPDATE orders SET traceparent = $2 WHERE order_id = $1")
        .bind(overdue.0)
        .bind(order_trace)
        .execute(&app.pool)
        .await?;

    let shutdown = CancellationToken::new();
    let replicas: Vec<_> = (0..2)
        .map(|_| tokio::spawn(jwl_order::run(app.edge.ctx.clone(), shutdown.clone())))
        .collect();

    wait_for_cancel_request(&app, overdue).await?;
    // an order placed now is only claimed by a later run, after `overdue` was handled
    let later = app.place_order().await?;
    wait_for_cancel_request(&app, later).await?;

    shutdown.cancel();
    for replica in replicas {
        replica.await??;
    }

    // the deadline's cancel request continues the order's trace
    let headers: Vec<sqlx::types::Json<Vec<(String, String)>>> =
        sqlx::query_scalar("SELECT headers FROM outbox WHERE subject = $1")
            .bind(jwl_events::subject(
                &overdue,
                EventType::OrderCancelRequested,
            ))
            .fetch_all(&app.pool)
            .await?;
    assert_eq!(headers.len(), 1);
    assert!(
        headers[0]
            .0
            .iter()
            .any(|(name, value)| name == "ce-traceparent" && value == order_trace),
        "{:?}",
        headers[0].0
    );

    for order_id in [overdue, later] {
        assert_eq!(
            cancel_requests(&app, order_id).await?,
            [json!({"order_id": order_id.to_string(), "reason": "deadline"})]
        );
        let view = app
            .get(
                Some(&app.customer(CUSTOMER)),
                &format!("/v1/orders/{order_id}"),
            )
            .await?;
        let last = view.json["timeline"]
            .as_array()
            .and_then(|timeline| timeline.last())
            .map(|entry| entry["type"].clone());
        assert_eq!(last, Some(json!("jwl.order.cancel_requested")));
    }
    assert_eq!(
        cancel_requests(&app, cancelled_by_customer).await?,
        [json!({"order_id": cancelled_by_customer.to_string(), "reason": "customer"})]
    );
    assert!(cancel_requests(&app, dispatched).await?.is_empty());
    Ok(())
}
