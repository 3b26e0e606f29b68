//! [`OpsError`]: why an operator read or write failed.

use jwl_outbox::{BoxError, TransportError};

/// A failed read or write of the broker, or a filter or message the tools cannot act on.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The broker could not be read (a stream missing or unavailable, a read failing part way).
    #[error(transparent)]
    Broker(#[from] TransportError),
    /// `jwl dlq show` of a sequence the dead-letter stream does not hold.
    #[error("no dead letter at sequence {seq} in {stream}")]
    DeadLetterNotFound { stream: String, seq: u64 },
    /// A filter value that cannot be used (e.g. a consumer name with a `.`).
    #[error("invalid filter: {0}")]
    InvalidFilter(String),
    /// A stored message that cannot be re-delivered (no valid order or event type).
    #[error("{origin} cannot be replayed: {why}")]
    NotReplayable { origin: String, why: String },
    /// Publishing to the broker failed.
    #[error("publishing to {subject}: {source}")]
    Publish { subject: String, source: BoxError },
}
