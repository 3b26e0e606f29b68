//! The `dead_letter_holds` and `parked_messages` tables: holding an order after one of the
//! service's consumers dead-lettered an event of it, parking the service's later messages of that
//! order (whatever their consumer), and reading them back in stream order.
//!
//! The tables live in the service's own schema, so "this order is held" means held for this
//! service: an order that failed in payment's `order.created` handler also holds payment's
//! `courier_assigned` and `dispatch.failed` of that order, which is the order that matters.

use sqlx::PgConnection;
use sqlx::types::Json;
use uuid::Uuid;

/// A message parked behind a hold, as stored.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ParkedMessage {
    pub id: i64,
    /// The consumer it was delivered to, and is handled under when released.
    pub consumer: String,
    pub event_id: Uuid,
    pub stream_seq: i64,
    pub subject: String,
    pub headers: Json<Vec<(String, String)>>,
    pub payload: Vec<u8>,
}

/// A message to park.
pub(crate) struct ToPark<'m> {
    pub consumer: &'m str,
    pub order_id: Uuid,
    pub event_id: Uuid,
    pub stream_seq: u64,
    pub subject: &'m str,
    pub headers: Vec<(&'m str, &'m str)>,
    pub payload: &'m [u8],
}

/// The holds on `order` in this service: (consumer, head event id) each, locked `FOR KEY SHARE`
/// until the transaction ends.
///
/// The lock is what makes parking safe. A release deletes the hold and then lists the parked
/// messages; without it, a message parked by a concurrent transaction that had read the hold
/// (plain `SELECT`, READ COMMITTED) before the delete committed would be committed after that
/// listing: acked, parked, held by nothing, never handled. With it, the release's `DELETE`
/// waits for a transaction that has read (and may park behind) the hold, and so lists what it
/// parked; and a transaction reading a hold that a release is deleting waits for the release
/// to commit, then finds it gone and handles its message (after the released ones). Two
/// releases of two holds on the same order, each reading the other's, deadlock instead of
/// leaving the parked messages behind: PostgreSQL aborts one, whose batch is redelivered.
pub(crate) async fn holds_on(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Vec<(String, Uuid)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT consumer, head_event_id FROM dead_letter_holds WHERE order_id = $1
         FOR KEY SHARE",
    )
    .bind(order_id)
    .fetch_all(conn)
    .await
}

/// Holds (consumer, order) with `head_event_id` as its head, unless it is held already.
pub(crate) async fn hold(
    conn: &mut PgConnection,
    consumer: &str,
    order_id: Uuid,
    head_event_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO dead_letter_holds (consumer, order_id, head_event_id) VALUES ($1, $2, $3)
         ON CONFLICT (consumer, order_id) DO NOTHING",
    )
    .bind(consumer)
    .bind(order_id)
    .bind(head_event_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Removes the hold on (consumer, order), if any.
pub(crate) async fn unhold(
    conn: &mut PgConnection,
    consumer: &str,
    order_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM dead_letter_holds WHERE consumer = $1 AND order_id = $2")
        .bind(consumer)
        .bind(order_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub(crate) async fn park(conn: &mut PgConnection, message: &ToPark<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO parked_messages
             (consumer, order_id, event_id, stream_seq, subject, headers, payload)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(message.consumer)
    .bind(message.order_id)
    .bind(message.event_id)
    .bind(i64::try_from(message.stream_seq).unwrap_or(i64::MAX))
    .bind(message.subject)
    .bind(Json(&message.headers))
    .bind(message.payload)
    .execute(conn)
    .await?;
    Ok(())
}

/// The messages parked for `order` (all consumers), in stream-seq order.
pub(crate) async fn parked(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Vec<ParkedMessage>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, consumer, event_id, stream_seq, subject, headers, payload FROM parked_messages
         WHERE order_id = $1 ORDER BY stream_seq, id",
    )
    .bind(order_id)
    .fetch_all(conn)
    .await
}

pub(crate) async fn unpark(conn: &mut PgConnection, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM parked_messages WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records that the parked message `id` failed while being released and now heads its order's
/// hold, with the dead letter it is owed (`reason`, `error`). Until that dead letter is published
/// (and the row deleted), [`pending_dead_letters`] lists it, so it is published even if the
/// first try failed: a hold whose head has no dead letter would be one no tool can release.
pub(crate) async fn owe_dead_letter(
    conn: &mut PgConnection,
    id: i64,
    reason: &str,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE parked_messages
         SET dead_letter_reason = $2, dead_letter_error = $3, dead_letter_owed_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(reason)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// A parked message that heads a hold and is still owed its dead letter.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct OwedDeadLetter {
    #[sqlx(flatten)]
    pub parked: ParkedMessage,
    pub dead_letter_reason: String,
    pub dead_letter_error: String,
}

/// Up to `limit` parked messages owed a dead letter for longer than `older_than` (the consumer
/// that owes it usually publishes it at once), oldest first.
pub(crate) async fn owed_dead_letters(
    conn: &mut PgConnection,
    older_than: std::time::Duration,
    limit: i64,
) -> Result<Vec<OwedDeadLetter>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, consumer, event_id, stream_seq, subject, headers, payload,
                dead_letter_reason, dead_letter_error
         FROM parked_messages
         WHERE dead_letter_owed_at < now() - make_interval(secs => $1)
         ORDER BY dead_letter_owed_at, id
         LIMIT $2",
    )
    .bind(older_than.as_secs_f64())
    .bind(limit)
    .fetch_all(conn)
    .await
}
