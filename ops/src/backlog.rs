//! [`consumers`]: every durable consumer of the events stream with what it has not yet handled
//! (the console's live figures).

use async_nats::jetstream::Context;
use futures::TryStreamExt;
use jwl_outbox::MessagingSettings;
use serde::Serialize;

use crate::error::{OpsError, open_stream};

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
    jetstream: &Context,
    settings: &MessagingSettings,
) -> Result<Vec<ConsumerBacklog>, OpsError> {
    let stream_name = settings.events_stream.as_str();
    let stream_error = OpsError::on_stream(stream_name);
    let stream = open_stream(jetstream, stream_name).await?;
    let infos: Vec<_> = stream
        .consumers()
        .try_collect()
        .await
        .map_err(|error| stream_error(error.into()))?;
    let mut backlogs: Vec<ConsumerBacklog> = infos
        .into_iter()
        .filter_map(|info| {
            let name = info.config.durable_name.clone()?;
            Some(ConsumerBacklog {
                name,
                pending: info.num_pending,
                ack_pending: info.num_ack_pending as u64,
                redelivered: info.num_redelivered as u64,
            })
        })
        .collect();
    backlogs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(backlogs)
}
