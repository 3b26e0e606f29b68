//! Harness for dispatch's integration tests: a fresh database with dispatch's schema, a private
//! nats-server for the `ServiceContext`, the real HTTP edge around `router`, event builders,
//! and readers for the outbox and the tables.

#![allow(dead_code)]

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use jwl_dispatch::{DispatchHandler, SCHEMA, SERVICE};
use jwl_events::{
    CancelReason, Envelope, EventData, EventType, GeoPoint, OrderCancelRequested, OrderId,
    WaybillCreated, WaybillId,
};
use jwl_outbox::{MessagingSettings, OutboxError, Processed};
use jwl_service_kit::Settings;
use jwl_service_kit::auth::Scope;
use jwl_testkit::service::{EdgeApp, bearer_request, deliver, outbox_events, schema_pool, send};
use serde_json::Value;
use sqlx::PgPool;

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
    pub edge: EdgeApp,
    pub handler: DispatchHandler,
}

impl Harness {
    /// Default settings: 5 km radius, capacity 1, 60 s dispatch deadline.
    pub async fn start() -> anyhow::Result<Self> {
        Self::with_settings(Settings::default()).await
    }

    pub async fn with_settings(settings: Settings) -> anyhow::Result<Self> {
        Self::on_pool(schema_pool(SCHEMA).await?, settings).await
    }

    /// On an existing database (a pool in dispatch's schema), migrated first.
    pub async fn on_pool(pool: PgPool, settings: Settings) -> anyhow::Result<Self> {
        jwl_dispatch::migrate(&pool).await?;
        let messaging = MessagingSettings {
            relay_poll_interval: Duration::from_millis(200),
            ..MessagingSettings::default()
        };
        let edge = EdgeApp::start(
            SERVICE,
            pool.clone(),
            messaging,
            settings,
            SECRET,
            jwl_dispatch::router,
        )
        .await?;
        Ok(Self {
            pool,
            handler: DispatchHandler::new(edge.ctx.settings.clone()),
            edge,
        })
    }

    /// Handles `event` exactly as dispatch's consumer loop would.
    pub async fn handle(&self, event: &Envelope) -> Result<Processed, OutboxError> {
        deliver(&self.pool, SERVICE, &self.handler, event).await
    }

    /// Handles `event` and returns the payloads it emitted.
    pub async fn emitted(&self, event: &Envelope) -> anyhow::Result<Vec<EventData>> {
        match self.handle(event).await? {
            Processed::Handled { emitted } => Ok(emitted.into_iter().map(|e| e.data).collect()),
            Processed::Duplicate => anyhow::bail!("unexpected duplicate"),
        }
    }

    pub fn token(&self, subject: &str, scopes: &[Scope]) -> String {
        self.edge
            .token(subject, scopes, Duration::from_secs(3600))
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
        let request = bearer_request(method, uri, token);
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body)),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let reply = send(&self.edge.router, request).await.unwrap();
        (reply.status, reply.json)
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
        outbox_events(&self.pool).await
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
