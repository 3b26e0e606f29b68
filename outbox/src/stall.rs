//! Bounding database work by the stall timeout, so that a connection which stops answering
//! (half-open after a partition: no error, no reply, ever) costs a timeout rather than a hang.
//!
//! sqlx has no per-statement client-side timeout, and a pooled connection given back after a
//! cancelled statement is pinged without one; so a unit of work that overruns here has its
//! connection closed instead of returned to the pool. What the dead connection held on the server
//! (row locks, advisory locks, the relay lease) is freed by PostgreSQL's own session timeouts,
//! which the pools and the relay lease set to the same limit
//! ([`MessagingSettings::db_stall_timeout`](crate::MessagingSettings::db_stall_timeout)).

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio::time::{Instant, timeout_at};

/// The error of database work that did not finish within `limit`: an I/O `TimedOut`, which
/// callers already treat like any lost connection (transient; retried).
pub fn stalled(limit: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("the database did not answer within {limit:?}; connection given up"),
    ))
}

/// Runs `work` on a connection of `pool`, waiting for the connection included, for at most
/// `limit`. Past that the work is dropped, its connection is closed (never reused: it may be
/// half-open with a statement in flight) and the result is [`stalled`].
pub async fn with_connection<T, E>(
    pool: &PgPool,
    limit: Duration,
    work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<sqlx::Error>,
{
    let deadline = Instant::now() + limit;
    let mut conn = timeout_at(deadline, pool.acquire())
        .await
        .map_err(|_elapsed| stalled(limit))??;
    let outcome = timeout_at(deadline, work(&mut conn)).await;
    match outcome {
        Ok(result) => result,
        Err(_elapsed) => {
            conn.close_on_drop();
            Err(stalled(limit).into())
        }
    }
}

/// Runs `work` on a connection the caller owns outright (not pooled), for at most `limit`; on
/// timeout the work is dropped and the result is [`stalled`]. The caller must then drop the
/// connection: it may have a statement in flight.
pub async fn on_connection<T>(
    conn: &mut PgConnection,
    limit: Duration,
    work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(limit, work(conn))
        .await
        .unwrap_or_else(|_elapsed| Err(stalled(limit)))
}
