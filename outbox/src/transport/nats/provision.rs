//! Creating and reconciling the streams and durable pull consumers. Needs nats-server ≥ 2.10
//! (several filter subjects per consumer); when an existing stream's limits or a consumer cannot
//! be brought to the wanted settings, it is kept as is and a warning is logged. A replica count
//! the server refuses for good (more than one on a server that is not clustered) is an error
//! that says what to do ([`TransportError::StreamConflict`]); one it cannot apply yet (a node
//! of the cluster is down) is a transient error, retried by the caller.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::context::{CreateStreamError, CreateStreamErrorKind};
use async_nats::jetstream::stream::{self, StorageType};

use crate::settings::MessagingSettings;
use crate::transport::{ConsumerSpec, TransportError, UNLIMITED_AGE, stream_shapes};

pub(super) async fn ensure_streams(
    jetstream: &jetstream::Context,
    settings: &MessagingSettings,
) -> Result<(), TransportError> {
    for shape in stream_shapes(settings) {
        let config = stream::Config {
            name: shape.name.to_owned(),
            subjects: vec![shape.subjects.to_owned()],
            storage: StorageType::File,
            max_age: shape.max_age,
            duplicate_window: duplicate_window(settings.duplicate_window, shape.max_age),
            num_replicas: settings.stream_replicas.unwrap_or(1),
            ..Default::default()
        };
        ensure_stream(jetstream, config, settings.stream_replicas.is_some()).await?;
    }
    Ok(())
}

/// The duplicate window of a stream that keeps messages `max_age`: nats-server refuses one
/// longer than a (non-zero) max age.
fn duplicate_window(wanted: Duration, max_age: Duration) -> Duration {
    if max_age == UNLIMITED_AGE {
        wanted
    } else {
        wanted.min(max_age)
    }
}

/// Creates the stream, or brings an existing one's subjects and limits (and, when
/// `reconcile_replicas`, its replica count) to `wanted`.
async fn ensure_stream(
    jetstream: &jetstream::Context,
    wanted: stream::Config,
    reconcile_replicas: bool,
) -> Result<(), TransportError> {
    let name = wanted.name.clone();
    let replicas = wanted.num_replicas;
    let existing = match jetstream.get_or_create_stream(wanted.clone()).await {
        Ok(existing) => existing,
        Err(error) if refuses_replicas(&error) => {
            return Err(TransportError::StreamConflict(format!(
                "stream {name} cannot be created with {replicas} replicas ({error}): \
                 JWL_STREAM_REPLICAS must not exceed the number of JetStream servers of a \
                 cluster, and must be 1 on a single server"
            )));
        }
        Err(error) => {
            return Err(TransportError::Provision {
                what: format!("stream {name}"),
                source: error.into(),
            });
        }
    };
    let current = &existing.cached_info().config;
    let replicas_differ = reconcile_replicas && current.num_replicas.max(1) != replicas;
    if current.subjects == wanted.subjects
        && current.max_age == wanted.max_age
        && current.duplicate_window == wanted.duplicate_window
        && !replicas_differ
    {
        return Ok(());
    }
    let updated = stream::Config {
        subjects: wanted.subjects,
        max_age: wanted.max_age,
        duplicate_window: wanted.duplicate_window,
        num_replicas: if reconcile_replicas {
            replicas
        } else {
            current.num_replicas
        },
        ..current.clone()
    };
    match jetstream.update_stream(&updated).await {
        Ok(_) if replicas_differ => {
            tracing::info!(stream = %name, from = current.num_replicas, to = replicas,
                "stream replica count changed")
        }
        Ok(_) => tracing::info!(stream = %name, "stream limits updated"),
        Err(error) if replicas_differ => {
            let what_to_run = format!(
                "run `nats stream edit {name} --replicas {replicas}` against a cluster of at \
                 least {replicas} JetStream servers, or set JWL_STREAM_REPLICAS={}",
                current.num_replicas.max(1)
            );
            let message = format!(
                "stream {name} has {} replica(s), JWL_STREAM_REPLICAS asks for {replicas}, and \
                 the server refused the change ({error}): {what_to_run}",
                current.num_replicas.max(1)
            );
            if refuses_replicas(&error) {
                return Err(TransportError::StreamConflict(message));
            }
            // e.g. a node of the cluster is down: the caller retries
            return Err(TransportError::Provision {
                what: message,
                source: error.into(),
            });
        }
        Err(error) => {
            tracing::warn!(stream = %name, %error, "could not update the stream; keeping it as is")
        }
    }
    Ok(())
}

/// Whether the server refuses a stream's replica count for good (it is not clustered, or too
/// old to change the count), as opposed to not being able to apply it now.
fn refuses_replicas(error: &CreateStreamError) -> bool {
    match error.kind() {
        CreateStreamErrorKind::JetStream(error) => matches!(
            error.error_code(),
            ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED | ErrorCode::STREAM_REPLICAS_NOT_UPDATABLE
        ),
        _ => false,
    }
}

pub(super) async fn ensure_consumer(
    jetstream: &jetstream::Context,
    spec: &ConsumerSpec,
) -> Result<PullConsumer, TransportError> {
    let failed = |source: async_nats::Error| TransportError::Subscribe {
        consumer: spec.durable_name.clone(),
        source,
    };
    let stream = jetstream
        .get_stream_no_info(&spec.stream)
        .await
        .map_err(|error| failed(error.into()))?;
    let deliver_policy = match stream.consumer_info(&spec.durable_name).await {
        Ok(_) => DeliverPolicy::All,
        Err(_) => start_after_replaced(&stream, &spec.replaces).await,
    };
    let wanted = pull::Config {
        durable_name: Some(spec.durable_name.clone()),
        deliver_policy,
        ack_policy: AckPolicy::Explicit,
        ack_wait: spec.ack_wait,
        // unlimited: the consumer loop dead-letters at max_attempts by itself, so the server
        // never drops a message silently
        max_deliver: -1,
        filter_subjects: spec.filter_subjects.clone(),
        max_ack_pending: i64::from(spec.max_ack_pending),
        ..Default::default()
    };
    let consumer: PullConsumer = stream
        .get_or_create_consumer(&spec.durable_name, wanted.clone())
        .await
        .map_err(|error| failed(error.into()))?;
    retire(&stream, &spec.replaces).await;
    let current = &consumer.cached_info().config;
    if current.filter_subjects == wanted.filter_subjects
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
            if current.filter_subjects != spec.filter_subjects {
                tracing::error!(consumer = %spec.durable_name, %error,
                    existing = ?current.filter_subjects, wanted = ?spec.filter_subjects,
                    "consumer has other filter subjects and cannot be updated; keeping it");
            } else {
                tracing::warn!(consumer = %spec.durable_name, %error,
                    "could not update the consumer; keeping its settings");
            }
            Ok(consumer)
        }
    }
}

/// Where a new consumer that supersedes `replaced` starts: after the lowest sequence below which
/// every one of them had acknowledged everything (what they had acknowledged above it is
/// delivered again, and the inbox absorbs it); from the start of the stream if none exists.
async fn start_after_replaced(stream: &stream::Stream<()>, replaced: &[String]) -> DeliverPolicy {
    let mut floor: Option<u64> = None;
    for name in replaced {
        if let Ok(info) = stream.consumer_info(name).await {
            let acked = info.ack_floor.stream_sequence;
            floor = Some(floor.map_or(acked, |floor| floor.min(acked)));
        }
    }
    match floor {
        Some(acked) => {
            tracing::info!(
                ?replaced,
                start_sequence = acked + 1,
                "taking over from superseded consumers"
            );
            DeliverPolicy::ByStartSequence {
                start_sequence: acked + 1,
            }
        }
        None => DeliverPolicy::All,
    }
}

/// Deletes the superseded consumers that still exist; a failure is logged (they only hold
/// messages back in the broker's accounting, nothing is read from them any more).
async fn retire(stream: &stream::Stream<()>, replaced: &[String]) {
    for name in replaced {
        if stream.consumer_info(name).await.is_err() {
            continue;
        }
        match stream.delete_consumer(name).await {
            Ok(_) => tracing::info!(consumer = %name, "superseded consumer deleted"),
            Err(error) => {
                tracing::warn!(consumer = %name, %error, "could not delete a superseded consumer")
            }
        }
    }
}
