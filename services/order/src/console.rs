//! The operator's console: the page (`GET /console`, its script and style built into the
//! binary, public because it holds no data) and its admin-only JSON API under `/v1/console/…`,
//! which reads through the same `jwl-ops` functions as the `jwl` CLI:
//!
//! - `GET /v1/console/orders/{id}` — the order's status here and its saga from the broker
//!   ([`jwl_ops::OrderHistory::read`], as `jwl saga show`): events with their causation, trace
//!   id and data, and the order's dead letters; and its current state in each other service,
//!   read from that service's admin route (`JWL_CONSOLE_PEERS`, see [`Peers`]) with the
//!   operator's own token; and what each service holds back of the order (its dead-letter
//!   holds, the messages parked behind them, its parked outbox rows), from this service's own
//!   schema for the order service and from each other service's `GET /v1/holds/<service>/{id}`;
//! - `GET /v1/console/dead-letters` — the dead-letter stream ([`jwl_ops::dead_letters::list`],
//!   as `jwl dlq ls`);
//! - `POST /v1/console/dead-letters/{seq}/redrive|discard` — one dead letter resolved
//!   ([`jwl_ops::redelivery::redrive_dead_letter`] / [`discard_dead_letter`](jwl_ops::redelivery::discard_dead_letter),
//!   as `jwl dlq redrive|discard`), the outcome recorded with the admin token's subject;
//! - `GET /v1/console/stuck?older_than_secs=N` — [`stuck_orders`] (as `jwl saga stuck`);
//! - `GET /v1/console/figures` — live figures: orders placed and sagas finished by outcome in
//!   the last minute, open orders, every consumer's backlog
//!   ([`jwl_ops::backlog::consumers`]) and the outbox backlog of each service whose tables
//!   this database holds.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;
use chrono::{DateTime, Utc};
use jwl_events::{EventType, OrderId, Service};
use jwl_ops::backlog::{self, ConsumerBacklog};
use jwl_ops::redelivery::{self, Redriven};
use jwl_ops::{
    DeadLetterEntry, DeadLetterFilter, EventEntry, OpsError, OrderHistory, ReplayMode,
    TERMINAL_STATUSES, dead_letters, next_services,
};
use jwl_service_kit::ApiError;
use jwl_service_kit::ApiResult;
use jwl_service_kit::ConsolePeers;
use jwl_service_kit::auth::Admin;
use jwl_service_kit::extract::{Json, Path};
use jwl_service_kit::http::holds::HoldsView;
use jwl_service_kit::problem::Problem;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::types::Uuid;

use crate::http::AppState;
use crate::store;

const PAGE: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

/// The console's redrives a second, per order-service process (all operators together); the
/// page paces itself to this and waits when answered `429`.
pub(crate) const REDRIVES_PER_SECOND: u32 = 5;

/// A limiter of [`REDRIVES_PER_SECOND`] (no burst beyond it).
pub(crate) fn redrive_limiter() -> std::sync::Arc<governor::DefaultDirectRateLimiter> {
    let rate = std::num::NonZeroU32::new(REDRIVES_PER_SECOND).unwrap_or(std::num::NonZeroU32::MIN);
    std::sync::Arc::new(governor::RateLimiter::direct(governor::Quota::per_second(
        rate,
    )))
}

/// The most dead letters one listing returns (oldest first).
const DEAD_LETTER_LIMIT: usize = 1000;
/// The longest a discard reason may be.
const MAX_REASON: usize = 500;

/// `GET /console`, `/console/console.js` and `/console/console.css`: static, no data, so no
/// token (every API call the page makes needs the admin token). Not part of the OpenAPI
/// document, like the page assets of any web UI.
pub fn page() -> Router {
    Router::new()
        .route(
            "/console",
            get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE) }),
        )
        .route(
            "/console/console.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    SCRIPT,
                )
            }),
        )
        .route(
            "/console/console.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE) }),
        )
}

/// Body of `GET /v1/console/orders/{id}`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ConsoleOrderBody {
    #[schema(value_type = String, format = "uuid")]
    order_id: OrderId,
    /// The order service's view: `{"status","reason","waybill_id","courier_id","amount_cents","created_at"}`,
    /// or null when it has no such order (the broker may still hold events of it).
    #[schema(value_type = Option<Object>)]
    order: Option<OrderState>,
    /// Every event of the order in the events stream, in stream order (`jwl saga show --json`).
    #[schema(value_type = Vec<Object>)]
    events: Vec<EventEntry>,
    /// The order's dead letters.
    #[schema(value_type = Vec<Object>)]
    dead_letters: Vec<DeadLetterEntry>,
    /// The order's current state in each other service, read from its admin route:
    /// `{"payment","inventory","fulfillment","dispatch"}`, each `{"state": <that route's
    /// answer>}` or `{"unavailable": "why not"}` (not configured, no waybill or courier yet,
    /// unreachable, no answer within 1 s, or its error answer).
    #[schema(value_type = Object)]
    services: PeerStates,
    /// What each service holds back of the order: `{"order","payment","inventory",
    /// "fulfillment","dispatch"}`, each `{"state": <its GET /v1/holds/<service>/{order_id}
    /// answer: "held", "holds", "parked_messages", "parked_rows">}` or `{"unavailable": "why
    /// not"}` (as for `services`).
    #[schema(value_type = Object)]
    holds: HoldsByService,
}

/// [`ConsoleOrderBody::holds`].
#[derive(Serialize)]
struct HoldsByService {
    order: PeerState,
    payment: PeerState,
    inventory: PeerState,
    fulfillment: PeerState,
    dispatch: PeerState,
}

/// [`ConsoleOrderBody::services`].
#[derive(Serialize)]
struct PeerStates {
    payment: PeerState,
    inventory: PeerState,
    fulfillment: PeerState,
    dispatch: PeerState,
}

/// One service's state of an order, or why it is not shown.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
enum PeerState {
    State(serde_json::Value),
    Unavailable(String),
}

/// How long the console waits for each peer's answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(1);

/// The other services the console reads an order's state from: their base URLs and one HTTP
/// client for all requests.
#[derive(Clone)]
pub(crate) struct Peers {
    urls: ConsolePeers,
    client: Result<reqwest::Client, String>,
}

impl Peers {
    pub(crate) fn new(urls: ConsolePeers) -> Self {
        let client = reqwest::Client::builder()
            .timeout(PEER_TIMEOUT)
            .build()
            .map_err(|error| format!("no HTTP client: {error}"));
        Self { urls, client }
    }

    /// Every peer's state of the order at once, each within [`PEER_TIMEOUT`].
    async fn read(
        &self,
        order_id: OrderId,
        record: Option<&OrderState>,
        authorization: Option<&header::HeaderValue>,
    ) -> PeerStates {
        let order = order_id.to_string();
        let waybill = record.and_then(|record| record.waybill_id.clone());
        let courier = record.and_then(|record| record.courier_id.clone());
        let (payment, inventory, fulfillment, dispatch) = tokio::join!(
            self.get(
                "payment",
                self.urls.payment.as_deref(),
                Ok(vec!["payments", order.as_str()]),
                authorization
            ),
            self.get(
                "inventory",
                self.urls.inventory.as_deref(),
                Ok(vec!["reservations", order.as_str()]),
                authorization
            ),
            self.get(
                "fulfillment",
                self.urls.fulfillment.as_deref(),
                waybill
                    .as_deref()
                    .map(|id| vec!["waybills", id])
                    .ok_or("the order has no waybill yet"),
                authorization
            ),
            self.get(
                "dispatch",
                self.urls.dispatch.as_deref(),
                courier
                    .as_deref()
                    .map(|id| vec!["couriers", id])
                    .ok_or("the order has no courier yet"),
                authorization
            ),
        );
        PeerStates {
            payment,
            inventory,
            fulfillment,
            dispatch,
        }
    }

    /// What every peer holds back of the order (`GET /v1/holds/<service>/{order_id}`), at
    /// once, each within [`PEER_TIMEOUT`]; `order` is this service's own, read from its schema.
    async fn read_holds(
        &self,
        order_id: OrderId,
        order: PeerState,
        authorization: Option<&header::HeaderValue>,
    ) -> HoldsByService {
        let id = order_id.to_string();
        let (payment, inventory, fulfillment, dispatch) = tokio::join!(
            self.holds(
                Service::Payment,
                self.urls.payment.as_deref(),
                &id,
                authorization
            ),
            self.holds(
                Service::Inventory,
                self.urls.inventory.as_deref(),
                &id,
                authorization
            ),
            self.holds(
                Service::Fulfillment,
                self.urls.fulfillment.as_deref(),
                &id,
                authorization
            ),
            self.holds(
                Service::Dispatch,
                self.urls.dispatch.as_deref(),
                &id,
                authorization
            ),
        );
        HoldsByService {
            order,
            payment,
            inventory,
            fulfillment,
            dispatch,
        }
    }

    /// `GET {base}/v1/holds/<service>/{order_id}`.
    async fn holds(
        &self,
        service: Service,
        base: Option<&str>,
        order_id: &str,
        authorization: Option<&header::HeaderValue>,
    ) -> PeerState {
        let path = vec!["holds", service.as_str(), order_id];
        self.get(service.as_str(), base, Ok(path), authorization)
            .await
    }

    /// `GET {base}/v1/{path…}` with the operator's `Authorization`.
    async fn get(
        &self,
        service: &str,
        base: Option<&str>,
        path: Result<Vec<&str>, &str>,
        authorization: Option<&header::HeaderValue>,
    ) -> PeerState {
        let unavailable = PeerState::Unavailable;
        let Some(base) = base else {
            return unavailable(format!(
                "not configured (JWL_CONSOLE_PEERS has no {service})"
            ));
        };
        let path = match path {
            Ok(path) => path,
            Err(why) => return unavailable(why.to_owned()),
        };
        let client = match &self.client {
            Ok(client) => client,
            Err(why) => return unavailable(why.clone()),
        };
        let Ok(mut url) = reqwest::Url::parse(base) else {
            return unavailable(format!("{base} is not a URL"));
        };
        match url.path_segments_mut() {
            Ok(mut segments) => {
                segments.pop_if_empty().push("v1").extend(path);
            }
            Err(()) => return unavailable(format!("{base} cannot be a base URL")),
        }
        let mut request = client.get(url);
        if let Some(authorization) = authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) if error.is_timeout() => {
                return unavailable(format!("{service} did not answer within 1 s"));
            }
            Err(error) => {
                tracing::debug!(%service, error = %error, "console: a peer is unreachable");
                return unavailable(format!("{service} is unreachable at {base}"));
            }
        };
        let status = response.status();
        let body = match response.json::<serde_json::Value>().await {
            Ok(body) => body,
            Err(error) if error.is_timeout() => {
                return unavailable(format!("{service} did not answer within 1 s"));
            }
            Err(_) => return unavailable(format!("{service} answered {status} without JSON")),
        };
        if status == StatusCode::OK {
            return PeerState::State(body);
        }
        let detail = body["detail"].as_str().unwrap_or("");
        if status == StatusCode::NOT_FOUND {
            unavailable(format!("{service} has no record of it ({detail})"))
        } else {
            unavailable(format!("{service} answered {status}: {detail}"))
        }
    }
}

#[derive(Serialize)]
struct OrderState {
    status: &'static str,
    reason: Option<&'static str>,
    waybill_id: Option<String>,
    courier_id: Option<String>,
    amount_cents: i64,
    created_at: DateTime<Utc>,
}

/// One order as the operator sees it: its status here, its events and dead letters (admin).
#[utoipa::path(
    get,
    path = "/v1/console/orders/{id}",
    tag = "console",
    params(("id" = String, Path, format = "uuid", description = "The order id")),
    responses(
        (status = 200, description = "The order's saga", body = ConsoleOrderBody),
        (status = 404, description = "Neither the order service nor the broker knows the order", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The broker cannot be read", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn order(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    headers: HeaderMap,
    path: Result<Path<OrderId>, ApiError>,
) -> ApiResult<Json<ConsoleOrderBody>> {
    let Path(order_id) = path?;
    let record = store::find_order(&state.pool, order_id)
        .await
        .map_err(crate::http::store_error)?;
    let order = record.map(|record| OrderState {
        status: record.status.as_str(),
        reason: record.reason.map(|r| r.as_str()),
        waybill_id: record.waybill_id.map(|id| id.to_string()),
        courier_id: record.courier_id.map(String::from),
        amount_cents: record.amount_cents,
        created_at: record.created_at,
    });
    let own_holds = own_holds(&state.pool, order_id).await;
    let authorization = headers.get(header::AUTHORIZATION);
    // the broker and the peers at once: a slow peer costs at most its timeout
    let (history, services, holds) = tokio::join!(
        OrderHistory::read(&*state.broker, &state.messaging, &order_id),
        state.peers.read(order_id, order.as_ref(), authorization),
        state.peers.read_holds(order_id, own_holds, authorization),
    );
    let history = history.map_err(broker_error)?;
    if order.is_none() && history.events.is_empty() && history.dead_letters.is_empty() {
        return Err(ApiError::NotFound(format!("there is no order {order_id}")));
    }
    Ok(Json(ConsoleOrderBody {
        order_id,
        order,
        events: history.events,
        dead_letters: history.dead_letters,
        services,
        holds,
    }))
}

/// What the order service holds back of the order, from its own schema (`pool`'s
/// `search_path`), as its `GET /v1/holds/order/{order_id}` answers it.
async fn own_holds(pool: &PgPool, order_id: OrderId) -> PeerState {
    let read = async {
        let mut conn = pool.acquire().await?;
        jwl_outbox::order_holds::read(&mut conn, order_id.0).await
    };
    let view = match read.await {
        Ok(holds) => HoldsView::new(crate::SERVICE, order_id.0, holds),
        Err(error) => {
            tracing::warn!(error = %error, "console: reading the order service's holds");
            return PeerState::Unavailable("the order service's holds cannot be read".to_owned());
        }
    };
    match serde_json::to_value(view) {
        Ok(value) => PeerState::State(value),
        Err(error) => PeerState::Unavailable(format!("the holds do not serialize: {error}")),
    }
}

/// Body of `GET /v1/console/dead-letters`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DeadLettersBody {
    /// Oldest first, at most 1000 (`jwl dlq ls --json`): `{"dlq_seq","stored_at","consumer",
    /// "reason","error","original_type","original_subject","original_stream_seq","order_id"}`.
    #[schema(value_type = Vec<Object>)]
    dead_letters: Vec<DeadLetterEntry>,
}

/// The dead letters, oldest first (admin).
#[utoipa::path(
    get,
    path = "/v1/console/dead-letters",
    tag = "console",
    responses(
        (status = 200, description = "The dead letters", body = DeadLettersBody),
        (status = 503, description = "The broker cannot be read", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn list_dead_letters(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
) -> ApiResult<Json<DeadLettersBody>> {
    let filter = DeadLetterFilter {
        limit: Some(DEAD_LETTER_LIMIT),
        ..Default::default()
    };
    let dead_letters = dead_letters::list(&*state.broker, &state.messaging, &filter)
        .await
        .map_err(broker_error)?;
    Ok(Json(DeadLettersBody { dead_letters }))
}

/// Body of the redrive and discard answers.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ResolvedBody {
    dlq_seq: u64,
    /// `redriven`, `already_resolved` (its outcome was recorded before), `skipped` (it cannot
    /// be re-delivered and stays) or `discarded`.
    #[schema(value_type = String)]
    outcome: &'static str,
    /// Why it was skipped.
    why: Option<String>,
    /// The admin token's subject, recorded with the outcome on `jwl.dlqlog.<seq>`.
    operator: String,
}

/// Redrives one dead letter to its consumer's service (inbox mode: an event the service has
/// handled is not handled twice), records who did it, and deletes it (admin).
#[utoipa::path(
    post,
    path = "/v1/console/dead-letters/{seq}/redrive",
    tag = "console",
    params(("seq" = u64, Path, minimum = 1, description = "The dead letter's sequence in `JWL_DLQ`")),
    responses(
        (status = 200, description = "Redriven, already resolved, or skipped", body = ResolvedBody),
        (status = 404, description = "No such dead letter", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over 5 redrives a second (with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The broker cannot be reached", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn redrive(
    State(state): State<Arc<AppState>>,
    Admin(caller): Admin,
    path: Result<Path<u64>, ApiError>,
) -> ApiResult<Json<ResolvedBody>> {
    let Path(seq) = path?;
    if state.redrive_limit.check().is_err() {
        return Err(ApiError::TooManyRequests {
            retry_after_secs: 1,
            detail: format!("at most {REDRIVES_PER_SECOND} redrives a second"),
        });
    }
    let run_id = format!("console-{}", Uuid::now_v7().simple());
    let outcome = redelivery::redrive_dead_letter(
        &*state.broker,
        &state.messaging,
        seq,
        ReplayMode::Inbox,
        &run_id,
        Some(&caller.subject),
    )
    .await
    .map_err(broker_error)?;
    tracing::info!(dlq_seq = seq, operator = %caller.subject, ?outcome, "console redrive");
    let (outcome, why) = match outcome {
        Redriven::Done => ("redriven", None),
        Redriven::AlreadyResolved => ("already_resolved", None),
        Redriven::Gone => {
            return Err(ApiError::NotFound(format!("there is no dead letter {seq}")));
        }
        Redriven::Skipped(why) => ("skipped", Some(why)),
    };
    Ok(Json(ResolvedBody {
        dlq_seq: seq,
        outcome,
        why,
        operator: caller.subject,
    }))
}

/// Body of `POST /v1/console/dead-letters/{seq}/discard`.
#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct DiscardRequest {
    /// Why it is discarded (required, 1–500 characters); recorded with the outcome.
    reason: String,
}

/// Discards one dead letter: releases its consumer's hold on the order, records the reason and
/// who gave it, and deletes it (admin).
#[utoipa::path(
    post,
    path = "/v1/console/dead-letters/{seq}/discard",
    tag = "console",
    params(("seq" = u64, Path, minimum = 1, description = "The dead letter's sequence in `JWL_DLQ`")),
    request_body = DiscardRequest,
    responses(
        (status = 200, description = "Discarded", body = ResolvedBody),
        (status = 400, description = "No reason", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The broker cannot be reached", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn discard(
    State(state): State<Arc<AppState>>,
    Admin(caller): Admin,
    path: Result<Path<u64>, ApiError>,
    body: Result<Json<DiscardRequest>, ApiError>,
) -> ApiResult<Json<ResolvedBody>> {
    let Path(seq) = path?;
    let Json(request) = body?;
    let reason = request.reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON {
        return Err(ApiError::bad_field(
            "reason",
            format!("a discard needs a reason of 1 to {MAX_REASON} characters"),
        ));
    }
    redelivery::discard_dead_letter(
        &*state.broker,
        &state.messaging,
        seq,
        reason,
        Some(&caller.subject),
    )
    .await
    .map_err(broker_error)?;
    tracing::info!(dlq_seq = seq, operator = %caller.subject, reason, "console discard");
    Ok(Json(ResolvedBody {
        dlq_seq: seq,
        outcome: "discarded",
        why: None,
        operator: caller.subject,
    }))
}

/// The query of `GET /v1/console/stuck`.
#[derive(Deserialize, utoipa::IntoParams)]
pub(crate) struct StuckQuery {
    /// Orders created more than this many seconds ago (default 300).
    older_than_secs: Option<u64>,
}

/// Body of `GET /v1/console/stuck`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct StuckBody {
    older_than_secs: u64,
    /// Oldest first: `{"order_id","status","created_at","last_event","last_event_at","next"}`.
    #[schema(value_type = Vec<Object>)]
    orders: Vec<StuckOrder>,
}

/// The orders not terminal that were created more than `older_than_secs` ago, each with the
/// service that should act next (admin).
#[utoipa::path(
    get,
    path = "/v1/console/stuck",
    tag = "console",
    params(StuckQuery),
    responses(
        (status = 200, description = "The stuck orders", body = StuckBody),
        (status = 400, description = "Bad query", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn stuck(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    query: Result<Query<StuckQuery>, QueryRejection>,
) -> ApiResult<Json<StuckBody>> {
    let Query(query) = query.map_err(|rejection| ApiError::BadRequest {
        field: Some("older_than_secs".to_owned()),
        detail: rejection.body_text(),
    })?;
    let older_than_secs = query.older_than_secs.unwrap_or(300);
    let orders = stuck_orders(&state.pool, Duration::from_secs(older_than_secs))
        .await
        .map_err(|error| match error {
            StuckError::Database(error) => ApiError::from(error),
            StuckError::OutOfRange => {
                ApiError::bad_field("older_than_secs", "the age is out of range")
            }
        })?;
    Ok(Json(StuckBody {
        older_than_secs,
        orders,
    }))
}

/// An order that stopped moving (`jwl saga stuck`, the console).
#[derive(Debug, Clone, Serialize)]
pub struct StuckOrder {
    pub order_id: Uuid,
    pub status: String,
    pub created_at: DateTime<Utc>,
    /// The last event of its timeline (by event time), if any.
    pub last_event: Option<String>,
    pub last_event_at: Option<DateTime<Utc>>,
    /// The services that should act on the last event.
    pub next: Vec<Service>,
}

/// Why [`stuck_orders`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StuckError {
    #[error("reading jwl_order.orders and order_timeline: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the age is out of range")]
    OutOfRange,
}

type StuckRow = (
    Uuid,
    String,
    DateTime<Utc>,
    Option<String>,
    Option<DateTime<Utc>>,
);

/// Orders not in a terminal status created before now − `older_than`, oldest first, each with
/// the last event of its timeline and the services that should act on it. `pool` is the order
/// service's database (any `search_path`: the tables are named with their schema).
pub async fn stuck_orders(
    pool: &PgPool,
    older_than: Duration,
) -> Result<Vec<StuckOrder>, StuckError> {
    let age = chrono::Duration::from_std(older_than).map_err(|_| StuckError::OutOfRange)?;
    let cutoff = Utc::now()
        .checked_sub_signed(age)
        .ok_or(StuckError::OutOfRange)?;
    let rows: Vec<StuckRow> = sqlx::query_as(
        "SELECT o.order_id, o.status, o.created_at, t.event_type, t.event_time \
         FROM jwl_order.orders o \
         LEFT JOIN LATERAL ( \
             SELECT event_type, event_time FROM jwl_order.order_timeline \
             WHERE order_id = o.order_id ORDER BY event_time DESC, event_id DESC LIMIT 1 \
         ) t ON true \
         WHERE NOT (o.status = ANY($2)) \
           AND o.created_at < $1 \
         ORDER BY o.created_at, o.order_id",
    )
    .bind(cutoff)
    .bind(&TERMINAL_STATUSES[..])
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(order_id, status, created_at, last_event, last_event_at)| StuckOrder {
                next: last_event
                    .as_deref()
                    .and_then(EventType::parse)
                    .map(next_services)
                    .unwrap_or_default(),
                order_id,
                status,
                created_at,
                last_event,
                last_event_at,
            },
        )
        .collect())
}

/// A failed broker read or write: `404` for a dead letter that is not there, `400` for a bad
/// filter, `503` otherwise (the broker may be back in a moment).
fn broker_error(error: OpsError) -> ApiError {
    match error {
        OpsError::DeadLetterNotFound { seq, .. } => {
            ApiError::NotFound(format!("there is no dead letter {seq}"))
        }
        OpsError::InvalidFilter(detail) => ApiError::BadRequest {
            field: None,
            detail,
        },
        other => {
            tracing::warn!(error = %other, "console: the broker");
            ApiError::Unavailable {
                retry_after_secs: 1,
                detail: "the broker cannot be read right now".to_owned(),
            }
        }
    }
}

/// The services whose outbox tables the figures look for (`jwl_<service>.outbox`).
const OUTBOX_SCHEMAS: [(&str, &str); 5] = [
    ("order", "jwl_order"),
    ("payment", "jwl_payment"),
    ("inventory", "jwl_inventory"),
    ("fulfillment", "jwl_fulfillment"),
    ("dispatch", "jwl_dispatch"),
];

/// Body of `GET /v1/console/figures`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct FiguresBody {
    #[schema(value_type = String, format = DateTime)]
    at: DateTime<Utc>,
    /// Orders placed in the last 60 s.
    placed_last_minute: i64,
    /// `placed_last_minute / 60`.
    orders_per_second: f64,
    /// Orders not in a terminal status.
    open_orders: i64,
    /// Sagas that reached a terminal status in the last 60 s, by outcome:
    /// `[{"status","reason","count"}]`.
    #[schema(value_type = Vec<Object>)]
    finished_last_minute: Vec<Outcome>,
    /// Every durable consumer of the events stream: `[{"name","pending","ack_pending","redelivered"}]`.
    #[schema(value_type = Vec<Object>)]
    consumers: Vec<ConsumerBacklog>,
    /// Rows waiting for the relay (not published, not parked) and parked rows, per service
    /// whose outbox is in this database (all five under `jwl up`; the order service's alone
    /// when each service has a database of its own): `[{"service","pending","parked"}]`.
    #[schema(value_type = Vec<Object>)]
    outboxes: Vec<OutboxBacklog>,
}

#[derive(Serialize, sqlx::FromRow)]
struct Outcome {
    status: String,
    reason: Option<String>,
    count: i64,
}

#[derive(Serialize)]
struct OutboxBacklog {
    service: &'static str,
    pending: i64,
    parked: i64,
}

/// Live figures: intake, outcomes, consumer and outbox backlogs (admin).
#[utoipa::path(
    get,
    path = "/v1/console/figures",
    tag = "console",
    responses(
        (status = 200, description = "The figures now", body = FiguresBody),
        (status = 503, description = "The broker or the database cannot be read", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn figures(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
) -> ApiResult<Json<FiguresBody>> {
    let pool = &state.pool;
    // through the partial indexes admission reads: open (unfinished) orders by created_at,
    // finished ones by finished_at
    let (open_orders, placed_open): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE created_at > now() - interval '60 seconds') \
         FROM jwl_order.orders WHERE finished_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    let finished: Vec<(String, Option<String>, i64, i64)> = sqlx::query_as(
        "SELECT status, reason, count(*), \
                count(*) FILTER (WHERE created_at > now() - interval '60 seconds') \
         FROM jwl_order.orders \
         WHERE finished_at IS NOT NULL AND finished_at > now() - interval '60 seconds' \
         GROUP BY status, reason ORDER BY status, reason",
    )
    .fetch_all(pool)
    .await?;
    let placed_last_minute = placed_open + finished.iter().map(|row| row.3).sum::<i64>();
    let mut outboxes = Vec::new();
    for (service, schema) in OUTBOX_SCHEMAS {
        let table = format!("{schema}.outbox");
        let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(&table)
            .fetch_one(pool)
            .await?;
        if exists.is_none() {
            continue;
        }
        // the schema name is one of the constants above, never input
        let (pending, parked): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FILTER (WHERE parked_at IS NULL), count(*) FILTER (WHERE parked_at IS NOT NULL) \
             FROM {table} WHERE published_at IS NULL"
        )))
        .fetch_one(pool)
        .await?;
        outboxes.push(OutboxBacklog {
            service,
            pending,
            parked,
        });
    }
    let consumers = backlog::consumers(&*state.broker, &state.messaging)
        .await
        .map_err(broker_error)?;
    Ok(Json(FiguresBody {
        at: Utc::now(),
        placed_last_minute,
        orders_per_second: placed_last_minute as f64 / 60.0,
        open_orders,
        finished_last_minute: finished
            .into_iter()
            .map(|(status, reason, count, _)| Outcome {
                status,
                reason,
                count,
            })
            .collect(),
        consumers,
        outboxes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redrive_limiter_lets_a_second_s_worth_through_then_refuses() {
        let limiter = redrive_limiter();
        for n in 0..REDRIVES_PER_SECOND {
            assert!(limiter.check().is_ok(), "redrive {n} refused");
        }
        assert!(
            limiter.check().is_err(),
            "one more than the rate went through"
        );
    }
}
