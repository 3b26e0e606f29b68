//! The operator tools' read contract ([`History`]) on Kafka: reading topics from a start
//! position up to the high watermarks taken when the read started, with a consumer that never
//! joins a group (partitions are assigned, nothing is committed).
//!
//! - **Sequences.** Kafka has no stream-wide sequence. An event's `stream_seq` is its offset in
//!   its partition (as in publish receipts, `Delivery::stream_sequence` and the dead letters'
//!   `jwl-dlq-stream-seq` header). A sequence bound of an [`EventQuery`] (`ReadStart::Sequence`,
//!   `ReadEnd::last_seq`) therefore applies to the offsets of each partition read: exact for one
//!   order's events (one partition), per partition for a range read. A dead letter's and a
//!   dead-letter log record's `stream_seq` (the `dlq_seq` of the tools) must name one record of
//!   its topic: it is the partition and the offset packed as `partition << 40 | offset`.
//! - **One order** is one key: its partition is computed as the producer computes it (the
//!   `consistent_random` partitioner: CRC-32 of the key modulo the partition count), and only
//!   that partition is read, keeping the messages of that key.
//! - **Range reads** read every partition and merge them by timestamp (each partition stays in
//!   offset order); a time start maps to `offsets_for_times`. The whole range is read, then
//!   `keep` and the limit are applied (the filter is not `'static`, so it cannot run on the
//!   blocking reader).
//! - **Deleting a dead letter.** A Kafka record cannot be deleted. `delete_dead_letter` appends a
//!   marker record to the dead-letter topic (no subject, the `jwl_dlq_deleted` header naming the
//!   `dlq_seq`); reads skip the markers and the dead letters they name. Markers live as long as
//!   the dead letters (the topic keeps everything).
//! - **Backlogs** are the durable consumers of the events topic, found by their retry topics
//!   (`<topic>.retry.<group>`), each with the pending count of
//!   [`Subscriber::backlog`](crate::transport::Subscriber::backlog).
//!
//! Every read ends at the high watermarks it found when it started and never waits for new
//! messages; a partition that yields nothing for [`IDLE_TIMEOUT`] while messages are due fails
//! the read with [`TransportError::Stalled`].

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use jwl_events::{EventType, order_filters, subjects_of, type_filters};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::{ClientCtx, KafkaBroker, follow, subscription, wire};
use crate::protocol::dead_letter::{dead_letter_filter, dead_letter_log_subject};
use crate::settings::MessagingSettings;
use crate::transport::history::{ReadEnd, ReadStart};
use crate::transport::{
    ConsumerBacklog, DeadLetterQuery, EventQuery, FollowedEvents, History, Keep, NamedBacklog,
    StoredMessage, TransportError,
};

/// Longest wait for the next message while a partition has messages due.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// On a marker record of the dead-letter topic: the `dlq_seq` of the dead letter it deletes.
const DELETED: &str = "jwl_dlq_deleted";
/// Bits of a packed sequence holding the offset.
const OFFSET_BITS: u32 = 40;

/// `partition << 40 | offset`: one record of a topic.
fn pack(partition: i32, offset: i64) -> u64 {
    (u64::try_from(partition).unwrap_or_default() << OFFSET_BITS)
        | (u64::try_from(offset).unwrap_or_default() & ((1 << OFFSET_BITS) - 1))
}

/// The partition librdkafka's `consistent_random` partitioner (the producer's, see `mod.rs`)
/// picks for a non-empty `key`: CRC-32 of the key modulo the partition count.
fn partition_of(key: &str, partitions: usize) -> i32 {
    let partitions = u32::try_from(partitions.max(1)).unwrap_or(u32::MAX);
    i32::try_from(crc32fast::hash(key.as_bytes()) % partitions).unwrap_or_default()
}

/// How a read numbers the records it returns (`stream_seq`).
#[derive(Debug, Clone, Copy)]
enum Numbering {
    /// The offset in the partition (the events).
    Offset,
    /// Partition and offset packed ([`pack`]: dead letters and their log).
    Packed,
}

/// Which partitions a read covers.
#[derive(Debug, Clone)]
enum Partitions {
    All,
    /// The one holding this key, keeping only the records of this key.
    Key(String),
}

/// One read of a topic, run on a blocking thread.
struct Scan {
    topic: String,
    partitions: Partitions,
    start: ReadStart,
    /// Applied per partition to the offsets (with [`Numbering::Offset`]) and times.
    end: ReadEnd,
    numbering: Numbering,
    /// Subject filters (NATS rules; empty: every subject).
    filters: Vec<String>,
}

/// A record as read, before `keep`.
struct Record {
    /// The marker's `jwl_dlq_deleted`, when the record is a deletion marker.
    deleted: Option<u64>,
    stored: StoredMessage,
}

/// A record's headers: its subject, its deletion mark, and the rest as the application names
/// them (`ce-id`, …; this transport's own `jwl_` headers left out).
pub(super) struct WireHeaders {
    pub subject: String,
    /// The `jwl_dlq_deleted` of a deletion marker.
    pub deleted: Option<u64>,
    pub headers: Vec<(String, String)>,
}

impl WireHeaders {
    pub fn of(message: &impl Message) -> Self {
        let mut read = WireHeaders {
            subject: String::new(),
            deleted: None,
            headers: Vec::new(),
        };
        let Some(wire_headers) = message.headers() else {
            return read;
        };
        for header in wire_headers.iter() {
            let value = String::from_utf8_lossy(header.value.unwrap_or_default());
            if header.key == wire::SUBJECT {
                read.subject = value.into_owned();
            } else if header.key == DELETED {
                read.deleted = value.parse().ok();
            } else if let Some(name) = wire::from_wire_name(header.key) {
                read.headers.push((name, value.into_owned()));
            }
        }
        read
    }
}

/// What each partition read holds, each in offset order.
type PerPartition = Vec<Vec<Record>>;

#[async_trait]
impl History for KafkaBroker {
    async fn follow_events(
        &self,
        settings: &MessagingSettings,
        types: &[EventType],
    ) -> Result<FollowedEvents, TransportError> {
        follow::follow(self.clone(), &settings.events_stream, types.to_vec()).await
    }

    async fn read_events(
        &self,
        settings: &MessagingSettings,
        query: &EventQuery,
        keep: Keep<'_>,
    ) -> Result<Vec<StoredMessage>, TransportError> {
        if query.limit == Some(0) {
            return Ok(Vec::new());
        }
        let (partitions, filters) = match &query.order {
            Some(order) if query.types.is_empty() => (
                Partitions::Key(order.to_string()),
                order_filters(order).to_vec(),
            ),
            Some(order) => (
                Partitions::Key(order.to_string()),
                query
                    .types
                    .iter()
                    .flat_map(|ty| subjects_of(order, *ty))
                    .collect(),
            ),
            None => (
                Partitions::All,
                query
                    .types
                    .iter()
                    .flat_map(|ty| type_filters(*ty))
                    .collect(),
            ),
        };
        let scan = Scan {
            topic: wire::topic_of(&settings.events_stream)?.to_owned(),
            partitions,
            start: query.start,
            end: query.end,
            numbering: Numbering::Offset,
            filters,
        };
        let read = self.scan(scan).await?;
        Ok(merge(read, keep, query.limit))
    }

    /// Every dead letter is read (the dead-letter topic stays small next to the events), then
    /// those deleted, outside the query or refused by `keep` are left out. `end.last_seq`
    /// compares packed sequences (partition first), so only `end.until` is meaningful here.
    async fn read_dead_letters(
        &self,
        settings: &MessagingSettings,
        query: &DeadLetterQuery,
        keep: Keep<'_>,
    ) -> Result<Vec<StoredMessage>, TransportError> {
        if query.limit == Some(0) {
            return Ok(Vec::new());
        }
        let order = query.order.map(|order| order.to_string());
        let filter = dead_letter_filter(query.consumer.as_deref(), order.as_deref());
        let letters = self.dead_letters(settings, vec![filter]).await?;
        let end = query.end;
        let keep_inside = |message: &StoredMessage| {
            end.admits(message.stream_seq, message.stored_at) && keep(message)
        };
        Ok(merge(letters, &keep_inside, query.limit))
    }

    async fn dead_letter(
        &self,
        settings: &MessagingSettings,
        dlq_seq: u64,
    ) -> Result<Option<StoredMessage>, TransportError> {
        let letters = self.dead_letters(settings, Vec::new()).await?;
        Ok(letters
            .into_iter()
            .flatten()
            .map(|record| record.stored)
            .find(|stored| stored.stream_seq == dlq_seq))
    }

    /// Appends a deletion marker for `dlq_seq` (see the module doc); nothing when the dead
    /// letter is not there (or already deleted).
    async fn delete_dead_letter(
        &self,
        settings: &MessagingSettings,
        dlq_seq: u64,
    ) -> Result<(), TransportError> {
        if self.dead_letter(settings, dlq_seq).await?.is_none() {
            return Ok(());
        }
        let topic = wire::topic_of(&settings.dlq_stream)?;
        let delete_error = |source: crate::handler::BoxError| TransportError::Delete {
            stream: topic.to_owned(),
            seq: dlq_seq,
            source,
        };
        let seq = dlq_seq.to_string();
        let headers = OwnedHeaders::new().insert(Header {
            key: DELETED,
            value: Some(seq.as_str()),
        });
        let record = FutureRecord::<str, [u8]>::to(topic)
            .key(seq.as_str())
            .payload(&[])
            .headers(headers);
        let sent = self
            .inner
            .producer
            .send_result(record)
            .map_err(|(error, _record)| delete_error(error.into()))?;
        match sent.await {
            Ok(Ok(_delivery)) => Ok(()),
            Ok(Err((error, _message))) => Err(delete_error(error.into())),
            Err(_canceled) => Err(delete_error(
                "the Kafka producer went away before reporting the delivery".into(),
            )),
        }
    }

    async fn read_dead_letter_log(
        &self,
        settings: &MessagingSettings,
    ) -> Result<Vec<StoredMessage>, TransportError> {
        let scan = Scan {
            topic: wire::topic_of(&settings.dlq_log_stream)?.to_owned(),
            partitions: Partitions::All,
            start: ReadStart::First,
            end: ReadEnd::default(),
            numbering: Numbering::Packed,
            filters: Vec::new(),
        };
        let read = self.scan(scan).await?;
        Ok(merge(read, &|_| true, None))
    }

    /// A log record's key is its subject (`jwl.dlqlog.<seq>`): one partition is read.
    async fn dead_letter_logged(
        &self,
        settings: &MessagingSettings,
        dlq_seq: u64,
    ) -> Result<bool, TransportError> {
        let subject = dead_letter_log_subject(dlq_seq);
        let scan = Scan {
            topic: wire::topic_of(&settings.dlq_log_stream)?.to_owned(),
            partitions: Partitions::Key(subject.clone()),
            start: ReadStart::First,
            end: ReadEnd::default(),
            numbering: Numbering::Packed,
            filters: vec![subject],
        };
        let read = self.scan(scan).await?;
        Ok(read.iter().any(|records| !records.is_empty()))
    }

    async fn consumer_backlogs(
        &self,
        settings: &MessagingSettings,
    ) -> Result<Vec<NamedBacklog>, TransportError> {
        let topic = wire::topic_of(&settings.events_stream)?.to_owned();
        let broker = self.clone();
        let stream = topic.clone();
        let pending = tokio::task::spawn_blocking(move || broker.group_backlogs(&topic))
            .await
            .map_err(|error| on_stream(&stream, error.into()))??;
        let mut backlogs: Vec<NamedBacklog> = pending
            .into_iter()
            .map(|(name, pending)| {
                let (ack_pending, redelivered) = self.in_hand(&name);
                NamedBacklog {
                    name,
                    backlog: ConsumerBacklog {
                        pending,
                        ack_pending,
                        redelivered,
                    },
                }
            })
            .collect();
        backlogs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(backlogs)
    }
}

impl KafkaBroker {
    /// The dead letters of the dead-letter topic on `filters` (every one when empty), without
    /// the deletion markers and the dead letters they delete.
    async fn dead_letters(
        &self,
        settings: &MessagingSettings,
        filters: Vec<String>,
    ) -> Result<PerPartition, TransportError> {
        let scan = Scan {
            topic: wire::topic_of(&settings.dlq_stream)?.to_owned(),
            partitions: Partitions::All,
            start: ReadStart::First,
            end: ReadEnd::default(),
            numbering: Numbering::Packed,
            // the markers have no subject: filtered below, once they are known
            filters: Vec::new(),
        };
        let read = self.scan(scan).await?;
        let deleted: BTreeSet<u64> = read
            .iter()
            .flatten()
            .filter_map(|record| record.deleted)
            .collect();
        Ok(read
            .into_iter()
            .map(|records| {
                records
                    .into_iter()
                    .filter(|record| {
                        record.deleted.is_none()
                            && !deleted.contains(&record.stored.stream_seq)
                            && wire::matches_any(&filters, &record.stored.subject)
                    })
                    .collect()
            })
            .collect())
    }

    /// Runs `scan` on a blocking thread.
    async fn scan(&self, scan: Scan) -> Result<PerPartition, TransportError> {
        let broker = self.clone();
        let topic = scan.topic.clone();
        tokio::task::spawn_blocking(move || broker.scan_blocking(&scan))
            .await
            .map_err(|error| on_stream(&topic, error.into()))?
    }

    /// A consumer that is assigned partitions and never joins its group nor commits.
    pub(super) fn reader(&self) -> Result<BaseConsumer<ClientCtx>, KafkaError> {
        self.inner
            .settings
            .client_config()
            .set("group.id", "jwl-history-reader")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create_with_context(self.inner.context.clone())
    }

    /// Reads `scan` (blocking): the partitions' watermarks and start offsets, then one assigned
    /// reader polled until every partition reached its end; each partition's records in offset
    /// order, partitions in id order.
    fn scan_blocking(&self, scan: &Scan) -> Result<PerPartition, TransportError> {
        let failed = |error: KafkaError| on_stream(&scan.topic, error.into());
        let timeout = self.inner.settings.request_timeout;
        let reader = self.reader().map_err(failed)?;
        let partitions = partition_ids(&reader, &scan.topic, timeout)?;
        let (wanted, key) = match &scan.partitions {
            Partitions::All => (partitions, None),
            Partitions::Key(key) => (
                vec![partition_of(key, partitions.len())],
                Some(key.as_str()),
            ),
        };
        // [from, high) of each partition, high taken now
        let mut ranges: Vec<(i32, i64, i64)> = Vec::with_capacity(wanted.len());
        for &partition in &wanted {
            let (low, high) = reader
                .fetch_watermarks(&scan.topic, partition, timeout)
                .map_err(failed)?;
            ranges.push((partition, low, high));
        }
        match scan.start {
            ReadStart::First => {}
            ReadStart::Sequence(seq) => {
                let seq = i64::try_from(seq).unwrap_or(i64::MAX);
                for (_, from, high) in &mut ranges {
                    *from = seq.clamp(*from, *high);
                }
            }
            ReadStart::Time(time) => {
                let mut times = TopicPartitionList::new();
                for (partition, _, _) in &ranges {
                    times
                        .add_partition_offset(
                            &scan.topic,
                            *partition,
                            Offset::Offset(time.timestamp_millis()),
                        )
                        .map_err(failed)?;
                }
                let found = reader.offsets_for_times(times, timeout).map_err(failed)?;
                let starts: HashMap<i32, Offset> = found
                    .elements()
                    .iter()
                    .map(|element| (element.partition(), element.offset()))
                    .collect();
                // the list must not outlive the consumer (librdkafka would hang destroying it)
                drop(found);
                for (partition, from, high) in &mut ranges {
                    *from = match starts.get(partition) {
                        Some(Offset::Offset(start)) => (*start).clamp(*from, *high),
                        // no message at or after the time
                        _ => *high,
                    };
                }
            }
        }
        let due: Vec<(i32, i64, i64)> = ranges
            .into_iter()
            .filter(|(_, from, high)| from < high)
            .collect();
        let mut read: HashMap<i32, Vec<Record>> = due
            .iter()
            .map(|(partition, _, _)| (*partition, Vec::new()))
            .collect();
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let mut assignment = TopicPartitionList::new();
        for (partition, from, _) in &due {
            assignment
                .add_partition_offset(&scan.topic, *partition, Offset::Offset(*from))
                .map_err(failed)?;
        }
        reader.assign(&assignment).map_err(failed)?;
        drop(assignment);
        // the last offset to read of each partition still being read
        let mut open: HashMap<i32, i64> = due
            .iter()
            .map(|(partition, _, high)| (*partition, high - 1))
            .collect();
        let mut last_message = Instant::now();
        while !open.is_empty() {
            let Some(polled) = reader.poll(Duration::from_millis(100)) else {
                if last_message.elapsed() >= IDLE_TIMEOUT {
                    return Err(TransportError::Stalled {
                        stream: scan.topic.clone(),
                        filter: format!("partitions {:?}", open.keys().collect::<Vec<_>>()),
                        idle: IDLE_TIMEOUT,
                        pending: open.len() as u64,
                    });
                }
                continue;
            };
            last_message = Instant::now();
            let message = polled.map_err(failed)?;
            let (partition, offset) = (message.partition(), message.offset());
            let Some(&last) = open.get(&partition) else {
                continue;
            };
            if offset >= last {
                open.remove(&partition);
            }
            if offset > last {
                continue;
            }
            let stored_at = message
                .timestamp()
                .to_millis()
                .and_then(DateTime::<Utc>::from_timestamp_millis)
                .unwrap_or_default();
            let stream_seq = match scan.numbering {
                Numbering::Offset => u64::try_from(offset).unwrap_or_default(),
                Numbering::Packed => pack(partition, offset),
            };
            if matches!(scan.numbering, Numbering::Offset)
                && !scan.end.admits(stream_seq, stored_at)
            {
                open.remove(&partition);
                continue;
            }
            // a time start is also checked here: the broker's time index is approximate
            if let ReadStart::Time(start) = scan.start
                && stored_at < start
            {
                continue;
            }
            if key.is_some_and(|key| message.key() != Some(key.as_bytes())) {
                continue;
            }
            let WireHeaders {
                subject,
                deleted,
                headers,
            } = WireHeaders::of(&message);
            if deleted.is_none() && !wire::matches_any(&scan.filters, &subject) {
                continue;
            }
            let record = Record {
                deleted,
                stored: StoredMessage {
                    stream_seq,
                    stored_at,
                    subject,
                    headers,
                    payload: message.payload().unwrap_or_default().to_vec(),
                },
            };
            read.entry(partition).or_default().push(record);
        }
        reader.unassign().map_err(failed)?;
        let mut read: Vec<(i32, Vec<Record>)> = read.into_iter().collect();
        read.sort_by_key(|(partition, _)| *partition);
        Ok(read.into_iter().map(|(_, records)| records).collect())
    }

    /// Each durable consumer of `topic` with its pending count (see [`subscription::unread`]).
    /// The durables are found by their retry topics (`<topic>.retry.<group>`, created when a
    /// group subscribes), not by listing the broker's groups: `ListGroups` is not served by
    /// every Kafka-protocol broker (tansu drops the connection), and it also lists groups that
    /// are not this transport's.
    fn group_backlogs(&self, topic: &str) -> Result<Vec<(String, u64)>, TransportError> {
        let failed = |error: KafkaError| on_stream(topic, error.into());
        let timeout = self.inner.settings.request_timeout;
        let metadata = self
            .inner
            .producer
            .client()
            .fetch_metadata(None, timeout)
            .map_err(failed)?;
        let prefix = format!("{topic}.retry.");
        let names: BTreeSet<String> = metadata
            .topics()
            .iter()
            .filter_map(|found| found.name().strip_prefix(prefix.as_str()))
            .filter(|group| !group.is_empty())
            .map(str::to_owned)
            .collect();
        let mut backlogs = Vec::with_capacity(names.len());
        for name in names {
            let reader = self.offset_reader(&name)?;
            let topics = [topic.to_owned(), format!("{prefix}{name}")];
            let pending = subscription::unread(&reader, &topics, timeout).map_err(failed)?;
            backlogs.push((name, pending));
        }
        Ok(backlogs)
    }
}

/// The partition ids of `topic`, sorted; an error when the topic does not exist.
pub(super) fn partition_ids(
    client: &BaseConsumer<ClientCtx>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, TransportError> {
    let metadata = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|error| on_stream(topic, error.into()))?;
    let found = metadata
        .topics()
        .iter()
        .find(|found| found.name() == topic)
        .filter(|found| found.error().is_none() && !found.partitions().is_empty())
        .ok_or_else(|| on_stream(topic, "the topic does not exist".into()))?;
    let mut ids: Vec<i32> = found.partitions().iter().map(|p| p.id()).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Applies `keep` to each partition's records, merges the partitions by timestamp (each
/// partition in offset order; ties go to the lower partition) and keeps the first `limit`.
fn merge(read: PerPartition, keep: Keep<'_>, limit: Option<usize>) -> Vec<StoredMessage> {
    let mut queues: Vec<std::vec::IntoIter<StoredMessage>> = read
        .into_iter()
        .map(|records| {
            let mut kept: Vec<StoredMessage> = records
                .into_iter()
                .map(|record| record.stored)
                .filter(|stored| keep(stored))
                .collect();
            if let Some(limit) = limit {
                kept.truncate(limit);
            }
            kept.into_iter()
        })
        .collect();
    let mut heads: Vec<Option<StoredMessage>> = queues.iter_mut().map(Iterator::next).collect();
    let mut merged = Vec::new();
    while limit.is_none_or(|limit| merged.len() < limit) {
        let next = heads
            .iter()
            .enumerate()
            .filter_map(|(index, head)| head.as_ref().map(|head| (head.stored_at, index)))
            .min();
        let Some((_, index)) = next else { break };
        if let Some(head) = heads[index].take() {
            merged.push(head);
        }
        heads[index] = queues[index].next();
    }
    merged
}

pub(super) fn on_stream(stream: &str, source: crate::handler::BoxError) -> TransportError {
    TransportError::Stream {
        stream: stream.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(seq: u64, millis: i64) -> StoredMessage {
        StoredMessage {
            stream_seq: seq,
            stored_at: DateTime::from_timestamp_millis(1_800_000_000_000 + millis)
                .unwrap_or_default(),
            subject: "s".to_owned(),
            headers: Vec::new(),
            payload: Vec::new(),
        }
    }

    fn records(messages: Vec<StoredMessage>) -> Vec<Record> {
        messages
            .into_iter()
            .map(|stored| Record {
                deleted: None,
                stored,
            })
            .collect()
    }

    #[test]
    fn packed_sequences_name_one_record() {
        assert_eq!(pack(0, 41), 41);
        assert_eq!(pack(3, 7), (3 << 40) + 7);
        assert_ne!(pack(1, 0), pack(0, 1));
    }

    #[test]
    fn keys_go_where_librdkafka_puts_them() {
        // the CRC-32 of librdkafka's rd_crc32 (IEEE, reflected): the standard check value
        assert_eq!(crc32fast::hash(b"123456789"), 0xcbf4_3926);
        assert_eq!(partition_of("123456789", 4), (0xcbf4_3926u32 % 4) as i32);
    }

    #[test]
    fn merge_keeps_partition_order_and_the_limit() {
        let read = vec![
            records(vec![stored(0, 5), stored(1, 1), stored(2, 9)]),
            records(vec![stored(10, 2), stored(11, 3)]),
        ];
        let merged = merge(read, &|message| message.stream_seq != 11, Some(3));
        let seqs: Vec<u64> = merged.iter().map(|m| m.stream_seq).collect();
        // partition 0 stays in offset order even though its second record is older
        assert_eq!(seqs, [10, 0, 1]);
    }
}
