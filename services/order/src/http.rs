//! The order service's HTTP routes: placing an order (`POST /v1/orders`, with optional
//! `Idempotency-Key`), reading one (`GET /v1/orders/{id}`) and asking to cancel one
//! (`POST /v1/orders/{id}/cancel`).
//!
//! Order intake is limited first (`503` while more orders are open than the system finishes in
//! the admission target, `429` over the rate, `503` with too many in flight; see
//! [`jwl_service_kit::http::limit_ingest`] and [`crate::admission`]). Then checks run in this order: authentication (401),
//! scope (403), path and body (400/413/415),
//! existence and ownership (404: an order of another customer is reported as missing, so order
//! ids cannot be probed), then the order's state (409).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SubsecRound, Utc};
use jwl_events::{CancelReason, Envelope, OrderCancelRequested, OrderCreated, OrderId};
use jwl_outbox::trace_context::current_traceparent;
use jwl_outbox::transport::Broker;
use jwl_outbox::{MessagingSettings, OutboxError, RelaySignal};
use jwl_service_kit::auth::{Caller, Scope};
use jwl_service_kit::extract::{Json, Path};
use jwl_service_kit::http::{IngestLimiter, ListedRouter, RouteMethod, limit_ingest};
use jwl_service_kit::openapi::OpenApi;
use jwl_service_kit::problem::Problem;
use jwl_service_kit::{ApiError, ApiResult, ServiceContext, Settings};
use serde::Serialize;
use sqlx::PgPool;

use crate::SERVICE;
use crate::admission::OpenOrders;
use crate::console;
use crate::domain::{self, CancelDecision, FieldError, OrderRequest, OrderStatus};
use crate::intake::{Idempotency, Intake, Placed, Placement};
use crate::store::{self, OrderRecord, StoreError};

/// The request header that makes `POST /v1/orders` idempotent.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on a response replayed for a repeated idempotency key.
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Shared by every request behind an [`Arc`]: the router clones its state for each request.
pub(crate) struct AppState {
    pub(crate) pool: PgPool,
    /// Writes the placed orders, several per transaction under load.
    intake: Intake,
    settings: Arc<Settings>,
    relay: RelaySignal,
    /// For the console's reads of the broker (through `jwl-ops`).
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) messaging: MessagingSettings,
    /// The console's redrives, at most [`console::REDRIVES_PER_SECOND`] for this process.
    pub(crate) redrive_limit: Arc<governor::DefaultDirectRateLimiter>,
    /// The services the console reads an order's state from.
    pub(crate) peers: console::Peers,
}

/// The routes of the order service (no health, metrics or fallback: the edge adds those).
pub fn routes(ctx: &ServiceContext) -> ListedRouter {
    ListedRouter::new()
        .route_layered(
            RouteMethod::Post,
            "/v1/orders",
            create_order,
            axum::middleware::from_fn_with_state(
                IngestLimiter::new(&ctx.settings.ingest).with_backlog(OpenOrders {
                    pool: ctx.http_pool.clone(),
                }),
                limit_ingest,
            ),
        )
        .route(RouteMethod::Get, "/v1/orders/{id}", get_order)
        .route(RouteMethod::Post, "/v1/orders/{id}/cancel", cancel_order)
        .route(RouteMethod::Get, "/v1/console/orders/{id}", console::order)
        .route(
            RouteMethod::Get,
            "/v1/console/dead-letters",
            console::list_dead_letters,
        )
        .route(
            RouteMethod::Post,
            "/v1/console/dead-letters/{seq}/redrive",
            console::redrive,
        )
        .route(
            RouteMethod::Post,
            "/v1/console/dead-letters/{seq}/discard",
            console::discard,
        )
        .route(RouteMethod::Get, "/v1/console/stuck", console::stuck)
        .route(RouteMethod::Get, "/v1/console/figures", console::figures)
        .with_state(Arc::new(AppState {
            // its own pool: requests never take the consumers' connections
            pool: ctx.http_pool.clone(),
            intake: Intake::start(
                ctx.http_pool.clone(),
                ctx.relay.clone(),
                ctx.settings.idempotency_ttl,
                ctx.messaging.db_stall_timeout,
            ),
            settings: ctx.settings.clone(),
            relay: ctx.relay.clone(),
            broker: ctx.broker.clone(),
            messaging: ctx.messaging.clone(),
            redrive_limit: console::redrive_limiter(),
            peers: console::Peers::new(ctx.settings.console_peers.clone()),
        }))
}

/// The OpenAPI description of these routes (see [`jwl_service_kit::openapi`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        create_order,
        get_order,
        cancel_order,
        console::order,
        console::list_dead_letters,
        console::redrive,
        console::discard,
        console::stuck,
        console::figures
    ),
    components(schemas(
        OrderRequest,
        OrderCreatedBody,
        CancelAcceptedBody,
        OrderBody,
        console::ConsoleOrderBody,
        console::DeadLettersBody,
        console::ResolvedBody,
        console::DiscardRequest,
        console::StuckBody,
        console::FiguresBody
    ))
)]
struct Api;

/// [`Api`] as a document part.
pub fn openapi() -> OpenApi {
    <Api as utoipa::OpenApi>::openapi()
}

/// `201` body of `POST /v1/orders`, also recorded for idempotent replays.
#[derive(Serialize, utoipa::ToSchema)]
struct OrderCreatedBody {
    #[schema(value_type = String, format = "uuid")]
    order_id: OrderId,
    /// Always `pending`.
    #[schema(value_type = String)]
    status: &'static str,
}

/// `202` body of `POST /v1/orders/{id}/cancel`.
#[derive(Serialize, utoipa::ToSchema)]
struct CancelAcceptedBody {
    #[schema(value_type = String, format = "uuid")]
    order_id: OrderId,
    /// The order's status when the cancel was asked for.
    #[schema(value_type = String)]
    status: &'static str,
}

/// Body of `GET /v1/orders/{id}`.
#[derive(Serialize, utoipa::ToSchema)]
struct OrderBody {
    #[schema(value_type = String, format = "uuid")]
    order_id: OrderId,
    /// `pending`, `paid`, `reserved`, `waybill_created`, `dispatched`, `delivered`,
    /// `rejected` or `cancelled`.
    #[schema(value_type = String)]
    status: &'static str,
    /// Why it was cancelled: `out_of_stock`, `no_courier`, `customer` or `deadline`.
    #[schema(value_type = Option<String>)]
    reason: Option<&'static str>,
    waybill_id: Option<String>,
    courier_id: Option<String>,
    amount_cents: i64,
    #[schema(value_type = String, format = DateTime)]
    created_at: DateTime<Utc>,
    /// The saga's events that reached the order, oldest first.
    timeline: Vec<TimelineBody>,
}

/// One event of an order's timeline.
#[derive(Serialize, utoipa::ToSchema)]
struct TimelineBody {
    /// The CloudEvent type (`jwl.payment.authorized`).
    #[serde(rename = "type")]
    event_type: String,
    #[schema(value_type = String, format = DateTime)]
    time: DateTime<Utc>,
    /// The emitting service (`/jwl/payment`).
    source: String,
}

impl From<OrderRecord> for OrderBody {
    fn from(record: OrderRecord) -> Self {
        OrderBody {
            order_id: record.order_id,
            status: record.status.as_str(),
            reason: record.reason.map(|r| r.as_str()),
            waybill_id: record.waybill_id.map(|id| id.to_string()),
            courier_id: record.courier_id.map(String::from),
            amount_cents: record.amount_cents,
            created_at: record.created_at,
            timeline: record
                .timeline
                .into_iter()
                .map(|entry| TimelineBody {
                    event_type: entry.event_type,
                    time: entry.time,
                    source: entry.source,
                })
                .collect(),
        }
    }
}

/// Places an order (scope `orders:write`); its saga starts at once.
#[utoipa::path(
    post,
    path = "/v1/orders",
    tag = "order",
    request_body = OrderRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header,
         description = "Makes the request idempotent per customer (1–255 characters): the same \
                        key and body answer the first response again, with \
                        `Idempotent-Replayed: true`; the same key with another body `422`"),
    ),
    responses(
        (status = 201, description = "Placed", body = OrderCreatedBody, headers(
            ("Location" = String, description = "`/v1/orders/{order_id}`"),
        )),
        (status = 400, description = "Bad body (`field` names it)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Idempotency key reused with another body", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the intake rate (with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Admission, in-flight cap or circuit breaker \
                                      (with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn create_order(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Json<OrderRequest>, ApiError>,
) -> ApiResult<Response> {
    caller.require(Scope::OrdersWrite)?;
    domain::validate_customer_id(&caller.subject)
        .map_err(|error| ApiError::Forbidden(error.reason))?;
    let idempotency_key = idempotency_key(&headers)?;
    let Json(request) = body?;
    let order = domain::validate_order(&request).map_err(bad_field)?;

    let created_at = Utc::now().trunc_subsecs(6);
    let deadline = domain::deadline_after(created_at, state.settings.order_deadline)
        .ok_or_else(|| ApiError::internal("the order deadline setting is out of range"))?;
    let order_id = OrderId::new();
    tracing::Span::current().record("order_id", tracing::field::display(order_id));
    let event = Envelope {
        time: created_at,
        // the request's span: the order's trace starts (or continues) here
        traceparent: current_traceparent(),
        ..Envelope::new(
            SERVICE,
            OrderCreated {
                order_id,
                customer_id: caller.subject.clone(),
                items: order.items.clone(),
                amount_cents: order.amount_cents,
                pickup: order.pickup,
                dropoff: order.dropoff,
                payment_token: order.payment_token.clone(),
                deadline,
            }
            .into(),
        )
    };
    let body = json_text(&OrderCreatedBody {
        order_id,
        status: OrderStatus::Pending.as_str(),
    })?;

    let idempotency = idempotency_key.map(|key| Idempotency {
        key,
        canonical_request: domain::canonical_request(&request),
    });
    let placement = Placement {
        order_id,
        customer_id: caller.subject.clone(),
        order,
        deadline,
        created_at,
        event,
        body: body.clone(),
        idempotency,
    };
    let amount_cents = placement.order.amount_cents;
    if let Placed::Recorded(recorded) = state.intake.place(placement).await? {
        if !recorded.same_request {
            return Err(ApiError::Unprocessable(
                "this Idempotency-Key was already used with a different request body".to_owned(),
            ));
        }
        let status = StatusCode::from_u16(recorded.status).map_err(ApiError::internal)?;
        let mut response = created_response(status, recorded.order_id, recorded.body)?;
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        return Ok(response);
    }

    metrics::counter!("jwl_orders_created_total").increment(1);
    // the edge's INFO line for this response carries the order id (recorded on its span above)
    tracing::debug!(%order_id, amount_cents, "order created");
    created_response(StatusCode::CREATED, order_id, body)
}

/// An order with its status and timeline (scope `orders:read`, the customer who placed it, or
/// admin; another customer's order is `404`).
#[utoipa::path(
    get,
    path = "/v1/orders/{id}",
    tag = "order",
    params(("id" = String, Path, format = "uuid", description = "The order id")),
    responses(
        (status = 200, description = "The order", body = OrderBody),
        (status = 404, description = "No such order of this customer", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn get_order(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    path: Result<Path<OrderId>, ApiError>,
) -> ApiResult<Json<OrderBody>> {
    caller.require(Scope::OrdersRead)?;
    let Path(order_id) = path?;
    let record = store::find_order(&state.pool, order_id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| order_not_found(order_id))?;
    caller
        .require_owner_or_admin(&record.customer_id)
        .map_err(|_| order_not_found(order_id))?;
    Ok(Json(record.into()))
}

/// Asks to cancel an order (scope `orders:write`, the customer who placed it, or admin);
/// dispatch decides: a waybill still waiting for a courier is cancelled.
#[utoipa::path(
    post,
    path = "/v1/orders/{id}/cancel",
    tag = "order",
    params(("id" = String, Path, format = "uuid", description = "The order id")),
    responses(
        (status = 202, description = "Cancellation requested", body = CancelAcceptedBody),
        (status = 404, description = "No such order of this customer", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The order is terminal", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn cancel_order(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    path: Result<Path<OrderId>, ApiError>,
) -> ApiResult<(StatusCode, Json<CancelAcceptedBody>)> {
    caller.require(Scope::OrdersWrite)?;
    let Path(order_id) = path?;
    let mut tx = state.pool.begin().await?;
    let order = store::lock_order(&mut tx, order_id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| order_not_found(order_id))?;
    caller
        .require_owner_or_admin(&order.customer_id)
        .map_err(|_| order_not_found(order_id))?;
    let status = order.state.status;
    let mut emitted = jwl_outbox::Enqueued::default();
    match domain::decide_cancel(status, order.cancel_requested) {
        CancelDecision::Refuse => {
            return Err(ApiError::Conflict(format!(
                "order {order_id} is {} and can no longer be cancelled",
                status.as_str()
            )));
        }
        CancelDecision::AlreadyRequested => {}
        CancelDecision::Request => {
            let event = Envelope {
                // in the order's trace (the cancel request's own trace, if the order has none)
                traceparent: order.traceparent.clone().or_else(current_traceparent),
                ..Envelope::new(
                    SERVICE,
                    OrderCancelRequested {
                        order_id,
                        reason: CancelReason::Customer,
                    }
                    .into(),
                )
            };
            store::mark_cancel_requested(
                &mut tx,
                order_id,
                CancelReason::Customer.into(),
                event.time,
            )
            .await?;
            store::insert_timeline(&mut tx, &event).await?;
            emitted = jwl_outbox::enqueue(&mut tx, &event)
                .await
                .map_err(outbox_error)?;
            metrics::counter!("jwl_order_cancel_requests_total", "reason" => "customer")
                .increment(1);
            tracing::info!(%order_id, "cancellation requested by the customer");
        }
    }
    tx.commit().await?;
    state.relay.committed_rows(&state.pool, emitted).await;
    Ok((
        StatusCode::ACCEPTED,
        Json(CancelAcceptedBody {
            order_id,
            status: status.as_str(),
        }),
    ))
}

/// The `Idempotency-Key` header, if present and valid.
fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get(&IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::bad_field("Idempotency-Key", "must be visible ASCII characters"))?;
    domain::validate_idempotency_key(key).map_err(bad_field)?;
    Ok(Some(key.to_owned()))
}

/// A `201`-style response: the JSON `body` and `Location: /v1/orders/{id}`.
fn created_response(status: StatusCode, order_id: OrderId, body: String) -> ApiResult<Response> {
    let location =
        HeaderValue::try_from(format!("/v1/orders/{order_id}")).map_err(ApiError::internal)?;
    Ok((
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::LOCATION, location),
        ],
        body,
    )
        .into_response())
}

fn json_text(body: &impl Serialize) -> ApiResult<String> {
    serde_json::to_string(body).map_err(ApiError::internal)
}

fn order_not_found(order_id: OrderId) -> ApiError {
    ApiError::NotFound(format!("there is no order {order_id}"))
}

pub(crate) fn bad_field(error: FieldError) -> ApiError {
    let detail = error.to_string();
    ApiError::bad_field(error.field, detail)
}

pub(crate) fn store_error(error: StoreError) -> ApiError {
    match error {
        StoreError::Database(error) => error.into(),
        invalid @ StoreError::InvalidRow { .. } => ApiError::internal(invalid),
    }
}

pub(crate) fn outbox_error(error: OutboxError) -> ApiError {
    match error {
        OutboxError::Database(error) => error.into(),
        other => ApiError::internal(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{LineItemRequest, PointRequest};
    use jwl_service_kit::http::MetricsOn;
    use jwl_service_kit::openapi::{document, field_mismatches};
    use serde_json::Value;

    fn json(value: impl Serialize) -> Value {
        serde_json::to_value(value).unwrap()
    }

    #[test]
    fn every_field_is_in_the_document() {
        let doc = document([openapi()], MetricsOn::Public);
        let point = PointRequest {
            lat: 31.23,
            lon: 121.47,
        };
        let samples = [
            (
                "OrderRequest",
                json(OrderRequest {
                    items: vec![LineItemRequest {
                        sku: "sku-1".to_owned(),
                        qty: 2,
                        unit_price_cents: 1299,
                    }],
                    pickup: point,
                    dropoff: point,
                    payment_token: "tok_ok".to_owned(),
                }),
            ),
            (
                "OrderCreatedBody",
                json(OrderCreatedBody {
                    order_id: OrderId::new(),
                    status: "pending",
                }),
            ),
            (
                "CancelAcceptedBody",
                json(CancelAcceptedBody {
                    order_id: OrderId::new(),
                    status: "reserved",
                }),
            ),
            (
                "OrderBody",
                json(OrderBody {
                    order_id: OrderId::new(),
                    status: "cancelled",
                    reason: Some("customer"),
                    waybill_id: Some("w".to_owned()),
                    courier_id: Some("c".to_owned()),
                    amount_cents: 2598,
                    created_at: Utc::now(),
                    timeline: vec![TimelineBody {
                        event_type: "jwl.order.created".to_owned(),
                        time: Utc::now(),
                        source: "/jwl/order".to_owned(),
                    }],
                }),
            ),
        ];
        for (name, sample) in samples {
            assert_eq!(
                field_mismatches(&doc, name, &sample),
                Vec::<String>::new(),
                "{name}"
            );
        }
    }

    #[test]
    fn the_documented_limits_are_the_validated_ones() {
        use crate::domain::{
            MAX_ITEMS, MAX_PAYMENT_TOKEN_CHARS, MAX_QTY, MAX_SKU_CHARS, MAX_UNIT_PRICE_CENTS,
        };
        let doc = json(openapi());
        let schemas = &doc["components"]["schemas"];
        let number = |value: &Value| value.as_f64().unwrap_or_else(|| panic!("{value}"));
        let order = &schemas["OrderRequest"]["properties"];
        assert_eq!(number(&order["items"]["maxItems"]), MAX_ITEMS as f64);
        assert_eq!(
            number(&order["payment_token"]["maxLength"]),
            MAX_PAYMENT_TOKEN_CHARS as f64
        );
        let line = &schemas["LineItemRequest"]["properties"];
        assert_eq!(number(&line["qty"]["maximum"]), MAX_QTY as f64);
        assert_eq!(
            number(&line["unit_price_cents"]["maximum"]),
            MAX_UNIT_PRICE_CENTS as f64
        );
        let sku_pattern = line["sku"]["pattern"].as_str().unwrap();
        assert!(sku_pattern.ends_with(&format!("{{1,{MAX_SKU_CHARS}}}$")));
    }
}
