//! [`consumers`]: every durable consumer of the events stream with what it has not yet handled
//! (the console's live figures).

use jwl_outbox::MessagingSettings;
use jwl_outbox::transport::History;
use serde::Serialize;

use crate::error::OpsError;

/// One durable consumer's backlog, as the broker reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsumerBacklog {
    /// The durable name, e.g. `payment__events`.
    pub name: String,
    /// Messages on its subjects it has not been delivered yet.
    pub pending: u64,
    /// Delivered, not acknowledged yet.
    pub ack_pending: u64,
    /// Delivered more than once and not acknowledged yet.
    pub redelivered: u64,
}

/// Every durable consumer of the events stream, by name.
pub async fn consumers(
    history: &dyn History,
    settings: &MessagingSettings,
) -> Result<Vec<ConsumerBacklog>, OpsError> {
    Ok(history
        .consumer_backlogs(settings)
        .await?
        .into_iter()
        .map(|named| ConsumerBacklog {
            name: named.name,
            pending: named.backlog.pending,
            ack_pending: named.backlog.ack_pending,
            redelivered: named.backlog.redelivered,
        })
        .collect())
}
