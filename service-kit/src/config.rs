//! Business tunables shared by the services (deadlines, dispatch radius, courier capacity,
//! ingest limits).
//!
//! The CLI fills these from flags / `JWL_*` variables; the defaults match the documented ones.

use std::time::Duration;

use crate::http::IngestLimits;

/// Tunables every service may read from its [`crate::ServiceContext`].
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// How long an order may take from creation to courier assignment before it is cancelled
    /// with reason `deadline` (`JWL_ORDER_DEADLINE`).
    pub order_deadline: Duration,
    /// How long a waybill may wait for a courier before dispatch gives up (`JWL_DISPATCH_DEADLINE`).
    pub dispatch_deadline: Duration,
    /// The farthest a courier may be from the pickup point, in km (`JWL_DISPATCH_RADIUS_KM`).
    pub dispatch_radius_km: f64,
    /// Live waybills one courier may hold at once (`JWL_COURIER_CAPACITY`).
    pub courier_capacity: u32,
    /// How long an `Idempotency-Key` of `POST /v1/orders` is remembered (`JWL_IDEMPOTENCY_TTL`).
    pub idempotency_ttl: Duration,
    /// Backpressure on order intake (`JWL_INGEST_RATE`, `JWL_INGEST_BURST`,
    /// `JWL_INGEST_IN_FLIGHT`).
    pub ingest: IngestLimits,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            order_deadline: Duration::from_secs(5 * 60),
            dispatch_deadline: Duration::from_secs(60),
            dispatch_radius_km: 5.0,
            courier_capacity: 1,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            ingest: IngestLimits::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_configuration() {
        let s = Settings::default();
        assert_eq!(s.order_deadline, Duration::from_secs(300));
        assert_eq!(s.dispatch_deadline, Duration::from_secs(60));
        assert_eq!(s.dispatch_radius_km, 5.0);
        assert_eq!(s.courier_capacity, 1);
    }
}
