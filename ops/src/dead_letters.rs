//! `jwl dlq ls|show`: the dead-letter stream, filtered by consumer, event type, reason, order
//! and age, and one dead letter in full.

use chrono::Utc;
use jwl_outbox::MessagingSettings;
use jwl_outbox::transport::{History, StoredMessage};

pub use crate::domain::DeadLetterFilter;
use crate::domain::{dead_letter_detail, dead_letter_entry};
use crate::error::OpsError;
use crate::model::{DeadLetterDetail, DeadLetterEntry};
pub use jwl_outbox::protocol::dead_letter::DeadLetterReason;

/// The dead letters `filter` selects, oldest first: read by consumer and order
/// ([`DeadLetterFilter::query`]), stopping at the first one newer than `older_than`. On
/// JetStream the read's subject has a wildcard for the consumer or the order, so the time
/// follows the dead-letter stream's size (which stays small next to the events stream).
pub async fn list(
    history: &dyn History,
    settings: &MessagingSettings,
    filter: &DeadLetterFilter,
) -> Result<Vec<DeadLetterEntry>, OpsError> {
    let query = filter.query(Utc::now())?;
    let keep = |message: &StoredMessage| filter.matches(&dead_letter_entry(message));
    let messages = history.read_dead_letters(settings, &query, &keep).await?;
    Ok(messages.iter().map(dead_letter_entry).collect())
}

/// The dead letter at `dlq_seq` in the dead-letter stream: headers, payload and metadata.
pub async fn show(
    history: &dyn History,
    settings: &MessagingSettings,
    dlq_seq: u64,
) -> Result<DeadLetterDetail, OpsError> {
    Ok(dead_letter_detail(fetch(history, settings, dlq_seq).await?))
}

/// The stored message at `dlq_seq` in the dead-letter stream.
pub(crate) async fn fetch(
    history: &dyn History,
    settings: &MessagingSettings,
    dlq_seq: u64,
) -> Result<StoredMessage, OpsError> {
    history
        .dead_letter(settings, dlq_seq)
        .await?
        .ok_or_else(|| OpsError::DeadLetterNotFound {
            stream: settings.dlq_stream.clone(),
            seq: dlq_seq,
        })
}
