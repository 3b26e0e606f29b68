//! Leadership of one relay partition of a schema: a session-level Postgres advisory lock held
//! on a dedicated connection. The connection dropping releases it, so a crashed relay hands over.
//!
//! The lock of partition `p` is the two-key lock (`LOCK_CLASS + p`, `hashtext(schema)`); with one
//! partition that is the lock of the single relay of older versions, so both exclude each other
//! during an upgrade. A lease is only granted to a relay whose partition count is the one the
//! schema records (`outbox_relay_partitions`), checked while the lock is held; the record changes
//! only in [`try_switch_count`], which needs every partition lock of the recorded count at once.
//! So relays of two partition counts never publish at the same time.
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

/// First key of the two-key advisory lock of partition 0 ("jwl"); partition `p` adds `p`. The
/// second key is `hashtext(current_schema())`.
const LOCK_CLASS: i32 = 0x006a_776c;

/// One partition of a schema's outbox, as seen by a relay of `count` partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Partition {
    pub index: usize,
    pub count: usize,
}

impl Partition {
    /// The partition as the SQL parameters of the claim: (`count`, `index`).
    pub fn sql(self) -> (i32, i32) {
        (to_i32(self.count), to_i32(self.index))
    }
}

/// Partition numbers are bounded by [`MAX_OUTBOX_PARTITIONS`](crate::settings::MAX_OUTBOX_PARTITIONS).
fn to_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// What an attempt to take a partition's lease found.
pub(crate) enum Attempt {
    Taken(RelayLease),
    /// Another relay holds it.
    Busy,
    /// The schema's relays run with this other partition count (see [`try_switch_count`]).
    OtherCount(usize),
}

/// The lease of one partition of the pool's current schema, and the connection that holds it.
/// All relay statements of the partition run on this connection, so losing it stops the
/// partition's relay at its next statement.
pub(crate) struct RelayLease {
    conn: PgConnection,
    schema: String,
    partition: Partition,
    stall_timeout: Duration,
}

impl RelayLease {
    /// Takes the lease of `partition` if no one holds it and the schema's relays run with
    /// `partition.count` partitions. A pooled connection is used for the attempt and is detached
    /// from the pool only when the lease was taken.
    pub async fn try_acquire(
        pool: &PgPool,
        partition: Partition,
        stall_timeout: Duration,
    ) -> Result<Attempt, OutboxError> {
        let mut conn = pool.acquire().await?;
        let key = LOCK_CLASS + to_i32(partition.index);
        let attempt = stall::on_connection(&mut conn, stall_timeout, async |conn| {
            let (locked, schema): (bool, Option<String>) = sqlx::query_as(
                "SELECT pg_try_advisory_lock($1, hashtext(current_schema())), current_schema()::text",
            )
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
            if !locked {
                return Ok((false, schema, None));
            }
            // the server ends the session (and so frees the lock) once its client is silent;
            // and the claim walks `outbox_pending_idx` with an index scan, never a bitmap scan:
            // the index keeps an entry for every row marked published until a vacuum, and only
            // an index scan marks the dead ones it visits so that the next claim skips them (a
            // bitmap scan, which the planner picks when it expects few pending rows, visits
            // every one of them on every claim: 8–90 ms per claim after 30 s at 250 orders/s);
            // and each of its statements is planned once, by index, whatever the pool's
            // planning (planned at every run, the claim cost PostgreSQL several times more to
            // plan than to run; a generic plan PostgreSQL chose itself may have been costed
            // while a fresh system's outbox was nearly empty and scan it whole later;
            // docs/performance.md, *One plan per statement*)
            sqlx::query(
                "SELECT set_config('idle_session_timeout', $1, false),
                        set_config('enable_bitmapscan', 'off', false),
                        set_config('enable_seqscan', 'off', false),
                        set_config('plan_cache_mode', 'force_generic_plan', false)",
            )
            .bind(format!("{}ms", stall_timeout.as_millis()))
                .execute(&mut *conn)
                .await?;
            // read under the lock: the record cannot change while the lock is held
            let recorded: i32 = sqlx::query_scalar("SELECT partitions FROM outbox_relay_partitions")
                .fetch_one(&mut *conn)
                .await?;
            Ok((true, schema, Some(recorded)))
        })
        .await;
        let (locked, schema, recorded) = match attempt {
            Ok(answer) => answer,
            Err(error) => {
                // it may hold the lock, or have a statement in flight: never reuse it
                conn.close_on_drop();
                return Err(error.into());
            }
        };
        if locked {
            // from here on, the connection holds the lock (or a session setting): never pooled
            conn.close_on_drop();
        }
        let Some(schema) = schema else {
            return Err(OutboxError::InvalidSettings(
                "the pool's search_path names no existing schema".to_owned(),
            ));
        };
        let recorded = match recorded {
            None => return Ok(Attempt::Busy),
            Some(recorded) => usize::try_from(recorded).unwrap_or(0),
        };
        if recorded != partition.count {
            return Ok(Attempt::OtherCount(recorded));
        }
        Ok(Attempt::Taken(Self {
            conn: conn.detach(),
            schema,
            partition,
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

    pub fn partition(&self) -> Partition {
        self.partition
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

/// Records `to` as the schema's partition count if it still is `from` and no relay of `from`
/// partitions holds a lease: every partition lock of `from` is taken at once on one connection,
/// the record changed, and the connection closed (freeing the locks). Returns whether the record
/// changed.
pub(crate) async fn try_switch_count(
    pool: &PgPool,
    from: usize,
    to: usize,
    stall_timeout: Duration,
) -> Result<bool, OutboxError> {
    let mut conn = pool.acquire().await?;
    // whatever happens, the locks taken go with the connection
    conn.close_on_drop();
    let switched = stall::on_connection(&mut conn, stall_timeout, async |conn| {
        let all_locked: Option<bool> = sqlx::query_scalar(
            "SELECT bool_and(pg_try_advisory_lock($1 + i, hashtext(current_schema())))
             FROM generate_series(0, $2 - 1) AS i",
        )
        .bind(LOCK_CLASS)
        .bind(to_i32(from))
        .fetch_one(&mut *conn)
        .await?;
        if all_locked != Some(true) {
            return Ok(false);
        }
        let changed =
            sqlx::query("UPDATE outbox_relay_partitions SET partitions = $2 WHERE partitions = $1")
                .bind(to_i32(from))
                .bind(to_i32(to))
                .execute(&mut *conn)
                .await?;
        Ok(changed.rows_affected() == 1)
    })
    .await?;
    let closing = sqlx::Connection::close(conn.detach());
    if tokio::time::timeout(stall_timeout, closing).await.is_err() {
        tracing::debug!("closing the partition switch connection timed out");
    }
    Ok(switched)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Attempt, Partition, RelayLease, try_switch_count};
    use crate::relay::steps::CLAIM;
    use crate::relay::{PublishOutcome, Unmarked, claim_pending_in, mark};

    const STALL: Duration = Duration::from_millis(1500);
    const ONLY: Partition = Partition { index: 0, count: 1 };
    /// How long a closed session's locks may take to be freed, at most.
    const WAIT: Duration = Duration::from_secs(10);

    async fn acquire(
        pool: &sqlx::PgPool,
        partition: Partition,
    ) -> anyhow::Result<Option<RelayLease>> {
        match RelayLease::try_acquire(pool, partition, STALL).await? {
            Attempt::Taken(lease) => Ok(Some(lease)),
            Attempt::Busy => Ok(None),
            Attempt::OtherCount(count) => anyhow::bail!("the schema records {count} partitions"),
        }
    }

    /// The lease session of a relay that goes silent is ended by the server after the stall
    /// timeout, so another relay can take over; one that keeps it busy keeps the lease.
    #[tokio::test]
    async fn a_silent_lease_is_freed_by_the_server_and_a_busy_one_is_kept() -> anyhow::Result<()> {
        let db = jwl_testkit::database().await?;
        let (first, second) = (db.pool().await?, db.pool().await?);
        crate::migrate(&first).await?;
        let mut held = acquire(&first, ONLY)
            .await?
            .expect("nobody holds the lease yet");

        for _ in 0..4 {
            tokio::time::sleep(STALL / 3).await;
            held.keep_alive().await?;
            assert!(
                acquire(&second, ONLY).await?.is_none(),
                "a lease kept busy stays with its holder"
            );
        }

        // silent from now on (as if half-open): nothing more is sent on its session
        let taken = jwl_testkit::eventually("another relay takes the lease", STALL * 4, || async {
            acquire(&second, ONLY).await.ok().flatten()
        })
        .await?;
        assert_eq!(taken.schema(), "public");
        assert!(
            held.keep_alive().await.is_err(),
            "the silent holder finds its session ended"
        );
        Ok(())
    }

    /// The recorded count changes only while no relay of that count holds a lease; then relays
    /// of the old count are refused and those of the new one granted.
    ///
    /// A closed session's advisory locks are freed when its server process exits, a moment after
    /// the client has closed it: an attempt right after a release (or after an attempt that took
    /// the lock and dropped it) may still find a lock taken, so those wait with a deadline.
    #[tokio::test]
    async fn the_partition_count_switches_only_when_no_relay_of_the_old_count_leads()
    -> anyhow::Result<()> {
        let db = jwl_testkit::database().await?;
        let pool = db.pool().await?;
        crate::migrate(&pool).await?;
        let old = acquire(&pool, ONLY).await?.expect("the lease is free");
        assert!(
            !try_switch_count(&pool, 1, 4, STALL).await?,
            "the old count's relay still leads"
        );
        assert!(matches!(
            RelayLease::try_acquire(&pool, Partition { index: 2, count: 4 }, STALL).await?,
            Attempt::OtherCount(1)
        ));
        old.release().await;
        jwl_testkit::eventually("the switch, once the old relay is gone", WAIT, || async {
            try_switch_count(&pool, 1, 4, STALL)
                .await
                .ok()
                .filter(|switched| *switched)
        })
        .await?;
        assert!(
            !try_switch_count(&pool, 1, 4, STALL).await?,
            "the record is no longer 1"
        );
        let refused = jwl_testkit::eventually("an answer other than busy", WAIT, || async {
            match RelayLease::try_acquire(&pool, ONLY, STALL).await {
                Ok(Attempt::OtherCount(count)) => Some(Some(count)),
                Ok(Attempt::Taken(_)) => Some(None),
                Ok(Attempt::Busy) | Err(_) => None,
            }
        })
        .await?;
        assert_eq!(refused, Some(4), "a relay of the old count is refused");
        let third = acquire(&pool, Partition { index: 2, count: 4 }).await?;
        assert!(
            third.is_some(),
            "a relay of the recorded count takes its partition"
        );
        jwl_testkit::eventually("partition 0 of 4", WAIT, || async {
            acquire(&pool, Partition { index: 0, count: 4 })
                .await
                .ok()
                .flatten()
        })
        .await?;
        Ok(())
    }

    /// A lease session plans no bitmap scans, so its claims walk the pending index with an
    /// index scan, which marks the entries of rows published since the last vacuum dead as it
    /// passes them (a bitmap scan, which the planner picks on a fresh system that expects few
    /// pending rows, visits every such entry on every claim; measured in docs/performance.md).
    #[tokio::test]
    async fn a_lease_session_plans_no_bitmap_scans() -> anyhow::Result<()> {
        let db = jwl_testkit::database().await?;
        let pool = db.pool().await?;
        crate::migrate(&pool).await?;
        let mut lease = acquire(&pool, ONLY).await?.expect("the lease is free");
        let setting: String = lease
            .run(async |conn| {
                sqlx::query_scalar("SELECT current_setting('enable_bitmapscan')")
                    .fetch_one(conn)
                    .await
            })
            .await?;
        assert_eq!(setting, "off");
        // and a pooled session keeps the default
        let pooled: String = sqlx::query_scalar("SELECT current_setting('enable_bitmapscan')")
            .fetch_one(&pool)
            .await?;
        assert_eq!(pooled, "on");
        Ok(())
    }

    /// A lease session's statements are prepared once and planned once, without their
    /// arguments (planning each run cost more than running it), and the claim's one plan walks
    /// the pending rows' index even when made on an empty outbox, as on a fresh system, where a
    /// plan costed by PostgreSQL's own choice would scan the table.
    #[tokio::test]
    async fn a_lease_session_plans_each_statement_once_by_index() -> anyhow::Result<()> {
        let db = jwl_testkit::database().await?;
        let pool = db.pool().await?;
        crate::migrate(&pool).await?;
        let mut lease = acquire(&pool, ONLY).await?.expect("the lease is free");
        let outcome = PublishOutcome {
            published: (1..=50).collect(),
            ..PublishOutcome::default()
        };
        for _ in 0..8 {
            lease
                .run(async |conn| {
                    claim_pending_in(conn, (1, 0), 10, Unmarked::Keep(&[])).await?;
                    mark(conn, &outcome).await
                })
                .await?;
        }
        let plans: Vec<(i64, i64)> = lease
            .run(async |conn| {
                sqlx::query_as(
                    "SELECT generic_plans, custom_plans FROM pg_prepared_statements
                     WHERE statement ~ '(FROM|UPDATE) outbox\\s' AND statement NOT LIKE '%pg_prepared%'
                     ORDER BY statement",
                )
                .fetch_all(conn)
                .await
            })
            .await?;
        assert_eq!(
            plans,
            vec![(8, 0), (8, 0)],
            "the claim and the mark, each prepared and planned once"
        );
        let claim_plan: Vec<String> = lease
            .run(async |conn| {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "PREPARE claim_plan (bigint, int, int, bigint[], bigint[]) AS {CLAIM}"
                )))
                .execute(&mut *conn)
                .await?;
                sqlx::query_scalar("EXPLAIN EXECUTE claim_plan (10, 1, 0, '{}', '{}')")
                    .fetch_all(&mut *conn)
                    .await
            })
            .await?;
        let claim_plan = claim_plan.join("\n");
        assert!(
            claim_plan.contains("Index Scan using outbox_pending_idx"),
            "the claim walks the pending rows' index:\n{claim_plan}"
        );
        Ok(())
    }
}
