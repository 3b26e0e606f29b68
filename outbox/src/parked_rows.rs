//! Outbox rows the broker rejected for good (`outbox.parked_at` set by the relay, e.g. a message
//! larger than the server's `max_payload`): counting them (the `jwl_outbox_parked_rows` gauge),
//! listing them and un-parking them so the relay tries again (`jwl outbox ls|retry`).
//!
//! A parked row is never retried on its own: it stays until an operator fixes the cause (raises
//! the limit, say) and un-parks it. The relay then publishes it like any pending row, after the
//! later events of its order that already went out.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

/// One parked row, as `jwl outbox ls` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct ParkedRow {
    pub seq: i64,
    pub event_id: Uuid,
    /// The subject it would be published on (`jwl.evt.<type>.<order>`).
    pub subject: String,
    /// Publish attempts so far.
    pub attempts: i32,
    /// The broker's last refusal.
    pub last_error: Option<String>,
    pub parked_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

impl ParkedRow {
    /// The event type its subject names, if any (`jwl.payment.authorized`).
    pub fn event_type(&self) -> Option<&'static str> {
        jwl_events::subject_type(&self.subject).map(|ty| ty.as_str())
    }
}

/// Which parked rows to un-park.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unpark {
    /// These rows (by `seq`); a row that is not parked is left alone.
    Seqs(Vec<i64>),
    /// Every parked row.
    All,
}

/// How many rows are parked in the connection's schema.
pub async fn count(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL AND published_at IS NULL",
    )
    .fetch_one(conn)
    .await
}

/// The parked rows of the connection's schema, oldest `seq` first.
pub async fn list(conn: &mut PgConnection) -> Result<Vec<ParkedRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT seq, event_id, subject, attempts, last_error, parked_at, created_at FROM outbox
         WHERE parked_at IS NOT NULL AND published_at IS NULL
         ORDER BY seq",
    )
    .fetch_all(conn)
    .await
}

/// Un-parks the chosen rows (their attempts and last error are kept) and wakes the relay of the
/// connection's schema with a `NOTIFY` (delivered on commit); returns the `seq` of the rows
/// un-parked, in order.
pub async fn unpark(conn: &mut PgConnection, which: &Unpark) -> Result<Vec<i64>, sqlx::Error> {
    let (all, seqs) = match which {
        Unpark::All => (true, Vec::new()),
        Unpark::Seqs(seqs) => (false, seqs.clone()),
    };
    let mut unparked: Vec<i64> = sqlx::query_scalar(
        "WITH unparked AS (
             UPDATE outbox SET parked_at = NULL
             WHERE parked_at IS NOT NULL AND published_at IS NULL AND ($1 OR seq = ANY($2))
             RETURNING seq)
         SELECT seq FROM unparked",
    )
    .bind(all)
    .bind(&seqs)
    .fetch_all(&mut *conn)
    .await?;
    unparked.sort_unstable();
    if !unparked.is_empty() {
        sqlx::query("SELECT pg_notify($1 || current_schema(), '')")
            .bind(crate::notify_channel(""))
            .execute(&mut *conn)
            .await?;
    }
    Ok(unparked)
}
