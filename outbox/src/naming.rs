//! Names derived from services and event types: the inbox consumer name of each (service, event
//! type), which dead letters and holds also use, and the one durable broker consumer per service
//! that reads all of a service's event types.

use jwl_events::{EventType, Service};

/// The consumer name of `service` for events of type `ty` (its inbox rows, dead letters and
/// holds): `<service>__<type without "jwl." with '.' as '_'>`, e.g. `payment__order_created`.
/// Before one broker consumer read all of a service's types, it was also the durable name.
pub fn durable_name(service: Service, ty: EventType) -> String {
    let ty = ty.as_str();
    let ty = ty.strip_prefix("jwl.").unwrap_or(ty);
    let mut name = String::with_capacity(service.as_str().len() + 2 + ty.len());
    name.push_str(service.as_str());
    name.push_str("__");
    name.extend(ty.chars().map(|c| if c == '.' { '_' } else { c }));
    name
}

/// The service that owns the inbox consumer `consumer` (`<service>__<type>`, see
/// [`durable_name`]), e.g. payment for `payment__order_created`.
pub fn consumer_service(consumer: &str) -> Option<Service> {
    consumer
        .split_once("__")
        .and_then(|(service, _)| Service::parse(service))
}

/// The durable broker consumer of `service` on the events stream, filtered to every event type
/// it subscribes to: `<service>__events`.
pub fn events_durable(service: Service) -> String {
    format!("{}__events", service.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_names_follow_the_documented_shape() {
        assert_eq!(
            durable_name(Service::Payment, EventType::OrderCreated),
            "payment__order_created"
        );
        assert_eq!(
            durable_name(Service::Dispatch, EventType::WaybillCreated),
            "dispatch__fulfillment_waybill_created"
        );
    }

    #[test]
    fn consumer_names_name_their_service() {
        for service in Service::ALL {
            for ty in EventType::ALL {
                assert_eq!(consumer_service(&durable_name(service, ty)), Some(service));
            }
        }
        assert_eq!(consumer_service("nobody__order_created"), None);
        assert_eq!(consumer_service("payment"), None);
    }

    #[test]
    fn durable_names_are_valid_nats_names() {
        for ty in EventType::ALL {
            let name = durable_name(Service::Order, ty);
            assert!(!name.contains(['.', '*', '>', ' ']), "{name}");
        }
    }
}
