//! `jwl-ops`: the operator's tools over the broker, used by the `jwl` CLI and the console.
//! They see the broker only through the broker-neutral read contract
//! [`jwl_outbox::transport::History`] (and its [`Publisher`](jwl_outbox::transport::Publisher)),
//! and speak the dead-letter and replay formats of [`jwl_outbox::protocol`]:
//!
//! - [`OrderHistory::read`] — every event of one order from the events stream (`jwl saga
//!   show`), plus that order's dead letters from the dead-letter stream;
//! - [`replay::read`] — the events a [`Selection`] picks (by order, type, time, sequence)
//!   (`jwl replay`, printing only);
//! - [`dead_letters::list`] / [`dead_letters::show`] — the dead-letter stream (`jwl dlq ls|show`);
//! - [`backlog::consumers`] — every durable consumer's backlog on the events stream (the
//!   console's live figures);
//! - [`redelivery`] — replay messages to one service's replay channel and dead-letter
//!   resolution (`jwl replay --to`, `jwl dlq redrive|discard`);
//! - [`next_services`] — who should act on an order's last event (`jwl saga stuck`), from the
//!   catalogue's table of who consumes what.
//!
//! Every read stops at the stream's last position when it started. How the broker finds an
//! order's events fast is its own business (on JetStream: ephemeral ordered consumers on the
//! literal subjects of the order's events, so the time follows the order's message count, not
//! the events stream's size; see `jwl_outbox::transport::nats`). Results are plain data (serde
//! `Serialize` for `--json`); [`render`] turns them into tables.

mod domain;
mod error;
mod history;
mod model;

pub mod backlog;
pub mod dead_letters;
pub mod redelivery;
pub mod render;
pub mod replay;

pub use domain::{
    DeadLetterAction, DeadLetterFilter, DeadLetterOutcome, ReplayMessage, Selection,
    TERMINAL_STATUSES, next_services, release_message, replay_types, summarize,
};
pub use error::OpsError;
pub use history::OrderHistory;
pub use jwl_outbox::consumer_service;
pub use jwl_outbox::protocol::dead_letter::DeadLetterReason;
pub use jwl_outbox::protocol::replay::{ReplayMode, ReplayOrigin};
pub use model::{
    DeadLetterDetail, DeadLetterEntry, DecodedEvent, EntryEvent, EventEntry, UndecodableMessage,
};
