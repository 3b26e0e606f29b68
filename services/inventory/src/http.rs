//! The inventory service's HTTP routes (admin only): `PUT /v1/stock/{sku}` sets a SKU's
//! `on_hand`, `GET /v1/stock/{sku}` shows its stock, `GET /v1/reservations/{order_id}` an
//! order's reservation.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use jwl_events::OrderId;
use jwl_service_kit::auth::Admin;
use jwl_service_kit::extract::{Json, Path};
use jwl_service_kit::http::{ListedRouter, RouteMethod};
use jwl_service_kit::openapi::OpenApi;
use jwl_service_kit::problem::Problem;
use jwl_service_kit::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::domain::{self, StockLevel};
use crate::store;

/// The routes, on `pool` (whose `search_path` is the inventory schema).
pub fn routes(pool: PgPool) -> ListedRouter {
    ListedRouter::new()
        .route(RouteMethod::Get, "/v1/stock/{sku}", get_stock)
        .route(RouteMethod::Put, "/v1/stock/{sku}", put_stock)
        .route(
            RouteMethod::Get,
            "/v1/reservations/{order_id}",
            get_reservation,
        )
        .with_state(pool)
}

/// The `{sku}` path parameter, validated (400 naming `sku` otherwise).
struct Sku(String);

impl<S: Send + Sync> FromRequestParts<S> for Sku {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(sku) = Path::<String>::from_request_parts(parts, state).await?;
        domain::validate_sku(&sku)
            .map_err(|error| ApiError::bad_field("sku", error.to_string()))?;
        Ok(Sku(sku))
    }
}

/// The OpenAPI description of these routes (see [`jwl_service_kit::openapi`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(get_stock, put_stock, get_reservation),
    components(schemas(SetStock, StockView, ReservationView, ReservationLine))
)]
struct Api;

/// [`Api`] as a document part.
pub fn openapi() -> OpenApi {
    <Api as utoipa::OpenApi>::openapi()
}

/// The body of `PUT /v1/stock/{sku}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields)]
struct SetStock {
    /// The units in the warehouse, reserved and not yet shipped ones included; not below
    /// `reserved`.
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    on_hand: i64,
}

/// A SKU's stock as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct StockView {
    sku: String,
    on_hand: i64,
    reserved: i64,
    shipped: i64,
}

impl StockView {
    fn new(sku: String, level: StockLevel) -> Self {
        Self {
            sku,
            on_hand: level.on_hand,
            reserved: level.reserved,
            shipped: level.shipped,
        }
    }
}

/// The body of `GET /v1/reservations/{order_id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ReservationView {
    #[schema(format = "uuid")]
    order_id: String,
    /// `reserved`, `rejected` (not enough stock), `released`, `committed` (shipped), or
    /// `release_requested` (a release arrived before the reservation, which will be skipped).
    state: String,
    /// The quantity of each SKU reserved for the order, in SKU order (none when rejected).
    lines: Vec<ReservationLine>,
}

/// One SKU of a reservation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ReservationLine {
    sku: String,
    qty: i64,
    /// `reserved`, `released` or `committed`.
    state: String,
}

fn on_hand_error(error: domain::StockInputError) -> ApiError {
    ApiError::bad_field("on_hand", error.to_string())
}

/// Sets a SKU's stock on hand (admin).
#[utoipa::path(
    put,
    path = "/v1/stock/{sku}",
    tag = "inventory",
    params(("sku" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,64}$", description = "The SKU")),
    request_body = SetStock,
    responses(
        (status = 200, description = "The SKU's stock now", body = StockView),
        (status = 400, description = "Bad SKU or `on_hand` (`field` names it)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn put_stock(
    admin: Admin,
    Sku(sku): Sku,
    State(pool): State<PgPool>,
    Json(body): Json<SetStock>,
) -> ApiResult<Json<StockView>> {
    domain::validate_on_hand(body.on_hand).map_err(on_hand_error)?;
    let mut tx = pool.begin().await?;
    let current = store::lock_or_create_stock(&mut tx, &sku).await?;
    domain::check_new_on_hand(body.on_hand, &current).map_err(on_hand_error)?;
    let updated = store::set_on_hand(&mut tx, &sku, body.on_hand).await?;
    tx.commit().await?;
    tracing::info!(admin = %admin.0.subject, %sku, on_hand = body.on_hand, "stock set");
    Ok(Json(StockView::new(sku, updated)))
}

/// A SKU's stock (admin).
#[utoipa::path(
    get,
    path = "/v1/stock/{sku}",
    tag = "inventory",
    params(("sku" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,64}$", description = "The SKU")),
    responses(
        (status = 200, description = "The SKU's stock", body = StockView),
        (status = 404, description = "No stock for this SKU", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn get_stock(
    _admin: Admin,
    Sku(sku): Sku,
    State(pool): State<PgPool>,
) -> ApiResult<Json<StockView>> {
    match store::find_stock(&pool, &sku).await? {
        Some(level) => Ok(Json(StockView::new(sku, level))),
        None => Err(ApiError::NotFound(format!("no stock for SKU {sku}"))),
    }
}

/// An order's reservation (admin).
#[utoipa::path(
    get,
    path = "/v1/reservations/{order_id}",
    tag = "inventory",
    params(("order_id" = String, Path, format = "uuid", description = "The order id")),
    responses(
        (status = 200, description = "The order's reservation", body = ReservationView),
        (status = 400, description = "Bad order id (`field` names it)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Inventory has not heard of this order", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn get_reservation(
    _admin: Admin,
    State(pool): State<PgPool>,
    Path(order_id): Path<String>,
) -> ApiResult<Json<ReservationView>> {
    let order_id = OrderId::parse(&order_id)
        .map_err(|error| ApiError::bad_field("order_id", format!("invalid order id: {error}")))?;
    // one snapshot of the order row and its lines
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let found = store::find_order(&mut tx, order_id).await?;
    tx.commit().await?;
    let Some((state, lines)) = found else {
        return Err(ApiError::NotFound(format!(
            "inventory has not heard of order {order_id}"
        )));
    };
    Ok(Json(ReservationView {
        order_id: order_id.to_string(),
        state,
        lines: lines
            .into_iter()
            .map(|(sku, qty, state)| ReservationLine { sku, qty, state })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jwl_service_kit::http::MetricsOn;
    use jwl_service_kit::openapi::{document, field_mismatches};

    #[test]
    fn every_field_is_in_the_document() {
        let doc = document([openapi()], MetricsOn::Public);
        let body = serde_json::to_value(SetStock { on_hand: 5 }).unwrap();
        assert_eq!(
            field_mismatches(&doc, "SetStock", &body),
            Vec::<String>::new()
        );
        let view = StockView::new(
            "sku-1".to_owned(),
            StockLevel {
                on_hand: 5,
                reserved: 1,
                shipped: 1,
            },
        );
        let view = serde_json::to_value(view).unwrap();
        assert_eq!(
            field_mismatches(&doc, "StockView", &view),
            Vec::<String>::new()
        );
        let reservation = ReservationView {
            order_id: OrderId::new().to_string(),
            state: "reserved".to_owned(),
            lines: vec![ReservationLine {
                sku: "sku-1".to_owned(),
                qty: 2,
                state: "reserved".to_owned(),
            }],
        };
        let reservation = serde_json::to_value(reservation).unwrap();
        assert_eq!(
            field_mismatches(&doc, "ReservationView", &reservation),
            Vec::<String>::new()
        );
    }

    #[test]
    fn the_documented_limit_is_the_validated_one() {
        let doc = serde_json::to_value(openapi()).unwrap();
        let on_hand = &doc["components"]["schemas"]["SetStock"]["properties"]["on_hand"];
        assert_eq!(
            on_hand["maximum"].as_f64(),
            Some(domain::MAX_ON_HAND as f64)
        );
    }
}
