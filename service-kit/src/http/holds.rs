//! `GET /v1/holds/<service>/{order_id}` (admin), mounted by every service: what the service
//! holds back of an order, read from its own schema by [`jwl_outbox::order_holds::read`] — its
//! consumers' dead-letter holds on the order, the inbound messages parked behind them, and the
//! order's outbox rows the relay parked because the broker refused them for good. The console
//! reads it from each service to draw them on the order's swim lanes.
//!
//! The service is a literal segment of the path (`/v1/holds/payment/{order_id}`), so the five
//! routes can share `jwl up`'s one listener, each reading its own service's schema, as the
//! services' own state routes do.

use axum::extract::State;
use chrono::{DateTime, Utc};
use jwl_events::{OrderId, Service};
use jwl_outbox::order_holds::{self, HeldMessage, Hold, OrderHolds};
use jwl_outbox::parked_rows::ParkedRow;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::{ListedRouter, RouteMethod};
use crate::auth::Admin;
use crate::extract::{Json, Path};
use crate::openapi::OpenApi;
use crate::problem::Problem;
use crate::{ApiError, ApiResult};

/// The path of `service`'s route.
pub const fn path(service: Service) -> &'static str {
    match service {
        Service::Order => "/v1/holds/order/{order_id}",
        Service::Payment => "/v1/holds/payment/{order_id}",
        Service::Inventory => "/v1/holds/inventory/{order_id}",
        Service::Fulfillment => "/v1/holds/fulfillment/{order_id}",
        Service::Dispatch => "/v1/holds/dispatch/{order_id}",
    }
}

/// The path the handler is documented under, replaced by [`path`] in [`openapi`].
const DOCUMENTED: &str = "/v1/holds/SERVICE/{order_id}";

#[derive(Clone)]
struct HoldsState {
    service: Service,
    pool: PgPool,
}

/// `service`'s route, reading `pool` (whose `search_path` is the service's schema).
pub fn routes(service: Service, pool: PgPool) -> ListedRouter {
    ListedRouter::new()
        .route(RouteMethod::Get, path(service), get_holds)
        .with_state(HoldsState { service, pool })
}

/// The OpenAPI description of `service`'s route, tagged with the service.
pub fn openapi(service: Service) -> OpenApi {
    let mut doc = <Api as utoipa::OpenApi>::openapi();
    if let Some(mut item) = doc.paths.paths.remove(DOCUMENTED) {
        if let Some(operation) = item.get.as_mut() {
            operation.operation_id = Some(format!("holds_{service}"));
            operation.tags = Some(vec![service.as_str().to_owned()]);
            operation.summary = Some(format!(
                "What {service} holds back of an order: dead-letter holds, held messages, parked outbox rows (admin)."
            ));
        }
        doc.paths.paths.insert(path(service).to_owned(), item);
    }
    doc
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(get_holds),
    components(schemas(HoldsView, HoldView, HeldMessageView, ParkedRowView))
)]
struct Api;

/// The body of `GET /v1/holds/<service>/{order_id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HoldsView {
    #[schema(format = "uuid")]
    pub order_id: String,
    /// The service whose schema was read.
    pub service: String,
    /// Whether the service holds the order behind a dead letter (`holds` is not empty).
    pub held: bool,
    /// Its consumers' holds on the order, oldest first.
    pub holds: Vec<HoldView>,
    /// The order's inbound messages parked behind those holds, in stream order.
    pub parked_messages: Vec<HeldMessageView>,
    /// The order's events the service committed but the broker refused for good, oldest first.
    pub parked_rows: Vec<ParkedRowView>,
}

/// A consumer's hold on the order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HoldView {
    /// The consumer that dead-lettered the head (`payment__order_created`).
    pub consumer: String,
    /// The dead-lettered event (its dead letter's `ce-id`).
    #[schema(format = "uuid")]
    pub head_event_id: String,
    #[schema(value_type = String, format = DateTime)]
    pub held_since: DateTime<Utc>,
}

/// A message parked behind a hold.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HeldMessageView {
    /// Its row in the service's `parked_messages`.
    pub id: i64,
    /// The consumer it was delivered to.
    pub consumer: String,
    #[schema(format = "uuid")]
    pub event_id: String,
    /// `jwl.payment.captured`, or null when its subject names no known type.
    pub event_type: Option<String>,
    pub subject: String,
    /// Its sequence in the stream it came from.
    pub stream_seq: i64,
    #[schema(value_type = String, format = DateTime)]
    pub parked_at: DateTime<Utc>,
    /// Set when it failed while its order was released, so it heads a hold of its own: the
    /// reason of its dead letter.
    pub dead_letter_reason: Option<String>,
}

/// An outbox row of the order the broker refused for good.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ParkedRowView {
    /// Its `seq` in the service's outbox (`jwl outbox retry --seq`).
    pub seq: i64,
    #[schema(format = "uuid")]
    pub event_id: String,
    /// `jwl.payment.captured`, or null when its subject names no known type.
    pub event_type: Option<String>,
    pub subject: String,
    /// Publish attempts so far.
    pub attempts: i32,
    /// The broker's last refusal.
    pub last_error: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub parked_at: DateTime<Utc>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
}

impl HoldsView {
    /// The view of `holds`, of `order_id` in `service`.
    pub fn new(service: Service, order_id: Uuid, holds: OrderHolds) -> Self {
        Self {
            order_id: order_id.to_string(),
            service: service.as_str().to_owned(),
            held: !holds.holds.is_empty(),
            holds: holds.holds.into_iter().map(HoldView::from).collect(),
            parked_messages: holds
                .parked_messages
                .into_iter()
                .map(HeldMessageView::from)
                .collect(),
            parked_rows: holds
                .parked_rows
                .into_iter()
                .map(ParkedRowView::from)
                .collect(),
        }
    }
}

impl From<Hold> for HoldView {
    fn from(hold: Hold) -> Self {
        Self {
            consumer: hold.consumer,
            head_event_id: hold.head_event_id.to_string(),
            held_since: hold.held_since,
        }
    }
}

impl From<HeldMessage> for HeldMessageView {
    fn from(message: HeldMessage) -> Self {
        Self {
            id: message.id,
            consumer: message.consumer,
            event_id: message.event_id.to_string(),
            event_type: message.event_type.map(str::to_owned),
            subject: message.subject,
            stream_seq: message.stream_seq,
            parked_at: message.parked_at,
            dead_letter_reason: message.dead_letter_reason,
        }
    }
}

impl From<ParkedRow> for ParkedRowView {
    fn from(row: ParkedRow) -> Self {
        Self {
            event_type: row.event_type().map(str::to_owned),
            seq: row.seq,
            event_id: row.event_id.to_string(),
            subject: row.subject,
            attempts: row.attempts,
            last_error: row.last_error,
            parked_at: row.parked_at,
            created_at: row.created_at,
        }
    }
}

/// What the service holds back of an order: its dead-letter holds, the messages parked behind
/// them and its parked outbox rows (admin). An order it holds nothing of answers empty lists.
#[utoipa::path(
    get,
    path = "/v1/holds/SERVICE/{order_id}",
    params(("order_id" = String, Path, format = "uuid", description = "The order id")),
    responses(
        (status = 200, description = "What the service holds back of the order", body = HoldsView),
        (status = 400, description = "Not an order id", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn get_holds(
    _admin: Admin,
    State(state): State<HoldsState>,
    Path(order_id): Path<String>,
) -> ApiResult<Json<HoldsView>> {
    let order_id = OrderId::parse(&order_id)
        .map_err(|error| ApiError::bad_field("order_id", format!("invalid order id: {error}")))?;
    let mut conn = state.pool.acquire().await?;
    let holds = order_holds::read(&mut conn, order_id.0).await?;
    Ok(Json(HoldsView::new(state.service, order_id.0, holds)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::MetricsOn;
    use crate::openapi::{document, field_mismatches, operations};

    #[test]
    fn each_service_documents_its_own_path() {
        let doc = document(Service::ALL.map(openapi), MetricsOn::Public);
        let documented = operations(&doc);
        for service in Service::ALL {
            assert!(
                documented.contains(&("GET".to_owned(), path(service).to_owned())),
                "{service}: {documented:?}"
            );
        }
        assert!(
            !documented
                .iter()
                .any(|(_, documented)| documented == DOCUMENTED),
            "the placeholder path is left in the document"
        );
        let json = serde_json::to_value(&doc).unwrap();
        let operation = &json["paths"]["/v1/holds/payment/{order_id}"]["get"];
        assert_eq!(operation["operationId"], "holds_payment");
        assert_eq!(operation["tags"], serde_json::json!(["payment"]));
    }

    #[test]
    fn every_field_is_in_the_document() {
        let doc = document([openapi(Service::Payment)], MetricsOn::Public);
        let now = Utc::now();
        let sample = HoldsView {
            order_id: Uuid::now_v7().to_string(),
            service: "payment".to_owned(),
            held: true,
            holds: vec![HoldView {
                consumer: "payment__order_created".to_owned(),
                head_event_id: Uuid::now_v7().to_string(),
                held_since: now,
            }],
            parked_messages: vec![HeldMessageView {
                id: 1,
                consumer: "payment__courier_assigned".to_owned(),
                event_id: Uuid::now_v7().to_string(),
                event_type: Some("jwl.dispatch.courier_assigned".to_owned()),
                subject: "jwl.evt.x.dispatch.courier_assigned".to_owned(),
                stream_seq: 7,
                parked_at: now,
                dead_letter_reason: Some("permanent".to_owned()),
            }],
            parked_rows: vec![ParkedRowView {
                seq: 3,
                event_id: Uuid::now_v7().to_string(),
                event_type: Some("jwl.payment.authorized".to_owned()),
                subject: "jwl.evt.x.payment.authorized".to_owned(),
                attempts: 1,
                last_error: Some("maximum payload exceeded".to_owned()),
                parked_at: now,
                created_at: now,
            }],
        };
        let sample = serde_json::to_value(sample).unwrap();
        assert_eq!(
            field_mismatches(&doc, "HoldsView", &sample),
            Vec::<String>::new()
        );
    }
}
