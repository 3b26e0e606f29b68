//! [`DispatchError`]: what can go wrong below the handler and the routes, and how each becomes
//! a [`HandlerError`] (retry or dead-letter) or an [`ApiError`] (problem details).

use jwl_events::CourierId;
use jwl_outbox::{HandlerError, OutboxError};
use jwl_service_kit::ApiError;

use crate::domain::InvalidPosition;

/// Errors of dispatch's store, assignment and timer code.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("outbox: {0}")]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Position(#[from] InvalidPosition),
    /// A stored value that the schema's constraints should have made impossible.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Adding waybills would have exceeded the courier's capacity (the update was refused, so
    /// nothing was over-assigned; the transaction must be rolled back).
    #[error("courier {0} has no capacity left")]
    CapacityExceeded(CourierId),
    /// Every courier tried for a waybill was taken by other transactions in the meantime; the
    /// search gave up after this many (the transaction must be rolled back and retried).
    #[error("{0} couriers in a row were taken concurrently")]
    Contended(usize),
}

impl From<DispatchError> for HandlerError {
    fn from(error: DispatchError) -> Self {
        match error {
            DispatchError::Database(error) => HandlerError::from(error),
            transient @ (DispatchError::Outbox(_)
            | DispatchError::CapacityExceeded(_)
            | DispatchError::Contended(_)) => HandlerError::transient(transient),
            permanent @ (DispatchError::Position(_) | DispatchError::Corrupt(_)) => {
                HandlerError::permanent(permanent.to_string())
            }
        }
    }
}

impl From<DispatchError> for ApiError {
    fn from(error: DispatchError) -> Self {
        match error {
            DispatchError::Database(error)
            | DispatchError::Outbox(OutboxError::Database(error)) => ApiError::from(error),
            other => ApiError::internal(other),
        }
    }
}
