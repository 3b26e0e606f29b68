//! Following the events topic on Kafka ([`History::follow_events`](crate::transport::History)):
//! a reader that never joins a group, assigned every partition at the high watermark taken
//! before `follow` returns (so nothing published after that is missed, whatever librdkafka's
//! lazy `OFFSET_END` would resolve to), polled on a thread of its own, the types picked on the
//! client. The thread ends when the stream it feeds is dropped.

use std::time::Duration;

use futures::StreamExt;
use jwl_events::{EventType, WireMessage};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::history::{WireHeaders, on_stream, partition_ids};
use super::{ClientCtx, KafkaBroker, wire};
use crate::transport::history::is_followed;
use crate::transport::{FollowedEvents, TransportError};

/// Events read ahead of the follower's reader; past that the thread waits (Kafka keeps them).
const BUFFER: usize = 1 << 14;
/// Longest one poll blocks, and so how long the thread outlives a dropped stream.
const POLL: Duration = Duration::from_millis(100);

/// Starts following the events of `types` on `stream`'s topic.
pub(super) async fn follow(
    broker: KafkaBroker,
    stream: &str,
    types: Vec<EventType>,
) -> Result<FollowedEvents, TransportError> {
    let topic = wire::topic_of(stream)?.to_owned();
    let reader = tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || assigned_at_end(&broker, &topic)
    })
    .await
    .map_err(|error| on_stream(&topic, error.into()))??;
    let (sender, receiver) = mpsc::channel(BUFFER);
    std::thread::Builder::new()
        .name("jwl-kafka-follow".to_owned())
        .spawn(move || forward(&reader, &types, &sender))
        .map_err(|error| on_stream(&topic, error.into()))?;
    Ok(
        futures::stream::unfold(receiver, |mut receiver| async move {
            let event = receiver.recv().await?;
            Some((event, receiver))
        })
        .boxed(),
    )
}

/// A group-less reader of every partition of `topic`, each from its high watermark now.
fn assigned_at_end(
    broker: &KafkaBroker,
    topic: &str,
) -> Result<BaseConsumer<ClientCtx>, TransportError> {
    let failed = |error: rdkafka::error::KafkaError| on_stream(topic, error.into());
    let timeout = broker.inner.settings.request_timeout;
    let reader = broker.reader().map_err(failed)?;
    let mut assignment = TopicPartitionList::new();
    for partition in partition_ids(&reader, topic, timeout)? {
        let (_, high) = reader
            .fetch_watermarks(topic, partition, timeout)
            .map_err(failed)?;
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(high))
            .map_err(failed)?;
    }
    reader.assign(&assignment).map_err(failed)?;
    Ok(reader)
}

/// Polls `reader` and sends the events of `types` until the receiver is gone.
fn forward(
    reader: &BaseConsumer<ClientCtx>,
    types: &[EventType],
    sender: &mpsc::Sender<WireMessage>,
) {
    while !sender.is_closed() {
        let message = match reader.poll(POLL) {
            None => continue,
            Some(Ok(message)) => message,
            // librdkafka reports and retries broker trouble itself; the reader goes on
            Some(Err(error)) => {
                tracing::debug!(%error, "the events follower's poll failed; polling again");
                continue;
            }
        };
        let WireHeaders {
            subject, headers, ..
        } = WireHeaders::of(&message);
        if !is_followed(types, &subject) {
            continue;
        }
        let event = WireMessage {
            subject,
            headers,
            payload: rdkafka::Message::payload(&message)
                .unwrap_or_default()
                .to_vec(),
        };
        if sender.blocking_send(event).is_err() {
            return;
        }
    }
}
