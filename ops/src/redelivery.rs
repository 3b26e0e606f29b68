//! Re-delivery through the replay channel (`jwl replay --to`, `jwl dlq redrive|discard`):
//! building replay messages from the events stream or from dead letters, publishing them to
//! `jwl.replay.<service>.…`, and resolving dead letters (outcome record on `jwl.dlqlog.<seq>`,
//! then deletion from the dead-letter stream). Never publishes to `jwl.evt.>`.

use chrono::Utc;
use jwl_events::{EventType, Service};
use jwl_outbox::MessagingSettings;
use jwl_outbox::transport::{History, OutboundMessage, StoredMessage};

use crate::dead_letters;
use crate::domain::{
    DeadLetterAction, DeadLetterOutcome, ReplayMessage, Selection, dead_letter_detail,
    replay_message, replay_types,
};
use crate::error::OpsError;
use crate::model::DeadLetterDetail;
use jwl_outbox::consumer_service;
use jwl_outbox::protocol::replay::{ReplayMode, ReplayOrigin};

/// The replay messages re-delivering `selection` to `service`, which consumes `consumed`:
/// only the selected events of types it consumes, in stream order.
pub async fn plan_events(
    history: &dyn History,
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
    let keep = |message: &StoredMessage| narrowed.keeps(message.stored_at);
    let messages = history
        .read_events(settings, &narrowed.query(), &keep)
        .await?;
    messages
        .iter()
        .map(|message| {
            let origin = ReplayOrigin::Events(message.stream_seq);
            let (order_id, event_type) =
                jwl_events::parse_subject(&message.subject).ok_or_else(|| {
                    OpsError::NotReplayable {
                        origin: origin.to_string(),
                        why: format!("subject {} names no order and event type", message.subject),
                    }
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
    history: &dyn History,
    settings: &MessagingSettings,
    dlq_seq: u64,
    mode: ReplayMode,
    run_id: &str,
) -> Result<DeadLetterReplay, OpsError> {
    let stored = dead_letters::fetch(history, settings, dlq_seq).await?;
    let origin = ReplayOrigin::DeadLetter(dlq_seq);
    let not_replayable = |why: String| OpsError::NotReplayable {
        origin: origin.to_string(),
        why,
    };
    let detail = dead_letter_detail(stored.clone());
    let service = consumer_service(&detail.entry.consumer).ok_or_else(|| {
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

/// Publishes `message` (its message id the broker's dedup id, `Nats-Msg-Id` on JetStream) and
/// waits for the broker's ack.
pub async fn publish(history: &dyn History, message: &ReplayMessage) -> Result<(), OpsError> {
    let outgoing = OutboundMessage {
        dedup_id: message.message_id.clone(),
        subject: message.subject.clone(),
        headers: message.headers.clone(),
        payload: message.payload.clone().into(),
    };
    let acked = history.publish_batch(std::slice::from_ref(&outgoing)).await;
    match acked.into_iter().next() {
        Some(Ok(_receipt)) => Ok(()),
        Some(Err(error)) => Err(OpsError::Publish {
            subject: message.subject.clone(),
            source: error.into(),
        }),
        None => Err(OpsError::Publish {
            subject: message.subject.clone(),
            source: "the broker returned no acknowledgement".into(),
        }),
    }
}

/// Whether an outcome record for dead letter `dlq_seq` is already on `jwl.dlqlog.<seq>`.
pub async fn outcome_recorded(
    history: &dyn History,
    settings: &MessagingSettings,
    dlq_seq: u64,
) -> Result<bool, OpsError> {
    Ok(history.dead_letter_logged(settings, dlq_seq).await?)
}

/// Every outcome record on `jwl.dlqlog.>`, oldest first.
pub async fn outcomes(
    history: &dyn History,
    settings: &MessagingSettings,
) -> Result<Vec<DeadLetterOutcome>, OpsError> {
    let messages = history.read_dead_letter_log(settings).await?;
    Ok(messages
        .iter()
        .filter_map(|message| serde_json::from_slice(&message.payload).ok())
        .collect())
}

/// Resolves a dead letter: publishes `outcome` to `jwl.dlqlog.<seq>` (`Nats-Msg-Id:
/// dlqlog:<seq>`), then deletes the dead letter. A dead letter already deleted counts as done.
pub async fn resolve(
    history: &dyn History,
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
    publish(history, &message).await?;
    delete_dead_letter(history, settings, outcome.dlq_seq).await
}

/// Deletes dead letter `dlq_seq` from the dead-letter stream; one already gone counts as done.
pub async fn delete_dead_letter(
    history: &dyn History,
    settings: &MessagingSettings,
    dlq_seq: u64,
) -> Result<(), OpsError> {
    Ok(history.delete_dead_letter(settings, dlq_seq).await?)
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
    history: &dyn History,
    settings: &MessagingSettings,
    dlq_seq: u64,
    mode: ReplayMode,
    run_id: &str,
    operator: Option<&str>,
) -> Result<Redriven, OpsError> {
    if outcome_recorded(history, settings, dlq_seq).await? {
        delete_dead_letter(history, settings, dlq_seq).await?;
        return Ok(Redriven::AlreadyResolved);
    }
    let replay = match plan_dead_letter(history, settings, dlq_seq, mode, run_id).await {
        Ok(replay) => replay,
        Err(OpsError::DeadLetterNotFound { .. }) => return Ok(Redriven::Gone),
        Err(error @ OpsError::NotReplayable { .. }) => {
            return Ok(Redriven::Skipped(error.to_string()));
        }
        Err(error) => return Err(error),
    };
    publish(history, &replay.message).await?;
    let outcome = DeadLetterOutcome::of(
        &replay.detail,
        DeadLetterAction::Redriven,
        None,
        Some(run_id),
        Utc::now(),
    )
    .by(operator);
    resolve(history, settings, &outcome).await?;
    Ok(Redriven::Done)
}

/// Discards dead letter `dlq_seq` (`jwl dlq discard`, the console): releases the consumer's
/// hold on the order (when the dead letter names both), records the outcome with `reason` and
/// `operator`, and deletes the dead letter.
pub async fn discard_dead_letter(
    history: &dyn History,
    settings: &MessagingSettings,
    dlq_seq: u64,
    reason: &str,
    operator: Option<&str>,
) -> Result<(), OpsError> {
    let detail = dead_letters::show(history, settings, dlq_seq).await?;
    let entry = &detail.entry;
    if let (Some(service), Some(order_id)) = (consumer_service(&entry.consumer), entry.order_id) {
        let release =
            crate::domain::release_message(service, &order_id, &entry.consumer, reason, dlq_seq);
        publish(history, &release).await?;
    }
    let outcome = DeadLetterOutcome::of(
        &detail,
        DeadLetterAction::Discarded,
        Some(reason),
        None,
        Utc::now(),
    )
    .by(operator);
    resolve(history, settings, &outcome).await
}
