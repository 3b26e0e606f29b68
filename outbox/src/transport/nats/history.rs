//! [`History`] over JetStream: reading a stream by subject through ephemeral ordered pull
//! consumers, one per filter, for the operator tools (`jwl-ops`).
//!
//! Each consumer is filtered on its subject server-side and starts at the wanted position, so
//! the broker only hands over matching messages. A read ends at the stream's last sequence
//! when it started (from `STREAM.INFO`), at the caller's bounds, at its limit, or when the
//! consumer reports nothing more pending (its create response's `num_pending` is 0, or a
//! message's `pending` is 0) — it never waits for new messages. The filters are read
//! concurrently and merged in stream order.
//!
//! Cost on nats-server 2.9: a consumer on a literal subject is created in about a millisecond
//! whatever the stream's size, while one on a wildcard subject has the server count its
//! pending messages across the whole stream (≈0.5 s at 1,000,000 messages). An order's events
//! are therefore read on their literal subjects (`jwl.evt.<type>.<order>` and the legacy
//! `jwl.evt.<order>.<type>`, one consumer each per catalogue type), which the server finds
//! through its per-subject index: the time does not grow with the events stream (measured on
//! nats-server 2.9.10: ~6 ms for one order at 10,000 and at 1,000,000 events, where a wildcard
//! `jwl.evt.<order>.>` consumer took 0.6 s at 1,000,000). Works on nats-server 2.9 and newer
//! (one filter subject per consumer).
//!
//! Following the events ([`History::follow_events`]) needs no consumer: JetStream delivers what
//! it stores to core subscribers of the subject too, so the follower is one core subscription on
//! the events' subjects, on the broker's own connection, filtered by type on the client.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::stream::{LastRawMessageErrorKind, RawMessageErrorKind, Stream};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::TryStreamExt;
use futures::future::try_join_all;
use jwl_events::{EVENTS_SUBJECTS, EventType, WireMessage, subjects_of, type_filters};

use super::JetStreamBroker;
use crate::protocol::dead_letter::{DLQ_LOG_SUBJECTS, dead_letter_filter, dead_letter_log_subject};
use crate::settings::MessagingSettings;
use crate::transport::history::{
    DeadLetterQuery, EventQuery, FollowedEvents, History, Keep, NamedBacklog, ReadEnd, ReadStart,
    StoredMessage, is_followed,
};
use crate::transport::{ConsumerBacklog, TransportError};

/// Longest wait for the next message while the consumer says more are pending.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

#[async_trait]
impl History for JetStreamBroker {
    async fn follow_events(
        &self,
        settings: &MessagingSettings,
        types: &[EventType],
    ) -> Result<FollowedEvents, TransportError> {
        let reader_error = |error: async_nats::Error| TransportError::Reader {
            stream: settings.events_stream.clone(),
            filter: EVENTS_SUBJECTS.to_owned(),
            source: error,
        };
        // one subscription, filtered here: the server keeps the stream's order within one
        // subscription, not across several
        let subscription = self
            .client
            .subscribe(EVENTS_SUBJECTS)
            .await
            .map_err(|error| reader_error(error.into()))?;
        // the server has registered the subscription once it answered the flush
        self.client
            .flush()
            .await
            .map_err(|error| reader_error(error.into()))?;
        let types = types.to_vec();
        Ok(subscription
            .filter(move |message| {
                std::future::ready(is_followed(&types, message.subject.as_str()))
            })
            .map(|message| WireMessage {
                subject: message.subject.to_string(),
                headers: header_pairs(message.headers.as_ref()),
                payload: message.payload.to_vec(),
            })
            .boxed())
    }

    async fn read_events(
        &self,
        settings: &MessagingSettings,
        query: &EventQuery,
        keep: Keep<'_>,
    ) -> Result<Vec<StoredMessage>, TransportError> {
        let range = Range {
            stream: &settings.events_stream,
            filters: event_filters(query),
            start: query.start,
            end: query.end,
            limit: query.limit,
        };
        read_range(&self.jetstream, range, keep).await
    }

    /// Read by subject (`jwl.dlq.<consumer or *>.<order or *>`). The subject has a wildcard for
    /// the consumer or the order, so on nats-server 2.9 the time follows the dead-letter
    /// stream's size (which stays small next to the events stream).
    async fn read_dead_letters(
        &self,
        settings: &MessagingSettings,
        query: &DeadLetterQuery,
        keep: Keep<'_>,
    ) -> Result<Vec<StoredMessage>, TransportError> {
        let order = query.order.map(|order| order.to_string());
        let range = Range {
            stream: &settings.dlq_stream,
            filters: vec![dead_letter_filter(
                query.consumer.as_deref(),
                order.as_deref(),
            )],
            start: ReadStart::First,
            end: query.end,
            limit: query.limit,
        };
        read_range(&self.jetstream, range, keep).await
    }

    async fn dead_letter(
        &self,
        settings: &MessagingSettings,
        dlq_seq: u64,
    ) -> Result<Option<StoredMessage>, TransportError> {
        let stream_name = settings.dlq_stream.as_str();
        // stream sequences start at 1: the server refuses 0 as a bad request, not as "no message"
        if dlq_seq == 0 {
            return Ok(None);
        }
        let stream_error = on_stream(stream_name);
        let stream = open_stream(&self.jetstream, stream_name).await?;
        let message = match stream.get_raw_message(dlq_seq).await {
            Ok(message) => message,
            Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(error) => return Err(stream_error(error.into())),
        };
        let stored_at = message.time.to_chrono().ok_or_else(|| {
            stream_error(format!("dead letter {dlq_seq} has an invalid timestamp").into())
        })?;
        Ok(Some(StoredMessage {
            stream_seq: message.sequence,
            stored_at,
            subject: message.subject.to_string(),
            headers: header_pairs(Some(&message.headers)),
            payload: message.payload.to_vec(),
        }))
    }

    async fn delete_dead_letter(
        &self,
        settings: &MessagingSettings,
        dlq_seq: u64,
    ) -> Result<(), TransportError> {
        let stream_name = settings.dlq_stream.as_str();
        let delete_error = |source: async_nats::Error| TransportError::Delete {
            stream: stream_name.to_owned(),
            seq: dlq_seq,
            source,
        };
        let stream = self
            .jetstream
            .get_stream_no_info(stream_name)
            .await
            .map_err(|error| delete_error(error.into()))?;
        match stream.delete_message(dlq_seq).await {
            Ok(_) => Ok(()),
            Err(error) => match self.dead_letter(settings, dlq_seq).await {
                Ok(None) => Ok(()),
                _ => Err(delete_error(error.into())),
            },
        }
    }

    async fn read_dead_letter_log(
        &self,
        settings: &MessagingSettings,
    ) -> Result<Vec<StoredMessage>, TransportError> {
        let range = Range {
            stream: &settings.dlq_log_stream,
            filters: vec![DLQ_LOG_SUBJECTS.to_owned()],
            start: ReadStart::First,
            end: ReadEnd::default(),
            limit: None,
        };
        read_range(&self.jetstream, range, &|_| true).await
    }

    async fn dead_letter_logged(
        &self,
        settings: &MessagingSettings,
        dlq_seq: u64,
    ) -> Result<bool, TransportError> {
        let stream_name = settings.dlq_log_stream.as_str();
        let stream = open_stream(&self.jetstream, stream_name).await?;
        let subject = dead_letter_log_subject(dlq_seq);
        match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(_) => Ok(true),
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(false),
            Err(error) => Err(on_stream(stream_name)(error.into())),
        }
    }

    async fn consumer_backlogs(
        &self,
        settings: &MessagingSettings,
    ) -> Result<Vec<NamedBacklog>, TransportError> {
        let stream_name = settings.events_stream.as_str();
        let stream = open_stream(&self.jetstream, stream_name).await?;
        let infos: Vec<_> = stream
            .consumers()
            .try_collect()
            .await
            .map_err(|error| on_stream(stream_name)(error.into()))?;
        let mut backlogs: Vec<NamedBacklog> = infos
            .into_iter()
            .filter_map(|info| {
                let name = info.config.durable_name.clone()?;
                Some(NamedBacklog {
                    name,
                    backlog: ConsumerBacklog {
                        pending: info.num_pending,
                        ack_pending: info.num_ack_pending as u64,
                        redelivered: info.num_redelivered as u64,
                    },
                })
            })
            .collect();
        backlogs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(backlogs)
    }
}

/// The narrowest subject filters covering `query`, one consumer each (nats-server 2.9 allows
/// one filter per consumer):
/// - with an order: the literal subjects (`jwl.evt.<type>.<order>`, and the legacy
///   `jwl.evt.<order>.<type>`) of each wanted type, or of every catalogue type. Literal
///   subjects are found through the server's per-subject index, so the cost does not grow with
///   the stream, unlike a wildcard such as `jwl.evt.*.*.<order>` (which 2.9 answers by walking
///   the whole stream). A message on a subject outside the catalogue
///   (`jwl.evt.<unknown type>.<order>`) is therefore not read; a query without an order
///   includes it;
/// - without an order: the type filters (`jwl.evt.<type>.*`, and the legacy
///   `jwl.evt.*.<type>`) of each wanted type, or `jwl.evt.>`.
fn event_filters(query: &EventQuery) -> Vec<String> {
    let mut types = if query.types.is_empty() && query.order.is_some() {
        EventType::ALL.to_vec()
    } else {
        query.types.clone()
    };
    types.sort_unstable();
    types.dedup();
    match (&query.order, types.is_empty()) {
        (Some(order), _) => types
            .into_iter()
            .flat_map(|ty| subjects_of(order, ty))
            .collect(),
        (None, true) => vec![EVENTS_SUBJECTS.to_owned()],
        (None, false) => types.into_iter().flat_map(type_filters).collect(),
    }
}

/// One read of a stream: its subject filters (disjoint; one consumer each), where to start,
/// where to end, how many messages to keep.
#[derive(Debug, Clone)]
struct Range<'a> {
    stream: &'a str,
    filters: Vec<String>,
    start: ReadStart,
    end: ReadEnd,
    /// Most messages kept (the first ones in stream order).
    limit: Option<usize>,
}

/// Reads `range` and returns the messages `keep` accepts, in stream order.
async fn read_range(
    jetstream: &Context,
    range: Range<'_>,
    keep: Keep<'_>,
) -> Result<Vec<StoredMessage>, TransportError> {
    if range.limit == Some(0) || range.filters.is_empty() {
        return Ok(Vec::new());
    }
    let stream = jetstream
        .get_stream(range.stream)
        .await
        .map_err(|error| on_stream(range.stream)(error.into()))?;
    let state = &stream.cached_info().state;
    if state.messages == 0 {
        return Ok(Vec::new());
    }
    let end = range.end.capped_at(state.last_sequence);
    let reads = range.filters.iter().map(|filter| {
        let reader = Reader {
            stream: range.stream,
            filter,
            end,
            limit: range.limit,
            pending: 0,
        };
        reader.read(&stream, range.start, keep)
    });
    let reads = try_join_all(reads).await?;
    Ok(merge_by_sequence(reads, range.limit))
}

/// Merges reads of disjoint subjects into stream order, keeping the first `limit`.
fn merge_by_sequence(reads: Vec<Vec<StoredMessage>>, limit: Option<usize>) -> Vec<StoredMessage> {
    let mut merged: Vec<StoredMessage> = reads.into_iter().flatten().collect();
    merged.sort_by_key(|message| message.stream_seq);
    if let Some(limit) = limit {
        merged.truncate(limit);
    }
    merged
}

/// One consumer's read.
struct Reader<'a> {
    stream: &'a str,
    filter: &'a str,
    end: ReadEnd,
    limit: Option<usize>,
    /// Messages the consumer last reported as still to come.
    pending: u64,
}

impl Reader<'_> {
    async fn read(
        mut self,
        stream: &Stream,
        start: ReadStart,
        keep: Keep<'_>,
    ) -> Result<Vec<StoredMessage>, TransportError> {
        let config = OrderedConfig {
            filter_subject: self.filter.to_owned(),
            deliver_policy: deliver_policy(start).map_err(|error| self.consumer_error(error))?,
            ..Default::default()
        };
        let consumer = stream
            .create_consumer(config)
            .await
            .map_err(|error| self.consumer_error(error.into()))?;
        let name = consumer.cached_info().name.clone();
        self.pending = consumer.cached_info().num_pending;
        let read = if self.pending == 0 {
            Ok(Vec::new())
        } else {
            match consumer.messages().await {
                Ok(messages) => self.collect(messages, keep).await,
                Err(error) => Err(self.read_error(error.into())),
            }
        };
        // Best effort: the server also removes an ephemeral consumer after its inactivity
        // threshold.
        if let Err(error) = stream.delete_consumer(&name).await {
            tracing::debug!(consumer = %name, %error, "could not delete the ephemeral consumer");
        }
        read
    }

    async fn collect(
        &mut self,
        mut messages: Ordered,
        keep: Keep<'_>,
    ) -> Result<Vec<StoredMessage>, TransportError> {
        let mut kept = Vec::new();
        loop {
            let message = match tokio::time::timeout(IDLE_TIMEOUT, messages.next()).await {
                Err(_elapsed) => {
                    return Err(TransportError::Stalled {
                        stream: self.stream.to_owned(),
                        filter: self.filter.to_owned(),
                        idle: IDLE_TIMEOUT,
                        pending: self.pending,
                    });
                }
                Ok(None) => return Ok(kept),
                Ok(Some(Err(error))) => return Err(self.read_error(error.into())),
                Ok(Some(Ok(message))) => message,
            };
            let info = message.info().map_err(|error| self.read_error(error))?;
            let (stream_seq, pending) = (info.stream_sequence, info.pending);
            let stored_at = info.published.to_chrono().ok_or_else(|| {
                self.read_error(format!("message {stream_seq} has an invalid timestamp").into())
            })?;
            if !self.end.admits(stream_seq, stored_at) {
                return Ok(kept);
            }
            self.pending = pending;
            let stored = StoredMessage {
                stream_seq,
                stored_at,
                subject: message.subject.to_string(),
                headers: header_pairs(message.headers.as_ref()),
                payload: message.payload.to_vec(),
            };
            if keep(&stored) {
                kept.push(stored);
                if self.limit.is_some_and(|limit| kept.len() >= limit) {
                    return Ok(kept);
                }
            }
            if pending == 0 {
                return Ok(kept);
            }
        }
    }

    fn consumer_error(&self, source: async_nats::Error) -> TransportError {
        TransportError::Reader {
            stream: self.stream.to_owned(),
            filter: self.filter.to_owned(),
            source,
        }
    }

    fn read_error(&self, source: async_nats::Error) -> TransportError {
        TransportError::Read {
            stream: self.stream.to_owned(),
            filter: self.filter.to_owned(),
            source,
        }
    }
}

fn deliver_policy(start: ReadStart) -> Result<DeliverPolicy, async_nats::Error> {
    Ok(match start {
        ReadStart::First => DeliverPolicy::All,
        ReadStart::Sequence(start_sequence) => DeliverPolicy::ByStartSequence {
            // sequences start at 1; 0 would be rejected by the server
            start_sequence: start_sequence.max(1),
        },
        ReadStart::Time(time) => DeliverPolicy::ByStartTime {
            start_time: broker_time(time)?,
        },
    })
}

/// For `map_err`: a failure reading `stream`.
fn on_stream(stream: &str) -> impl Fn(async_nats::Error) -> TransportError + '_ {
    move |source| TransportError::Stream {
        stream: stream.to_owned(),
        source,
    }
}

/// `stream` without fetching its info (one request fewer).
async fn open_stream(jetstream: &Context, stream: &str) -> Result<Stream<()>, TransportError> {
    jetstream
        .get_stream_no_info(stream)
        .await
        .map_err(|error| on_stream(stream)(error.into()))
}

/// Header name/value pairs of a message (a name may repeat).
fn header_pairs(headers: Option<&HeaderMap>) -> Vec<(String, String)> {
    headers
        .into_iter()
        .flat_map(|headers| headers.iter())
        .flat_map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(move |value| (name.to_owned(), value.as_str().to_owned()))
        })
        .collect()
}

/// A chrono time as async-nats' timestamp type (whichever backend it was built with).
fn broker_time(time: DateTime<Utc>) -> Result<async_nats::datetime::DateTime, async_nats::Error> {
    let nanos = time
        .timestamp_nanos_opt()
        .ok_or_else(|| format!("{time} is out of the broker's time range"))?;
    async_nats::datetime::from_nanos(i128::from(nanos))
}

/// async-nats timestamps as chrono. async-nats uses `time::OffsetDateTime`, or chrono when its
/// `chrono` feature is on anywhere in the build; both are covered.
trait ToChrono {
    fn to_chrono(&self) -> Option<DateTime<Utc>>;
}

impl ToChrono for time::OffsetDateTime {
    fn to_chrono(&self) -> Option<DateTime<Utc>> {
        i64::try_from(self.unix_timestamp_nanos())
            .ok()
            .map(DateTime::from_timestamp_nanos)
    }
}

impl ToChrono for DateTime<Utc> {
    fn to_chrono(&self) -> Option<DateTime<Utc>> {
        Some(*self)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use jwl_events::OrderId;

    use super::*;

    const ORDER: &str = "0196a3f2-7c1e-7d40-9a51-2f0c8e6b1a01";

    fn order() -> OrderId {
        ORDER.parse().unwrap()
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn stored(seq: u64) -> StoredMessage {
        StoredMessage {
            stream_seq: seq,
            stored_at: at(seq as i64),
            subject: "s".to_owned(),
            headers: Vec::new(),
            payload: Vec::new(),
        }
    }

    #[test]
    fn read_end_stops_at_the_last_sequence_and_time() {
        let end = ReadEnd {
            last_seq: Some(10),
            until: Some(at(5)),
        };
        assert!(end.admits(10, at(5)));
        assert!(!end.admits(11, at(1)));
        assert!(!end.admits(2, at(6)));
        assert_eq!(end.capped_at(7).last_seq, Some(7));
        assert_eq!(end.capped_at(70).last_seq, Some(10));
        assert_eq!(ReadEnd::default().capped_at(70).last_seq, Some(70));
        assert!(ReadEnd::default().admits(u64::MAX, at(1_000_000)));
    }

    #[test]
    fn queries_use_the_narrowest_subjects() {
        assert_eq!(event_filters(&EventQuery::default()), ["jwl.evt.>"]);
        let one_order = EventQuery {
            order: Some(order()),
            ..Default::default()
        };
        let every_type: Vec<String> = EventType::ALL
            .into_iter()
            .flat_map(|ty| {
                let token = ty.subject_token();
                [
                    format!("jwl.evt.{token}.{ORDER}"),
                    format!("jwl.evt.{ORDER}.{token}"),
                ]
            })
            .collect();
        assert_eq!(event_filters(&one_order), every_type);
        let order_types = EventQuery {
            order: Some(order()),
            types: vec![
                EventType::PaymentCaptured,
                EventType::OrderCreated,
                EventType::PaymentCaptured,
            ],
            ..Default::default()
        };
        assert_eq!(
            event_filters(&order_types),
            [
                format!("jwl.evt.order.created.{ORDER}"),
                format!("jwl.evt.{ORDER}.order.created"),
                format!("jwl.evt.payment.captured.{ORDER}"),
                format!("jwl.evt.{ORDER}.payment.captured")
            ]
        );
        let types = EventQuery {
            types: vec![EventType::DispatchFailed],
            ..Default::default()
        };
        assert_eq!(
            event_filters(&types),
            ["jwl.evt.dispatch.failed.*", "jwl.evt.*.dispatch.failed"]
        );
    }

    #[test]
    fn merge_orders_by_sequence_and_applies_the_limit() {
        let merged = merge_by_sequence(
            vec![vec![stored(2), stored(7)], vec![stored(1), stored(5)]],
            Some(3),
        );
        let seqs: Vec<u64> = merged.iter().map(|e| e.stream_seq).collect();
        assert_eq!(seqs, [1, 2, 5]);
    }
}
