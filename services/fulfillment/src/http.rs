//! Fulfillment's HTTP routes: `GET /v1/waybills/{id}` (admin).

use axum::extract::State;
use jwl_events::{OrderId, WaybillId};
use jwl_service_kit::auth::Admin;
use jwl_service_kit::extract::{Json, Path};
use jwl_service_kit::http::{ListedRouter, RouteMethod};
use jwl_service_kit::openapi::OpenApi;
use jwl_service_kit::problem::Problem;
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

/// The OpenAPI description of these routes (see [`jwl_service_kit::openapi`]).
#[derive(utoipa::OpenApi)]
#[openapi(paths(get_waybill), components(schemas(WaybillView)))]
struct Api;

/// [`Api`] as a document part.
pub fn openapi() -> OpenApi {
    <Api as utoipa::OpenApi>::openapi()
}

/// The body of `GET /v1/waybills/{id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct WaybillView {
    #[schema(value_type = String, format = "uuid")]
    waybill_id: WaybillId,
    #[schema(value_type = String, format = "uuid")]
    order_id: OrderId,
    /// The waybill's status (`waiting`, `assigned`, `delivered`, `cancelled`, …).
    #[schema(value_type = String)]
    status: &'static str,
    courier_id: Option<String>,
}

/// A waybill (admin).
#[utoipa::path(
    get,
    path = "/v1/waybills/{id}",
    tag = "fulfillment",
    params(("id" = String, Path, format = "uuid", description = "The waybill id")),
    responses(
        (status = 200, description = "The waybill", body = WaybillView),
        (status = 404, description = "No such waybill", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
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

#[cfg(test)]
mod tests {
    use super::*;
    use jwl_service_kit::http::MetricsOn;
    use jwl_service_kit::openapi::{document, field_mismatches};

    #[test]
    fn every_field_is_in_the_document() {
        let doc = document([openapi()], MetricsOn::Public);
        let sample = WaybillView {
            waybill_id: WaybillId::new(),
            order_id: OrderId::new(),
            status: "assigned",
            courier_id: Some("courier-1".to_owned()),
        };
        let sample = serde_json::to_value(sample).unwrap();
        assert_eq!(
            field_mismatches(&doc, "WaybillView", &sample),
            Vec::<String>::new()
        );
    }
}
