//! Leadership of the relay of one schema: a session-level Postgres advisory lock held on a
//! dedicated connection. The connection dropping releases it, so a crashed relay hands over.

use sqlx::{PgConnection, PgPool};

use crate::error::OutboxError;

/// First key of the two-key advisory lock ("jwl"); the second is `hashtext(current_schema())`.
const LOCK_CLASS: i32 = 0x006a_776c;

/// The relay lease of the pool's current schema, and the connection that holds it. All relay
/// statements run on this connection, so losing it stops the relay at its next statement.
pub(crate) struct RelayLease {
    conn: PgConnection,
    schema: String,
}

impl RelayLease {
    /// Takes the lease if no one holds it. A pooled connection is used for the attempt and is
    /// detached from the pool only when the lock was taken.
    pub async fn try_acquire(pool: &PgPool) -> Result<Option<Self>, OutboxError> {
        let mut conn = pool.acquire().await?;
        let (locked, schema): (bool, Option<String>) = sqlx::query_as(
            "SELECT pg_try_advisory_lock($1, hashtext(current_schema())), current_schema()::text",
        )
        .bind(LOCK_CLASS)
        .fetch_one(&mut *conn)
        .await?;
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
        }))
    }

    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Releases the lock by closing its connection.
    pub async fn release(self) {
        if let Err(error) = sqlx::Connection::close(self.conn).await {
            tracing::debug!(%error, "closing the relay lease connection");
        }
    }
}
