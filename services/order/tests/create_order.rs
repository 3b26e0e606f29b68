//! `POST /v1/orders` against a real database: the order, its timeline row and its
//! `order.created` outbox row in one transaction; idempotency keys (same body replays, other body
//! 422, concurrent repeats, expiry and pruning); validation 400s naming the field; 401, 403, 413.

mod common;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use common::*;
use jwl_events::EventType;
use jwl_service_kit::Settings;
use jwl_service_kit::auth::Scope;
use serde_json::{Value, json};

#[tokio::test]
async fn creates_a_pending_order_with_its_event() -> anyhow::Result<()> {
    let deadline = std::time::Duration::from_secs(120);
    let app = TestApp::start_with(Settings {
        order_deadline: deadline,
        ..Settings::default()
    })
    .await?;
    let reply = app
        .post_order(Some(&app.customer(CUSTOMER)), &order_body(), None)
        .await?;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    let order_id = reply.order_id();
    assert_eq!(
        reply.json,
        json!({"order_id": order_id.to_string(), "status": "pending"})
    );
    assert_eq!(
        reply.header("location"),
        Some(format!("/v1/orders/{order_id}").as_str())
    );
    assert_eq!(reply.header("content-type"), Some("application/json"));

    let (customer, status, amount, deadline_at, created_at): (
        String,
        String,
        i64,
        DateTime<Utc>,
        DateTime<Utc>,
    ) = sqlx::query_as(
        "SELECT customer_id, status, amount_cents, deadline, created_at FROM orders
         WHERE order_id = $1",
    )
    .bind(order_id.0)
    .fetch_one(&app.pool)
    .await?;
    assert_eq!(
        (customer.as_str(), status.as_str(), amount),
        (CUSTOMER, "pending", 32200)
    );
    assert_eq!(deadline_at - created_at, chrono::TimeDelta::seconds(120));

    let events = app
        .outbox_payloads(order_id, EventType::OrderCreated)
        .await?;
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event["customer_id"], CUSTOMER);
    assert_eq!(event["amount_cents"], 32200);
    assert_eq!(event["payment_token"], "tok_ok");
    assert_eq!(event["items"], order_body()["items"]);
    assert_eq!(event["pickup"], order_body()["pickup"]);
    let event_deadline: DateTime<Utc> = serde_json::from_value(event["deadline"].clone())?;
    assert_eq!(event_deadline, deadline_at);

    let view = app
        .get(
            Some(&app.customer(CUSTOMER)),
            &format!("/v1/orders/{order_id}"),
        )
        .await?;
    assert_eq!(view.status, StatusCode::OK, "{view:?}");
    let created: DateTime<Utc> = serde_json::from_value(view.json["created_at"].clone())?;
    assert_eq!(created, created_at);
    assert_eq!(
        view.json["timeline"],
        json!([{"type": "jwl.order.created", "time": view.json["created_at"], "source": "/jwl/order"}])
    );
    Ok(())
}

#[tokio::test]
async fn the_same_key_and_body_replay_the_first_response() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let token = app.customer(CUSTOMER);
    let first = app
        .post_order(Some(&token), &order_body(), Some("key-1"))
        .await?;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");

    // the same body with other formatting and key order is the same request
    let reordered = br#"{"payment_token":"tok_ok","dropoff":{"lon":121.4768,"lat":31.2243},
        "pickup":{"lat":31.2304,"lon":121.47370},
        "items":[{"sku":"TEA-LONGJING-250G","unit_price_cents":12800,"qty":2},
                 {"qty":1,"sku":"MOONCAKE-6","unit_price_cents":6600}]}"#;
    let again = app
        .post_order_raw(Some(&token), reordered.to_vec(), Some("key-1"))
        .await?;
    assert_eq!(again.status, StatusCode::CREATED, "{again:?}");
    assert_eq!(again.raw, first.raw);
    assert_eq!(again.header("location"), first.header("location"));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));

    // another customer's key of the same name is another key
    let other = app
        .post_order(
            Some(&app.customer(OTHER_CUSTOMER)),
            &order_body(),
            Some("key-1"),
        )
        .await?;
    assert_eq!(other.status, StatusCode::CREATED);
    assert_ne!(other.order_id(), first.order_id());

    assert_eq!(orders_of(&app, CUSTOMER).await?, 1);
    let events = app
        .outbox_payloads(first.order_id(), EventType::OrderCreated)
        .await?;
    assert_eq!(events.len(), 1);
    Ok(())
}

#[tokio::test]
async fn the_same_key_with_another_body_is_refused() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let token = app.customer(CUSTOMER);
    let first = app
        .post_order(Some(&token), &order_body(), Some("key-2"))
        .await?;
    assert_eq!(first.status, StatusCode::CREATED);

    let mut changed = order_body();
    changed["items"][0]["qty"] = json!(3);
    let reply = app
        .post_order(Some(&token), &changed, Some("key-2"))
        .await?;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(
        reply.json["type"],
        "https://jiangwanli.dev/problems/unprocessable-entity"
    );
    assert_eq!(orders_of(&app, CUSTOMER).await?, 1);
    Ok(())
}

#[tokio::test]
async fn concurrent_repeats_of_a_key_create_one_order() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let token = app.customer(CUSTOMER);
    let body = order_body();
    let replies = futures::future::try_join_all(
        (0..8).map(|_| app.post_order(Some(&token), &body, Some("key-concurrent"))),
    )
    .await?;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        assert_eq!(reply.raw, replies[0].raw);
    }
    assert_eq!(orders_of(&app, CUSTOMER).await?, 1);
    let outbox_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.pool)
        .await?;
    assert_eq!(outbox_rows, 1);
    Ok(())
}

#[tokio::test]
async fn an_expired_key_places_a_new_order_and_expired_keys_are_pruned() -> anyhow::Result<()> {
    let ttl = std::time::Duration::from_secs(24 * 3600);
    let app = TestApp::start().await?;
    let token = app.customer(CUSTOMER);
    let body = order_body();
    let first = app.post_order(Some(&token), &body, Some("key-old")).await?;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    let live = app
        .post_order(Some(&token), &body, Some("key-live"))
        .await?;
    assert_eq!(live.status, StatusCode::CREATED, "{live:?}");
    // a day and a minute later, for the first key only
    sqlx::query(
        "UPDATE idempotency_keys SET created_at = now() - interval '24 hours 1 minute'
         WHERE idempotency_key = 'key-old'",
    )
    .execute(&app.pool)
    .await?;

    let repeat = app.post_order(Some(&token), &body, Some("key-old")).await?;
    assert_eq!(repeat.status, StatusCode::CREATED, "{repeat:?}");
    assert_eq!(repeat.header("idempotent-replayed"), None, "{repeat:?}");
    assert_ne!(repeat.order_id(), first.order_id(), "a new order");
    let replayed = app
        .post_order(Some(&token), &body, Some("key-live"))
        .await?;
    assert_eq!(replayed.header("idempotent-replayed"), Some("true"));
    assert_eq!(orders_of(&app, CUSTOMER).await?, 3);

    // the repeat recorded the key afresh: nothing has expired now
    assert_eq!(
        jwl_order::prune_expired_idempotency_keys(&app.pool, ttl).await?,
        0
    );
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .execute(&app.pool)
        .await?;
    assert_eq!(
        jwl_order::prune_expired_idempotency_keys(&app.pool, ttl).await?,
        2
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&app.pool)
        .await?;
    assert_eq!(left, 0);
    Ok(())
}

/// Breaks one rule of a valid order body.
type BodyChange = Box<dyn Fn(&mut Value)>;

#[tokio::test]
async fn invalid_input_is_a_400_naming_the_field() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let token = app.customer(CUSTOMER);
    let cases: Vec<(&str, BodyChange)> = vec![
        ("items", Box::new(|b| b["items"] = json!([]))),
        (
            "items",
            Box::new(|b| {
                b["items"] = json!(vec![
                    json!({"sku": "A", "qty": 1, "unit_price_cents": 1});
                    51
                ])
            }),
        ),
        (
            "items[1].sku",
            Box::new(|b| b["items"][1]["sku"] = json!("")),
        ),
        (
            "items[1].sku",
            Box::new(|b| b["items"][1]["sku"] = json!("tea leaves")),
        ),
        (
            "items[0].sku",
            Box::new(|b| b["items"][0]["sku"] = json!("x".repeat(65))),
        ),
        (
            "items[1].qty",
            Box::new(|b| b["items"][1]["qty"] = json!(0)),
        ),
        (
            "items[0].qty",
            Box::new(|b| b["items"][0]["qty"] = json!(1001)),
        ),
        (
            "items[1].unit_price_cents",
            Box::new(|b| b["items"][1]["unit_price_cents"] = json!(0)),
        ),
        (
            "items[0].unit_price_cents",
            Box::new(|b| b["items"][0]["unit_price_cents"] = json!(100_000_001)),
        ),
        ("pickup.lat", Box::new(|b| b["pickup"]["lat"] = json!(90.5))),
        (
            "dropoff.lon",
            Box::new(|b| b["dropoff"]["lon"] = json!(-181)),
        ),
        (
            "payment_token",
            Box::new(|b| b["payment_token"] = json!("")),
        ),
        (
            "payment_token",
            Box::new(|b| b["payment_token"] = json!("t".repeat(129))),
        ),
        // shape errors, reported by the JSON extractor
        (
            "items[0].qty",
            Box::new(|b| b["items"][0]["qty"] = json!("two")),
        ),
        (
            "pickup.lon",
            Box::new(|b| {
                b["pickup"].as_object_mut().map(|p| p.remove("lon"));
            }),
        ),
        (
            "payment_token",
            Box::new(|b| {
                b.as_object_mut().map(|o| o.remove("payment_token"));
            }),
        ),
    ];
    for (field, break_it) in cases {
        let mut body = order_body();
        break_it(&mut body);
        let reply = app.post_order(Some(&token), &body, None).await?;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{field}: {reply:?}");
        assert_eq!(reply.field(), Some(field), "{reply:?}");
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
    }

    // unknown fields are refused
    for unknown in [
        json!({"coupon": "FREE"}),
        json!({"pickup": {"lat": 1, "lon": 2, "alt": 3}}),
    ] {
        let mut body = order_body();
        for (name, value) in unknown.as_object().into_iter().flatten() {
            body[name] = value.clone();
        }
        let reply = app.post_order(Some(&token), &body, None).await?;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
        let detail = reply.json["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("unknown field"), "{detail}");
    }

    let bad_key = app
        .post_order(Some(&token), &order_body(), Some(&"k".repeat(256)))
        .await?;
    assert_eq!(bad_key.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_key.field(), Some("Idempotency-Key"));

    let not_json = app
        .post_order_raw(Some(&token), b"{\"items\": [".to_vec(), None)
        .await?;
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);

    assert_eq!(orders_of(&app, CUSTOMER).await?, 0);
    Ok(())
}

#[tokio::test]
async fn bodies_over_the_edge_limit_are_a_413() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let mut body = order_body();
    body["payment_token"] = json!("t".repeat(70 * 1024));
    let reply = app
        .post_order(Some(&app.customer(CUSTOMER)), &body, None)
        .await?;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    Ok(())
}

#[tokio::test]
async fn unauthenticated_is_401_and_without_scope_is_403() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let missing = app.post_order(None, &order_body(), None).await?;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert!(missing.header("www-authenticate").is_some());

    let forged = jwl_service_kit::auth::JwtKeys::new(b"another secret").issue(
        CUSTOMER,
        &[Scope::OrdersWrite],
        std::time::Duration::from_secs(60),
    )?;
    let bad = app.post_order(Some(&forged), &order_body(), None).await?;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);

    for scopes in [&[Scope::OrdersRead][..], &[Scope::CouriersWrite], &[]] {
        let token = app.token(CUSTOMER, scopes);
        // the scope is checked before the body
        let reply = app.post_order(Some(&token), &json!({}), None).await?;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{scopes:?}: {reply:?}");
    }

    let admin = app
        .post_order(Some(&app.admin()), &order_body(), None)
        .await?;
    assert_eq!(admin.status, StatusCode::CREATED);
    assert_eq!(orders_of(&app, CUSTOMER).await?, 0);
    assert_eq!(orders_of(&app, "ops").await?, 1);
    Ok(())
}

async fn orders_of(app: &TestApp, customer: &str) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE customer_id = $1")
            .bind(customer)
            .fetch_one(&app.pool)
            .await?,
    )
}
