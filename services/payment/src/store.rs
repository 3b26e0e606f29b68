//! SQL on the `payments` table. Every write is conditional on the state it expects, so a
//! transition happens at most once however often or concurrently it is attempted; each write
//! reports whether it happened.

use std::collections::HashMap;

use jwl_events::OrderId;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::domain::PaymentState;

/// A stored status that is not a [`PaymentState`] (the table's CHECK makes this a bug).
#[derive(Debug, thiserror::Error)]
#[error("unknown payment status {0:?} in the payments table")]
pub struct UnknownStatus(String);

fn parse_state(status: String) -> Result<PaymentState, sqlx::Error> {
    PaymentState::parse(&status).ok_or_else(|| sqlx::Error::Decode(Box::new(UnknownStatus(status))))
}

/// An order's payment as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub order_id: OrderId,
    pub state: PaymentState,
    /// `None` only for a tombstone.
    pub amount_cents: Option<i64>,
}

/// The payment's state, locking its row until the transaction ends; `None` if there is none.
pub async fn lock_state(
    conn: &mut PgConnection,
    order_id: OrderId,
) -> Result<Option<PaymentState>, sqlx::Error> {
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM payments WHERE order_id = $1 FOR UPDATE")
            .bind(order_id.0)
            .fetch_optional(conn)
            .await?;
    status.map(parse_state).transpose()
}

/// Records the tombstone of a void requested before the authorisation; `false` if the order
/// already has a row.
pub async fn insert_void_requested(
    conn: &mut PgConnection,
    order_id: OrderId,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "INSERT INTO payments (order_id, status, void_requested_at)
         VALUES ($1, 'void_requested', now())
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id.0)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Turns a tombstone into a declined payment of `amount_cents`; `false` unless the row was a
/// tombstone.
pub async fn decline_void_requested(
    conn: &mut PgConnection,
    order_id: OrderId,
    amount_cents: i64,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "UPDATE payments
         SET status = 'declined', amount_cents = $2, decline_reason = $3, declined_at = now(),
             updated_at = now()
         WHERE order_id = $1 AND status = 'void_requested'",
    )
    .bind(order_id.0)
    .bind(amount_cents)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Captures an authorised payment and returns its amount; `None` unless it was authorised.
pub async fn capture(
    conn: &mut PgConnection,
    order_id: OrderId,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE payments
         SET status = 'captured', captured_at = now(), updated_at = now()
         WHERE order_id = $1 AND status = 'authorized'
         RETURNING amount_cents",
    )
    .bind(order_id.0)
    .fetch_optional(conn)
    .await
}

/// The payment state of each of `orders`, in their order, locking the rows (in order of their
/// keys) until the transaction ends: [`lock_state`] for a batch, in one statement. The rows are
/// matched to `orders` here rather than by a join in SQL: a service pool plans without hash joins
/// (see `jwl_service_kit::db::Planning`), and a nested loop over two in-memory sets grows with the
/// square of the batch.
pub async fn lock_states(
    conn: &mut PgConnection,
    orders: &[OrderId],
) -> Result<Vec<Option<PaymentState>>, sqlx::Error> {
    let ids: Vec<Uuid> = orders.iter().map(|order| order.0).collect();
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT order_id, status FROM payments WHERE order_id = ANY($1)
         ORDER BY order_id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(conn)
    .await?;
    let mut states = HashMap::with_capacity(rows.len());
    for (order_id, status) in rows {
        states.insert(order_id, parse_state(status)?);
    }
    Ok(ids.iter().map(|id| states.get(id).copied()).collect())
}

/// A processor's answer to an order's authorisation, to record.
#[derive(Debug, Clone)]
pub struct Answered<'a> {
    pub order_id: OrderId,
    pub amount_cents: i64,
    /// `None` if approved, else why it was declined.
    pub decline_reason: Option<&'a str>,
}

/// Records authorised and declined payments in one statement; how many were recorded (an order that already has a row is not).
pub async fn insert_answered(
    conn: &mut PgConnection,
    answered: &[Answered<'_>],
) -> Result<u64, sqlx::Error> {
    let ids: Vec<Uuid> = answered.iter().map(|a| a.order_id.0).collect();
    let amounts: Vec<i64> = answered.iter().map(|a| a.amount_cents).collect();
    let reasons: Vec<Option<&str>> = answered.iter().map(|a| a.decline_reason).collect();
    let result = sqlx::query(
        "INSERT INTO payments (order_id, status, amount_cents, decline_reason, authorized_at,
                               declined_at)
         SELECT order_id, CASE WHEN reason IS NULL THEN 'authorized' ELSE 'declined' END,
                amount, reason, CASE WHEN reason IS NULL THEN now() END,
                CASE WHEN reason IS NOT NULL THEN now() END
         FROM unnest($1::uuid[], $2::bigint[], $3::text[]) AS a(order_id, amount, reason)
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(ids)
    .bind(amounts)
    .bind(reasons)
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

/// [`capture`] for several orders in one statement: the orders captured, with their amounts.
pub async fn capture_many(
    conn: &mut PgConnection,
    orders: &[OrderId],
) -> Result<Vec<(OrderId, i64)>, sqlx::Error> {
    let ids: Vec<Uuid> = orders.iter().map(|order| order.0).collect();
    let captured: Vec<(Uuid, i64)> = sqlx::query_as(
        "UPDATE payments
         SET status = 'captured', captured_at = now(), updated_at = now()
         WHERE order_id = ANY($1) AND status = 'authorized'
         RETURNING order_id, amount_cents",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    Ok(captured
        .into_iter()
        .map(|(id, amount)| (OrderId(id), amount))
        .collect())
}

/// Voids an authorised payment and returns its amount; `None` unless it was authorised.
pub async fn void(conn: &mut PgConnection, order_id: OrderId) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE payments
         SET status = 'voided', voided_at = now(), updated_at = now()
         WHERE order_id = $1 AND status = 'authorized'
         RETURNING amount_cents",
    )
    .bind(order_id.0)
    .fetch_optional(conn)
    .await
}

/// The order's payment row, tombstone included; `None` if there is none.
pub async fn find(
    db: impl PgExecutor<'_>,
    order_id: OrderId,
) -> Result<Option<Payment>, sqlx::Error> {
    let row: Option<(String, Option<i64>)> =
        sqlx::query_as("SELECT status, amount_cents FROM payments WHERE order_id = $1")
            .bind(order_id.0)
            .fetch_optional(db)
            .await?;
    row.map(|(status, amount_cents)| {
        Ok(Payment {
            order_id,
            state: parse_state(status)?,
            amount_cents,
        })
    })
    .transpose()
}
