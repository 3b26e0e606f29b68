//! Process-wide tracing setup: JSON lines when stdout is not a terminal (containers, files),
//! human-readable output when it is; level filter from `RUST_LOG` (default `info`), applied to
//! the output layer rather than globally so other layers (e.g. OpenTelemetry) still see spans.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Installs the global subscriber for the process running `service` (`"order"`, `"jwl"` for
/// `jwl up`, …). A second call (or a subscriber installed elsewhere) is left in place.
pub fn init(service: &str) {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let output = if std::io::stdout().is_terminal() {
        tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_filter(filter())
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter())
            .boxed()
    };
    if tracing_subscriber::registry()
        .with(output)
        .try_init()
        .is_ok()
    {
        tracing::info!(
            service,
            version = env!("CARGO_PKG_VERSION"),
            "telemetry initialised"
        );
    }
}
