//! The relay's steps, each one statement or a few broker rounds: claim pending rows, publish
//! them, mark the outcome, delete old rows. They are separate functions so that a fault can be
//! injected between publishing and marking (a crash there only causes a duplicate publish,
//! which `Nats-Msg-Id` deduplication and the inbox absorb).
//!
//! **Order under a partial failure.** Acks are awaited together, so when row N fails the rows
//! sent after it may already be in the stream; republishing them later cannot move them back
//! behind N (the broker deduplicates the second copy and keeps the first, in its old place).
//! So [`publish`] never has two rows of the same order (CloudEvents `subject`) in flight at
//! once: it sends the batch in *rounds*, each the longest run of rows (in `seq` order) with no
//! order twice, and sends an order's next row only once its previous one is acknowledged. When
//! a row fails transiently, its order's later rows of the batch are not sent at all (they are
//! [`PublishOutcome::deferred`]: left pending, sent after the retry); other orders go on. With
//! no failure the stream receives the batch in exact `seq` order, in one round when no order
//! repeats in the batch (the common case) and one more per repeat otherwise.

use std::collections::HashSet;

use bytes::Bytes;
use sqlx::PgConnection;
use sqlx::types::Json;
use tracing::Instrument;
use uuid::Uuid;

use crate::trace_context;

use crate::transport::{OutboundMessage, Publisher, TransportError};

/// Pending outbox rows in `seq` order, ready to publish.
#[derive(Debug, Default)]
pub struct OutboxBatch {
    /// `seq` of each row, parallel to `messages`.
    pub seqs: Vec<i64>,
    pub messages: Vec<OutboundMessage>,
}

impl OutboxBatch {
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

/// What the broker said about each row of a batch.
#[derive(Debug, Default)]
pub struct PublishOutcome {
    /// Rows the broker acknowledged (including as a duplicate).
    pub published: Vec<i64>,
    /// Rows it did not, with the reason.
    pub failed: Vec<(i64, TransportError)>,
    /// Rows not sent because an earlier row of the same order failed transiently: neither
    /// published nor attempted, they stay pending and go out after that row.
    pub deferred: Vec<i64>,
}

#[derive(sqlx::FromRow)]
struct PendingRow {
    seq: i64,
    event_id: Uuid,
    subject: String,
    headers: Json<Vec<(String, String)>>,
    payload: Vec<u8>,
}

/// Up to `limit` unpublished (and not parked) rows, oldest `seq` first.
pub async fn claim_pending(
    conn: &mut PgConnection,
    limit: usize,
) -> Result<OutboxBatch, sqlx::Error> {
    claim_pending_in(conn, (1, 0), limit, Unmarked::Keep(&[])).await
}

/// The rows a relay published and has not marked published yet, as a claim is to treat them:
/// it never hands them out again (its snapshot may still see them pending), and it marks them
/// in the same statement or leaves them to a later mark.
#[derive(Debug, Clone, Copy)]
pub enum Unmarked<'a> {
    /// Skip them and mark them published: the claim writes, so its commit waits for a WAL flush.
    Mark(&'a [i64]),
    /// Skip them only: a claim that marks nothing writes nothing and commits without a flush.
    Keep(&'a [i64]),
}

/// The claim of [`claim_pending_in`]: marks the rows `$4` published, and reads up to `$1`
/// pending rows of partition `$3` of `$2`, in `seq` order, skipping the rows `$5`. The SELECT
/// reads the snapshot taken before the UPDATE ran, where the rows it marks are still pending: it
/// skips them by `seq`. An UPDATE of no row takes no transaction id, so the commit of a claim
/// that marks nothing writes no WAL.
pub(super) const CLAIM: &str = "WITH marked AS (
   UPDATE outbox SET published_at = now() WHERE seq = ANY($4)
 )
 SELECT seq, event_id, subject, headers, payload FROM outbox
 WHERE published_at IS NULL AND parked_at IS NULL
   AND ($2 = 1 OR coalesce(order_hash, 0) % $2 = $3)
   AND seq <> ALL($5)
 ORDER BY seq LIMIT $1";

/// [`claim_pending`] of one relay partition, given as (partition count, partition index),
/// skipping the rows the relay published and has not marked yet ([`Unmarked`]), and marking them
/// in the same statement (so the same transaction) when asked: a relay kept busy marks with the
/// round trip it claims with, not one of its own. A row's partition is `order_hash % partitions`
/// (NULL, from a binary older than the column, counts as partition 0); the walk follows
/// `outbox_pending_idx` in `seq` order.
pub async fn claim_pending_in(
    conn: &mut PgConnection,
    (partitions, partition): (i32, i32),
    limit: usize,
    unmarked: Unmarked<'_>,
) -> Result<OutboxBatch, sqlx::Error> {
    let (mark, skip) = match unmarked {
        Unmarked::Mark(seqs) => (seqs, seqs),
        Unmarked::Keep(seqs) => (&[][..], seqs),
    };
    let rows: Vec<PendingRow> = sqlx::query_as(CLAIM)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(partitions)
        .bind(partition)
        .bind(mark)
        .bind(skip)
        .fetch_all(conn)
        .await?;
    let mut batch = OutboxBatch {
        seqs: Vec::with_capacity(rows.len()),
        messages: Vec::with_capacity(rows.len()),
    };
    for row in rows {
        batch.seqs.push(row.seq);
        batch.messages.push(OutboundMessage {
            dedup_id: row.event_id.to_string(),
            subject: row.subject,
            headers: row.headers.0,
            payload: Bytes::from(row.payload),
        });
    }
    Ok(batch)
}

/// CloudEvents `traceparent` extension as a NATS header (binary mode).
const TRACEPARENT_HEADER: &str = "ce-traceparent";

/// Publishes the batch in rounds that never hold two rows of one order (see the module doc),
/// in a `relay_publish` span linked to the trace context stored with each row.
pub async fn publish(publisher: &dyn Publisher, batch: &OutboxBatch) -> PublishOutcome {
    let span = tracing::info_span!(
        "relay_publish",
        batch_size = batch.len(),
        rounds = tracing::field::Empty,
        published = tracing::field::Empty,
        failed = tracing::field::Empty,
        deferred = tracing::field::Empty,
        otel.kind = "producer",
    );
    for message in &batch.messages {
        if let Some((_, traceparent)) = message
            .headers
            .iter()
            .find(|(name, _)| name == TRACEPARENT_HEADER)
        {
            trace_context::add_link(&span, traceparent);
        }
    }
    let mut outcome = PublishOutcome {
        published: Vec::with_capacity(batch.len()),
        failed: Vec::new(),
        deferred: Vec::new(),
    };
    let keys: Vec<&str> = batch.messages.iter().map(ordering_key).collect();
    // orders with a row that failed transiently in this batch: their later rows wait
    let mut stopped: HashSet<&str> = HashSet::new();
    let mut rounds = 0usize;
    let mut next = 0;
    while next < batch.len() {
        let round = next..round_end(&keys, next);
        next = round.end;
        let sendable: Vec<usize> = round
            .clone()
            .filter(|&i| {
                let blocked = stopped.contains(keys[i]);
                if blocked {
                    outcome.deferred.push(batch.seqs[i]);
                }
                !blocked
            })
            .collect();
        if sendable.is_empty() {
            continue;
        }
        rounds += 1;
        let results = if sendable.len() == round.len() {
            publisher
                .publish_batch(&batch.messages[round])
                .instrument(span.clone())
                .await
        } else {
            let messages: Vec<OutboundMessage> = sendable
                .iter()
                .map(|&i| batch.messages[i].clone())
                .collect();
            publisher
                .publish_batch(&messages)
                .instrument(span.clone())
                .await
        };
        for (i, result) in sendable.into_iter().zip(results) {
            match result {
                Ok(_) => outcome.published.push(batch.seqs[i]),
                Err(error) => {
                    // a parked row never goes out, so it holds nothing back
                    if !error.is_permanent() {
                        stopped.insert(keys[i]);
                    }
                    outcome.failed.push((batch.seqs[i], error));
                }
            }
        }
    }
    span.record("rounds", rounds);
    span.record("published", outcome.published.len());
    span.record("failed", outcome.failed.len());
    span.record("deferred", outcome.deferred.len());
    outcome
}

/// CloudEvents `subject` attribute (binary mode): the order an event belongs to.
const SUBJECT_HEADER: &str = "ce-subject";

/// The key whose rows must reach the broker in `seq` order: the event's order (its CloudEvents
/// subject), or the broker subject for a row without one.
pub(super) fn ordering_key(message: &OutboundMessage) -> &str {
    ordering_key_of(&message.subject, &message.headers)
}

/// [`ordering_key`] of a row's broker subject and headers (also the key its relay partition is
/// hashed from).
pub(crate) fn ordering_key_of<'m>(subject: &'m str, headers: &'m [(String, String)]) -> &'m str {
    headers
        .iter()
        .find(|(name, _)| name == SUBJECT_HEADER)
        .map_or(subject, |(_, value)| value.as_str())
}

/// The end of the round starting at `start`: the first row whose key already occurs in the
/// round (or the end of the batch). A round holds at least one row.
fn round_end(keys: &[&str], start: usize) -> usize {
    let mut seen: HashSet<&str> = HashSet::new();
    keys[start..]
        .iter()
        .position(|key| !seen.insert(key))
        .map_or(keys.len(), |offset| start + offset)
}

/// Marks acknowledged rows published (one statement), and counts an attempt with its error on
/// each failed row (one statement, only if some failed); a permanently rejected row is parked.
/// Deferred rows are left as they are.
pub async fn mark(conn: &mut PgConnection, outcome: &PublishOutcome) -> Result<(), sqlx::Error> {
    if !outcome.published.is_empty() {
        sqlx::query("UPDATE outbox SET published_at = now() WHERE seq = ANY($1)")
            .bind(&outcome.published)
            .execute(&mut *conn)
            .await?;
    }
    if !outcome.failed.is_empty() {
        let seqs: Vec<i64> = outcome.failed.iter().map(|(seq, _)| *seq).collect();
        let errors: Vec<String> = outcome
            .failed
            .iter()
            .map(|(_, error)| error.to_string())
            .collect();
        let permanent: Vec<bool> = outcome
            .failed
            .iter()
            .map(|(_, error)| error.is_permanent())
            .collect();
        sqlx::query(
            "UPDATE outbox AS o
             SET attempts = o.attempts + 1,
                 last_error = f.error,
                 parked_at = CASE WHEN f.permanent THEN now() ELSE o.parked_at END
             FROM unnest($1::bigint[], $2::text[], $3::bool[]) AS f(seq, error, permanent)
             WHERE o.seq = f.seq",
        )
        .bind(&seqs)
        .bind(&errors)
        .bind(&permanent)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The rows not yet published (and not parked): how many, and how long the oldest has waited.
#[derive(Debug, Clone, Copy, PartialEq, sqlx::FromRow)]
pub struct PendingBacklog {
    pub rows: i64,
    /// 0 when nothing is pending.
    pub oldest_age_seconds: f64,
}

/// The [`PendingBacklog`] of one relay partition, given as (partition count, partition index).
/// Rows in `unmarked` (acknowledged by the broker, not marked published yet) are not counted.
pub async fn pending_backlog(
    conn: &mut PgConnection,
    (partitions, partition): (i32, i32),
    unmarked: &[i64],
) -> Result<PendingBacklog, sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) AS rows,
                coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
                    AS oldest_age_seconds
         FROM outbox WHERE published_at IS NULL AND parked_at IS NULL
           AND ($1 = 1 OR coalesce(order_hash, 0) % $1 = $2)
           AND seq <> ALL($3)",
    )
    .bind(partitions)
    .bind(partition)
    .bind(unmarked)
    .fetch_one(conn)
    .await
}

/// Rows deleted per statement by the retention steps, so no statement runs long.
const DELETE_CHUNK: i64 = 5_000;

/// Deletes up to one chunk of rows published more than `retention` ago; returns how many.
pub async fn delete_published(
    conn: &mut PgConnection,
    retention: std::time::Duration,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query(
        "DELETE FROM outbox WHERE seq IN (
             SELECT seq FROM outbox WHERE published_at < now() - make_interval(secs => $1)
             LIMIT $2)",
    )
    .bind(retention.as_secs_f64())
    .bind(DELETE_CHUNK)
    .execute(conn)
    .await?;
    Ok(deleted.rows_affected())
}

/// Deletes up to one chunk of inbox rows handled more than `retention` ago; returns how many.
pub async fn delete_handled(
    conn: &mut PgConnection,
    retention: std::time::Duration,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query(
        "DELETE FROM inbox WHERE (consumer, event_id) IN (
             SELECT consumer, event_id FROM inbox
             WHERE handled_at < now() - make_interval(secs => $1)
             LIMIT $2)",
    )
    .bind(retention.as_secs_f64())
    .bind(DELETE_CHUNK)
    .execute(conn)
    .await?;
    Ok(deleted.rows_affected())
}

/// Whether a retention step deleted a full chunk (more may be left).
pub(crate) fn chunk_was_full(deleted: u64) -> bool {
    deleted >= DELETE_CHUNK as u64
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::transport::PublishReceipt;

    /// Records each round it is given and fails the listed dedup ids (transiently, or for good
    /// when the id starts with `too-big`).
    struct Scripted {
        fail: Vec<&'static str>,
        rounds: Mutex<Vec<Vec<String>>>,
    }

    #[async_trait]
    impl Publisher for Scripted {
        async fn publish_batch(
            &self,
            batch: &[OutboundMessage],
        ) -> Vec<Result<PublishReceipt, TransportError>> {
            let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
            rounds.push(batch.iter().map(|m| m.dedup_id.clone()).collect());
            batch
                .iter()
                .map(|m| {
                    if !self.fail.contains(&m.dedup_id.as_str()) {
                        Ok(PublishReceipt {
                            sequence: 1,
                            duplicate: false,
                        })
                    } else if m.dedup_id.starts_with("too-big") {
                        Err(TransportError::Rejected("too big".to_owned()))
                    } else {
                        Err(TransportError::Publish("down".into()))
                    }
                })
                .collect()
        }
    }

    /// Rows `(dedup id, order)`, with `seq` 1, 2, …
    fn batch(rows: &[(&str, &str)]) -> OutboxBatch {
        let mut batch = OutboxBatch::default();
        for (i, (id, order)) in rows.iter().enumerate() {
            batch.seqs.push(i as i64 + 1);
            batch.messages.push(OutboundMessage {
                dedup_id: (*id).to_owned(),
                subject: format!("jwl.evt.{order}.payment.captured"),
                headers: vec![(SUBJECT_HEADER.to_owned(), (*order).to_owned())],
                payload: Bytes::new(),
            });
        }
        batch
    }

    async fn run(
        rows: &[(&str, &str)],
        fail: Vec<&'static str>,
    ) -> (PublishOutcome, Vec<Vec<String>>) {
        let publisher = Scripted {
            fail,
            rounds: Mutex::new(Vec::new()),
        };
        let outcome = publish(&publisher, &batch(rows)).await;
        let rounds = publisher
            .rounds
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        (outcome, rounds)
    }

    #[tokio::test]
    async fn distinct_orders_go_in_one_round_in_seq_order() {
        let (outcome, rounds) = run(&[("a0", "A"), ("b0", "B"), ("c0", "C")], vec![]).await;
        assert_eq!(rounds, vec![vec!["a0", "b0", "c0"]]);
        assert_eq!(outcome.published, vec![1, 2, 3]);
        assert!(outcome.failed.is_empty() && outcome.deferred.is_empty());
    }

    #[tokio::test]
    async fn a_repeated_order_starts_a_new_round_and_seq_order_is_kept() {
        let rows = [
            ("a0", "A"),
            ("b0", "B"),
            ("a1", "A"),
            ("c0", "C"),
            ("b1", "B"),
        ];
        let (outcome, rounds) = run(&rows, vec![]).await;
        assert_eq!(rounds, vec![vec!["a0", "b0"], vec!["a1", "c0", "b1"]]);
        assert_eq!(outcome.published, vec![1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn after_a_transient_failure_the_orders_later_rows_are_not_sent() {
        let rows = [
            ("a0", "A"),
            ("b0", "B"),
            ("a1", "A"),
            ("b1", "B"),
            ("a2", "A"),
        ];
        let (outcome, rounds) = run(&rows, vec!["a0"]).await;
        assert_eq!(rounds, vec![vec!["a0", "b0"], vec!["b1"]]);
        assert_eq!(outcome.published, vec![2, 4]);
        assert_eq!(outcome.failed.len(), 1);
        assert_eq!(outcome.failed[0].0, 1);
        assert_eq!(outcome.deferred, vec![3, 5]);
    }

    #[tokio::test]
    async fn a_permanently_rejected_row_holds_nothing_back() {
        let rows = [("too-big", "A"), ("a1", "A")];
        let (outcome, rounds) = run(&rows, vec!["too-big"]).await;
        assert_eq!(rounds, vec![vec!["too-big"], vec!["a1"]]);
        assert_eq!(outcome.published, vec![2]);
        assert!(outcome.failed[0].1.is_permanent());
        assert!(outcome.deferred.is_empty());
    }

    #[tokio::test]
    async fn a_broker_outage_costs_one_round() {
        let rows = [("a0", "A"), ("a1", "A"), ("a2", "A")];
        let (outcome, rounds) = run(&rows, vec!["a0", "a1", "a2"]).await;
        assert_eq!(rounds, vec![vec!["a0"]]);
        assert_eq!(outcome.deferred, vec![2, 3]);
    }
}
