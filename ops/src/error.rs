//! [`OpsError`]: why an operator read failed.

use std::time::Duration;

/// A failed read of the broker, or a filter that cannot be expressed as a subject.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The stream does not exist or its info could not be fetched.
    #[error("stream {stream}: {source}")]
    Stream {
        stream: String,
        source: async_nats::Error,
    },
    /// The ephemeral consumer reading `filter` could not be created.
    #[error("creating a reader on {stream} for {filter}: {source}")]
    Consumer {
        stream: String,
        filter: String,
        source: async_nats::Error,
    },
    /// Receiving messages failed part way.
    #[error("reading {stream} ({filter}): {source}")]
    Read {
        stream: String,
        filter: String,
        source: async_nats::Error,
    },
    /// Messages were still pending but none arrived for `idle` (e.g. they expired meanwhile).
    #[error("reading {stream} ({filter}): no message for {idle:?} while {pending} were pending")]
    Stalled {
        stream: String,
        filter: String,
        idle: Duration,
        pending: u64,
    },
    /// `jwl dlq show` of a sequence the dead-letter stream does not hold.
    #[error("no dead letter at sequence {seq} in {stream}")]
    DeadLetterNotFound { stream: String, seq: u64 },
    /// A filter value that cannot be a subject token (e.g. a consumer name with a `.`).
    #[error("invalid filter: {0}")]
    InvalidFilter(String),
    /// A stored message that cannot be re-delivered (no valid order or event type).
    #[error("{origin} cannot be replayed: {why}")]
    NotReplayable { origin: String, why: String },
    /// Publishing to the broker failed.
    #[error("publishing to {subject}: {source}")]
    Publish {
        subject: String,
        source: async_nats::Error,
    },
    /// Deleting a message from a stream failed.
    #[error("deleting message {seq} from {stream}: {source}")]
    Delete {
        stream: String,
        seq: u64,
        source: async_nats::Error,
    },
}

impl OpsError {
    /// For `map_err`: a failure reading `stream`.
    pub(crate) fn on_stream(stream: &str) -> impl Fn(async_nats::Error) -> OpsError + '_ {
        move |source| OpsError::Stream {
            stream: stream.to_owned(),
            source,
        }
    }
}

/// `stream` without fetching its info (one request fewer); a failure is [`OpsError::Stream`].
pub(crate) async fn open_stream(
    jetstream: &async_nats::jetstream::Context,
    stream: &str,
) -> Result<async_nats::jetstream::stream::Stream<()>, OpsError> {
    jetstream
        .get_stream_no_info(stream)
        .await
        .map_err(|error| OpsError::on_stream(stream)(error.into()))
}
