//! The crate's error type.

use crate::handler::HandlerError;
use crate::transport::TransportError;

/// Errors returned by the outbox, relay, inbox and consumer APIs.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("broker: {0}")]
    Transport(#[from] TransportError),
    /// The handler refused the event (only from [`process_one`](crate::process_one)).
    #[error("handler: {0}")]
    Handler(#[from] HandlerError),
    #[error("invalid messaging settings: {0}")]
    InvalidSettings(String),
    /// A messaging task panicked or was aborted.
    #[error("messaging task failed: {0}")]
    Task(String),
}
