//! What a service holds back of one order, read from its schema for the operator (the console,
//! `GET /v1/holds/<service>/{order_id}`): the dead-letter holds on the order, the inbound
//! messages parked behind them (`dead_letter_holds`, `parked_messages`, see the consumer's
//! holds), and the order's outbox rows the relay parked because the broker refused them for good
//! ([`crate::parked_rows`]).
//!
//! Read-only: nothing here takes the locks the consumers take, so an operator's read never
//! delays a release.

use chrono::{DateTime, Utc};
use jwl_events::EventType;
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::parked_rows::ParkedRow;

/// One order's holds, held messages and parked outbox rows in one service's schema.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrderHolds {
    /// The consumers holding the order behind a dead letter, oldest first.
    pub holds: Vec<Hold>,
    /// The inbound messages parked behind those holds, in stream order.
    pub parked_messages: Vec<HeldMessage>,
    /// The order's outbox rows the broker refused for good, oldest first.
    pub parked_rows: Vec<ParkedRow>,
}

impl OrderHolds {
    /// Whether the service holds nothing of the order back.
    pub fn is_empty(&self) -> bool {
        self.holds.is_empty() && self.parked_messages.is_empty() && self.parked_rows.is_empty()
    }
}

/// A consumer's hold on the order: it dead-lettered `head_event_id`, and the service's later
/// messages of the order wait until that dead letter is redriven or discarded.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Hold {
    /// The consumer that dead-lettered the head (`payment__order_created`).
    pub consumer: String,
    /// The dead-lettered event (the dead letter's `ce-id`).
    pub head_event_id: Uuid,
    pub held_since: DateTime<Utc>,
}

/// A message parked behind a hold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeldMessage {
    /// Its row in `parked_messages`.
    pub id: i64,
    /// The consumer it was delivered to, and is handled under once released.
    pub consumer: String,
    pub event_id: Uuid,
    /// The event type its subject names (`jwl.payment.captured`), if any.
    pub event_type: Option<&'static str>,
    /// The subject it came on (`jwl.evt.…`, or `jwl.replay.<service>.…` when replayed).
    pub subject: String,
    /// Its sequence in the stream it came from.
    pub stream_seq: i64,
    pub parked_at: DateTime<Utc>,
    /// Set when it failed while its order was released: it now heads a hold of its own, and
    /// this is the reason of the dead letter it is owed.
    pub dead_letter_reason: Option<String>,
}

#[derive(sqlx::FromRow)]
struct HeldRow {
    id: i64,
    consumer: String,
    event_id: Uuid,
    subject: String,
    stream_seq: i64,
    parked_at: DateTime<Utc>,
    dead_letter_reason: Option<String>,
}

/// The holds, held messages and parked outbox rows of `order_id` in the connection's schema
/// (its `search_path`); all empty for an order the service holds nothing of.
pub async fn read(conn: &mut PgConnection, order_id: Uuid) -> Result<OrderHolds, sqlx::Error> {
    let holds: Vec<Hold> = sqlx::query_as(
        "SELECT consumer, head_event_id, created_at AS held_since FROM dead_letter_holds
         WHERE order_id = $1 ORDER BY created_at, consumer",
    )
    .bind(order_id)
    .fetch_all(&mut *conn)
    .await?;
    let held: Vec<HeldRow> = sqlx::query_as(
        "SELECT id, consumer, event_id, subject, stream_seq, parked_at, dead_letter_reason
         FROM parked_messages WHERE order_id = $1 ORDER BY stream_seq, id",
    )
    .bind(order_id)
    .fetch_all(&mut *conn)
    .await?;
    // the order's subjects, `jwl.evt.<type>.<order>` or (legacy) `jwl.evt.<order>.<type>`;
    // only parked rows are looked at
    let parked_rows: Vec<ParkedRow> = sqlx::query_as(
        "SELECT seq, event_id, subject, attempts, last_error, parked_at, created_at FROM outbox
         WHERE parked_at IS NOT NULL AND published_at IS NULL
           AND starts_with(subject, 'jwl.evt.')
           AND (right(subject, length($1)) = $1 OR starts_with(subject, 'jwl.evt.' || $2 || '.'))
         ORDER BY seq",
    )
    .bind(format!(".{order_id}"))
    .bind(order_id.to_string())
    .fetch_all(&mut *conn)
    .await?;
    let parked_messages = held
        .into_iter()
        .map(|row| HeldMessage {
            event_type: type_after_order(&row.subject, order_id).map(EventType::as_str),
            id: row.id,
            consumer: row.consumer,
            event_id: row.event_id,
            subject: row.subject,
            stream_seq: row.stream_seq,
            parked_at: row.parked_at,
            dead_letter_reason: row.dead_letter_reason,
        })
        .collect();
    Ok(OrderHolds {
        holds,
        parked_messages,
        parked_rows,
    })
}

/// The event type `subject` names if it is one of `order_id`'s: an events subject (of either
/// layout), or the replay subject `jwl.replay.<service>.<order>.payment.captured`.
fn type_after_order(subject: &str, order_id: Uuid) -> Option<EventType> {
    if let Some((order, ty)) = jwl_events::parse_subject(subject) {
        return (order.0 == order_id).then_some(ty);
    }
    let (_, token) = subject.split_once(&format!(".{order_id}."))?;
    EventType::ALL
        .into_iter()
        .find(|ty| ty.subject_token() == token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_type_is_read_from_events_and_replay_subjects() {
        let order = Uuid::now_v7();
        assert_eq!(
            type_after_order(&format!("jwl.evt.payment.captured.{order}"), order),
            Some(EventType::PaymentCaptured)
        );
        assert_eq!(
            type_after_order(&format!("jwl.evt.{order}.payment.captured"), order),
            Some(EventType::PaymentCaptured)
        );
        assert_eq!(
            type_after_order(
                &format!("jwl.evt.payment.captured.{}", Uuid::now_v7()),
                order
            ),
            None
        );
        assert_eq!(
            type_after_order(
                &format!("jwl.replay.inventory.{order}.fulfillment.waybill_created"),
                order
            ),
            Some(EventType::WaybillCreated)
        );
        assert_eq!(
            type_after_order(&format!("jwl.evt.{order}.order.exploded"), order),
            None
        );
        assert_eq!(
            type_after_order(
                &format!("jwl.evt.{}.payment.captured", Uuid::now_v7()),
                order
            ),
            None
        );
    }
}
