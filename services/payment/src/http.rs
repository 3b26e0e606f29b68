//! The payment service's HTTP routes, all admin-only: `GET /v1/payments/{order_id}`, and
//! `GET`/`PUT /v1/payment-processor` (the card processor's breaker and the faults its simulator
//! stages: how an operator or a test stages an outage and watches the breaker ride it out).

use std::sync::Arc;

use axum::extract::State;
use jwl_events::OrderId;
use jwl_service_kit::auth::Admin;
use jwl_service_kit::breaker::BreakerSnapshot;
use jwl_service_kit::extract::{Json, Path};
use jwl_service_kit::http::{ListedRouter, RouteMethod};
use jwl_service_kit::openapi::OpenApi;
use jwl_service_kit::problem::Problem;
use jwl_service_kit::{ApiError, ApiResult};
use serde::Serialize;
use sqlx::PgPool;

use crate::processor::Faults;
use crate::{Processor, store};

/// What the routes share.
#[derive(Clone)]
struct AppState {
    pool: PgPool,
    processor: Arc<Processor>,
}

/// The routes, on `pool` (whose `search_path` is the payment schema) and `processor`.
pub fn routes(pool: PgPool, processor: Arc<Processor>) -> ListedRouter {
    ListedRouter::new()
        .route(RouteMethod::Get, "/v1/payments/{order_id}", get_payment)
        .route(RouteMethod::Get, "/v1/payment-processor", get_processor)
        .route(RouteMethod::Put, "/v1/payment-processor", put_processor)
        .with_state(AppState { pool, processor })
}

/// The OpenAPI description of these routes (see [`jwl_service_kit::openapi`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(get_payment, get_processor, put_processor),
    components(schemas(PaymentView, ProcessorView, Faults))
)]
struct Api;

/// [`Api`] as a document part.
pub fn openapi() -> OpenApi {
    <Api as utoipa::OpenApi>::openapi()
}

/// The body of `GET /v1/payments/{order_id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct PaymentView {
    #[schema(format = "uuid")]
    order_id: String,
    /// `authorized`, `declined`, `captured` or `voided`.
    #[schema(value_type = String)]
    status: &'static str,
    amount_cents: i64,
}

/// The payment of an order (admin).
#[utoipa::path(
    get,
    path = "/v1/payments/{order_id}",
    tag = "payment",
    params(("order_id" = String, Path, format = "uuid", description = "The order id")),
    responses(
        (status = 200, description = "The payment", body = PaymentView),
        (status = 404, description = "No payment for this order", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn get_payment(
    _admin: Admin,
    State(state): State<AppState>,
    Path(order_id): Path<String>,
) -> ApiResult<Json<PaymentView>> {
    let order_id = OrderId::parse(&order_id)
        .map_err(|error| ApiError::bad_field("order_id", format!("invalid order id: {error}")))?;
    let not_found = || ApiError::NotFound(format!("no payment for order {order_id}"));
    let payment = store::find(&state.pool, order_id)
        .await?
        .ok_or_else(not_found)?;
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

/// The body of `GET`/`PUT /v1/payment-processor`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ProcessorView {
    /// What the simulator stages now.
    faults: Faults,
    /// How long a call may take, in milliseconds.
    #[schema(value_type = u64)]
    timeout_ms: u128,
    /// The breaker: state, thresholds in force, window, last transitions.
    breaker: BreakerSnapshot,
}

fn view(processor: &Processor) -> ProcessorView {
    ProcessorView {
        faults: processor.simulator.faults(),
        timeout_ms: processor.guarded.timeout().as_millis(),
        breaker: processor.guarded.breaker().snapshot(),
    }
}

/// The card processor: staged faults, call timeout and breaker (admin).
#[utoipa::path(
    get,
    path = "/v1/payment-processor",
    tag = "payment",
    responses((status = 200, description = "The card processor and its breaker", body = ProcessorView)),
    security(("bearer" = [])),
)]
async fn get_processor(_admin: Admin, State(state): State<AppState>) -> Json<ProcessorView> {
    Json(view(&state.processor))
}

/// Replaces the staged faults (a field left out is healthy: `{}` ends every fault).
#[utoipa::path(
    put,
    path = "/v1/payment-processor",
    tag = "payment",
    request_body = Faults,
    responses(
        (status = 200, description = "The card processor with the new faults", body = ProcessorView),
        (status = 400, description = "A rate out of 0..=1 or a slowdown below 1 (`field` names it)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn put_processor(
    admin: Admin,
    State(state): State<AppState>,
    Json(faults): Json<Faults>,
) -> ApiResult<Json<ProcessorView>> {
    let faults = faults
        .validated()
        .map_err(|invalid| ApiError::bad_field(invalid.field, invalid.problem))?;
    tracing::warn!(admin = %admin.0.subject, ?faults, "card processor faults staged by an admin");
    state.processor.simulator.set_faults(faults);
    Ok(Json(view(&state.processor)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jwl_service_kit::http::MetricsOn;
    use jwl_service_kit::openapi::{document, field_mismatches};

    #[test]
    fn every_field_is_in_the_document() {
        let doc = document([openapi()], MetricsOn::Public);
        let sample = PaymentView {
            order_id: OrderId::new().to_string(),
            status: "authorized",
            amount_cents: 1299,
        };
        let sample = serde_json::to_value(sample).unwrap();
        assert_eq!(
            field_mismatches(&doc, "PaymentView", &sample),
            Vec::<String>::new()
        );
        let processor = Processor::new(&jwl_service_kit::config::ProcessorSettings::default());
        let sample = serde_json::to_value(view(&processor)).unwrap();
        assert_eq!(
            field_mismatches(&doc, "ProcessorView", &sample),
            Vec::<String>::new()
        );
        let sample = serde_json::to_value(Faults::default()).unwrap();
        assert_eq!(
            field_mismatches(&doc, "Faults", &sample),
            Vec::<String>::new()
        );
    }
}
