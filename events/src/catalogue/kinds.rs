//! The services that emit events and the closed set of event types, with their wire names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The current (and only) schema version of every event type's payload.
pub const SCHEMA_VERSION: u32 = 1;

/// A bounded context that emits events. Its CloudEvents `source` is `/jwl/<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Service {
    Order,
    Payment,
    Inventory,
    Fulfillment,
    Dispatch,
}

impl Service {
    /// Every service, in saga order.
    pub const ALL: [Service; 5] = [
        Service::Order,
        Service::Payment,
        Service::Inventory,
        Service::Fulfillment,
        Service::Dispatch,
    ];

    /// The service's name: `"order"`, `"payment"`, …
    pub const fn as_str(self) -> &'static str {
        match self {
            Service::Order => "order",
            Service::Payment => "payment",
            Service::Inventory => "inventory",
            Service::Fulfillment => "fulfillment",
            Service::Dispatch => "dispatch",
        }
    }

    /// The CloudEvents `source` attribute: `"/jwl/order"`, `"/jwl/payment"`, …
    pub const fn source(self) -> &'static str {
        match self {
            Service::Order => "/jwl/order",
            Service::Payment => "/jwl/payment",
            Service::Inventory => "/jwl/inventory",
            Service::Fulfillment => "/jwl/fulfillment",
            Service::Dispatch => "/jwl/dispatch",
        }
    }

    /// The service named `name` (`"order"`, …).
    pub fn parse(name: &str) -> Option<Service> {
        Service::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The service whose CloudEvents `source` is `source` (`"/jwl/order"`, …).
    pub fn from_source(source: &str) -> Option<Service> {
        Service::ALL.into_iter().find(|s| s.source() == source)
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of the catalogue's services or event types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind}: {name:?}")]
pub struct UnknownName {
    pub kind: &'static str,
    pub name: String,
}

impl FromStr for Service {
    type Err = UnknownName;
    fn from_str(name: &str) -> Result<Self, UnknownName> {
        Service::parse(name).ok_or_else(|| UnknownName {
            kind: "service",
            name: name.to_owned(),
        })
    }
}

/// Every event type in the catalogue. The wire name (CloudEvents `type`) is [`EventType::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventType {
    OrderCreated,
    OrderCancelRequested,
    PaymentAuthorized,
    PaymentDeclined,
    PaymentCaptured,
    PaymentVoided,
    InventoryReserved,
    InventoryRejected,
    InventoryReleased,
    WaybillCreated,
    WaybillCancelled,
    CourierAssigned,
    DispatchFailed,
    Delivered,
}

impl EventType {
    /// Every event type, grouped by emitter.
    pub const ALL: [EventType; 14] = [
        EventType::OrderCreated,
        EventType::OrderCancelRequested,
        EventType::PaymentAuthorized,
        EventType::PaymentDeclined,
        EventType::PaymentCaptured,
        EventType::PaymentVoided,
        EventType::InventoryReserved,
        EventType::InventoryRejected,
        EventType::InventoryReleased,
        EventType::WaybillCreated,
        EventType::WaybillCancelled,
        EventType::CourierAssigned,
        EventType::DispatchFailed,
        EventType::Delivered,
    ];

    /// The schema version every type currently has (see `docs/events.md`, "Versioning").
    pub const SCHEMA_VERSION: u32 = SCHEMA_VERSION;

    /// The CloudEvents `type`: `"jwl.order.created"`, `"jwl.dispatch.courier_assigned"`, …
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::OrderCreated => "jwl.order.created",
            EventType::OrderCancelRequested => "jwl.order.cancel_requested",
            EventType::PaymentAuthorized => "jwl.payment.authorized",
            EventType::PaymentDeclined => "jwl.payment.declined",
            EventType::PaymentCaptured => "jwl.payment.captured",
            EventType::PaymentVoided => "jwl.payment.voided",
            EventType::InventoryReserved => "jwl.inventory.reserved",
            EventType::InventoryRejected => "jwl.inventory.rejected",
            EventType::InventoryReleased => "jwl.inventory.released",
            EventType::WaybillCreated => "jwl.fulfillment.waybill_created",
            EventType::WaybillCancelled => "jwl.fulfillment.waybill_cancelled",
            EventType::CourierAssigned => "jwl.dispatch.courier_assigned",
            EventType::DispatchFailed => "jwl.dispatch.failed",
            EventType::Delivered => "jwl.dispatch.delivered",
        }
    }

    /// The type without the `jwl.` prefix, as used in NATS subjects: `"order.created"`.
    pub fn subject_token(self) -> &'static str {
        let name = self.as_str();
        name.strip_prefix("jwl.").unwrap_or(name)
    }

    /// The type whose wire name is `name`.
    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The only service allowed to emit this type.
    pub const fn emitter(self) -> Service {
        match self {
            EventType::OrderCreated | EventType::OrderCancelRequested => Service::Order,
            EventType::PaymentAuthorized
            | EventType::PaymentDeclined
            | EventType::PaymentCaptured
            | EventType::PaymentVoided => Service::Payment,
            EventType::InventoryReserved
            | EventType::InventoryRejected
            | EventType::InventoryReleased => Service::Inventory,
            EventType::WaybillCreated | EventType::WaybillCancelled => Service::Fulfillment,
            EventType::CourierAssigned | EventType::DispatchFailed | EventType::Delivered => {
                Service::Dispatch
            }
        }
    }

    /// The payload schema version this build emits and accepts for this type.
    pub const fn schema_version(self) -> u32 {
        Self::SCHEMA_VERSION
    }

    /// The CloudEvents `dataschema`: `"urn:jwl:schema:jwl.order.created:v1"`.
    pub fn dataschema(self) -> String {
        format!(
            "urn:jwl:schema:{}:v{}",
            self.as_str(),
            self.schema_version()
        )
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = UnknownName;
    fn from_str(name: &str) -> Result<Self, UnknownName> {
        EventType::parse(name).ok_or_else(|| UnknownName {
            kind: "event type",
            name: name.to_owned(),
        })
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_unique_and_parse_back() {
        let mut names: Vec<_> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), EventType::ALL.len());
        for ty in EventType::ALL {
            assert_eq!(EventType::parse(ty.as_str()), Some(ty));
            assert_eq!(ty.to_string().parse::<EventType>().unwrap(), ty);
            assert!(
                ty.as_str()
                    .starts_with(&format!("jwl.{}.", ty.emitter().as_str()))
            );
        }
        assert_eq!(EventType::parse("jwl.order.shipped"), None);
    }

    #[test]
    fn subject_token_and_dataschema() {
        assert_eq!(
            EventType::WaybillCreated.subject_token(),
            "fulfillment.waybill_created"
        );
        assert_eq!(
            EventType::OrderCreated.dataschema(),
            "urn:jwl:schema:jwl.order.created:v1"
        );
    }

    #[test]
    fn services_round_trip_through_name_and_source() {
        for service in Service::ALL {
            assert_eq!(Service::parse(service.as_str()), Some(service));
            assert_eq!(Service::from_source(service.source()), Some(service));
            assert_eq!(service.source(), format!("/jwl/{service}"));
            let json = serde_json::to_string(&service).unwrap();
            assert_eq!(json, format!("\"{}\"", service.as_str()));
        }
        assert_eq!("billing".parse::<Service>().unwrap_err().name, "billing");
    }

    #[test]
    fn event_type_serialises_as_wire_name() {
        let json = serde_json::to_string(&EventType::DispatchFailed).unwrap();
        assert_eq!(json, "\"jwl.dispatch.failed\"");
        assert_eq!(
            serde_json::from_str::<EventType>(&json).unwrap(),
            EventType::DispatchFailed
        );
        assert!(serde_json::from_str::<EventType>("\"jwl.nope\"").is_err());
    }
}
