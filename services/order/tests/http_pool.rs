//! The order service's HTTP routes run on a pool of their own (`ServiceContext::http_pool`, sized
//! by `JWL_HTTP_DB_POOL_SIZE` in production): a flood of requests stuck in the database takes
//! that pool's connections and waits for them, and the consumers keep theirs and go on handling
//! events. On one shared pool the flood takes every connection and the consumers stop.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use jwl_events::{GeoPoint, LineItem, OrderId, PaymentAuthorized};
use jwl_outbox::MessagingSettings;
use jwl_service_kit::Settings;
use jwl_service_kit::auth::{JwtKeys, Scope};
use jwl_service_kit::db::{PoolSettings, connect_labelled, connect_with};
use jwl_service_kit::http::{Readiness, edge};
use jwl_testkit::eventually;
use jwl_testkit::service::{bearer_request, publish_event, send, service_context};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

/// Connections of the HTTP routes' pool.
const HTTP_CONNECTIONS: u32 = 2;
/// Connections of the consumers' (messaging runtime's) pool.
const CONSUMER_CONNECTIONS: u32 = 4;
/// Requests of the flood: more than both pools hold.
const FLOOD: usize = 12;
const SECRET: &[u8] = b"order-http-pool-test-secret-0123456789";
const CUSTOMER: &str = "cust-42";
/// Within the edge's 10 s request timeout, after which the flood's requests give up by
/// themselves (and would free a shared pool anyway).
const WHILE_FLOODED: Duration = Duration::from_secs(8);
const SOON: Duration = Duration::from_secs(20);

fn pool_settings(max_connections: u32) -> PoolSettings {
    PoolSettings {
        max_connections,
        acquire_timeout: Duration::from_secs(60),
        ..PoolSettings::default()
    }
}

fn order_body() -> serde_json::Value {
    serde_json::json!({
        "items": [{"sku": "MOONCAKE-6", "qty": 1, "unit_price_cents": 6600}],
        "pickup": {"lat": 31.2304, "lon": 121.4737},
        "dropoff": {"lat": 31.2243, "lon": 121.4768},
        "payment_token": "tok_ok"
    })
}

async fn place_order(app: &axum::Router, token: &str) -> anyhow::Result<OrderId> {
    let request = bearer_request(Method::POST, "/v1/orders", Some(token))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(&order_body())?))?;
    let reply = send(app, request).await?;
    anyhow::ensure!(reply.status == StatusCode::CREATED, "{reply:?}");
    let id = reply.json["order_id"].as_str().unwrap_or_default();
    Ok(OrderId::parse(id)?)
}

/// Sessions of the test database waiting for a lock.
async fn waiting_on_locks(observer: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE wait_event_type = 'Lock' AND datname = current_database()",
    )
    .fetch_one(observer)
    .await?)
}

async fn status(observer: &PgPool, order_id: OrderId) -> anyhow::Result<String> {
    Ok(
        sqlx::query_scalar("SELECT status FROM jwl_order.orders WHERE order_id = $1")
            .bind(order_id.0)
            .fetch_one(observer)
            .await?,
    )
}

#[tokio::test]
async fn a_flood_of_requests_stuck_in_the_database_leaves_the_consumers_their_connections()
-> anyhow::Result<()> {
    let database = jwl_testkit::database().await?;
    let pool = connect_with(
        database.url(),
        jwl_order::SCHEMA,
        &pool_settings(CONSUMER_CONNECTIONS),
    )
    .await?;
    jwl_order::migrate(&pool).await?;
    let http_pool = connect_labelled(
        database.url(),
        jwl_order::SCHEMA,
        "jwl_order_http",
        &pool_settings(HTTP_CONNECTIONS),
    )
    .await?;
    // the test's own look at the database, from neither pool
    let observer = database.pool().await?;

    let (ctx, _nats) = service_context(
        jwl_order::SERVICE,
        pool.clone(),
        MessagingSettings::default(),
        Settings::default(),
    )
    .await?;
    let ctx = ctx.with_http_pool(http_pool);
    ctx.broker.ensure_streams(&ctx.messaging).await?;
    let keys = JwtKeys::new(SECRET);
    let app = edge(
        jwl_order::router(&ctx),
        keys.clone(),
        Readiness::new(vec![pool.clone()], ctx.broker.clone()),
    );
    let token = keys.issue(
        CUSTOMER,
        &[Scope::OrdersWrite, Scope::OrdersRead],
        Duration::from_secs(600),
    )?;

    // the flood is about order A; the consumers are given an event of order B meanwhile
    let flooded = place_order(&app, &token).await?;
    let other = place_order(&app, &token).await?;
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(jwl_order::run(ctx.clone(), shutdown.clone()));

    // A's row is locked by the test: every cancel of A holds a connection, waiting on the lock
    let mut blocker = PgConnection::connect(database.url()).await?;
    let mut lock = blocker.begin().await?;
    sqlx::query("SELECT 1 FROM jwl_order.orders WHERE order_id = $1 FOR UPDATE")
        .bind(flooded.0)
        .execute(&mut *lock)
        .await?;
    let flood: Vec<_> = (0..FLOOD)
        .map(|_| {
            let app = app.clone();
            let request = bearer_request(
                Method::POST,
                &format!("/v1/orders/{flooded}/cancel"),
                Some(&token),
            )
            .body(Body::empty());
            tokio::spawn(async move { send(&app, request?).await })
        })
        .collect();
    eventually(
        "the flood holds the HTTP pool's connections",
        SOON,
        || async {
            waiting_on_locks(&observer)
                .await
                .ok()
                .filter(|waiting| *waiting >= i64::from(HTTP_CONNECTIONS))
        },
    )
    .await?;

    // the consumers still have connections: an event of B is handled while the flood waits
    let paid = jwl_events::Envelope::new(
        jwl_events::Service::Payment,
        PaymentAuthorized {
            order_id: other,
            amount_cents: 6600,
            items: vec![LineItem {
                sku: "MOONCAKE-6".into(),
                qty: 1,
                unit_price_cents: 6600,
            }],
            pickup: GeoPoint::new(31.2304, 121.4737)?,
            dropoff: GeoPoint::new(31.2243, 121.4768)?,
        }
        .into(),
    );
    publish_event(&ctx.broker, &paid).await?;
    eventually(
        "the consumers handle B's payment while the flood waits",
        WHILE_FLOODED,
        || async {
            status(&observer, other)
                .await
                .ok()
                .filter(|status| status == "paid")
        },
    )
    .await?;
    // and the flood took no more connections than the HTTP pool has
    assert_eq!(
        waiting_on_locks(&observer).await?,
        i64::from(HTTP_CONNECTIONS),
        "requests waiting in the database"
    );

    lock.rollback().await?;
    for request in flood {
        let reply = request.await??;
        // accepted once the lock is gone, or given up at the edge's request timeout
        assert!(
            [StatusCode::ACCEPTED, StatusCode::SERVICE_UNAVAILABLE].contains(&reply.status),
            "{reply:?}"
        );
    }
    assert_eq!(status(&observer, flooded).await?, "pending");
    shutdown.cancel();
    service.await??;
    Ok(())
}
