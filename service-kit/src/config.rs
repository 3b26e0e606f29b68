//! Business tunables shared by the services (deadlines, dispatch radius, courier capacity,
//! ingest limits, the card processor and its circuit breaker, the console's peers).
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
    /// Where the order service's console reads the other services' state of an order
    /// (`JWL_CONSOLE_PEERS`).
    pub console_peers: ConsolePeers,
}

/// The base URLs of the services whose admin read routes the console calls, each optional
/// (unset: the console says so instead of showing that service's state).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsolePeers {
    pub payment: Option<String>,
    pub inventory: Option<String>,
    pub fulfillment: Option<String>,
    pub dispatch: Option<String>,
}

impl ConsolePeers {
    /// All four at one base URL (`jwl up`, which serves every route on one listener).
    pub fn all_at(base_url: &str) -> Self {
        let url = || Some(base_url.trim_end_matches('/').to_owned());
        Self {
            payment: url(),
            inventory: url(),
            fulfillment: url(),
            dispatch: url(),
        }
    }

    /// Parses `service=base_url,…` (services `payment`, `inventory`, `fulfillment`,
    /// `dispatch`, each at most once; URLs `http://` or `https://`). Empty: none.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut peers = Self::default();
        for item in text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            let (service, url) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not service=base_url"))?;
            let (service, url) = (service.trim(), url.trim().trim_end_matches('/'));
            let host = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"));
            if host.is_none_or(str::is_empty) {
                return Err(format!(
                    "{url:?} (for {service}) is not an http:// or https:// base URL"
                ));
            }
            let slot = match service {
                "payment" => &mut peers.payment,
                "inventory" => &mut peers.inventory,
                "fulfillment" => &mut peers.fulfillment,
                "dispatch" => &mut peers.dispatch,
                other => {
                    return Err(format!(
                        "unknown service {other:?} (payment, inventory, fulfillment or dispatch)"
                    ));
                }
            };
            if slot.replace(url.to_owned()).is_some() {
                return Err(format!("{service} is given twice"));
            }
        }
        Ok(peers)
    }
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
            console_peers: ConsolePeers::default(),
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
        assert_eq!(s.console_peers, ConsolePeers::default());
    }

    #[test]
    fn console_peers_parse_and_refuse_what_they_cannot_use() {
        let peers = ConsolePeers::parse(
            "payment=http://pay:8080/, inventory=https://inv,dispatch=http://d",
        )
        .unwrap();
        assert_eq!(peers.payment.as_deref(), Some("http://pay:8080"));
        assert_eq!(peers.inventory.as_deref(), Some("https://inv"));
        assert_eq!(peers.fulfillment, None);
        assert_eq!(peers.dispatch.as_deref(), Some("http://d"));
        assert_eq!(ConsolePeers::parse("").unwrap(), ConsolePeers::default());
        for bad in [
            "payment",
            "order=http://o",
            "payment=pay:8080",
            "payment=http://",
            "payment=http://a,payment=http://b",
        ] {
            assert!(ConsolePeers::parse(bad).is_err(), "{bad}");
        }
    }
}
