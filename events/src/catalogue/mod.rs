//! The event catalogue: services, event types, payloads and their invariants.

mod data;
mod kinds;
mod payloads;
mod subscriptions;
mod validate;

pub use data::EventData;
pub use kinds::{EventType, SCHEMA_VERSION, Service, UnknownName};
pub use payloads::{
    CancelReason, CourierAssigned, Delivered, DispatchFailed, DispatchFailureReason,
    InventoryRejected, InventoryReleased, InventoryReserved, LineItem, OrderCancelRequested,
    OrderCreated, PaymentAuthorized, PaymentCaptured, PaymentDeclined, PaymentVoided,
    WaybillCancelled, WaybillCreated,
};
pub use validate::{MAX_LINE_ITEMS, MAX_SKU_CHARS, MAX_TEXT_CHARS, ValidationError};
