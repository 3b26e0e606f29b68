//! Pulling from a durable consumer: JetStream messages as [`Delivery`]s.

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind};
use async_trait::async_trait;
use futures::StreamExt;

use crate::transport::{ConsumerSpec, Deliveries, Delivery, TransportError};

/// Server heartbeat while a pull request is open. Two missed ones surface as an error item and
/// the consumer loop pulls again: that is how a consumer notices that its consumer's leader
/// moved to another node (the pull request waiting at the old leader is lost with it), so it
/// bounds the stall of a node failure (2 s here instead of the client's default 10 s, for one
/// small status message per second per idle consumer).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Lifetime of one pull request (renewed by the client).
const PULL_EXPIRES: Duration = Duration::from_secs(30);

/// Starts the continuous pull (`consumer.messages()`-style, heartbeats handled by the client).
pub(super) async fn pull(
    consumer: PullConsumer,
    spec: &ConsumerSpec,
) -> Result<Deliveries, TransportError> {
    let messages = consumer
        .stream()
        .max_messages_per_batch(spec.prefetch.max(1))
        .expires(PULL_EXPIRES)
        .heartbeat(HEARTBEAT)
        .messages()
        .await
        .map_err(|error| TransportError::Subscribe {
            consumer: spec.durable_name.clone(),
            source: error.into(),
        })?;
    Ok(messages
        .map(|item| {
            let message = item.map_err(|error| TransportError::Receive(error.into()))?;
            Ok(Box::new(NatsDelivery::new(message)?) as Box<dyn Delivery>)
        })
        .boxed())
}

/// A JetStream message with its delivery metadata parsed once.
struct NatsDelivery {
    message: jetstream::Message,
    attempt: u32,
    stream_sequence: u64,
}

impl NatsDelivery {
    fn new(message: jetstream::Message) -> Result<Self, TransportError> {
        let info = message.info().map_err(TransportError::Receive)?;
        let attempt = u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX);
        let stream_sequence = info.stream_sequence;
        Ok(Self {
            message,
            attempt,
            stream_sequence,
        })
    }

    async fn settle(&self, kind: AckKind) -> Result<(), TransportError> {
        self.message
            .ack_with(kind)
            .await
            .map_err(TransportError::Settle)
    }
}

#[async_trait]
impl Delivery for NatsDelivery {
    fn subject(&self) -> &str {
        self.message.subject.as_str()
    }

    fn headers(&self) -> Vec<(&str, &str)> {
        let Some(headers) = self.message.headers.as_ref() else {
            return Vec::new();
        };
        headers
            .iter()
            .flat_map(|(name, values)| {
                let name: &str = name.as_ref();
                values.iter().map(move |value| (name, value.as_str()))
            })
            .collect()
    }

    fn payload(&self) -> &[u8] {
        &self.message.payload
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    fn stream_sequence(&self) -> u64 {
        self.stream_sequence
    }

    async fn ack(&self) -> Result<(), TransportError> {
        self.settle(AckKind::Ack).await
    }

    async fn nak(&self, delay: Duration) -> Result<(), TransportError> {
        self.settle(AckKind::Nak((!delay.is_zero()).then_some(delay)))
            .await
    }

    async fn term(&self) -> Result<(), TransportError> {
        self.settle(AckKind::Term).await
    }

    async fn in_progress(&self) -> Result<(), TransportError> {
        self.settle(AckKind::Progress).await
    }
}
