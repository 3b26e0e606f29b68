//! A typed client for the services' HTTP APIs (the README's HTTP API). Every response is checked for an
//! `X-Request-ID` header (and that it echoes the one sent, if any); typed calls check the status
//! code and decode the body, [`ApiClient::send`] returns the raw [`Reply`] for negative tests.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use jwl_events::Service;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::geo::Point;

/// The request-id header every response must carry.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// How long one request may take (the services' own limit is 10 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of a call that the service sheds with `429`/`503` ([`ApiClient::send_until_served`]).
const SHED_ATTEMPTS: u32 = 30;
/// The longest `Retry-After` honoured (the services say 1 s).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    pub sku: String,
    pub qty: u32,
    pub unit_price_cents: i64,
}

/// The body of `POST /v1/orders`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewOrder {
    pub items: Vec<LineItem>,
    pub pickup: Point,
    pub dropoff: Point,
    pub payment_token: String,
}

impl NewOrder {
    /// One `TEA` at `unit_price_cents`, picked up at [`Point::JIANGWAN`] and dropped off 2 km
    /// east, paid with a card that is accepted: the tests' ordinary order.
    pub fn one_tea(unit_price_cents: i64) -> Self {
        NewOrder {
            items: vec![LineItem {
                sku: "TEA".to_owned(),
                qty: 1,
                unit_price_cents,
            }],
            pickup: Point::JIANGWAN,
            dropoff: Point::JIANGWAN.offset_km(2.0, 0.0),
            payment_token: "tok_ok".to_owned(),
        }
    }

    /// Σ qty · unit price: what the order service must charge.
    pub fn amount_cents(&self) -> i64 {
        self.items
            .iter()
            .map(|item| i64::from(item.qty) * item.unit_price_cents)
            .sum()
    }
}

/// The order statuses of the read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Pending,
    Paid,
    Reserved,
    WaybillCreated,
    Dispatched,
    Delivered,
    Rejected,
    Cancelled,
}

impl OrderStatus {
    /// Terminal for API and cancel purposes: `dispatched`, `delivered`, `rejected`, `cancelled`.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Dispatched | Self::Delivered | Self::Rejected | Self::Cancelled
        )
    }

    /// The saga succeeded (`dispatched`, or `delivered` after it).
    pub fn succeeded(self) -> bool {
        matches!(self, Self::Dispatched | Self::Delivered)
    }
}

/// `GET /v1/orders/{id}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OrderView {
    pub order_id: String,
    pub status: OrderStatus,
    pub reason: Option<String>,
    pub waybill_id: Option<String>,
    pub courier_id: Option<String>,
    pub timeline: Vec<TimelineEntry>,
}

impl OrderView {
    /// The event types in the timeline, in its order.
    pub fn timeline_types(&self) -> Vec<&str> {
        self.timeline
            .iter()
            .map(|e| e.event_type.as_str())
            .collect()
    }
}

/// One event in an order's timeline.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TimelineEntry {
    #[serde(rename = "type")]
    pub event_type: String,
    pub time: DateTime<Utc>,
    pub source: String,
}

/// The payment states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Authorized,
    Declined,
    Captured,
    Voided,
}

/// `GET /v1/payments/{order_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PaymentView {
    pub order_id: String,
    pub status: PaymentStatus,
    pub amount_cents: i64,
}

/// `PUT` / `GET /v1/stock/{sku}` (`shipped` only in the `GET` answer).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StockLevel {
    pub sku: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub shipped: Option<i64>,
}

/// `GET /v1/waybills/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WaybillView {
    pub waybill_id: String,
    pub order_id: String,
    pub status: String,
    pub courier_id: Option<String>,
}

/// An `application/problem+json` body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: Option<String>,
    /// The JSON path or parameter at fault (a 400's extension member).
    pub field: Option<String>,
}

/// A request to one service.
#[derive(Debug, Clone)]
pub struct Call {
    pub service: Service,
    pub method: Method,
    pub path: String,
    pub token: Option<String>,
    pub body: Option<Value>,
    pub request_id: Option<String>,
    pub idempotency_key: Option<String>,
}

impl Call {
    pub fn new(service: Service, method: Method, path: impl Into<String>) -> Self {
        Self {
            service,
            method,
            path: path.into(),
            token: None,
            body: None,
            request_id: None,
            idempotency_key: None,
        }
    }

    /// Sends `Authorization: Bearer <token>`.
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    /// Sends `body` as JSON.
    pub fn json(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    /// Sends `X-Request-ID: <id>` (the reply must echo it).
    pub fn request_id(mut self, id: &str) -> Self {
        self.request_id = Some(id.to_owned());
        self
    }

    /// Sends `Idempotency-Key: <key>`.
    pub fn idempotency_key(mut self, key: &str) -> Self {
        self.idempotency_key = Some(key.to_owned());
        self
    }
}

/// A response whose `X-Request-ID` has been checked.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub request_id: String,
    pub headers: HeaderMap,
    /// The JSON body (`Null` when empty, a string when not JSON).
    pub body: Value,
}

impl Reply {
    /// The body as `T`, if the status is `expected`.
    pub fn expect<T: DeserializeOwned>(
        self,
        expected: StatusCode,
        what: &str,
    ) -> anyhow::Result<T> {
        anyhow::ensure!(
            self.status == expected,
            "{what}: expected {expected}, got {} with body {}",
            self.status,
            self.body
        );
        serde_json::from_value(self.body.clone())
            .with_context(|| format!("{what}: unexpected body {}", self.body))
    }

    /// The problem details of an error reply (checks the content type).
    pub fn problem(&self) -> anyhow::Result<Problem> {
        let content_type = self
            .headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        anyhow::ensure!(
            content_type.starts_with("application/problem+json"),
            "a {} reply has content type {content_type:?}, not application/problem+json (body {})",
            self.status,
            self.body
        );
        let problem: Problem = serde_json::from_value(self.body.clone())
            .with_context(|| format!("not a problem document: {}", self.body))?;
        anyhow::ensure!(
            problem.status == self.status.as_u16(),
            "the problem says status {} but the reply is {}",
            problem.status,
            self.status
        );
        Ok(problem)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `Retry-After` in seconds, if present.
    fn retry_after(&self) -> Option<Duration> {
        self.header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
    }
}

/// The HTTP client of one system: one base URL per service.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base_urls: BTreeMap<&'static str, String>,
}

impl ApiClient {
    /// A client for the services at `base_urls` (`http://127.0.0.1:PORT` each).
    pub fn new(base_urls: impl IntoIterator<Item = (Service, String)>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(64)
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            base_urls: base_urls
                .into_iter()
                .map(|(service, url)| (service.as_str(), url))
                .collect(),
        })
    }

    /// The base URL of `service`.
    pub fn base_url(&self, service: Service) -> anyhow::Result<&str> {
        self.base_urls
            .get(service.as_str())
            .map(String::as_str)
            .with_context(|| format!("no {service} service in this system"))
    }

    /// [`ApiClient::send`], again (the same call, so the same idempotency key) while the service
    /// sheds it with `429` or says it is briefly unavailable with `503` (a database that stalls
    /// for a moment on a busy host), honouring `Retry-After`, up to [`SHED_ATTEMPTS`] times; the
    /// last reply otherwise. For calls whose test is not about load shedding or outages.
    pub async fn send_until_served(&self, call: Call) -> anyhow::Result<Reply> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let reply = self.send(call.clone()).await?;
            let shed = matches!(
                reply.status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            );
            if !shed || attempt >= SHED_ATTEMPTS {
                return Ok(reply);
            }
            let wait = reply.retry_after().unwrap_or(Duration::from_secs(1));
            // The server asked for this pause (Retry-After); it is not a wait for a condition.
            tokio::time::sleep(wait.min(MAX_RETRY_AFTER)).await;
        }
    }

    /// Sends `call` and checks that the reply carries an `X-Request-ID` (echoing the one sent).
    pub async fn send(&self, call: Call) -> anyhow::Result<Reply> {
        let url = format!("{}{}", self.base_url(call.service)?, call.path);
        let what = format!("{} {url}", call.method);
        let mut request = self.http.request(call.method.clone(), &url);
        if let Some(token) = &call.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        if let Some(id) = &call.request_id {
            request = request.header(REQUEST_ID_HEADER, HeaderValue::from_str(id)?);
        }
        if let Some(key) = &call.idempotency_key {
            request = request.header("idempotency-key", HeaderValue::from_str(key)?);
        }
        let response = request.send().await.with_context(|| what.clone())?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("{what}: reading the body"))?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        let request_id = headers
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .with_context(|| format!("{what}: the {status} reply has no X-Request-ID header"))?
            .to_owned();
        if let Some(sent) = &call.request_id {
            anyhow::ensure!(
                &request_id == sent,
                "{what}: sent X-Request-ID {sent:?}, the reply carries {request_id:?}"
            );
        }
        Ok(Reply {
            status,
            request_id,
            headers,
            body,
        })
    }

    /// `POST /v1/orders` once, with a fresh idempotency key and no retry: the raw reply (what a
    /// shed or failing request answers).
    pub async fn post_order_once(
        &self,
        customer_token: &str,
        order: &NewOrder,
    ) -> anyhow::Result<Reply> {
        self.send(
            Call::new(Service::Order, Method::POST, "/v1/orders")
                .token(customer_token)
                .idempotency_key(&uuid::Uuid::new_v4().to_string())
                .json(serde_json::to_value(order)?),
        )
        .await
    }

    /// `POST /v1/orders` → the new order's id. Expects `201`, status `pending` and a
    /// `Location`; retries (with one idempotency key) while the service sheds load with
    /// `429`/`503`, honouring `Retry-After`.
    pub async fn place_order(
        &self,
        customer_token: &str,
        order: &NewOrder,
    ) -> anyhow::Result<String> {
        let key = uuid::Uuid::new_v4().to_string();
        let call = Call::new(Service::Order, Method::POST, "/v1/orders")
            .token(customer_token)
            .idempotency_key(&key)
            .json(serde_json::to_value(order)?);
        let reply = self.send_until_served(call).await?;
        let location = reply.header("location").map(str::to_owned);
        let created: Value = reply.expect(StatusCode::CREATED, "placing an order")?;
        let order_id = created["order_id"]
            .as_str()
            .with_context(|| format!("the created order has no order_id: {created}"))?
            .to_owned();
        anyhow::ensure!(
            created["status"] == json!("pending"),
            "a new order must be pending: {created}"
        );
        let location = location.context("the 201 for a new order has no Location header")?;
        anyhow::ensure!(
            location.ends_with(&format!("/v1/orders/{order_id}")),
            "Location {location:?} does not name order {order_id}"
        );
        Ok(order_id)
    }

    /// `GET /v1/orders/{id}`, again while the service answers `429` or `503`
    /// ([`ApiClient::send_until_served`]): a read that must succeed.
    pub async fn order(&self, token: &str, order_id: &str) -> anyhow::Result<OrderView> {
        self.send_until_served(
            Call::new(
                Service::Order,
                Method::GET,
                format!("/v1/orders/{order_id}"),
            )
            .token(token),
        )
        .await?
        .expect(StatusCode::OK, "reading an order")
    }

    /// `POST /v1/orders/{id}/cancel` (the raw reply: `202`, or `409` once terminal).
    pub async fn cancel_order(&self, token: &str, order_id: &str) -> anyhow::Result<Reply> {
        self.send(
            Call::new(
                Service::Order,
                Method::POST,
                format!("/v1/orders/{order_id}/cancel"),
            )
            .token(token),
        )
        .await
    }

    /// `PUT /v1/stock/{sku}` `{"on_hand": n}`.
    pub async fn put_stock(
        &self,
        admin_token: &str,
        sku: &str,
        on_hand: i64,
    ) -> anyhow::Result<StockLevel> {
        self.send(
            Call::new(Service::Inventory, Method::PUT, format!("/v1/stock/{sku}"))
                .token(admin_token)
                .json(json!({ "on_hand": on_hand })),
        )
        .await?
        .expect(StatusCode::OK, "setting stock")
    }

    /// `GET /v1/stock/{sku}`, again while the service answers `429` or `503`.
    pub async fn stock(&self, admin_token: &str, sku: &str) -> anyhow::Result<StockLevel> {
        self.send_until_served(
            Call::new(Service::Inventory, Method::GET, format!("/v1/stock/{sku}"))
                .token(admin_token),
        )
        .await?
        .expect(StatusCode::OK, "reading stock")
    }

    /// `GET /v1/payments/{order_id}`, again while the service answers `429` or `503` (an audit's
    /// concurrent reads on a busy host can time out waiting for one of the HTTP pool's
    /// connections).
    pub async fn payment(&self, admin_token: &str, order_id: &str) -> anyhow::Result<PaymentView> {
        self.send_until_served(
            Call::new(
                Service::Payment,
                Method::GET,
                format!("/v1/payments/{order_id}"),
            )
            .token(admin_token),
        )
        .await?
        .expect(StatusCode::OK, "reading a payment")
    }

    /// `GET /v1/holds/<service>/{order_id}`: what `service` holds back of the order (its
    /// dead-letter holds, held messages and parked outbox rows), as JSON.
    pub async fn holds(
        &self,
        admin_token: &str,
        service: Service,
        order_id: &str,
    ) -> anyhow::Result<serde_json::Value> {
        self.send(
            Call::new(
                service,
                Method::GET,
                format!("/v1/holds/{service}/{order_id}"),
            )
            .token(admin_token),
        )
        .await?
        .expect(StatusCode::OK, "reading an order's holds")
    }

    /// `GET /v1/waybills/{id}`.
    pub async fn waybill(
        &self,
        admin_token: &str,
        waybill_id: &str,
    ) -> anyhow::Result<WaybillView> {
        self.send(
            Call::new(
                Service::Fulfillment,
                Method::GET,
                format!("/v1/waybills/{waybill_id}"),
            )
            .token(admin_token),
        )
        .await?
        .expect(StatusCode::OK, "reading a waybill")
    }

    /// `PUT /v1/couriers/{id}/location`; expects a success status.
    pub async fn put_courier_location(
        &self,
        token: &str,
        courier_id: &str,
        at: Point,
    ) -> anyhow::Result<()> {
        let reply = self
            .send(
                Call::new(
                    Service::Dispatch,
                    Method::PUT,
                    format!("/v1/couriers/{courier_id}/location"),
                )
                .token(token)
                .json(serde_json::to_value(at)?),
            )
            .await?;
        anyhow::ensure!(
            reply.status.is_success(),
            "reporting courier {courier_id}'s location: {} {}",
            reply.status,
            reply.body
        );
        Ok(())
    }

    /// `POST /v1/couriers/{id}/deliveries/{waybill_id}` (the raw reply: success, or `409`).
    pub async fn confirm_delivery(
        &self,
        token: &str,
        courier_id: &str,
        waybill_id: &str,
    ) -> anyhow::Result<Reply> {
        self.send(
            Call::new(
                Service::Dispatch,
                Method::POST,
                format!("/v1/couriers/{courier_id}/deliveries/{waybill_id}"),
            )
            .token(token),
        )
        .await
    }
}
