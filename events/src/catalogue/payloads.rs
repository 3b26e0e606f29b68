//! The typed payload (`data`) of every event type, exactly as it travels as JSON.
//!
//! Field names are snake_case; money is `i64` cents; positions are [`GeoPoint`]s. Readers are
//! tolerant: unknown fields are ignored, but a known field of the wrong type is an error.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::geo::GeoPoint;
use crate::ids::{CourierId, OrderId, WaybillId};

/// One order line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    /// Stock keeping unit, 1..=64 characters.
    pub sku: String,
    /// Quantity, at least 1.
    pub qty: u32,
    /// Price of one unit in cents, at least 1.
    pub unit_price_cents: i64,
}

/// Why the order service asked for a cancellation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// The customer cancelled (`POST /v1/orders/{id}/cancel`).
    Customer,
    /// The order was not terminal by its deadline.
    Deadline,
}

/// Why dispatch failed a waybill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DispatchFailureReason {
    /// No available courier within the radius before the dispatch deadline.
    NoCourier,
    /// The customer cancelled before a courier was assigned.
    Customer,
    /// The order deadline passed before a courier was assigned.
    Deadline,
}

impl From<CancelReason> for DispatchFailureReason {
    fn from(reason: CancelReason) -> Self {
        match reason {
            CancelReason::Customer => DispatchFailureReason::Customer,
            CancelReason::Deadline => DispatchFailureReason::Deadline,
        }
    }
}

/// `jwl.order.created`: a new order was accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub order_id: OrderId,
    pub customer_id: String,
    pub items: Vec<LineItem>,
    /// Sum of `qty * unit_price_cents` over `items`.
    pub amount_cents: i64,
    pub pickup: GeoPoint,
    pub dropoff: GeoPoint,
    pub payment_token: String,
    /// When the order is cancelled if it is not terminal yet.
    pub deadline: DateTime<Utc>,
}

/// `jwl.order.cancel_requested`: every service undoes what it did for this order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelRequested {
    pub order_id: OrderId,
    pub reason: CancelReason,
}

/// `jwl.payment.authorized`: the order's amount is held on the card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentAuthorized {
    pub order_id: OrderId,
    pub amount_cents: i64,
    pub items: Vec<LineItem>,
    pub pickup: GeoPoint,
    pub dropoff: GeoPoint,
}

/// `jwl.payment.declined`: the card processor refused; the order is rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentDeclined {
    pub order_id: OrderId,
    pub amount_cents: i64,
    /// The processor's reason, for people (not for branching).
    pub reason: String,
}

/// `jwl.payment.captured`: the held amount was taken; the saga succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCaptured {
    pub order_id: OrderId,
    pub amount_cents: i64,
}

/// `jwl.payment.voided`: the hold was released (compensation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentVoided {
    pub order_id: OrderId,
    pub amount_cents: i64,
}

/// `jwl.inventory.reserved`: every line is reserved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InventoryReserved {
    pub order_id: OrderId,
    pub items: Vec<LineItem>,
    pub pickup: GeoPoint,
    pub dropoff: GeoPoint,
}

/// `jwl.inventory.rejected`: at least one line could not be reserved; nothing was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryRejected {
    pub order_id: OrderId,
    pub unavailable_skus: Vec<String>,
}

/// `jwl.inventory.released`: a reservation was given back (compensation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryReleased {
    pub order_id: OrderId,
    pub items: Vec<LineItem>,
}

/// `jwl.fulfillment.waybill_created`: a waybill exists and awaits a courier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaybillCreated {
    pub order_id: OrderId,
    pub waybill_id: WaybillId,
    pub pickup: GeoPoint,
    pub dropoff: GeoPoint,
}

/// `jwl.fulfillment.waybill_cancelled`: the waybill was cancelled (compensation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaybillCancelled {
    pub order_id: OrderId,
    pub waybill_id: WaybillId,
}

/// `jwl.dispatch.courier_assigned`: the nearest available courier took the waybill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CourierAssigned {
    pub order_id: OrderId,
    pub waybill_id: WaybillId,
    pub courier_id: CourierId,
    /// Distance from the courier to the pickup point, in kilometres.
    pub distance_km: f64,
}

/// `jwl.dispatch.failed`: no courier will take the waybill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchFailed {
    pub order_id: OrderId,
    pub waybill_id: WaybillId,
    pub reason: DispatchFailureReason,
}

/// `jwl.dispatch.delivered`: the courier confirmed the delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    pub order_id: OrderId,
    pub waybill_id: WaybillId,
    pub courier_id: CourierId,
}
