//! `GET /v1/payments/{order_id}` through the real HTTP edge: auth (401/403), validation (400),
//! unknown and tombstoned orders (404), and the payment's view (200); and payment's
//! `GET /v1/holds/payment/{order_id}` (the route every service mounts) over its real schema.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::{deliver, migrated_pool, order_created};
use jwl_events::{DispatchFailed, DispatchFailureReason, Envelope, Service, WaybillId};
use jwl_outbox::MessagingSettings;
use jwl_service_kit::Settings;
use jwl_service_kit::auth::Scope;
use jwl_testkit::service::{EdgeApp, get};
use serde_json::{Value, json};

struct App {
    edge: EdgeApp,
    pool: sqlx::PgPool,
}

impl App {
    async fn start() -> App {
        let pool = migrated_pool().await.unwrap();
        let edge = EdgeApp::start(
            jwl_payment::SERVICE,
            pool.clone(),
            MessagingSettings::default(),
            Settings::default(),
            b"payment-http-test-secret-0123456789abcdef",
            jwl_payment::router,
        )
        .await
        .unwrap();
        App { edge, pool }
    }

    fn token(&self, scopes: &[Scope]) -> String {
        self.edge
            .token("ops-1", scopes, Duration::from_secs(300))
            .unwrap()
    }

    /// GETs `uri` with `token` (if any); the status and the JSON body.
    async fn get(&self, uri: &str, token: Option<&str>) -> (StatusCode, Value) {
        let reply = get(&self.edge.router, uri, token).await.unwrap();
        (reply.status, reply.json)
    }
}

#[tokio::test]
async fn admins_see_a_payment_and_everyone_else_is_refused() {
    let app = App::start().await;
    let created = order_created("tok_ok");
    deliver(&app.pool, &created).await.unwrap();
    let uri = format!("/v1/payments/{}", created.order_id());

    let (status, body) = app.get(&uri, Some(&app.token(&[Scope::Admin]))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"order_id": created.order_id().to_string(), "status": "authorized", "amount_cents": 32200})
    );

    let (status, body) = app.get(&uri, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["status"], 401);

    let (status, body) = app.get(&uri, Some("not-a-jwt")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    let customer = app.token(&[Scope::OrdersRead, Scope::OrdersWrite]);
    let (status, body) = app.get(&uri, Some(&customer)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["status"], 403);
}

#[tokio::test]
async fn bad_and_unknown_order_ids() {
    let app = App::start().await;
    let admin = app.token(&[Scope::Admin]);

    for bad in ["not-a-uuid", "00000000-0000-0000-0000-000000000000", "123"] {
        let (status, body) = app.get(&format!("/v1/payments/{bad}"), Some(&admin)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["field"], "order_id", "{bad}: {body}");
    }
    // the bad id is only looked at once the caller is known to be an admin
    let (status, _) = app.get("/v1/payments/not-a-uuid", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let unknown = jwl_events::OrderId::new();
    let (status, body) = app
        .get(&format!("/v1/payments/{unknown}"), Some(&admin))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["type"], "https://jiangwanli.dev/problems/not-found");

    // a tombstone (void requested before any authorisation) is not a payment
    let failed = Envelope::new(
        Service::Dispatch,
        DispatchFailed {
            order_id: unknown,
            waybill_id: WaybillId::new(),
            reason: DispatchFailureReason::Customer,
        }
        .into(),
    );
    deliver(&app.pool, &failed).await.unwrap();
    let (status, body) = app
        .get(&format!("/v1/payments/{unknown}"), Some(&admin))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn a_declined_payment_shows_its_status() {
    let app = App::start().await;
    let admin = app.token(&[Scope::Admin]);

    let declined = order_created("tok_decline");
    deliver(&app.pool, &declined).await.unwrap();
    let (status, body) = app
        .get(
            &format!("/v1/payments/{}", declined.order_id()),
            Some(&admin),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "declined");
    assert_eq!(body["amount_cents"], 32200);
}

#[tokio::test]
async fn admins_see_what_payment_holds_back_of_an_order() {
    let app = App::start().await;
    let admin = app.token(&[Scope::Admin]);
    let order = jwl_events::OrderId::new();
    let other = jwl_events::OrderId::new();
    let uri = format!("/v1/holds/payment/{order}");

    // nothing held back: empty lists
    let (status, body) = app.get(&uri, Some(&admin)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"order_id": order.to_string(), "service": "payment", "held": false,
               "holds": [], "parked_messages": [], "parked_rows": []})
    );

    // a hold, a message parked behind it and a parked outbox row, as the consumer and the
    // relay write them; and the same for another order, which is not listed. Their subjects are
    // of the legacy layout (`jwl.evt.<order>.<type>`, rows written before an upgrade); the
    // outbox crate's order_holds test reads back those of the current one.
    let head = uuid::Uuid::now_v7();
    let parked = uuid::Uuid::now_v7();
    let unsent = uuid::Uuid::now_v7();
    for (order_id, head, parked, unsent) in [
        (order, head, parked, unsent),
        (
            other,
            uuid::Uuid::now_v7(),
            uuid::Uuid::now_v7(),
            uuid::Uuid::now_v7(),
        ),
    ] {
        sqlx::query(
            "INSERT INTO dead_letter_holds (consumer, order_id, head_event_id)
             VALUES ('payment__order_created', $1, $2)",
        )
        .bind(order_id.0)
        .bind(head)
        .execute(&app.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO parked_messages (consumer, order_id, event_id, stream_seq, subject, headers, payload)
             VALUES ('payment__courier_assigned', $1, $2, 42, $3, '[]', '')",
        )
        .bind(order_id.0)
        .bind(parked)
        .bind(format!("jwl.evt.{order_id}.dispatch.courier_assigned"))
        .execute(&app.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO outbox (event_id, subject, headers, payload, attempts, last_error, parked_at)
             VALUES ($1, $2, '[]', '', 1, 'maximum payload exceeded', now())",
        )
        .bind(unsent)
        .bind(format!("jwl.evt.{order_id}.payment.authorized"))
        .execute(&app.pool)
        .await
        .unwrap();
    }

    let (status, body) = app.get(&uri, Some(&admin)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["held"], true, "{body}");
    let holds = body["holds"].as_array().unwrap();
    assert_eq!(holds.len(), 1, "{body}");
    assert_eq!(holds[0]["consumer"], "payment__order_created");
    assert_eq!(holds[0]["head_event_id"], head.to_string());
    let messages = body["parked_messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{body}");
    assert_eq!(messages[0]["event_id"], parked.to_string());
    assert_eq!(messages[0]["consumer"], "payment__courier_assigned");
    assert_eq!(messages[0]["event_type"], "jwl.dispatch.courier_assigned");
    assert_eq!(messages[0]["stream_seq"], 42);
    assert_eq!(messages[0]["dead_letter_reason"], Value::Null);
    let rows = body["parked_rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{body}");
    assert_eq!(rows[0]["event_id"], unsent.to_string());
    assert_eq!(rows[0]["event_type"], "jwl.payment.authorized");
    assert_eq!(rows[0]["last_error"], "maximum payload exceeded");
    assert_eq!(rows[0]["attempts"], 1);

    // admin only, and the order id is checked
    let (status, _) = app.get(&uri, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let customer = app.token(&[Scope::OrdersRead, Scope::OrdersWrite]);
    let (status, _) = app.get(&uri, Some(&customer)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = app.get("/v1/holds/payment/not-a-uuid", Some(&admin)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["field"], "order_id", "{body}");
    // payment answers only for itself
    let (status, _) = app
        .get(&format!("/v1/holds/inventory/{order}"), Some(&admin))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
