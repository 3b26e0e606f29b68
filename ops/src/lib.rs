//! `jwl-ops`: the operator's tools over the broker, used by the `jwl` CLI and the console.
//!
//! - [`OrderHistory::read`] — every event of one order, read by subject from `JWL_EVENTS`
//!   (`jwl saga show`), plus that order's dead letters from `JWL_DLQ`;
//! - [`replay::read`] — the events a [`Selection`] picks (by order, type, time, sequence), read
//!   with the narrowest subject filters and start position (`jwl replay`, printing only);
//! - [`dead_letters::list`] / [`dead_letters::show`] — the dead-letter stream (`jwl dlq ls|show`);
//! - [`backlog::consumers`] — every durable consumer's backlog on the events stream (the
//!   console's live figures);
//! - [`redelivery`] — replay messages to one service's replay channel and dead-letter
//!   resolution (`jwl replay --to`, `jwl dlq redrive|discard`).
//!
//! Every read goes through ephemeral ordered consumers, one per subject filter, and stops at
//! the stream's last sequence. An order's events are read on their literal subjects
//! (`jwl.evt.<order>.<type>`, one consumer per catalogue type), which the server finds through
//! its per-subject index: the time does not grow with the events stream (measured on
//! nats-server 2.9.10: ~6 ms for one order at 10,000 and at 1,000,000 events, where a wildcard
//! `jwl.evt.<order>.>` consumer took 0.6 s at 1,000,000). Results are plain data (serde
//! `Serialize` for `--json`); [`render`] turns them into tables. Works on nats-server 2.9 and
//! newer (one filter subject per consumer).

mod domain;
mod error;
mod history;
mod model;
mod reader;

pub mod backlog;
pub mod dead_letters;
pub mod redelivery;
pub mod render;
pub mod replay;

pub use domain::{
    DeadLetterAction, DeadLetterFilter, DeadLetterOutcome, DeadLetterReason, ReplayMessage,
    ReplayMode, ReplayOrigin, Selection, TERMINAL_STATUSES, consumer_service, next_services,
    release_message, replay_types, summarize,
};
pub use error::OpsError;
pub use history::OrderHistory;
pub use model::{
    DeadLetterDetail, DeadLetterEntry, DecodedEvent, EntryEvent, EventEntry, UndecodableMessage,
};
