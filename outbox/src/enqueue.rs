//! Writing events to the outbox inside the caller's transaction: [`enqueue`] for one, and
//! [`OutboxRow`]s written together by [`insert_rows`] for the events a consumer's handlers emit
//! during a batch (one statement for all of them). The relay is told afterwards, by
//! [`RelaySignal::committed_rows`](crate::RelaySignal::committed_rows) with the [`Enqueued`]
//! rows (which may then be published at once, see [`crate::relay`]'s hand-over) or
//! [`RelaySignal::committed`](crate::RelaySignal::committed).

use std::borrow::Borrow;

use bytes::Bytes;
use jwl_events::{Envelope, HeaderStyle, WireMessage};
use sqlx::PgConnection;
use sqlx::types::Json;
use uuid::Uuid;

use crate::error::OutboxError;
use crate::relay::{Enqueued, Written};
use crate::trace_context;
use crate::transport::OutboundMessage;

/// Prefix of the `LISTEN/NOTIFY` channel the relay of a schema listens on.
pub(crate) const CHANNEL_PREFIX: &str = "jwl_outbox.";

/// The notification channel of the relay for `schema`: `jwl_outbox.<schema>`.
pub fn notify_channel(schema: &str) -> String {
    format!("{CHANNEL_PREFIX}{schema}")
}

/// Encodes `env` (CloudEvents binary mode, NATS headers) and inserts it into the outbox of the
/// connection's current schema. Call it inside the transaction that makes the state change the
/// event reports, and [`RelaySignal::committed`](crate::RelaySignal::committed) after the commit
/// (without it the relay finds the row at its next poll). No `NOTIFY` here: see
/// [`RelaySignal`](crate::RelaySignal) for why.
///
/// The W3C `traceparent` is captured here, with the row (see [`OutboxRow::encode`]).
pub async fn enqueue(conn: &mut PgConnection, env: &Envelope) -> Result<Enqueued, OutboxError> {
    enqueue_all(conn, &[env]).await
}

/// [`enqueue`] for several events (owned or borrowed) in one statement, in their order.
pub async fn enqueue_all<E: Borrow<Envelope>>(
    conn: &mut PgConnection,
    envs: &[E],
) -> Result<Enqueued, OutboxError> {
    let rows: Vec<OutboxRow> = envs
        .iter()
        .map(|env| OutboxRow::encode(env.borrow()))
        .collect();
    Ok(insert_rows(conn, &rows).await?)
}

/// An event encoded for the outbox, not written yet.
pub(crate) struct OutboxRow {
    event_id: Uuid,
    wire: WireMessage,
}

impl OutboxRow {
    /// Encodes `env` as the outbox stores it. The W3C `traceparent` is captured now: encoded
    /// inside a span of the event's own trace (or of any trace, when the event has none), the
    /// event is parented by that span rather than by an earlier one it was given (see
    /// [`trace_context::traceparent_to_store`]).
    pub(crate) fn encode(env: &Envelope) -> Self {
        Self::encode_under(env, trace_context::current_traceparent())
    }

    /// [`OutboxRow::encode`] as if inside the span whose `traceparent` is `current`.
    pub(crate) fn encode_under(env: &Envelope, current: Option<String>) -> Self {
        let traceparent = trace_context::traceparent_to_store(env.traceparent.as_deref(), current);
        let wire = if traceparent == env.traceparent {
            jwl_events::encode(env, HeaderStyle::NEUTRAL)
        } else {
            let mut env = env.clone();
            env.traceparent = traceparent;
            jwl_events::encode(&env, HeaderStyle::NEUTRAL)
        };
        Self {
            event_id: env.id.0,
            wire,
        }
    }
}

impl OutboxRow {
    /// The message the relay publishes for this row.
    fn outbound(&self) -> OutboundMessage {
        OutboundMessage {
            dedup_id: self.event_id.to_string(),
            subject: self.wire.subject.clone(),
            headers: self.wire.headers.clone(),
            payload: Bytes::copy_from_slice(&self.wire.payload),
        }
    }
}

/// Inserts `rows` into the outbox of the connection's current schema in one statement, in their
/// order (their `seq`s follow it), and returns what they became. Nothing is sent for no rows.
///
/// The relay partition of a row is `order_hash % partitions`: the same hash as migration 0004
/// computes for older rows, of the same key as the relay's ordering key. With each row comes the
/// `seq` of every row of the same order (by that hash) still pending when the statement began,
/// which decides whether the rows may be handed over (see [`crate::relay`]).
pub(crate) async fn insert_rows(
    conn: &mut PgConnection,
    rows: &[OutboxRow],
) -> Result<Enqueued, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Enqueued::default());
    }
    let mut ids = Vec::with_capacity(rows.len());
    let mut subjects = Vec::with_capacity(rows.len());
    let mut headers = Vec::with_capacity(rows.len());
    let mut payloads = Vec::with_capacity(rows.len());
    let mut keys = Vec::with_capacity(rows.len());
    for row in rows {
        ids.push(row.event_id);
        subjects.push(row.wire.subject.as_str());
        headers.push(Json(&row.wire.headers));
        payloads.push(row.wire.payload.as_slice());
        keys.push(crate::relay::steps::ordering_key_of(
            &row.wire.subject,
            &row.wire.headers,
        ));
    }
    let written: Vec<Written> = sqlx::query_as(
        "INSERT INTO outbox (event_id, subject, headers, payload, order_hash)
         SELECT id, subject, headers, payload, hashtext(key) & 2147483647
         FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::bytea[], $5::text[])
              WITH ORDINALITY AS row (id, subject, headers, payload, key, n)
         ORDER BY n
         RETURNING seq, order_hash,
             ARRAY(SELECT earlier.seq FROM outbox AS earlier
                   WHERE earlier.order_hash = outbox.order_hash AND earlier.seq < outbox.seq
                     AND earlier.published_at IS NULL AND earlier.parked_at IS NULL) AS earlier",
    )
    .bind(&ids)
    .bind(&subjects)
    .bind(&headers)
    .bind(&payloads)
    .bind(&keys)
    .fetch_all(conn)
    .await?;
    let mut enqueued = Enqueued::default();
    for (written, row) in written.into_iter().zip(rows) {
        enqueued.push(written, row.outbound());
    }
    Ok(enqueued)
}
