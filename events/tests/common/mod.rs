//! Fixed sample envelopes (one per event type) shared by the integration tests.

#![allow(dead_code)] // each test binary uses a different part of this module

use chrono::{DateTime, TimeZone, Utc};
use jwl_events::*;

pub const ORDER_ID: &str = "0196a3f2-7c1e-7d40-9a51-2f0c8e6b1a01";
pub const WAYBILL_ID: &str = "0196a3f2-8000-7aaa-8bbb-0c0c0c0c0c0c";
pub const CAUSE_ID: &str = "0196a3f2-7c1e-7d40-9a51-00000000cafe";
pub const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

pub fn order_id() -> OrderId {
    ORDER_ID.parse().unwrap()
}

pub fn waybill_id() -> WaybillId {
    WAYBILL_ID.parse().unwrap()
}

pub fn courier_id() -> CourierId {
    CourierId::parse("courier-07").unwrap()
}

pub fn pickup() -> GeoPoint {
    GeoPoint::new(31.2304, 121.4737).unwrap()
}

pub fn dropoff() -> GeoPoint {
    GeoPoint::new(31.2243, 121.4768).unwrap()
}

pub fn items() -> Vec<LineItem> {
    vec![
        LineItem {
            sku: "TEA-LONGJING-250G".into(),
            qty: 2,
            unit_price_cents: 12_800,
        },
        LineItem {
            sku: "MOONCAKE-6".into(),
            qty: 1,
            unit_price_cents: 6_600,
        },
    ]
}

pub const AMOUNT_CENTS: i64 = 2 * 12_800 + 6_600;

pub fn time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 10, 30, 0).unwrap() + chrono::Duration::microseconds(123_456)
}

/// The sample payload of `ty`.
pub fn sample_data(ty: EventType) -> EventData {
    let order_id = order_id();
    match ty {
        EventType::OrderCreated => OrderCreated {
            order_id,
            customer_id: "cust-42".into(),
            items: items(),
            amount_cents: AMOUNT_CENTS,
            pickup: pickup(),
            dropoff: dropoff(),
            payment_token: "tok_ok".into(),
            deadline: Utc.with_ymd_and_hms(2026, 11, 24, 10, 35, 0).unwrap(),
        }
        .into(),
        EventType::OrderCancelRequested => OrderCancelRequested {
            order_id,
            reason: CancelReason::Customer,
        }
        .into(),
        EventType::PaymentAuthorized => PaymentAuthorized {
            order_id,
            amount_cents: AMOUNT_CENTS,
            items: items(),
            pickup: pickup(),
            dropoff: dropoff(),
        }
        .into(),
        EventType::PaymentDeclined => PaymentDeclined {
            order_id,
            amount_cents: AMOUNT_CENTS,
            reason: "card declined by issuer".into(),
        }
        .into(),
        EventType::PaymentCaptured => PaymentCaptured {
            order_id,
            amount_cents: AMOUNT_CENTS,
        }
        .into(),
        EventType::PaymentVoided => PaymentVoided {
            order_id,
            amount_cents: AMOUNT_CENTS,
        }
        .into(),
        EventType::InventoryReserved => InventoryReserved {
            order_id,
            items: items(),
            pickup: pickup(),
            dropoff: dropoff(),
        }
        .into(),
        EventType::InventoryRejected => InventoryRejected {
            order_id,
            unavailable_skus: vec!["MOONCAKE-6".into()],
        }
        .into(),
        EventType::InventoryReleased => InventoryReleased {
            order_id,
            items: items(),
        }
        .into(),
        EventType::WaybillCreated => WaybillCreated {
            order_id,
            waybill_id: waybill_id(),
            pickup: pickup(),
            dropoff: dropoff(),
        }
        .into(),
        EventType::WaybillCancelled => WaybillCancelled {
            order_id,
            waybill_id: waybill_id(),
        }
        .into(),
        EventType::CourierAssigned => CourierAssigned {
            order_id,
            waybill_id: waybill_id(),
            courier_id: courier_id(),
            distance_km: 1.25,
        }
        .into(),
        EventType::DispatchFailed => DispatchFailed {
            order_id,
            waybill_id: waybill_id(),
            reason: DispatchFailureReason::NoCourier,
        }
        .into(),
        EventType::Delivered => Delivered {
            order_id,
            waybill_id: waybill_id(),
            courier_id: courier_id(),
        }
        .into(),
    }
}

/// The sample envelope of `ty`: fixed id and time; every type but `order.created` (born from
/// an HTTP request) has a cause and a trace.
pub fn sample(ty: EventType) -> Envelope {
    let index = EventType::ALL.iter().position(|t| *t == ty).unwrap();
    let born_from_request = ty == EventType::OrderCreated;
    Envelope {
        id: format!("0196a3f2-7c1e-7d40-9a51-0000000000{index:02x}")
            .parse()
            .unwrap(),
        source: ty.emitter(),
        time: time(),
        causation_id: (!born_from_request).then(|| CAUSE_ID.parse().unwrap()),
        traceparent: (!born_from_request).then(|| TRACEPARENT.to_owned()),
        data: sample_data(ty),
    }
}

/// `msg`'s headers as borrowed pairs.
pub fn pairs(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect()
}
