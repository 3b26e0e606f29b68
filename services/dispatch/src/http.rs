//! Dispatch's HTTP routes, for couriers (scope `couriers:write`, acting for themselves) and
//! admins:
//!
//! - `PUT /v1/couriers/{id}/location` `{"lat","lon"}`: upserts the courier's position and, in
//!   the same transaction, assigns it the nearest waiting waybills in range while it has
//!   capacity → `{"courier_id","lat","lon","live_waybills","assigned":[waybill ids]}`;
//! - `POST /v1/couriers/{id}/deliveries/{waybill_id}`: confirms a delivery
//!   (`dispatch.delivered`), frees the capacity and offers the courier the waiting waybills
//!   around it; 404 unknown waybill, 409 not this courier's or already delivered;
//! - `GET /v1/couriers/{id}` (that courier or an admin) → `{"courier_id","lat","lon","live_waybills"}`.

use jwl_outbox::RelaySignal;
use std::sync::Arc;

use axum::extract::State;
use chrono::Utc;
use jwl_events::{CourierId, Delivered, Envelope, GeoError, GeoPoint, OrderId, WaybillId};
use jwl_service_kit::auth::Caller;
use jwl_service_kit::extract::{Json, Path};
use jwl_service_kit::http::{ListedRouter, RouteMethod};
use jwl_service_kit::openapi::OpenApi;
use jwl_service_kit::problem::Problem;
use jwl_service_kit::{ApiError, ApiResult, Settings};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::SERVICE;
use crate::dispatcher::{self, Offer};
use crate::domain;
use crate::error::DispatchError;
use crate::store::{self, Courier};

/// What every route needs.
#[derive(Clone)]
struct AppState {
    pool: PgPool,
    settings: Arc<Settings>,
    relay: RelaySignal,
}

/// The routes, over the service's pool and settings.
pub fn routes(pool: PgPool, settings: Arc<Settings>, relay: RelaySignal) -> ListedRouter {
    ListedRouter::new()
        .route(RouteMethod::Get, "/v1/couriers/{id}", get_courier)
        .route(RouteMethod::Put, "/v1/couriers/{id}/location", put_location)
        .route(
            RouteMethod::Post,
            "/v1/couriers/{id}/deliveries/{waybill_id}",
            post_delivery,
        )
        .with_state(AppState {
            pool,
            settings,
            relay,
        })
}

/// The OpenAPI description of these routes (see [`jwl_service_kit::openapi`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(get_courier, put_location, post_delivery),
    components(schemas(LocationBody, CourierView, LocationView, DeliveryView))
)]
struct Api;

/// [`Api`] as a document part.
pub fn openapi() -> OpenApi {
    <Api as utoipa::OpenApi>::openapi()
}

/// The body of `PUT /v1/couriers/{id}/location`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields)]
struct LocationBody {
    #[schema(minimum = -90, maximum = 90)]
    lat: f64,
    #[schema(minimum = -180, maximum = 180)]
    lon: f64,
}

/// A courier as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct CourierView {
    #[schema(value_type = String)]
    courier_id: CourierId,
    lat: f64,
    lon: f64,
    live_waybills: i32,
}

impl From<Courier> for CourierView {
    fn from(courier: Courier) -> Self {
        Self {
            courier_id: courier.courier_id,
            lat: courier.position.lat,
            lon: courier.position.lon,
            live_waybills: courier.live_waybills,
        }
    }
}

/// The answer to a location update.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct LocationView {
    #[serde(flatten)]
    courier: CourierView,
    /// The waybills assigned to the courier by this update.
    #[schema(value_type = Vec<String>)]
    assigned: Vec<WaybillId>,
}

/// The answer to a delivery.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct DeliveryView {
    #[schema(value_type = String, format = "uuid")]
    waybill_id: WaybillId,
    #[schema(value_type = String, format = "uuid")]
    order_id: OrderId,
    #[schema(value_type = String)]
    courier_id: CourierId,
    /// Always `delivered`.
    #[schema(value_type = String)]
    status: &'static str,
    live_waybills: i32,
    /// The waiting waybills the freed courier took.
    #[schema(value_type = Vec<String>)]
    assigned: Vec<WaybillId>,
}

fn parse_courier_id(text: &str) -> ApiResult<CourierId> {
    CourierId::parse(text).map_err(|error| ApiError::bad_field("id", error.to_string()))
}

fn require_acting_for(caller: &Caller, courier_id: &CourierId) -> ApiResult<()> {
    if domain::may_act_for_courier(caller, courier_id) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "only courier {courier_id} (with the `couriers:write` scope) or an admin may do this"
        )))
    }
}

fn position(body: &LocationBody) -> ApiResult<GeoPoint> {
    GeoPoint::new(body.lat, body.lon).map_err(|error| match error {
        GeoError::Latitude(_) => ApiError::bad_field("lat", error.to_string()),
        GeoError::Longitude(_) => ApiError::bad_field("lon", error.to_string()),
    })
}

/// Reports a courier's position (that courier with `couriers:write`, or admin): it is available
/// there and takes the nearest waiting waybills in range at once.
#[utoipa::path(
    put,
    path = "/v1/couriers/{id}/location",
    tag = "dispatch",
    params(("id" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,64}$", description = "The courier id")),
    request_body = LocationBody,
    responses(
        (status = 200, description = "The courier, with what it was assigned", body = LocationView),
        (status = 400, description = "Bad id or position (`field` names it)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn put_location(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<LocationBody>,
) -> ApiResult<Json<LocationView>> {
    let courier_id = parse_courier_id(&id)?;
    require_acting_for(&caller, &courier_id)?;
    let position = position(&body)?;

    let mut tx = state.pool.begin().await?;
    let (
        courier,
        Offer {
            live_waybills,
            assigned,
            emitted,
        },
    ) = dispatcher::report_position(&mut tx, &courier_id, &position, &state.settings, Utc::now())
        .await?;
    tx.commit().await?;
    // only an assignment emits (`courier_assigned`): most updates publish nothing
    state.relay.committed_rows(&state.pool, emitted).await;
    if !assigned.is_empty() {
        tracing::info!(%courier_id, ?assigned, "courier took waiting waybills");
    }
    Ok(Json(LocationView {
        courier: CourierView::from(Courier {
            live_waybills,
            ..courier
        }),
        assigned,
    }))
}

/// Confirms a delivery (that courier with `couriers:write`, or admin); the courier's capacity is
/// freed and offered the waiting waybills around it.
#[utoipa::path(
    post,
    path = "/v1/couriers/{id}/deliveries/{waybill_id}",
    tag = "dispatch",
    params(
        ("id" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,64}$", description = "The courier id"),
        ("waybill_id" = String, Path, format = "uuid", description = "The waybill id"),
    ),
    responses(
        (status = 200, description = "Delivered", body = DeliveryView),
        (status = 404, description = "No such waybill", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not this courier's live waybill", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn post_delivery(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, waybill)): Path<(String, String)>,
) -> ApiResult<Json<DeliveryView>> {
    let courier_id = parse_courier_id(&id)?;
    let waybill_id = WaybillId::parse(&waybill)
        .map_err(|error| ApiError::bad_field("waybill_id", error.to_string()))?;
    require_acting_for(&caller, &courier_id)?;

    let mut tx = state.pool.begin().await?;
    // the area where the courier last reported, before its row is locked (see lock_courier_area)
    if let Some(reported) = store::find_courier(&mut *tx, &courier_id).await? {
        dispatcher::lock_courier_area(&mut tx, &courier_id, &reported.position, &state.settings)
            .await?;
    }
    let waybill = store::lock_waybill(&mut tx, waybill_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no waybill {waybill_id}")))?;
    domain::check_delivery(
        waybill_id,
        waybill.status,
        waybill.courier_id.as_ref(),
        &courier_id,
    )
    .map_err(|refusal| ApiError::Conflict(refusal.to_string()))?;
    if !store::mark_delivered(&mut tx, waybill_id).await? {
        return Err(ApiError::Conflict(format!(
            "waybill {waybill_id} is no longer assigned"
        )));
    }
    let courier = store::release_capacity(&mut tx, &courier_id)
        .await?
        .ok_or_else(|| {
            ApiError::internal(format!(
                "courier {courier_id} holds waybill {waybill_id} but no capacity"
            ))
        })?;
    // held already unless the courier moved meanwhile (re-taking a held lock does not wait)
    dispatcher::lock_courier_area(&mut tx, &courier_id, &courier.position, &state.settings).await?;
    let mut event = Envelope::new(
        SERVICE,
        Delivered {
            order_id: waybill.order_id,
            waybill_id,
            courier_id: courier_id.clone(),
        }
        .into(),
    );
    // Born from the courier's request: no causation, but the order's trace continues.
    event.traceparent = waybill.cause_traceparent;
    let delivered = jwl_outbox::enqueue(&mut tx, &event)
        .await
        .map_err(DispatchError::from)?;
    let offer = dispatcher::offer_courier(&mut tx, &courier, &state.settings, Utc::now()).await?;
    tx.commit().await?;
    // the delivered order's row, then the rows of the orders the courier took next
    state.relay.committed_rows(&state.pool, delivered).await;
    state.relay.committed_rows(&state.pool, offer.emitted).await;
    Ok(Json(DeliveryView {
        waybill_id,
        order_id: waybill.order_id,
        courier_id,
        status: domain::WaybillStatus::Delivered.as_str(),
        live_waybills: offer.live_waybills,
        assigned: offer.assigned,
    }))
}

/// A courier (that courier, or admin).
#[utoipa::path(
    get,
    path = "/v1/couriers/{id}",
    tag = "dispatch",
    params(("id" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,64}$", description = "The courier id")),
    responses(
        (status = 200, description = "The courier", body = CourierView),
        (status = 404, description = "No such courier", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn get_courier(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<CourierView>> {
    let courier_id = parse_courier_id(&id)?;
    if !domain::may_read_courier(&caller, &courier_id) {
        return Err(ApiError::Forbidden(format!(
            "only courier {courier_id} or an admin may read this"
        )));
    }
    let courier = store::find_courier(&state.pool, &courier_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no courier {courier_id}")))?;
    Ok(Json(CourierView::from(courier)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jwl_service_kit::http::MetricsOn;
    use jwl_service_kit::openapi::{document, field_mismatches};
    use serde_json::Value;

    fn json(value: impl Serialize) -> Value {
        serde_json::to_value(value).unwrap()
    }

    fn courier() -> CourierView {
        CourierView {
            courier_id: CourierId::parse("courier-1").unwrap(),
            lat: 31.23,
            lon: 121.47,
            live_waybills: 1,
        }
    }

    #[test]
    fn every_field_is_in_the_document() {
        let doc = document([openapi()], MetricsOn::Public);
        let samples = [
            ("LocationBody", json(LocationBody { lat: 1.0, lon: 2.0 })),
            ("CourierView", json(courier())),
            (
                "LocationView",
                json(LocationView {
                    courier: courier(),
                    assigned: vec![WaybillId::new()],
                }),
            ),
            (
                "DeliveryView",
                json(DeliveryView {
                    waybill_id: WaybillId::new(),
                    order_id: OrderId::new(),
                    courier_id: CourierId::parse("courier-1").unwrap(),
                    status: "delivered",
                    live_waybills: 0,
                    assigned: vec![WaybillId::new()],
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
}
