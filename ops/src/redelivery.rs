//! Re-delivery through the replay channel (`jwl replay --to`, `jwl dlq redrive|discard`):
//! building replay messages from the events stream or from dead letters, publishing them to
//! `jwl.replay.<service>.…`, and resolving dead letters (outcome record on `jwl.dlqlog.<seq>`,
//! then deletion from the dead-letter stream). Never publishes to `jwl.evt.>`.

use async_nats::jetstream::Context;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use chrono::Utc;
use jwl_events::{EventType, Service};
use jwl_outbox::MessagingSettings;

use crate::dead_letters;
use crate::domain::{
    DeadLetterAction, DeadLetterOutcome, ReplayMessage, ReplayMode, ReplayOrigin, Selection,
    dead_letter_detail, event_subject_parts, replay_message, replay_types,
};
use crate::error::{OpsError, open_stream};
use crate::model::DeadLetterDetail;
use crate::reader::{Range, read_range};

/// The replay messages re-delivering `selection` to `service`, which consumes `consumed`:
/// only the selected events of types it consumes, in stream order.
pub async fn plan_events(
    jetstream: &Context,
    settings: &MessagingSettings,
    selection: &Selection,
    service: Service,
    consumed: &[EventType],
    mode: ReplayMode,
    run_id: &str,
) -> Result<Vec<ReplayMessage>, OpsError> {
    let types = replay_types(&selection.types, consumed);
    if types.is_empty() {
        return Ok(Vec::new());
    }
    let narrowed = Selection {
        types,
        ..selection.clone()
    };
    let range = Range {
        stream: &settings.events_stream,
        filters: narrowed.subject_filters(),
        start: narrowed.start(),
        bounds: narrowed.bounds(),
        limit: narrowed.limit,
    };
    let messages = read_range(jetstream, range, |message| {
        narrowed.keeps(message.stored_at)
    })
    .await?;
    messages
        .iter()
        .map(|message| {
            let origin = ReplayOrigin::Events(message.stream_seq);
            let (order_id, event_type) =
                event_subject_parts(&message.subject).ok_or_else(|| OpsError::NotReplayable {
                    origin: origin.to_string(),
                    why: format!("subject {} names no order and event type", message.subject),
                })?;
            Ok(replay_message(
                service, &order_id, event_type, message, origin, mode, run_id,
            ))
        })
        .collect()
}

/// A dead letter and the replay message re-delivering it to the service of its consumer.
#[derive(Debug, Clone)]
pub struct DeadLetterReplay {
    pub detail: DeadLetterDetail,
    pub message: ReplayMessage,
}

/// Reads dead letter `dlq_seq` and rebuilds its replay message (original headers and payload,
/// origin `dlq:<seq>`, `Nats-Msg-Id: replay:<run id>:dlq:<seq>`).
pub async fn plan_dead_letter(
    jetstream: &Context,
    settings: &MessagingSettings,
    dlq_seq: u64,
    mode: ReplayMode,
    run_id: &str,
) -> Result<DeadLetterReplay, OpsError> {
    let stored = dead_letters::fetch(jetstream, settings, dlq_seq).await?;
    let origin = ReplayOrigin::DeadLetter(dlq_seq);
    let not_replayable = |why: String| OpsError::NotReplayable {
        origin: origin.to_string(),
        why,
    };
    let detail = dead_letter_detail(stored.clone());
    let service = crate::domain::consumer_service(&detail.entry.consumer).ok_or_else(|| {
        not_replayable(format!(
            "consumer {:?} names no service",
            detail.entry.consumer
        ))
    })?;
    let order_id = detail
        .entry
        .order_id
        .ok_or_else(|| not_replayable("it names no valid order".to_owned()))?;
    let event_type = detail
        .entry
        .original_type
        .as_deref()
        .and_then(EventType::parse)
        .ok_or_else(|| not_replayable("its ce-type is not a catalogue event type".to_owned()))?;
    let message = replay_message(
        service, &order_id, event_type, &stored, origin, mode, run_id,
    );
    Ok(DeadLetterReplay { detail, message })
}

/// Publishes `message` (with its `Nats-Msg-Id`) and waits for the broker's ack.
pub async fn publish(jetstream: &Context, message: &ReplayMessage) -> Result<(), OpsError> {
    let publish_error = |source: async_nats::Error| OpsError::Publish {
        subject: message.subject.clone(),
        source,
    };
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in &message.headers {
        headers.append(name.as_str(), value.as_str());
    }
    let outgoing = PublishMessage::build()
        .payload(message.payload.clone().into())
        .headers(headers)
        .message_id(message.message_id.as_str());
    jetstream
        .send_publish(message.subject.clone(), outgoing)
        .await
        .map_err(|error| publish_error(error.into()))?
        .await
        .map_err(|error| publish_error(error.into()))?;
    Ok(())
}

/// Whether an outcome record for dead letter `dlq_seq` is already on `jwl.dlqlog.<seq>`.
pub async fn outcome_recorded(
    jetstream: &Context,
    settings: &MessagingSettings,
    dlq_seq: u64,
) -> Result<bool, OpsError> {
    let stream_name = settings.dlq_log_stream.as_str();
    let stream_error = OpsError::on_stream(stream_name);
    let stream = open_stream(jetstream, stream_name).await?;
    let subject = format!("{}.{dlq_seq}", crate::domain::DLQ_LOG_PREFIX);
    match stream.get_last_raw_message_by_subject(&subject).await {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(false),
        Err(error) => Err(stream_error(error.into())),
    }
}

/// Every outcome record on `jwl.dlqlog.>`, oldest first.
pub async fn outcomes(
    jetstream: &Context,
    settings: &MessagingSettings,
) -> Result<Vec<DeadLetterOutcome>, OpsError> {
    let range = Range {
        stream: &settings.dlq_log_stream,
        filters: vec![format!("{}.>", crate::domain::DLQ_LOG_PREFIX)],
        start: crate::domain::StartAt::First,
        bounds: crate::domain::Bounds::default(),
        limit: None,
    };
    let messages = read_range(jetstream, range, |_| true).await?;
    Ok(messages
        .iter()
        .filter_map(|message| serde_json::from_slice(&message.payload).ok())
        .collect())
}

/// Resolves a dead letter: publishes `outcome` to `jwl.dlqlog.<seq>` (`Nats-Msg-Id:
/// dlqlog:<seq>`), then deletes the dead letter. A dead letter already deleted counts as done.
pub async fn resolve(
    jetstream: &Context,
    settings: &MessagingSettings,
    outcome: &DeadLetterOutcome,
) -> Result<(), OpsError> {
    let subject = outcome.subject();
    let record = serde_json::to_vec(outcome).map_err(|error| OpsError::Publish {
        subject: subject.clone(),
        source: error.into(),
    })?;
    let message = ReplayMessage {
        subject,
        message_id: outcome.message_id(),
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        payload_bytes: record.len(),
        payload: record,
    };
    publish(jetstream, &message).await?;
    delete_dead_letter(jetstream, settings, outcome.dlq_seq).await
}

/// Deletes dead letter `dlq_seq` from the dead-letter stream; one already gone counts as done.
pub async fn delete_dead_letter(
    jetstream: &Context,
    settings: &MessagingSettings,
    dlq_seq: u64,
) -> Result<(), OpsError> {
    let stream_name = settings.dlq_stream.as_str();
    let delete_error = |source: async_nats::Error| OpsError::Delete {
        stream: stream_name.to_owned(),
        seq: dlq_seq,
        source,
    };
    let stream = jetstream
        .get_stream_no_info(stream_name)
        .await
        .map_err(|error| delete_error(error.into()))?;
    match stream.delete_message(dlq_seq).await {
        Ok(_) => Ok(()),
        Err(error) => match dead_letters::fetch(jetstream, settings, dlq_seq).await {
            Err(OpsError::DeadLetterNotFound { .. }) => Ok(()),
            _ => Err(delete_error(error.into())),
        },
    }
}

/// What became of one dead letter a redrive picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redriven {
    /// Re-delivered, recorded and deleted now.
    Done,
    /// Its outcome was recorded before (e.g. a resumed run): not sent again, its deletion
    /// finished.
    AlreadyResolved,
    /// Not in the dead-letter stream, and no outcome recorded for it.
    Gone,
    /// It cannot be re-delivered; it stays in the dead-letter stream.
    Skipped(String),
}

/// Redrives dead letter `dlq_seq` (`jwl dlq redrive`, the console): re-delivers it to its
/// consumer's service through the replay channel, records the outcome (with `operator`, when
/// known) and deletes it. One whose outcome is already recorded, or that is gone, was handled
/// before: it is not sent again (only its deletion is finished).
pub async fn redrive_dead_letter(
    jetstream: &Context,
    settings: &MessagingSettings,
    dlq_seq: u64,
    mode: ReplayMode,
    run_id: &str,
    operator: Option<&str>,
) -> Result<Redriven, OpsError> {
    if outcome_recorded(jetstream, settings, dlq_seq).await? {
        delete_dead_letter(jetstream, settings, dlq_seq).await?;
        return Ok(Redriven::AlreadyResolved);
    }
    let replay = match plan_dead_letter(jetstream, settings, dlq_seq, mode, run_id).await {
        Ok(replay) => replay,
        Err(OpsError::DeadLetterNotFound { .. }) => return Ok(Redriven::Gone),
        Err(error @ OpsError::NotReplayable { .. }) => {
            return Ok(Redriven::Skipped(error.to_string()));
        }
        Err(error) => return Err(error),
    };
    publish(jetstream, &replay.message).await?;
    let outcome = DeadLetterOutcome::of(
        &replay.detail,
        DeadLetterAction::Redriven,
        None,
        Some(run_id),
        Utc::now(),
    )
    .by(operator);
    resolve(jetstream, settings, &outcome).await?;
    Ok(Redriven::Done)
}

/// Discards dead letter `dlq_seq` (`jwl dlq discard`, the console): releases the consumer's
/// hold on the order (when the dead letter names both), records the outcome with `reason` and
/// `operator`, and deletes the dead letter.
pub async fn discard_dead_letter(
    jetstream: &Context,
    settings: &MessagingSettings,
    dlq_seq: u64,
    reason: &str,
    operator: Option<&str>,
) -> Result<(), OpsError> {
    let detail = dead_letters::show(jetstream, settings, dlq_seq).await?;
    let entry = &detail.entry;
    if let (Some(service), Some(order_id)) = (
        crate::domain::consumer_service(&entry.consumer),
        entry.order_id,
    ) {
        let release =
            crate::domain::release_message(service, &order_id, &entry.consumer, reason, dlq_seq);
        publish(jetstream, &release).await?;
    }
    let outcome = DeadLetterOutcome::of(
        &detail,
        DeadLetterAction::Discarded,
        Some(reason),
        None,
        Utc::now(),
    )
    .by(operator);
    resolve(jetstream, settings, &outcome).await
}
