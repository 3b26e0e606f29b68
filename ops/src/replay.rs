//! `jwl replay`: the events a [`Selection`] picks from the events stream, in stream order
//! (printing only; re-delivery is not done here).

use async_nats::jetstream::Context;
use jwl_outbox::MessagingSettings;

pub use crate::domain::Selection;
use crate::domain::event_entry;
use crate::error::OpsError;
use crate::model::EventEntry;
use crate::reader::{Range, read_range};

/// Reads the selected events: one ephemeral consumer per subject filter of
/// [`Selection::subject_filters`], each starting by sequence (`from_seq`) or time (`since`)
/// and ending at `to_seq`/`until`/the stream's last sequence, merged in stream order.
pub async fn read(
    jetstream: &Context,
    settings: &MessagingSettings,
    selection: &Selection,
) -> Result<Vec<EventEntry>, OpsError> {
    let range = Range {
        stream: &settings.events_stream,
        filters: selection.subject_filters(),
        start: selection.start(),
        bounds: selection.bounds(),
        limit: selection.limit,
    };
    let messages = read_range(jetstream, range, |message| {
        selection.keeps(message.stored_at)
    })
    .await?;
    Ok(messages.into_iter().map(event_entry).collect())
}
