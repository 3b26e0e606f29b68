//! Leadership of the relay of one schema: a session-level Postgres advisory lock held on a
//! dedicated connection. The connection dropping releases it, so a crashed relay hands over.
//!
//! A connection can also go silent without dropping (half-open after a partition): the server
//! then keeps the session, and its lock, for as long as it believes the client alive. So the
//! lease session runs with `idle_session_timeout` = the stall timeout, and every relay statement
//! is bounded by that same timeout on the client side: a relay that cannot reach its session
//! gives the lease up, and the server ends the silent session, freeing the lock for whichever
//! relay asks next. The active relay keeps the session busy at least once per poll interval.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use crate::error::OutboxError;
use crate::stall;

/// First key of the two-key advisory lock ("jwl"); the second is `hashtext(current_schema())`.
const LOCK_CLASS: i32 = 0x006a_776c;

/// The relay lease of the pool's current schema, and the connection that holds it. All relay
/// statements run on this connection, so losing it stops the relay at its next statement.
pub(crate) struct RelayLease {
    conn: PgConnection,
    schema: String,
    stall_timeout: Duration,
}

impl RelayLease {
    /// Takes the lease if no one holds it. A pooled connection is used for the attempt and is
    /// detached from the pool only when the lock was taken.
    pub async fn try_acquire(
        pool: &PgPool,
        stall_timeout: Duration,
    ) -> Result<Option<Self>, OutboxError> {
        let mut conn = pool.acquire().await?;
        let attempt = stall::on_connection(&mut conn, stall_timeout, async |conn| {
            let (locked, schema): (bool, Option<String>) = sqlx::query_as(
                "SELECT pg_try_advisory_lock($1, hashtext(current_schema())), current_schema()::text",
            )
            .bind(LOCK_CLASS)
            .fetch_one(&mut *conn)
            .await?;
            if locked {
                // the server ends the session (and so frees the lock) once its client is silent
                sqlx::query("SELECT set_config('idle_session_timeout', $1, false)")
                    .bind(format!("{}ms", stall_timeout.as_millis()))
                    .execute(&mut *conn)
                    .await?;
            }
            Ok((locked, schema))
        })
        .await;
        let (locked, schema) = match attempt {
            Ok(answer) => answer,
            Err(error) => {
                // it may hold the lock, or have a statement in flight: never reuse it
                conn.close_on_drop();
                return Err(error.into());
            }
        };
        let Some(schema) = schema else {
            return Err(OutboxError::InvalidSettings(
                "the pool's search_path names no existing schema".to_owned(),
            ));
        };
        if !locked {
            return Ok(None);
        }
        Ok(Some(Self {
            conn: conn.detach(),
            schema,
            stall_timeout,
        }))
    }

    /// Runs `step` on the lease connection within the stall timeout. An error means the lease
    /// can no longer be trusted: the caller drops it.
    pub async fn run<T>(
        &mut self,
        step: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, OutboxError> {
        Ok(stall::on_connection(&mut self.conn, self.stall_timeout, step).await?)
    }

    /// One round trip on the lease session, so the server does not end it while the relay waits.
    pub async fn keep_alive(&mut self) -> Result<(), OutboxError> {
        self.run(async |conn| sqlx::query("SELECT 1").execute(conn).await.map(|_| ()))
            .await
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Releases the lock by closing its connection.
    pub async fn release(self) {
        let closing = sqlx::Connection::close(self.conn);
        match tokio::time::timeout(self.stall_timeout, closing).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "closing the relay lease connection"),
            Err(_elapsed) => tracing::debug!("closing the relay lease connection timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::RelayLease;

    const STALL: Duration = Duration::from_millis(1500);

    /// The lease session of a relay that goes silent is ended by the server after the stall
    /// timeout, so another relay can take over; one that keeps it busy keeps the lease.
    #[tokio::test]
    async fn a_silent_lease_is_freed_by_the_server_and_a_busy_one_is_kept() -> anyhow::Result<()> {
        let db = jwl_testkit::database().await?;
        let (first, second) = (db.pool().await?, db.pool().await?);
        let mut held = RelayLease::try_acquire(&first, STALL)
            .await?
            .expect("nobody holds the lease yet");

        for _ in 0..4 {
            tokio::time::sleep(STALL / 3).await;
            held.keep_alive().await?;
            assert!(
                RelayLease::try_acquire(&second, STALL).await?.is_none(),
                "a lease kept busy stays with its holder"
            );
        }

        // silent from now on (as if half-open): nothing more is sent on its session
        let taken = jwl_testkit::eventually("another relay takes the lease", STALL * 4, || async {
            RelayLease::try_acquire(&second, STALL).await.ok().flatten()
        })
        .await?;
        assert_eq!(taken.schema(), "public");
        assert!(
            held.keep_alive().await.is_err(),
            "the silent holder finds its session ended"
        );
        Ok(())
    }
}
