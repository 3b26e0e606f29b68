//! `jwl replay`: the events a [`Selection`] picks from the events stream, in stream order
//! (printing only; re-delivery is not done here).

use jwl_outbox::MessagingSettings;
use jwl_outbox::transport::History;

pub use crate::domain::Selection;
use crate::domain::event_entry;
use crate::error::OpsError;
use crate::model::EventEntry;

/// Reads the selected events ([`Selection::query`]), each read starting by sequence
/// (`from_seq`) or time (`since`) and ending at `to_seq`/`until`/the stream's last sequence,
/// in stream order.
pub async fn read(
    history: &dyn History,
    settings: &MessagingSettings,
    selection: &Selection,
) -> Result<Vec<EventEntry>, OpsError> {
    let keep = |message: &jwl_outbox::transport::StoredMessage| selection.keeps(message.stored_at);
    let messages = history
        .read_events(settings, &selection.query(), &keep)
        .await?;
    Ok(messages.into_iter().map(event_entry).collect())
}
