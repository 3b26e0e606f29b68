//! `jwl-outbox`: reliable messaging for Jiangwanli services.
//!
//! - [`migrate`] creates the `outbox`, `inbox`, `dead_letter_holds` and `parked_messages` tables
//!   (and the relay's partition bookkeeping) in the pool's schema;
//! - [`enqueue`] writes an event to the outbox inside the caller's transaction, and
//!   [`RelaySignal::committed_rows`] (or [`RelaySignal::committed`]) tells the relay after the
//!   commit — the rows are then usually published at once, without a claim (the relay's
//!   hand-over), else the relay is woken;
//! - the relay publishes outbox rows to the broker in order, split into partitions by order (one
//!   active relay per partition of a schema, shared out between a service's replicas);
//!   a row the broker rejects for good is parked, counted, listed and un-parked by [`parked_rows`];
//! - [`order_holds`] reads what a service holds back of one order (its dead-letter holds, the
//!   messages parked behind them, its parked outbox rows) for the operator;
//! - the consumer loop feeds events to a [`Handler`], deduplicated by the inbox, in batches of
//!   one transaction (a few statements per batch in the common case, a savepoint per message
//!   after a failure), with retries and dead letters; a dead letter
//!   holds its (consumer, order), whose later events are parked until the hold is released;
//! - each service also consumes its replay channel (`jwl.replay.<service>.>`): replayed events
//!   (inbox or rerun mode), redriven dead letters and `release` control messages;
//! - [`process_one`] runs the exact inbox + handler + outbox path without a broker, and
//!   [`process_batch`] the same for a handler's batch way;
//! - [`FaultPoints`] (off by default) inject crashes and transient failures for tests;
//! - [`trace_context`] carries the W3C `traceparent` from the span that emits an event to the
//!   `handle_event` spans of its consumers (and links the relay's publish spans to the rows);
//! - [`stall`] bounds database work, so a connection that stopped answering (half-open) costs a
//!   timeout, never a hang;
//! - [`protocol`] defines the dead-letter and replay channel formats, which the operator tools
//!   (`jwl-ops`) speak too;
//! - [`transport`] holds the broker traits and their implementations over NATS JetStream and
//!   Kafka.
//!
//! [`Messaging`] ties these together for a service process.

mod consumer;
mod enqueue;
mod error;
mod faults;
mod handler;
mod inbox;
mod messaging;
mod metrics;
mod naming;
pub mod order_holds;
pub mod parked_rows;
pub mod protocol;
pub mod relay;
mod schema;
mod settings;
pub mod stall;
pub mod trace_context;
pub mod transport;

pub use enqueue::{enqueue, enqueue_all, notify_channel};
pub use error::OutboxError;
pub use faults::{FaultPoints, InvalidTransientFault, TransientFault};
pub use handler::{
    BatchContext, BatchHandler, BoxError, Handler, HandlerContext, HandlerError, each_order_once,
};
pub use inbox::{Processed, process_batch, process_one};
pub use messaging::Messaging;
pub use naming::{consumer_service, durable_name, events_durable};
pub use relay::{Enqueued, RelaySignal};
pub use schema::{migrate, migrate_with};
pub use settings::{MAX_OUTBOX_PARTITIONS, MessagingSettings};
pub use transport::TransportError;
pub use transport::kafka::{KafkaBroker, KafkaSettings};
pub use transport::nats::JetStreamBroker;
