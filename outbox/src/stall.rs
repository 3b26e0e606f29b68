//! Bounding database work by the stall timeout, so that a connection which stops answering
//! (half-open after a partition: no error, no reply, ever) costs a timeout rather than a hang.
//!
//! sqlx has no per-statement client-side timeout, and a pooled connection given back after a
//! cancelled statement is pinged without one; so a unit of work that overruns here has its
//! connection closed instead of returned to the pool. What the dead connection held on the server
//! (row locks, advisory locks, the relay lease) is freed by PostgreSQL's own session timeouts,
//! which the pools and the relay lease set to the same limit
//! ([`MessagingSettings::db_stall_timeout`](crate::MessagingSettings::db_stall_timeout)).
//!
//! A loop that runs one transaction after another keeps its connection between them
//! ([`KeptConnection`]): giving a connection back to a service pool costs two round trips (the
//! pool's bounded ping, then sqlx's own) and a task, which at a few messages per batch were a
//! quarter of a consumer batch's round trips.

use std::pin::pin;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{Connection as _, PgConnection, PgPool, Postgres};
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
    // a connection kept for no longer than this unit
    KeptConnection::new(pool.clone())
        .run(limit, work, |_| false)
        .await
}

/// A pooled connection one loop keeps from one unit of work to the next, so that it pays the
/// pool's release checks (two pings and a task) only now and then instead of after every unit.
///
/// The connection is kept only when the unit's outcome says it is idle and healthy (its
/// transaction committed or rolled back); after anything else it goes back to the pool, which
/// pings it and sends first the `ROLLBACK` of a transaction dropped on an error (so no lock is
/// held past the failure), or it is closed after a stall, as with [`with_connection`]. A kept
/// connection goes back to the pool once it has been kept for [`KEEP_AT_MOST`] (the pool's
/// lifetime and idle limits then apply to it again), while the loop waits for more work longer
/// than [`KEEP_WHILE_IDLE`] ([`Self::waiting_for`]), and when it is dropped.
pub struct KeptConnection {
    pool: PgPool,
    kept: Option<Kept>,
    /// A kept connection idle longer than this is pinged before it is used again
    /// ([`Self::checked_after`]).
    check_after: Option<Duration>,
}

/// The kept connection, since when it is kept and when it was last used.
struct Kept {
    conn: PoolConnection<Postgres>,
    since: Instant,
    used: Instant,
}

/// Longest a [`KeptConnection`] keeps one connection before giving it back to its pool.
pub const KEEP_AT_MOST: Duration = Duration::from_secs(60);

/// How long a [`KeptConnection`] keeps its connection while its loop waits for work: longer, the
/// connection goes back to the pool for the pool's other users.
pub const KEEP_WHILE_IDLE: Duration = Duration::from_secs(1);

/// Longest the ping that checks a connection before use may take (a service pool's ping before
/// acquire, a [`KeptConnection::checked_after`] check; or the caller's limit, if shorter): a
/// healthy server answers one in well under a millisecond, a busy one in milliseconds.
pub const CHECK_LIMIT: Duration = Duration::from_secs(2);

/// Whether `conn` answers a ping within `limit`: `false` (close it) when it does not, e.g. broken
/// by a server restart, or half-open with a cancelled statement still in flight.
pub async fn answers_within(conn: &mut PgConnection, limit: Duration) -> bool {
    match tokio::time::timeout(limit, conn.ping()).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            tracing::debug!(%error, "a connection failed its ping; closing it");
            false
        }
        Err(_elapsed) => {
            tracing::warn!(?limit, "a connection did not answer its ping; closing it");
            false
        }
    }
}

impl KeptConnection {
    /// Keeps connections of `pool` (none yet).
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            kept: None,
            check_after: None,
        }
    }

    /// Pings the kept connection before a unit runs on it if it has been idle longer than `idle`
    /// (within [`CHECK_LIMIT`]), and replaces it with one from the pool if it does not answer,
    /// as a pool that pings before acquire does. For loops whose callers do not retry (the order
    /// intake answers HTTP requests): a database restart or a network cut lasts longer than
    /// `idle`, so the first unit after one runs on a working connection instead of failing on the
    /// broken one.
    pub fn checked_after(mut self, idle: Duration) -> Self {
        self.check_after = Some(idle);
        self
    }

    /// Waits for `next` (the loop's next work), giving the kept connection back to the pool if
    /// that takes longer than [`KEEP_WHILE_IDLE`].
    pub async fn waiting_for<T>(&mut self, next: impl Future<Output = T>) -> T {
        if self.kept.is_none() {
            return next.await;
        }
        let mut next = pin!(next);
        match tokio::time::timeout(KEEP_WHILE_IDLE, next.as_mut()).await {
            Ok(output) => output,
            Err(_idle) => {
                self.kept = None;
                next.await
            }
        }
    }

    /// [`with_connection`] on the kept connection, or on one from the pool if none is kept (or
    /// it has been kept for [`KEEP_AT_MOST`]). The connection is kept afterwards if `keep` says
    /// the outcome left it idle and healthy; otherwise it goes back to the pool (or is closed,
    /// after a stall).
    pub async fn run<T, E>(
        &mut self,
        limit: Duration,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
        keep: impl FnOnce(&Result<T, E>) -> bool,
    ) -> Result<T, E>
    where
        E: From<sqlx::Error>,
    {
        let deadline = Instant::now() + limit;
        let kept = match self.kept.take() {
            Some(kept) if kept.since.elapsed() < KEEP_AT_MOST => self.checked(kept, deadline).await,
            // the old one (if any) goes back to the pool before another is taken
            _ => None,
        };
        let (mut conn, since) = match kept {
            Some(Kept { conn, since, .. }) => (conn, since),
            None => {
                let conn = timeout_at(deadline, self.pool.acquire())
                    .await
                    .map_err(|_elapsed| stalled(limit))??;
                (conn, Instant::now())
            }
        };
        match timeout_at(deadline, work(&mut conn)).await {
            Ok(result) => {
                if keep(&result) {
                    let used = Instant::now();
                    self.kept = Some(Kept { conn, since, used });
                }
                result
            }
            Err(_elapsed) => {
                conn.close_on_drop();
                Err(stalled(limit).into())
            }
        }
    }

    /// `kept`, unless it must be checked ([`Self::checked_after`]) and does not answer (then it
    /// is closed).
    async fn checked(&self, mut kept: Kept, deadline: Instant) -> Option<Kept> {
        let Some(idle) = self.check_after else {
            return Some(kept);
        };
        if kept.used.elapsed() <= idle {
            return Some(kept);
        }
        let limit = CHECK_LIMIT.min(deadline.saturating_duration_since(Instant::now()));
        if answers_within(&mut kept.conn, limit).await {
            Some(kept)
        } else {
            kept.conn.close_on_drop();
            None
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
