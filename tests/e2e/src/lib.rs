//! End-to-end test harness for Jiangwanli: the five services run as separate `jwl serve <name>`
//! processes against a private `nats-server -js` (or, with [`BrokerKind::Kafka`], a private
//! tansu) and a fresh PostgreSQL database, exactly as in production, and the tests talk to them
//! over HTTP only.
//!
//! * [`System::start`] — the broker, a database, the five services (each on a free port, tied to the
//!   test process so they die with it, logging to `<log dir>/<service>.log`; the log directory
//!   is printed at start and kept; tails are printed when a test fails, see [`with_system`] and
//!   [`System::dump_logs_tail`]).
//!   [`System::service`] gives each [`ServiceProcess`] with [`ServiceProcess::kill`] (SIGKILL)
//!   and [`ServiceProcess::restart`] for failure injection; [`System::restart_broker`] and
//!   [`System::kill_broker`] take the broker down, whichever it is.
//! * [`Tokens`] — HS256 bearer tokens for customers, couriers and an admin.
//! * [`ApiClient`] — typed calls (orders, stock, payments, waybills, couriers); every reply is
//!   checked for `X-Request-ID`.
//! * [`System::check_invariants`] — waits until the system is quiet, then checks the README's invariants (How delivery is guaranteed)
//!   (terminal orders, money, stock, courier capacity, outboxes vs the stream, empty DLQ) and
//!   returns the [`Outcomes`]. What it reads from the broker goes through the transport's
//!   broker-neutral `History` ([`broker::Broker`]), so the same checks hold on both brokers.
//! * [`Proxy`] — a TCP proxy on one service's NATS or PostgreSQL connection
//!   ([`SystemOptions::proxied`], [`System::proxy`]) to cut and restore that path.
//! * [`otlp::OtlpReceiver`] — an OTLP/HTTP JSON trace receiver to point the services'
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` at.
//!
//! The `jwl` binary is taken from `$JWL_BIN`, else from the cargo target directory next to the
//! test executable: build it first with `cargo build --bins`.

pub mod api;
mod audit;
pub mod binary;
pub mod broker;
pub mod geo;
pub mod invariants;
pub mod otlp;
pub mod process;
pub mod proxy;
pub mod store;
mod system;
pub mod tokens;

pub use api::{ApiClient, Call, LineItem, NewOrder, OrderStatus, OrderView, PaymentStatus, Reply};
pub use geo::Point;
pub use invariants::{Injected, Outcomes, PlacedOrder, Verdict};
pub use jwl_events::Service;
pub use jwl_testkit::eventually;
pub use process::{MetricsPage, ServiceProcess};
pub use proxy::{Cut, Link, Proxy};
pub use system::{BrokerKind, System, SystemOptions, with_system};
pub use tokens::Tokens;
