//! [`EventData`]: one enum over all payloads, so an event's type follows from its data.

use serde::Serialize;

use super::kinds::EventType;
use super::payloads::*;
use crate::ids::OrderId;

/// Declares `EventData` with one variant per payload, named like the payload's [`EventType`]
/// variant, plus everything that needs one arm per variant.
macro_rules! event_data {
    ($($variant:ident),+ $(,)?) => {
        /// The payload of any event. The variant determines the event type.
        ///
        /// Serialises as the bare payload (no tag): the type travels in the envelope.
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(untagged)]
        pub enum EventData {
            $($variant($variant),)+
        }

        impl EventData {
            /// The event type this payload belongs to.
            pub fn event_type(&self) -> EventType {
                match self {
                    $(EventData::$variant(_) => EventType::$variant,)+
                }
            }

            /// The order this event is about.
            pub fn order_id(&self) -> OrderId {
                match self {
                    $(EventData::$variant(payload) => payload.order_id,)+
                }
            }

            /// Parses JSON `data` of type `ty`. Unknown fields are ignored; missing fields and
            /// wrong types are errors. Does not run [`EventData::validate`].
            pub fn from_json(ty: EventType, json: &[u8]) -> Result<EventData, serde_json::Error> {
                Ok(match ty {
                    $(EventType::$variant => EventData::$variant(serde_json::from_slice(json)?),)+
                })
            }

            pub(crate) fn validate_payload(&self) -> Result<(), super::validate::ValidationError> {
                match self {
                    $(EventData::$variant(payload) => payload.validate(),)+
                }
            }
        }

        $(
            impl From<$variant> for EventData {
                fn from(payload: $variant) -> Self {
                    EventData::$variant(payload)
                }
            }
        )+
    };
}

event_data!(
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
);

impl EventData {
    /// The payload as JSON bytes (the wire `data`).
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising these plain structs cannot fail: no maps with non-string keys, no
        // fallible custom serialisers. A NaN `distance_km` would become `null`, which
        // `validate` rejects before anything is emitted.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Checks the payload's invariants (see `docs/events.md`): item lists, quantities,
    /// prices, amounts, SKUs, coordinates, ids.
    pub fn validate(&self) -> Result<(), super::validate::ValidationError> {
        self.validate_payload()
    }
}
