//! The `dead_letter_holds` and `parked_messages` tables: holding (consumer, order) after a dead
//! letter, parking that order's later messages, and reading them back in stream order.

use sqlx::PgConnection;
use sqlx::types::Json;
use uuid::Uuid;

/// A message parked behind a hold, as stored.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ParkedMessage {
    pub id: i64,
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

/// The head event of the hold on (consumer, order), if it is held.
pub(crate) async fn held_head(
    conn: &mut PgConnection,
    consumer: &str,
    order_id: Uuid,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT head_event_id FROM dead_letter_holds WHERE consumer = $1 AND order_id = $2",
    )
    .bind(consumer)
    .bind(order_id)
    .fetch_optional(conn)
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

/// The messages parked for (consumer, order), in stream-seq order.
pub(crate) async fn parked(
    conn: &mut PgConnection,
    consumer: &str,
    order_id: Uuid,
) -> Result<Vec<ParkedMessage>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, event_id, stream_seq, subject, headers, payload FROM parked_messages
         WHERE consumer = $1 AND order_id = $2 ORDER BY stream_seq, id",
    )
    .bind(consumer)
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
