//! SQL on the `payments` table. Every write is conditional on the state it expects, so a
//! transition happens at most once however often or concurrently it is attempted; each write
//! reports whether it happened.

use jwl_events::OrderId;
use sqlx::{PgConnection, PgExecutor};

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

/// Records an authorised payment; `false` if the order already has a row.
pub async fn insert_authorized(
    conn: &mut PgConnection,
    order_id: OrderId,
    amount_cents: i64,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "INSERT INTO payments (order_id, status, amount_cents, authorized_at)
         VALUES ($1, 'authorized', $2, now())
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id.0)
    .bind(amount_cents)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Records a declined payment; `false` if the order already has a row.
pub async fn insert_declined(
    conn: &mut PgConnection,
    order_id: OrderId,
    amount_cents: i64,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "INSERT INTO payments (order_id, status, amount_cents, decline_reason, declined_at)
         VALUES ($1, 'declined', $2, $3, now())
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id.0)
    .bind(amount_cents)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
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
