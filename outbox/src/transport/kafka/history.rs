//! The operator tools' read contract ([`History`]) on Kafka: not available yet, and said so.
//!
//! `jwl saga show`, `jwl replay` and `jwl dlq` read what the broker holds by order, type, time
//! and sequence, and delete a resolved dead letter. JetStream serves these from its per-subject
//! index and per-message deletes. On Kafka an order's events are one key of one partition (a
//! read by key scans that partition), time bounds map to `offsets_for_times`, and a record cannot
//! be deleted (a resolved dead letter would be marked by the dead-letter log instead). Until
//! that is built every read answers [`TransportError::Unsupported`] naming the NATS broker, so
//! the tools fail with a plain message instead of showing an empty history.

use async_trait::async_trait;

use super::KafkaBroker;
use crate::settings::MessagingSettings;
use crate::transport::{
    DeadLetterQuery, EventQuery, History, Keep, NamedBacklog, StoredMessage, TransportError,
};

/// What every read answers.
fn unsupported(what: &str) -> TransportError {
    TransportError::Unsupported(format!(
        "{what} is not available on Kafka yet: the operator tools (jwl saga show, jwl replay, \
         jwl dlq, the console's history) need the NATS broker"
    ))
}

#[async_trait]
impl History for KafkaBroker {
    async fn read_events(
        &self,
        _settings: &MessagingSettings,
        _query: &EventQuery,
        _keep: Keep<'_>,
    ) -> Result<Vec<StoredMessage>, TransportError> {
        Err(unsupported("reading the events stream"))
    }

    async fn read_dead_letters(
        &self,
        _settings: &MessagingSettings,
        _query: &DeadLetterQuery,
        _keep: Keep<'_>,
    ) -> Result<Vec<StoredMessage>, TransportError> {
        Err(unsupported("reading the dead letters"))
    }

    async fn dead_letter(
        &self,
        _settings: &MessagingSettings,
        _dlq_seq: u64,
    ) -> Result<Option<StoredMessage>, TransportError> {
        Err(unsupported("reading a dead letter"))
    }

    async fn delete_dead_letter(
        &self,
        _settings: &MessagingSettings,
        _dlq_seq: u64,
    ) -> Result<(), TransportError> {
        Err(unsupported("deleting a dead letter"))
    }

    async fn read_dead_letter_log(
        &self,
        _settings: &MessagingSettings,
    ) -> Result<Vec<StoredMessage>, TransportError> {
        Err(unsupported("reading the dead-letter log"))
    }

    async fn dead_letter_logged(
        &self,
        _settings: &MessagingSettings,
        _dlq_seq: u64,
    ) -> Result<bool, TransportError> {
        Err(unsupported("reading the dead-letter log"))
    }

    async fn consumer_backlogs(
        &self,
        _settings: &MessagingSettings,
    ) -> Result<Vec<NamedBacklog>, TransportError> {
        Err(unsupported("listing the consumer groups' backlogs"))
    }
}
