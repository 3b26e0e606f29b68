//! Who consumes what: the one table of the event types each service's handler subscribes to.
//! The services' handlers declare their subscriptions from it (`SUBSCRIPTIONS` of each service
//! crate), and the operator tools derive from it which services act on an event
//! (`jwl saga stuck`, `jwl replay --to`), so the two cannot drift apart.

use super::kinds::{EventType, Service};

impl Service {
    /// The event types this service's handler consumes (its one durable consumer of the events
    /// stream filters on them). The order service's are the read model's: it records every
    /// event of an order's timeline but moves no saga on.
    pub const fn subscriptions(self) -> &'static [EventType] {
        match self {
            Service::Order => &[
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
            ],
            Service::Payment => &[
                EventType::OrderCreated,
                EventType::CourierAssigned,
                EventType::InventoryRejected,
                EventType::DispatchFailed,
            ],
            Service::Inventory => &[
                EventType::PaymentAuthorized,
                EventType::DispatchFailed,
                EventType::PaymentCaptured,
            ],
            Service::Fulfillment => &[
                EventType::InventoryReserved,
                EventType::DispatchFailed,
                EventType::CourierAssigned,
                EventType::Delivered,
            ],
            Service::Dispatch => &[EventType::WaybillCreated, EventType::OrderCancelRequested],
        }
    }
}

impl EventType {
    /// Every service whose handler consumes this type, in [`Service::ALL`] order.
    pub fn consumers(self) -> Vec<Service> {
        Service::ALL
            .into_iter()
            .filter(|service| service.subscriptions().contains(&self))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_are_the_services_subscribing() {
        assert_eq!(
            EventType::OrderCancelRequested.consumers(),
            [Service::Dispatch]
        );
        assert_eq!(
            EventType::DispatchFailed.consumers(),
            [
                Service::Order,
                Service::Payment,
                Service::Inventory,
                Service::Fulfillment
            ]
        );
        assert!(
            EventType::OrderCreated
                .consumers()
                .contains(&Service::Payment)
        );
    }

    #[test]
    fn no_service_consumes_its_own_events_or_a_type_twice() {
        for service in Service::ALL {
            let subscriptions = service.subscriptions();
            for (i, ty) in subscriptions.iter().enumerate() {
                assert_ne!(ty.emitter(), service, "{service} consumes its own {ty}");
                assert!(
                    !subscriptions[i + 1..].contains(ty),
                    "{service}: {ty} twice"
                );
            }
        }
    }
}
