//! Creating and reconciling the streams and durable pull consumers. Works on nats-server 2.9
//! (one filter subject per consumer, no consumer "update" action): when an existing stream or
//! consumer cannot be brought to the wanted settings, it is kept as is and a warning is logged.

use async_nats::jetstream;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::stream::{self, StorageType};

use crate::settings::MessagingSettings;
use crate::transport::{ConsumerSpec, TransportError};

/// Subjects of the dead-letter stream.
pub(crate) const DLQ_SUBJECTS: &str = "jwl.dlq.>";
/// Subjects of the replay stream.
pub(crate) const REPLAY_SUBJECTS: &str = "jwl.replay.>";
/// Subjects of the dead-letter log stream.
pub(crate) const DLQ_LOG_SUBJECTS: &str = "jwl.dlqlog.>";

pub(super) async fn ensure_streams(
    jetstream: &jetstream::Context,
    settings: &MessagingSettings,
) -> Result<(), TransportError> {
    let wanted = [
        (
            &settings.events_stream,
            jwl_events::EVENTS_SUBJECTS,
            settings.events_max_age,
        ),
        (&settings.dlq_stream, DLQ_SUBJECTS, settings.dlq_max_age),
        (
            &settings.replay_stream,
            REPLAY_SUBJECTS,
            settings.replay_max_age,
        ),
        (
            &settings.dlq_log_stream,
            DLQ_LOG_SUBJECTS,
            settings.dlq_log_max_age,
        ),
    ];
    for (name, subjects, max_age) in wanted {
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![subjects.to_owned()],
            storage: StorageType::File,
            max_age,
            // nats-server refuses a duplicate window longer than the max age
            duplicate_window: settings.duplicate_window.min(max_age),
            ..Default::default()
        };
        ensure_stream(jetstream, config).await?;
    }
    Ok(())
}

async fn ensure_stream(
    jetstream: &jetstream::Context,
    wanted: stream::Config,
) -> Result<(), TransportError> {
    let name = wanted.name.clone();
    let failed = |source: jetstream::context::CreateStreamError| TransportError::Provision {
        what: format!("stream {name}"),
        source: source.into(),
    };
    let existing = jetstream
        .get_or_create_stream(wanted.clone())
        .await
        .map_err(failed)?;
    let current = &existing.cached_info().config;
    if current.subjects == wanted.subjects
        && current.max_age == wanted.max_age
        && current.duplicate_window == wanted.duplicate_window
    {
        return Ok(());
    }
    let updated = stream::Config {
        subjects: wanted.subjects,
        max_age: wanted.max_age,
        duplicate_window: wanted.duplicate_window,
        ..current.clone()
    };
    match jetstream.update_stream(&updated).await {
        Ok(_) => tracing::info!(stream = %name, "stream limits updated"),
        Err(error) => {
            tracing::warn!(stream = %name, %error, "could not update the stream; keeping it as is")
        }
    }
    Ok(())
}

pub(super) async fn ensure_consumer(
    jetstream: &jetstream::Context,
    spec: &ConsumerSpec,
) -> Result<PullConsumer, TransportError> {
    let failed = |source: async_nats::Error| TransportError::Subscribe {
        consumer: spec.durable_name.clone(),
        source,
    };
    let wanted = pull::Config {
        durable_name: Some(spec.durable_name.clone()),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: spec.ack_wait,
        // unlimited: the consumer loop dead-letters at max_attempts by itself, so the server
        // never drops a message silently
        max_deliver: -1,
        filter_subject: spec.filter_subject.clone(),
        max_ack_pending: i64::from(spec.max_ack_pending),
        ..Default::default()
    };
    let stream = jetstream
        .get_stream_no_info(&spec.stream)
        .await
        .map_err(|error| failed(error.into()))?;
    let consumer: PullConsumer = stream
        .get_or_create_consumer(&spec.durable_name, wanted.clone())
        .await
        .map_err(|error| failed(error.into()))?;
    let current = &consumer.cached_info().config;
    if current.filter_subject == wanted.filter_subject
        && current.ack_wait == wanted.ack_wait
        && current.max_ack_pending == wanted.max_ack_pending
        && current.max_deliver == wanted.max_deliver
    {
        return Ok(consumer);
    }
    match stream.create_consumer(wanted).await {
        Ok(updated) => {
            tracing::info!(consumer = %spec.durable_name, "consumer settings updated");
            Ok(updated)
        }
        Err(error) => {
            if current.filter_subject != spec.filter_subject {
                tracing::error!(consumer = %spec.durable_name, %error,
                    existing = %current.filter_subject, wanted = %spec.filter_subject,
                    "consumer has another filter subject and cannot be updated; keeping it");
            } else {
                tracing::warn!(consumer = %spec.durable_name, %error,
                    "could not update the consumer; keeping its settings");
            }
            Ok(consumer)
        }
    }
}
