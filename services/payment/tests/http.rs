//! `GET /v1/payments/{order_id}` through the real HTTP edge: auth (401/403), validation (400),
//! unknown and tombstoned orders (404), and the payment's view (200).

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
