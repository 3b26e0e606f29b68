//! Harness for dispatch's integration tests: a fresh database with dispatch's schema, a private
//! nats-server for the `ServiceContext`, the real HTTP edge around `router`, event builders,
//! and readers for the outbox and the tables.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode, header};
use jwl_dispatch::{DispatchHandler, SCHEMA, SERVICE};
use jwl_events::{
    CancelReason, Envelope, EventData, EventType, GeoPoint, HeaderStyle, OrderCancelRequested,
    OrderId, WaybillCreated, WaybillId,
};
use jwl_outbox::{JetStreamBroker, MessagingSettings, OutboxError, Processed};
use jwl_service_kit::auth::{JwtKeys, Scope};
use jwl_service_kit::http::Readiness;
use jwl_service_kit::{ServiceContext, Settings};
use jwl_testkit::TestNats;
use serde_json::Value;
use sqlx::PgPool;
use sqlx::types::Json;
use tower::ServiceExt;

pub const SECRET: &[u8] = b"dispatch-test-secret-0123456789abcdef";

/// A pickup in central Shanghai (People's Square).
pub const PICKUP: (f64, f64) = (31.2304, 121.4737);

/// Kilometres per degree of longitude at the pickup's latitude (for placing couriers).
pub fn km_east(km: f64) -> (f64, f64) {
    let km_per_degree = 111.195 * PICKUP.0.to_radians().cos();
    (PICKUP.0, PICKUP.1 + km / km_per_degree)
}

pub fn point((lat, lon): (f64, f64)) -> GeoPoint {
    GeoPoint::new(lat, lon).unwrap()
}

pub struct Harness {
    pub pool: PgPool,
    pub ctx: ServiceContext,
    pub app: Router,
    pub keys: JwtKeys,
    pub handler: DispatchHandler,
    _nats: TestNats,
}

impl Harness {
    /// Default settings: 5 km radius, capacity 1, 60 s dispatch deadline.
    pub async fn start() -> anyhow::Result<Self> {
        Self::with_settings(Settings::default()).await
    }

    pub async fn with_settings(settings: Settings) -> anyhow::Result<Self> {
        let db = jwl_testkit::database().await?;
        let pool = jwl_service_kit::db::connect(db.url(), SCHEMA).await?;
        jwl_dispatch::migrate(&pool).await?;
        let nats = jwl_testkit::nats().await?;
        let broker = JetStreamBroker::connect(nats.url()).await?;
        let settings = Arc::new(settings);
        let ctx = ServiceContext {
            service: SERVICE,
            pool: pool.clone(),
            broker: broker.clone(),
            messaging: MessagingSettings {
                relay_poll_interval: Duration::from_millis(200),
                ..MessagingSettings::default()
            },
            settings: settings.clone(),
        };
        let keys = JwtKeys::new(SECRET);
        let readiness = Readiness {
            pools: vec![pool.clone()],
            broker,
        };
        let app = jwl_service_kit::http::edge(jwl_dispatch::router(&ctx), keys.clone(), readiness);
        Ok(Self {
            pool,
            ctx,
            app,
            keys,
            handler: DispatchHandler::new(settings),
            _nats: nats,
        })
    }

    /// Handles `event` exactly as dispatch's consumer loop would.
    pub async fn handle(&self, event: &Envelope) -> Result<Processed, OutboxError> {
        let consumer = jwl_outbox::durable_name(SERVICE, event.event_type());
        jwl_outbox::process_one(&self.pool, SERVICE, &self.handler, &consumer, event).await
    }

    /// Handles `event` and returns the payloads it emitted.
    pub async fn emitted(&self, event: &Envelope) -> anyhow::Result<Vec<EventData>> {
        match self.handle(event).await? {
            Processed::Handled { emitted } => Ok(emitted.into_iter().map(|e| e.data).collect()),
            Processed::Duplicate => anyhow::bail!("unexpected duplicate"),
        }
    }

    pub fn token(&self, subject: &str, scopes: &[Scope]) -> String {
        self.keys
            .issue(subject, scopes, Duration::from_secs(3600))
            .unwrap()
    }

    pub fn courier_token(&self, courier_id: &str) -> String {
        self.token(courier_id, &[Scope::CouriersWrite])
    }

    pub async fn send(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body)),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (status, json)
    }

    /// `PUT /v1/couriers/{id}/location` as the courier itself.
    pub async fn report(&self, courier_id: &str, (lat, lon): (f64, f64)) -> Value {
        let token = self.courier_token(courier_id);
        let (status, body) = self
            .send(
                Method::PUT,
                &format!("/v1/couriers/{courier_id}/location"),
                Some(&token),
                Some(serde_json::json!({ "lat": lat, "lon": lon }).to_string()),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// `POST /v1/couriers/{id}/deliveries/{waybill_id}` as the courier itself.
    pub async fn deliver(&self, courier_id: &str, waybill_id: WaybillId) -> (StatusCode, Value) {
        let token = self.courier_token(courier_id);
        self.send(
            Method::POST,
            &format!("/v1/couriers/{courier_id}/deliveries/{waybill_id}"),
            Some(&token),
            None,
        )
        .await
    }

    /// `(status, courier_id, failure_reason)` of a waybill.
    pub async fn waybill(
        &self,
        waybill_id: WaybillId,
    ) -> anyhow::Result<(String, Option<String>, Option<String>)> {
        Ok(sqlx::query_as(
            "SELECT status, courier_id, failure_reason FROM waybills WHERE waybill_id = $1",
        )
        .bind(waybill_id.0)
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn live_waybills(&self, courier_id: &str) -> anyhow::Result<i32> {
        Ok(
            sqlx::query_scalar("SELECT live_waybills FROM couriers WHERE courier_id = $1")
                .bind(courier_id)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Every event in the outbox, in order.
    pub async fn outbox(&self) -> anyhow::Result<Vec<Envelope>> {
        type OutboxRow = (Json<Vec<(String, String)>>, Vec<u8>);
        let rows: Vec<OutboxRow> =
            sqlx::query_as("SELECT headers, payload FROM outbox ORDER BY seq")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(Json(headers), payload)| {
                let pairs = headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
                Ok(jwl_events::decode(HeaderStyle::Nats, pairs, &payload)?)
            })
            .collect()
    }

    /// The outbox events of one type.
    pub async fn outbox_of(&self, ty: EventType) -> anyhow::Result<Vec<Envelope>> {
        Ok(self
            .outbox()
            .await?
            .into_iter()
            .filter(|event| event.event_type() == ty)
            .collect())
    }
}

/// A `waybill_created` from fulfillment for a new order, picking up at `pickup`.
pub fn waybill_created(pickup: (f64, f64)) -> Envelope {
    waybill_created_for(OrderId::new(), pickup)
}

pub fn waybill_created_for(order_id: OrderId, pickup: (f64, f64)) -> Envelope {
    Envelope::new(
        jwl_events::Service::Fulfillment,
        WaybillCreated {
            order_id,
            waybill_id: WaybillId::new(),
            pickup: point(pickup),
            dropoff: point((31.2243, 121.4768)),
        }
        .into(),
    )
}

pub fn created(event: &Envelope) -> &WaybillCreated {
    match &event.data {
        EventData::WaybillCreated(created) => created,
        other => panic!("not a waybill_created: {other:?}"),
    }
}

pub fn cancel_requested(order_id: OrderId, reason: CancelReason) -> Envelope {
    Envelope::new(
        jwl_events::Service::Order,
        OrderCancelRequested { order_id, reason }.into(),
    )
}
