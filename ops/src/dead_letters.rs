//! `jwl dlq ls|show`: the dead-letter stream, filtered by consumer, event type, reason, order
//! and age, and one dead letter in full.

use async_nats::jetstream::Context;
use async_nats::jetstream::stream::RawMessageErrorKind;
use chrono::Utc;
use jwl_outbox::MessagingSettings;

pub use crate::domain::{DeadLetterFilter, DeadLetterReason};
use crate::domain::{StartAt, dead_letter_detail, dead_letter_entry};
use crate::error::{OpsError, open_stream};
use crate::model::{DeadLetterDetail, DeadLetterEntry, StoredMessage};
use crate::reader::{Range, ToChrono, header_pairs, read_range};

/// The dead letters `filter` selects, oldest first: read by subject
/// ([`DeadLetterFilter::subject_filter`]), stopping at the first one newer than `older_than`.
/// The subject has a wildcard for the consumer or the order, so on nats-server 2.9 the time
/// follows the dead-letter stream's size (which stays small next to the events stream).
pub async fn list(
    jetstream: &Context,
    settings: &MessagingSettings,
    filter: &DeadLetterFilter,
) -> Result<Vec<DeadLetterEntry>, OpsError> {
    let range = Range {
        stream: &settings.dlq_stream,
        filters: vec![filter.subject_filter()?],
        start: StartAt::First,
        bounds: filter.bounds(Utc::now()),
        limit: filter.limit,
    };
    let messages = read_range(jetstream, range, |message| {
        filter.matches(&dead_letter_entry(message))
    })
    .await?;
    Ok(messages.iter().map(dead_letter_entry).collect())
}

/// The dead letter at `dlq_seq` in the dead-letter stream: headers, payload and metadata.
pub async fn show(
    jetstream: &Context,
    settings: &MessagingSettings,
    dlq_seq: u64,
) -> Result<DeadLetterDetail, OpsError> {
    Ok(dead_letter_detail(
        fetch(jetstream, settings, dlq_seq).await?,
    ))
}

/// The stored message at `dlq_seq` in the dead-letter stream.
pub(crate) async fn fetch(
    jetstream: &Context,
    settings: &MessagingSettings,
    dlq_seq: u64,
) -> Result<StoredMessage, OpsError> {
    let stream_name = settings.dlq_stream.as_str();
    // stream sequences start at 1: the server refuses 0 as a bad request, not as "no message"
    if dlq_seq == 0 {
        return Err(OpsError::DeadLetterNotFound {
            stream: stream_name.to_owned(),
            seq: dlq_seq,
        });
    }
    let stream_error = OpsError::on_stream(stream_name);
    let stream = open_stream(jetstream, stream_name).await?;
    let message = stream
        .get_raw_message(dlq_seq)
        .await
        .map_err(|error| match error.kind() {
            RawMessageErrorKind::NoMessageFound => OpsError::DeadLetterNotFound {
                stream: stream_name.to_owned(),
                seq: dlq_seq,
            },
            _ => stream_error(error.into()),
        })?;
    let stored_at = message.time.to_chrono().ok_or_else(|| {
        stream_error(format!("dead letter {dlq_seq} has an invalid timestamp").into())
    })?;
    Ok(StoredMessage {
        stream_seq: message.sequence,
        stored_at,
        subject: message.subject.to_string(),
        headers: header_pairs(Some(&message.headers)),
        payload: message.payload.to_vec(),
    })
}
