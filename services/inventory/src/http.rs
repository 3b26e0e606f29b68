//! The inventory service's HTTP routes (admin only): `PUT /v1/stock/{sku}` sets a SKU's
//! `on_hand`, `GET /v1/stock/{sku}` shows its stock.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use jwl_service_kit::auth::Admin;
use jwl_service_kit::extract::{Json, Path};
use jwl_service_kit::http::{ListedRouter, RouteMethod};
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

/// The body of `PUT /v1/stock/{sku}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetStock {
    on_hand: i64,
}

/// A SKU's stock as the API shows it.
#[derive(Debug, Serialize)]
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

fn on_hand_error(error: domain::StockInputError) -> ApiError {
    ApiError::bad_field("on_hand", error.to_string())
}

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
