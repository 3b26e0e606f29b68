//! The order read model fed through `jwl_outbox::process_one` (the consumer's exact inbox +
//! handler path), with events out of order and redelivered; and `GET /v1/orders/{id}`: who may
//! read an order, unknown and malformed ids.

mod common;

use axum::http::StatusCode;
use chrono::Utc;
use common::*;
use jwl_events::{
    CourierAssigned, CourierId, Delivered, DispatchFailed, DispatchFailureReason, GeoPoint,
    InventoryRejected, InventoryReserved, LineItem, OrderId, PaymentAuthorized, PaymentCaptured,
    PaymentDeclined, PaymentVoided, Service, WaybillCreated, WaybillId,
};
use jwl_outbox::{OutboxError, Processed};
use jwl_service_kit::auth::Scope;
use serde_json::{Value, json};

fn point() -> GeoPoint {
    GeoPoint::new(31.2304, 121.4737).unwrap()
}

fn items() -> Vec<LineItem> {
    vec![LineItem {
        sku: "MOONCAKE-6".into(),
        qty: 1,
        unit_price_cents: 6600,
    }]
}

fn authorized(order_id: OrderId) -> PaymentAuthorized {
    PaymentAuthorized {
        order_id,
        amount_cents: 32200,
        items: items(),
        pickup: point(),
        dropoff: point(),
    }
}

fn reserved(order_id: OrderId) -> InventoryReserved {
    InventoryReserved {
        order_id,
        items: items(),
        pickup: point(),
        dropoff: point(),
    }
}

fn waybill_created(order_id: OrderId, waybill_id: WaybillId) -> WaybillCreated {
    WaybillCreated {
        order_id,
        waybill_id,
        pickup: point(),
        dropoff: point(),
    }
}

async fn view(app: &TestApp, order_id: OrderId) -> anyhow::Result<Value> {
    let reply = app
        .get(
            Some(&app.customer(CUSTOMER)),
            &format!("/v1/orders/{order_id}"),
        )
        .await?;
    anyhow::ensure!(reply.status == StatusCode::OK, "{reply:?}");
    Ok(reply.json)
}

fn timeline_types(view: &Value) -> Vec<String> {
    view["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| entry["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn events_out_of_order_end_dispatched_then_delivered() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let order_id = app.place_order().await?;
    let waybill_id = WaybillId::new();
    let courier_id = CourierId::parse("courier-07")?;
    let base = Utc::now() + chrono::TimeDelta::seconds(1);

    // handled in this order, stamped in saga order (offsets)
    let captured = event_at(
        Service::Payment,
        PaymentCaptured {
            order_id,
            amount_cents: 32200,
        },
        base,
        50,
    );
    let assigned = event_at(
        Service::Dispatch,
        CourierAssigned {
            order_id,
            waybill_id,
            courier_id: courier_id.clone(),
            distance_km: 0.4,
        },
        base,
        40,
    );
    let authorized = event_at(Service::Payment, authorized(order_id), base, 10);
    let waybill = event_at(
        Service::Fulfillment,
        waybill_created(order_id, waybill_id),
        base,
        30,
    );
    let reserved = event_at(Service::Inventory, reserved(order_id), base, 20);
    for event in [&captured, &assigned, &authorized, &waybill, &reserved] {
        assert!(matches!(
            app.deliver(event).await?,
            Processed::Handled { ref emitted } if emitted.is_empty()
        ));
    }
    // a redelivery is recognised by the inbox
    assert!(matches!(
        app.deliver(&captured).await?,
        Processed::Duplicate
    ));

    let dispatched = view(&app, order_id).await?;
    assert_eq!(dispatched["status"], "dispatched");
    assert_eq!(dispatched["reason"], Value::Null);
    assert_eq!(dispatched["waybill_id"], waybill_id.to_string());
    assert_eq!(dispatched["courier_id"], "courier-07");
    assert_eq!(dispatched["amount_cents"], 32200);
    assert_eq!(
        timeline_types(&dispatched),
        [
            "jwl.order.created",
            "jwl.payment.authorized",
            "jwl.inventory.reserved",
            "jwl.fulfillment.waybill_created",
            "jwl.dispatch.courier_assigned",
            "jwl.payment.captured",
        ]
    );
    assert_eq!(
        dispatched["timeline"][1],
        json!({
            "type": "jwl.payment.authorized",
            "time": serde_json::to_value(authorized.time)?,
            "source": "/jwl/payment",
        })
    );

    // a late failure cannot undo a dispatched order; delivery still moves it on
    let failed = event_at(
        Service::Dispatch,
        DispatchFailed {
            order_id,
            waybill_id,
            reason: DispatchFailureReason::NoCourier,
        },
        base,
        60,
    );
    app.deliver(&failed).await?;
    assert_eq!(view(&app, order_id).await?["status"], "dispatched");
    let delivered = event_at(
        Service::Dispatch,
        Delivered {
            order_id,
            waybill_id,
            courier_id,
        },
        base,
        70,
    );
    app.deliver(&delivered).await?;
    let end = view(&app, order_id).await?;
    assert_eq!(end["status"], "delivered");
    assert_eq!(timeline_types(&end).len(), 8);
    Ok(())
}

#[tokio::test]
async fn declined_ends_rejected_and_stays() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let order_id = app.place_order().await?;
    let base = Utc::now();
    app.deliver(&event_at(
        Service::Payment,
        PaymentDeclined {
            order_id,
            amount_cents: 32200,
            reason: "card_declined".into(),
        },
        base,
        10,
    ))
    .await?;
    // events that cannot belong to a rejected order change nothing but the timeline
    app.deliver(&event_at(Service::Payment, authorized(order_id), base, 5))
        .await?;
    app.deliver(&event_at(Service::Inventory, reserved(order_id), base, 20))
        .await?;
    let rejected = view(&app, order_id).await?;
    assert_eq!(rejected["status"], "rejected");
    assert_eq!(rejected["reason"], Value::Null);
    assert_eq!(
        timeline_types(&rejected),
        [
            "jwl.order.created",
            "jwl.payment.authorized",
            "jwl.payment.declined",
            "jwl.inventory.reserved",
        ]
    );

    // and it cannot be cancelled any more
    let cancel = app
        .cancel(Some(&app.customer(CUSTOMER)), &order_id.to_string())
        .await?;
    assert_eq!(cancel.status, StatusCode::CONFLICT);
    Ok(())
}

#[tokio::test]
async fn failures_cancel_with_their_reason() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let base = Utc::now();

    let out_of_stock = app.place_order().await?;
    app.deliver(&event_at(
        Service::Payment,
        authorized(out_of_stock),
        base,
        1,
    ))
    .await?;
    app.deliver(&event_at(
        Service::Inventory,
        InventoryRejected {
            order_id: out_of_stock,
            unavailable_skus: vec!["MOONCAKE-6".into()],
        },
        base,
        2,
    ))
    .await?;
    app.deliver(&event_at(
        Service::Payment,
        PaymentVoided {
            order_id: out_of_stock,
            amount_cents: 32200,
        },
        base,
        3,
    ))
    .await?;
    let view_oos = view(&app, out_of_stock).await?;
    assert_eq!(
        (&view_oos["status"], &view_oos["reason"]),
        (&json!("cancelled"), &json!("out_of_stock"))
    );

    let deadline = app.place_order().await?;
    let waybill_id = WaybillId::new();
    // the failure is handled before the waybill it fails
    app.deliver(&event_at(
        Service::Dispatch,
        DispatchFailed {
            order_id: deadline,
            waybill_id,
            reason: DispatchFailureReason::Deadline,
        },
        base,
        5,
    ))
    .await?;
    app.deliver(&event_at(
        Service::Fulfillment,
        waybill_created(deadline, waybill_id),
        base,
        4,
    ))
    .await?;
    let view_deadline = view(&app, deadline).await?;
    assert_eq!(view_deadline["status"], "cancelled");
    assert_eq!(view_deadline["reason"], "deadline");
    assert_eq!(view_deadline["waybill_id"], waybill_id.to_string());
    Ok(())
}

#[tokio::test]
async fn an_event_for_an_unknown_order_is_refused_for_good() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let unknown = OrderId::new();
    let error = app
        .deliver(&event_at(
            Service::Payment,
            authorized(unknown),
            Utc::now(),
            0,
        ))
        .await
        .unwrap_err();
    let outbox_error = error.downcast_ref::<OutboxError>();
    assert!(
        matches!(
            outbox_error,
            Some(OutboxError::Handler(jwl_outbox::HandlerError::Permanent(_)))
        ),
        "{error:#}"
    );
    let timeline: i64 = sqlx::query_scalar("SELECT count(*) FROM order_timeline")
        .fetch_one(&app.pool)
        .await?;
    assert_eq!(timeline, 0);
    Ok(())
}

#[tokio::test]
async fn only_the_owner_or_an_admin_can_read_an_order() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let order_id = app.place_order().await?;
    let path = format!("/v1/orders/{order_id}");

    let owner = app.get(Some(&app.customer(CUSTOMER)), &path).await?;
    assert_eq!(owner.status, StatusCode::OK);
    let admin = app.get(Some(&app.admin()), &path).await?;
    assert_eq!(admin.status, StatusCode::OK);
    assert_eq!(admin.json, owner.json);
    let keys: Vec<&str> = owner
        .json
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let mut expected = [
        "order_id",
        "status",
        "reason",
        "waybill_id",
        "courier_id",
        "amount_cents",
        "created_at",
        "timeline",
    ];
    expected.sort_unstable();
    let mut keys = keys;
    keys.sort_unstable();
    assert_eq!(keys, expected);

    // another customer's order looks exactly like a missing one
    let stranger = app.get(Some(&app.customer(OTHER_CUSTOMER)), &path).await?;
    assert_eq!(stranger.status, StatusCode::NOT_FOUND);
    let missing = app
        .get(
            Some(&app.customer(OTHER_CUSTOMER)),
            &format!("/v1/orders/{}", OrderId::new()),
        )
        .await?;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        (&stranger.json["type"], &stranger.json["title"]),
        (&missing.json["type"], &missing.json["title"])
    );

    let malformed = app
        .get(Some(&app.customer(CUSTOMER)), "/v1/orders/not-a-uuid")
        .await?;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.field(), Some("id"));

    let anonymous = app.get(None, &path).await?;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let courier = app
        .get(Some(&app.token(CUSTOMER, &[Scope::CouriersWrite])), &path)
        .await?;
    assert_eq!(courier.status, StatusCode::FORBIDDEN);
    Ok(())
}

/// The events of three sagas for `orders` (dispatched, rejected, cancelled for want of a
/// courier), interleaved and partly out of order, as one batch of the consumer could hold them.
fn interleaved_sagas(
    orders: [OrderId; 3],
    base: chrono::DateTime<Utc>,
) -> Vec<jwl_events::Envelope> {
    let [dispatched, rejected, no_courier] = orders;
    let (waybill, failed_waybill) = (WaybillId::new(), WaybillId::new());
    let courier_id = CourierId::parse("courier-07").expect("a valid courier id");
    vec![
        event_at(Service::Payment, authorized(dispatched), base, 1),
        event_at(
            Service::Payment,
            PaymentDeclined {
                order_id: rejected,
                amount_cents: 32200,
                reason: "card_declined".into(),
            },
            base,
            2,
        ),
        event_at(Service::Inventory, reserved(dispatched), base, 3),
        event_at(Service::Payment, authorized(no_courier), base, 4),
        event_at(
            Service::Fulfillment,
            waybill_created(dispatched, waybill),
            base,
            5,
        ),
        event_at(
            Service::Payment,
            PaymentCaptured {
                order_id: dispatched,
                amount_cents: 32200,
            },
            base,
            7,
        ),
        event_at(
            Service::Dispatch,
            CourierAssigned {
                order_id: dispatched,
                waybill_id: waybill,
                courier_id,
                distance_km: 0.4,
            },
            base,
            6,
        ),
        event_at(Service::Inventory, reserved(no_courier), base, 8),
        event_at(
            Service::Dispatch,
            DispatchFailed {
                order_id: no_courier,
                waybill_id: failed_waybill,
                reason: DispatchFailureReason::NoCourier,
            },
            base,
            10,
        ),
        event_at(
            Service::Fulfillment,
            waybill_created(no_courier, failed_waybill),
            base,
            9,
        ),
    ]
}

/// What the read model shows of an order, without its id.
fn shown(view: &Value) -> Value {
    json!({
        "status": view["status"],
        "reason": view["reason"],
        "courier_id": view["courier_id"],
        "timeline": timeline_types(view),
    })
}

#[tokio::test]
async fn a_batch_handled_together_ends_where_one_by_one_ends() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let one_by_one = [
        app.place_order().await?,
        app.place_order().await?,
        app.place_order().await?,
    ];
    let together = [
        app.place_order().await?,
        app.place_order().await?,
        app.place_order().await?,
    ];

    // after every order.created, so that the timelines (in event time order) compare
    let base = Utc::now() + chrono::TimeDelta::seconds(1);
    for event in interleaved_sagas(one_by_one, base) {
        app.deliver(&event).await?;
    }
    let batch = interleaved_sagas(together, base);
    let events: Vec<&jwl_events::Envelope> = batch.iter().collect();
    jwl_outbox::process_batch(
        &app.pool,
        Service::Order,
        &jwl_order::OrderReadModel,
        &events,
    )
    .await?;

    for (alone, batched) in one_by_one.into_iter().zip(together) {
        let (alone, batched) = (view(&app, alone).await?, view(&app, batched).await?);
        assert_eq!(shown(&batched), shown(&alone));
    }
    let mut statuses = Vec::new();
    for order_id in together {
        statuses.push(view(&app, order_id).await?["status"].clone());
    }
    assert_eq!(
        statuses,
        [json!("dispatched"), json!("rejected"), json!("cancelled")]
    );
    Ok(())
}

#[tokio::test]
async fn a_batch_with_an_unknown_order_is_refused_whole() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let known = app.place_order().await?;
    let batch = [
        event_at(Service::Payment, authorized(known), Utc::now(), 1),
        event_at(Service::Payment, authorized(OrderId::new()), Utc::now(), 2),
    ];
    let events: Vec<&jwl_events::Envelope> = batch.iter().collect();
    let result = jwl_outbox::process_batch(
        &app.pool,
        Service::Order,
        &jwl_order::OrderReadModel,
        &events,
    )
    .await;
    assert!(
        matches!(
            result,
            Err(jwl_outbox::OutboxError::Handler(
                jwl_outbox::HandlerError::Permanent(_)
            ))
        ),
        "{result:?}"
    );
    Ok(())
}

/// A saga's status changes before its end (paid, reserved, waybill created) update the order's
/// row in place (HOT: no new index entries). They can only while no index of the table refers
/// to `status`; otherwise every step of every saga writes a new entry into each index.
#[tokio::test]
async fn status_changes_before_the_end_of_a_saga_update_the_row_in_place() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let order_id = app.place_order().await?;
    let base = Utc::now() + chrono::TimeDelta::seconds(1);
    let steps = [
        event_at(Service::Payment, authorized(order_id), base, 10),
        event_at(Service::Inventory, reserved(order_id), base, 20),
        event_at(
            Service::Fulfillment,
            waybill_created(order_id, WaybillId::new()),
            base,
            30,
        ),
    ];
    for event in &steps {
        assert!(matches!(
            app.deliver(event).await?,
            Processed::Handled { .. }
        ));
    }
    assert_eq!(view(&app, order_id).await?["status"], "waybill_created");
    // the statistics reach pg_stat_user_tables once the updating sessions flush them
    let (updates, in_place) = jwl_testkit::eventually(
        "the three updates are counted",
        std::time::Duration::from_secs(30),
        || async {
            let counts: (i64, i64) = sqlx::query_as(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
                 WHERE relid = 'orders'::regclass",
            )
            .fetch_one(&app.pool)
            .await
            .ok()?;
            (counts.0 >= 3).then_some(counts)
        },
    )
    .await?;
    assert_eq!((updates, in_place), (3, 3), "(updates, HOT updates)");
    Ok(())
}
