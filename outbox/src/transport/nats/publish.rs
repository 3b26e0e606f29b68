//! Publishing a batch to JetStream: send every message in order, then await the acks together.

use std::str::FromStr;

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue};
use async_nats::jetstream;
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use futures::future::join_all;

use super::denials::Denials;
use crate::transport::{OutboundMessage, PublishReceipt, TransportError};

/// One result per message, in order. Acks are awaited concurrently: one round trip per batch.
/// A message the server refuses to take for lack of permission fails as soon as the server says
/// so ([`TransportError::Denied`]).
pub(super) async fn publish_batch(
    jetstream: &jetstream::Context,
    denials: &Denials,
    batch: &[OutboundMessage],
) -> Vec<Result<PublishReceipt, TransportError>> {
    let before = denials.latest();
    let mut pending: Vec<Result<PublishAckFuture, TransportError>> =
        Vec::with_capacity(batch.len());
    for message in batch {
        pending.push(send(jetstream, message).await);
    }
    join_all(
        pending
            .into_iter()
            .zip(batch)
            .map(|(sent, message)| async move {
                let denied = || TransportError::Denied {
                    subject: message.subject.clone(),
                };
                let ack = tokio::select! {
                    ack = sent?.into_future() => match ack {
                        // a refused publish gets no ack: its timeout may come first
                        Err(_) if denials.denied_after(before, &message.subject) => Err(denied()),
                        other => other.map_err(publish_error),
                    },
                    () = denials.wait_denied(before, &message.subject) => Err(denied()),
                }?;
                Ok(PublishReceipt {
                    sequence: ack.sequence,
                    duplicate: ack.duplicate,
                })
            }),
    )
    .await
}

async fn send(
    jetstream: &jetstream::Context,
    message: &OutboundMessage,
) -> Result<PublishAckFuture, TransportError> {
    let publish = PublishMessage::build()
        .payload(message.payload.clone())
        .headers(header_map(&message.headers)?)
        .message_id(&message.dedup_id);
    jetstream
        .send_publish(message.subject.clone(), publish)
        .await
        .map_err(publish_error)
}

/// Validated headers: an invalid name or value is a permanent rejection, never a panic.
pub(super) fn header_map(headers: &[(String, String)]) -> Result<HeaderMap, TransportError> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = HeaderName::from_str(name)
            .map_err(|_| TransportError::Rejected(format!("invalid header name {name:?}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| TransportError::Rejected(format!("invalid value of header {name}")))?;
        map.append(name, value);
    }
    Ok(map)
}

fn publish_error(error: jetstream::context::PublishError) -> TransportError {
    match error.kind() {
        PublishErrorKind::MaxPayloadExceeded => TransportError::Rejected(error.to_string()),
        _ => TransportError::Publish(error.into()),
    }
}
