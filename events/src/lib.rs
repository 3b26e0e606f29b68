//! The Jiangwanli event catalogue.
//!
//! Typed ids and payloads for every saga event ([`EventData`]), the CloudEvents 1.0
//! [`Envelope`], binary-mode [`encode`]/[`decode`] for NATS (`ce-`) and Kafka (`ce_`) headers,
//! and the NATS subject scheme. The user-facing catalogue is `docs/events.md`.

mod catalogue;
mod envelope;
mod error;
mod geo;
mod ids;
mod wire;

pub use catalogue::{
    CancelReason, CourierAssigned, Delivered, DispatchFailed, DispatchFailureReason, EventData,
    EventType, InventoryRejected, InventoryReleased, InventoryReserved, LineItem, MAX_LINE_ITEMS,
    MAX_SKU_CHARS, MAX_TEXT_CHARS, OrderCancelRequested, OrderCreated, PaymentAuthorized,
    PaymentCaptured, PaymentDeclined, PaymentVoided, SCHEMA_VERSION, Service, UnknownName,
    ValidationError, WaybillCancelled, WaybillCreated,
};
pub use envelope::Envelope;
pub use error::DecodeError;
pub use geo::{GeoError, GeoPoint};
pub use ids::{CourierId, EventId, IdError, OrderId, WaybillId};
pub use wire::{
    APPLICATION_JSON, CONTENT_TYPE_HEADER, EVENTS_SUBJECTS, HeaderStyle, WireMessage, decode,
    encode, header_value, order_filters, parse_subject, subject, subject_order, subject_type,
    subjects_of, type_filter, type_filters,
};
