//! Fulfillment's HTTP routes: `GET /v1/waybills/{id}` (admin).

use axum::extract::State;
use jwl_events::{OrderId, WaybillId};
use jwl_service_kit::auth::Admin;
use jwl_service_kit::extract::{Json, Path};
use jwl_service_kit::http::{ListedRouter, RouteMethod};
use jwl_service_kit::{ApiError, ApiResult};
use serde::Serialize;
use sqlx::PgPool;

use crate::store::{self, StoreError};

/// The routes, over the service's pool.
pub fn routes(pool: PgPool) -> ListedRouter {
    ListedRouter::new()
        .route(RouteMethod::Get, "/v1/waybills/{id}", get_waybill)
        .with_state(pool)
}

/// The body of `GET /v1/waybills/{id}`.
#[derive(Debug, Serialize)]
struct WaybillView {
    waybill_id: WaybillId,
    order_id: OrderId,
    status: &'static str,
    courier_id: Option<String>,
}

async fn get_waybill(
    _admin: Admin,
    State(pool): State<PgPool>,
    Path(id): Path<String>,
) -> ApiResult<Json<WaybillView>> {
    let waybill_id =
        WaybillId::parse(&id).map_err(|error| ApiError::bad_field("id", error.to_string()))?;
    let waybill = store::find(&pool, waybill_id)
        .await
        .map_err(|error| match error {
            StoreError::Database(error) => ApiError::from(error),
            other => ApiError::internal(other),
        })?
        .ok_or_else(|| ApiError::NotFound(format!("no waybill {waybill_id}")))?;
    Ok(Json(WaybillView {
        waybill_id: waybill.waybill_id,
        order_id: waybill.order_id,
        status: waybill.status.as_str(),
        courier_id: waybill.courier_id,
    }))
}
