//! Shared harness of the order service's integration tests: a fresh database migrated with
//! `jwl_order::migrate`, a private nats-server for the `ServiceContext`, the routes behind the
//! real edge (through `jwl_testkit::service`), tokens, and readers of the outbox.
//!
//! Each test binary uses a part of it, hence `allow(dead_code)`.

#![allow(dead_code)]

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use chrono::SubsecRound;
use jwl_events::{Envelope, EventData, EventType, OrderId, Service};
use jwl_outbox::{MessagingSettings, Processed};
use jwl_service_kit::Settings;
use jwl_service_kit::auth::Scope;
pub use jwl_testkit::service::Reply;
use jwl_testkit::service::{EdgeApp, bearer_request, deliver, schema_pool, send};
use serde_json::{Value, json};
use sqlx::PgPool;

/// Deadline for conditions that should hold within a second or two.
pub const SOON: Duration = Duration::from_secs(20);

pub const CUSTOMER: &str = "cust-42";
pub const OTHER_CUSTOMER: &str = "cust-77";

pub struct TestApp {
    pub pool: PgPool,
    pub edge: EdgeApp,
}

/// The order a `201 Created` reply names.
pub trait CreatedOrder {
    fn order_id(&self) -> OrderId;
}

impl CreatedOrder for Reply {
    fn order_id(&self) -> OrderId {
        OrderId::parse(
            self.json["order_id"]
                .as_str()
                .expect("order_id in the body"),
        )
        .expect("a valid order id")
    }
}

impl TestApp {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(Settings::default()).await
    }

    pub async fn start_with(settings: Settings) -> anyhow::Result<Self> {
        let pool = schema_pool(jwl_order::SCHEMA).await?;
        jwl_order::migrate(&pool).await?;
        let edge = EdgeApp::start(
            jwl_order::SERVICE,
            pool.clone(),
            MessagingSettings::default(),
            settings,
            b"order-service-test-secret",
            jwl_order::router,
        )
        .await?;
        Ok(Self { pool, edge })
    }

    pub fn token(&self, sub: &str, scopes: &[Scope]) -> String {
        self.edge
            .token(sub, scopes, Duration::from_secs(600))
            .expect("a token")
    }

    /// A customer token with `orders:write` and `orders:read`.
    pub fn customer(&self, sub: &str) -> String {
        self.token(sub, &[Scope::OrdersWrite, Scope::OrdersRead])
    }

    pub fn admin(&self) -> String {
        self.token("ops", &[Scope::Admin])
    }

    pub async fn send(&self, request: Request<Body>) -> anyhow::Result<Reply> {
        send(&self.edge.router, request).await
    }

    /// `POST /v1/orders` with `body` as JSON, as the holder of `token`.
    pub async fn post_order(
        &self,
        token: Option<&str>,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Reply> {
        self.post_order_raw(token, serde_json::to_vec(body)?, idempotency_key)
            .await
    }

    pub async fn post_order_raw(
        &self,
        token: Option<&str>,
        body: Vec<u8>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Reply> {
        let mut request = bearer_request(Method::POST, "/v1/orders", token)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        self.send(request.body(Body::from(body))?).await
    }

    /// Places [`order_body`] as [`CUSTOMER`] and returns its id.
    pub async fn place_order(&self) -> anyhow::Result<OrderId> {
        let reply = self
            .post_order(Some(&self.customer(CUSTOMER)), &order_body(), None)
            .await?;
        anyhow::ensure!(reply.status == StatusCode::CREATED, "{reply:?}");
        Ok(reply.order_id())
    }

    pub async fn get(&self, token: Option<&str>, path: &str) -> anyhow::Result<Reply> {
        self.without_body(Method::GET, token, path).await
    }

    pub async fn cancel(&self, token: Option<&str>, order_id: &str) -> anyhow::Result<Reply> {
        self.without_body(
            Method::POST,
            token,
            &format!("/v1/orders/{order_id}/cancel"),
        )
        .await
    }

    async fn without_body(
        &self,
        method: Method,
        token: Option<&str>,
        path: &str,
    ) -> anyhow::Result<Reply> {
        let request = bearer_request(method, path, token);
        self.send(request.body(Body::empty())?).await
    }

    /// The payloads of the outbox rows of `order_id` with type `ty`, in outbox order.
    pub async fn outbox_payloads(
        &self,
        order_id: OrderId,
        ty: EventType,
    ) -> anyhow::Result<Vec<Value>> {
        outbox_payloads(&self.pool, order_id, ty).await
    }

    /// Handles `event` through the read model exactly as its consumer would.
    pub async fn deliver(&self, event: &Envelope) -> anyhow::Result<Processed> {
        Ok(deliver(
            &self.pool,
            jwl_order::SERVICE,
            &jwl_order::OrderReadModel,
            event,
        )
        .await?)
    }
}

/// The payloads of the outbox rows of `order_id` with type `ty`, in outbox order.
pub async fn outbox_payloads(
    pool: &PgPool,
    order_id: OrderId,
    ty: EventType,
) -> anyhow::Result<Vec<Value>> {
    let payloads: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT payload FROM outbox WHERE subject = $1 ORDER BY seq")
            .bind(jwl_events::subject(&order_id, ty))
            .fetch_all(pool)
            .await?;
    payloads
        .iter()
        .map(|p| Ok(serde_json::from_slice(p)?))
        .collect()
}

/// A valid order body: 2 × 12800 + 1 × 6600 = 32200 cents.
pub fn order_body() -> Value {
    json!({
        "items": [
            {"sku": "TEA-LONGJING-250G", "qty": 2, "unit_price_cents": 12800},
            {"sku": "MOONCAKE-6", "qty": 1, "unit_price_cents": 6600}
        ],
        "pickup": {"lat": 31.2304, "lon": 121.4737},
        "dropoff": {"lat": 31.2243, "lon": 121.4768},
        "payment_token": "tok_ok"
    })
}

/// An event from the type's emitter at `time_offset_ms` after `base`.
pub fn event_at(
    source: Service,
    data: impl Into<EventData>,
    base: chrono::DateTime<chrono::Utc>,
    time_offset_ms: i64,
) -> Envelope {
    Envelope {
        time: (base + chrono::TimeDelta::milliseconds(time_offset_ms)).trunc_subsecs(6),
        ..Envelope::new(source, data.into())
    }
}
