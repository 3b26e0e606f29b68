//! Publishing a batch to Kafka: enqueue every message in order (each to the topic of its
//! subject, keyed by its order), then await the delivery reports together.

use futures::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use super::{KafkaBroker, wire};
use crate::transport::{OutboundMessage, PublishReceipt, TransportError};

/// One result per message, in order. The idempotent producer keeps each partition in the order
/// of enqueueing, also across its internal retries.
pub(super) async fn publish_batch(
    broker: &KafkaBroker,
    batch: &[OutboundMessage],
) -> Vec<Result<PublishReceipt, TransportError>> {
    let pending: Vec<Result<DeliveryFuture, TransportError>> =
        batch.iter().map(|message| send(broker, message)).collect();
    join_all(
        pending
            .into_iter()
            .zip(batch)
            .map(|(sent, message)| async move {
                match sent?.await {
                    Ok(Ok(delivery)) => Ok(PublishReceipt {
                        sequence: u64::try_from(delivery.offset).unwrap_or_default(),
                        duplicate: false,
                    }),
                    Ok(Err((error, _message))) => Err(publish_error(error, &message.subject)),
                    Err(_canceled) => Err(TransportError::Publish(
                        "the Kafka producer went away before reporting the delivery".into(),
                    )),
                }
            }),
    )
    .await
}

fn send(broker: &KafkaBroker, message: &OutboundMessage) -> Result<DeliveryFuture, TransportError> {
    let topic = broker.topic_for(&message.subject)?;
    let key = wire::key_of(&message.subject, &message.headers);
    let headers = wire_headers(message);
    let record = FutureRecord::to(topic)
        .key(key)
        .payload(message.payload.as_ref())
        .headers(headers);
    broker
        .inner
        .producer
        .send_result(record)
        .map_err(|(error, _record)| publish_error(error, &message.subject))
}

/// The message's headers in the Kafka binding, after the transport's own: the subject and the
/// dedup id.
fn wire_headers(message: &OutboundMessage) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(message.headers.len() + 2)
        .insert(Header {
            key: wire::SUBJECT,
            value: Some(message.subject.as_str()),
        })
        .insert(Header {
            key: wire::MSG_ID,
            value: Some(message.dedup_id.as_str()),
        });
    for (name, value) in &message.headers {
        headers = headers.insert(Header {
            key: &wire::to_wire_name(name),
            value: Some(value.as_str()),
        });
    }
    headers
}

/// A message Kafka refuses for good is [`TransportError::Rejected`]; a topic the client may not
/// write to is [`TransportError::Denied`]; anything else may pass later.
pub(super) fn publish_error(error: KafkaError, subject: &str) -> TransportError {
    match error.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidTopic,
        ) => TransportError::Rejected(error.to_string()),
        Some(RDKafkaErrorCode::TopicAuthorizationFailed) => TransportError::Denied {
            subject: subject.to_owned(),
        },
        _ => TransportError::Publish(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_messages_are_rejected_for_good() {
        let error = publish_error(
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
            "jwl.evt.o.t",
        );
        assert!(error.is_permanent(), "{error}");
        let error = publish_error(
            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
            "jwl.evt.o.t",
        );
        assert!(!error.is_permanent(), "{error}");
    }
}
