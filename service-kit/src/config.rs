//! Business tunables shared by the services (deadlines, dispatch radius, courier capacity,
//! ingest limits, the card processor and its circuit breaker).
//!
//! The CLI fills these from flags / `JWL_*` variables; the defaults match the documented ones.

use std::time::Duration;

use crate::breaker::BreakerSettings;
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
    /// The card processor payment calls (`JWL_PROCESSOR_*`).
    pub processor: ProcessorSettings,
}

/// The card processor: how long a call may take, the faults its simulator stages from the
/// start, and its circuit breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessorSettings {
    /// Past this, a call is given up as failed (`JWL_PROCESSOR_TIMEOUT`).
    pub timeout: Duration,
    /// Share of calls the simulator fails (`JWL_PROCESSOR_ERROR_RATE`).
    pub error_rate: f64,
    /// Share of calls the simulator never answers (`JWL_PROCESSOR_TIMEOUT_RATE`).
    pub timeout_rate: f64,
    /// Time each simulated call takes (`JWL_PROCESSOR_LATENCY`).
    pub latency: Duration,
    /// Factor on that time (`JWL_PROCESSOR_SLOWDOWN`).
    pub slowdown: f64,
    /// The breaker in front of it (`JWL_PROCESSOR_BREAKER_*`).
    pub breaker: BreakerSettings,
}

impl Default for ProcessorSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            error_rate: 0.0,
            timeout_rate: 0.0,
            latency: Duration::ZERO,
            slowdown: 1.0,
            breaker: BreakerSettings::default(),
        }
    }
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
            processor: ProcessorSettings::default(),
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
