//! The payment service's HTTP routes: `GET /v1/payments/{order_id}` (admin).

use axum::extract::State;
use jwl_events::OrderId;
use jwl_service_kit::auth::Admin;
use jwl_service_kit::extract::{Json, Path};
use jwl_service_kit::http::{ListedRouter, RouteMethod};
use jwl_service_kit::{ApiError, ApiResult};
use serde::Serialize;
use sqlx::PgPool;

use crate::store;

/// The routes, on `pool` (whose `search_path` is the payment schema).
pub fn routes(pool: PgPool) -> ListedRouter {
    ListedRouter::new()
        .route(RouteMethod::Get, "/v1/payments/{order_id}", get_payment)
        .with_state(pool)
}

/// The body of `GET /v1/payments/{order_id}`.
#[derive(Debug, Serialize)]
struct PaymentView {
    order_id: String,
    status: &'static str,
    amount_cents: i64,
}

async fn get_payment(
    _admin: Admin,
    State(pool): State<PgPool>,
    Path(order_id): Path<String>,
) -> ApiResult<Json<PaymentView>> {
    let order_id = OrderId::parse(&order_id)
        .map_err(|error| ApiError::bad_field("order_id", format!("invalid order id: {error}")))?;
    let not_found = || ApiError::NotFound(format!("no payment for order {order_id}"));
    let payment = store::find(&pool, order_id).await?.ok_or_else(not_found)?;
    match payment.amount_cents {
        Some(amount_cents) if payment.state.is_payment() => Ok(Json(PaymentView {
            order_id: payment.order_id.to_string(),
            status: payment.state.as_str(),
            amount_cents,
        })),
        // a tombstone: a void was requested but no payment was ever made
        _ => Err(not_found()),
    }
}
