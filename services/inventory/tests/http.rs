//! `PUT` and `GET /v1/stock/{sku}` through the real HTTP edge: auth (401/403), validation of
//! the SKU and the body (400/415), unknown SKUs (404), and `on_hand` never below what is
//! reserved.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use common::{deliver, line, migrated_pool, payment_authorized};
use jwl_outbox::MessagingSettings;
use jwl_service_kit::Settings;
use jwl_service_kit::auth::Scope;
use jwl_testkit::service::{EdgeApp, bearer_request, send};
use serde_json::{Value, json};

struct App {
    edge: EdgeApp,
    pool: sqlx::PgPool,
}

impl App {
    async fn start() -> App {
        let pool = migrated_pool().await.unwrap();
        let edge = EdgeApp::start(
            jwl_inventory::SERVICE,
            pool.clone(),
            MessagingSettings::default(),
            Settings::default(),
            b"inventory-http-test-secret-0123456789abcdef",
            jwl_inventory::router,
        )
        .await
        .unwrap();
        App { edge, pool }
    }

    fn admin(&self) -> String {
        self.token(&[Scope::Admin])
    }

    fn token(&self, scopes: &[Scope]) -> String {
        self.edge
            .token("ops-1", scopes, Duration::from_secs(300))
            .unwrap()
    }

    /// Sends a request with `token` (if any) and a body (if any, as `content_type`); the status
    /// and the JSON body.
    async fn send(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<(&str, String)>,
    ) -> (StatusCode, Value) {
        let request = bearer_request(method, uri, token);
        let request = match body {
            Some((content_type, body)) => request
                .header(header::CONTENT_TYPE, content_type)
                .body(Body::from(body)),
            None => request.body(Body::empty()),
        };
        let reply = send(&self.edge.router, request.unwrap()).await.unwrap();
        (reply.status, reply.json)
    }

    async fn put(&self, sku: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        let body = Some(("application/json", body.to_string()));
        self.send(Method::PUT, &format!("/v1/stock/{sku}"), token, body)
            .await
    }

    async fn get(&self, sku: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.send(Method::GET, &format!("/v1/stock/{sku}"), token, None)
            .await
    }
}

#[tokio::test]
async fn admins_set_and_read_stock() {
    let app = App::start().await;
    let admin = app.admin();

    let (status, body) = app
        .put("TEA-LONGJING-250G", Some(&admin), json!({"on_hand": 100}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let expected = json!({"sku": "TEA-LONGJING-250G", "on_hand": 100, "reserved": 0, "shipped": 0});
    assert_eq!(body, expected);
    assert_eq!(
        app.get("TEA-LONGJING-250G", Some(&admin)).await,
        (StatusCode::OK, expected)
    );

    // setting it again replaces on_hand; the bounds are inclusive
    for on_hand in [0, 1_000_000_000] {
        let (status, body) = app
            .put(
                "TEA-LONGJING-250G",
                Some(&admin),
                json!({"on_hand": on_hand}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["on_hand"], on_hand);
    }

    let (status, body) = app.get("NO-SUCH-SKU", Some(&admin)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["type"], "https://jiangwanli.dev/problems/not-found");
}

#[tokio::test]
async fn only_admins_may_touch_stock() {
    let app = App::start().await;
    let customer = app.token(&[Scope::OrdersWrite, Scope::OrdersRead, Scope::CouriersWrite]);

    let (status, body) = app.put("TEA", None, json!({"on_hand": 1})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(app.get("TEA", None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.get("TEA", Some("garbage")).await.0,
        StatusCode::UNAUTHORIZED
    );

    let (status, body) = app.put("TEA", Some(&customer), json!({"on_hand": 1})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        app.get("TEA", Some(&customer)).await.0,
        StatusCode::FORBIDDEN
    );
    // auth is checked before the path and the body
    let (status, _) = app.put("bad%20sku", Some(&customer), json!({"x": 1})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM stock)")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!exists, "nothing was written");
}

#[tokio::test]
async fn bad_skus_and_bodies_are_refused() {
    let app = App::start().await;
    let admin = app.admin();

    let long = "x".repeat(65);
    for sku in ["a%20b", "a%2Fb", "%E8%8C%B6", long.as_str()] {
        let (status, body) = app.put(sku, Some(&admin), json!({"on_hand": 1})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{sku}: {body}");
        assert_eq!(body["field"], "sku", "{sku}: {body}");
        let (status, body) = app.get(sku, Some(&admin)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{sku}: {body}");
        assert_eq!(body["field"], "sku", "{sku}: {body}");
    }

    for (body, field) in [
        (json!({"on_hand": -1}), Some("on_hand")),
        (json!({"on_hand": 1_000_000_001}), Some("on_hand")),
        (json!({"on_hand": "5"}), Some("on_hand")),
        (json!({"on_hand": 1.5}), Some("on_hand")),
        (json!({}), Some("on_hand")),
        (json!({"on_hand": 1, "reserved": 0}), None),
    ] {
        let (status, problem) = app.put("TEA", Some(&admin), body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {problem}");
        if let Some(field) = field {
            assert_eq!(problem["field"], field, "{body}: {problem}");
        }
    }
    let (status, problem) = app
        .send(
            Method::PUT,
            "/v1/stock/TEA",
            Some(&admin),
            Some(("text/plain", r#"{"on_hand": 1}"#.to_owned())),
        )
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{problem}");
    assert_eq!(app.get("TEA", Some(&admin)).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn on_hand_may_not_drop_below_what_is_reserved() {
    let app = App::start().await;
    let admin = app.admin();
    app.put("TEA", Some(&admin), json!({"on_hand": 10})).await;
    deliver(&app.pool, &payment_authorized(vec![line("TEA", 4)]))
        .await
        .unwrap();
    assert_eq!(
        app.get("TEA", Some(&admin)).await,
        (
            StatusCode::OK,
            json!({"sku": "TEA", "on_hand": 10, "reserved": 4, "shipped": 0})
        )
    );

    let (status, problem) = app.put("TEA", Some(&admin), json!({"on_hand": 3})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(problem["field"], "on_hand");
    assert_eq!(app.get("TEA", Some(&admin)).await.1["on_hand"], 10);

    let (status, body) = app.put("TEA", Some(&admin), json!({"on_hand": 4})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"sku": "TEA", "on_hand": 4, "reserved": 4, "shipped": 0})
    );
}

#[tokio::test]
async fn admins_read_an_order_s_reservation() {
    let app = App::start().await;
    let admin = app.admin();
    app.put("TEA", Some(&admin), json!({"on_hand": 10})).await;
    app.put("CUP", Some(&admin), json!({"on_hand": 10})).await;
    let event = payment_authorized(vec![line("TEA", 1), line("CUP", 2), line("TEA", 2)]);
    deliver(&app.pool, &event).await.unwrap();
    let order_id = event.order_id();
    let uri = format!("/v1/reservations/{order_id}");

    let (status, body) = app.send(Method::GET, &uri, Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({
            "order_id": order_id.to_string(),
            "state": "reserved",
            "lines": [
                {"sku": "CUP", "qty": 2, "state": "reserved"},
                {"sku": "TEA", "qty": 3, "state": "reserved"},
            ],
        })
    );

    // rejected: inventory heard of it but reserved nothing
    let short = payment_authorized(vec![line("TEA", 100)]);
    deliver(&app.pool, &short).await.unwrap();
    let (status, body) = app
        .send(
            Method::GET,
            &format!("/v1/reservations/{}", short.order_id()),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "rejected");
    assert_eq!(body["lines"], json!([]));

    let unknown = format!("/v1/reservations/{}", jwl_events::OrderId::new());
    let (status, body) = app.send(Method::GET, &unknown, Some(&admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["type"], "https://jiangwanli.dev/problems/not-found");

    let (status, body) = app
        .send(
            Method::GET,
            "/v1/reservations/not-a-uuid",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["field"], "order_id");

    let customer = app.token(&[Scope::OrdersRead]);
    assert_eq!(
        app.send(Method::GET, &uri, None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.send(Method::GET, &uri, Some(&customer), None).await.0,
        StatusCode::FORBIDDEN
    );
}
