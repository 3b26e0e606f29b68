//! The relay's steps, each one statement or one broker round: claim pending rows, publish them,
//! mark the outcome, delete old rows. They are separate functions so that a fault can be
//! injected between publishing and marking (a crash there only causes a duplicate publish,
//! which `Nats-Msg-Id` deduplication and the inbox absorb).

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
    let rows: Vec<PendingRow> = sqlx::query_as(
        "SELECT seq, event_id, subject, headers, payload FROM outbox
         WHERE published_at IS NULL AND parked_at IS NULL
         ORDER BY seq LIMIT $1",
    )
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
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

/// Publishes the whole batch (sent in order, acks awaited together), in a `relay_publish` span
/// linked to the trace context stored with each row.
pub async fn publish(publisher: &dyn Publisher, batch: &OutboxBatch) -> PublishOutcome {
    let span = tracing::info_span!(
        "relay_publish",
        batch_size = batch.len(),
        published = tracing::field::Empty,
        failed = tracing::field::Empty,
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
    let results = publisher
        .publish_batch(&batch.messages)
        .instrument(span.clone())
        .await;
    let mut outcome = PublishOutcome {
        published: Vec::with_capacity(batch.len()),
        failed: Vec::new(),
    };
    for (seq, result) in batch.seqs.iter().copied().zip(results) {
        match result {
            Ok(_) => outcome.published.push(seq),
            Err(error) => outcome.failed.push((seq, error)),
        }
    }
    span.record("published", outcome.published.len());
    span.record("failed", outcome.failed.len());
    outcome
}

/// Marks acknowledged rows published (one statement), and counts an attempt with its error on
/// each failed row (one statement, only if some failed); a permanently rejected row is parked.
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

/// The outbox's [`PendingBacklog`].
pub async fn pending_backlog(conn: &mut PgConnection) -> Result<PendingBacklog, sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) AS rows,
                coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
                    AS oldest_age_seconds
         FROM outbox WHERE published_at IS NULL AND parked_at IS NULL",
    )
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
