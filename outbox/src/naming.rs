//! Names derived from services and event types (durable consumer names).

use jwl_events::{EventType, Service};

/// The durable consumer (and inbox consumer) name of `service` for events of type `ty`:
/// `<service>__<type without "jwl." with '.' as '_'>`, e.g. `payment__order_created`.
pub fn durable_name(service: Service, ty: EventType) -> String {
    let ty = ty.as_str();
    let ty = ty.strip_prefix("jwl.").unwrap_or(ty);
    let mut name = String::with_capacity(service.as_str().len() + 2 + ty.len());
    name.push_str(service.as_str());
    name.push_str("__");
    name.extend(ty.chars().map(|c| if c == '.' { '_' } else { c }));
    name
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
    fn durable_names_are_valid_nats_names() {
        for ty in EventType::ALL {
            let name = durable_name(Service::Order, ty);
            assert!(!name.contains(['.', '*', '>', ' ']), "{name}");
        }
    }
}
