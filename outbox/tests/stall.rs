//! `jwl_outbox::stall`: database work past the stall timeout is given up and its connection
//! closed rather than returned to the pool, against a real PostgreSQL.

use std::io::ErrorKind;
use std::time::Duration;

use jwl_outbox::stall;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

#[tokio::test]
async fn work_past_the_stall_timeout_is_given_up_and_its_connection_closed() -> anyhow::Result<()> {
    let db = jwl_testkit::database().await?;
    // one connection only: a connection kept busy by the abandoned statement would block the next
    let pool = one_connection_pool(&db, Duration::from_secs(5)).await?;
    let limit = Duration::from_millis(300);

    let stalled = stall::with_connection(&pool, limit, async |conn| {
        sqlx::query("SELECT pg_sleep(5)").execute(conn).await?;
        Ok::<_, sqlx::Error>(())
    })
    .await;
    match stalled {
        Err(sqlx::Error::Io(error)) => assert_eq!(error.kind(), ErrorKind::TimedOut),
        other => panic!("expected a stall error, got {other:?}"),
    }

    // well before the abandoned 5 s statement ends: only a closed (not pooled) connection frees
    // the pool's one slot that soon
    let answer: i32 = stall::with_connection(&pool, Duration::from_secs(2), async |conn| {
        sqlx::query_scalar("SELECT 7").fetch_one(conn).await
    })
    .await?;
    assert_eq!(answer, 7, "the pool serves a fresh connection at once");
    Ok(())
}

#[tokio::test]
async fn work_within_the_stall_timeout_returns_its_result() -> anyhow::Result<()> {
    let db = jwl_testkit::database().await?;
    let pool = db.pool().await?;
    let sum: i64 = stall::with_connection(&pool, Duration::from_secs(5), async |conn| {
        sqlx::query_scalar("SELECT sum(n)::bigint FROM generate_series(1, 10) AS n")
            .fetch_one(conn)
            .await
    })
    .await?;
    assert_eq!(sum, 55);
    Ok(())
}

/// A pool of one connection to `db`, whose callers wait at most `acquire_timeout` for it.
async fn one_connection_pool(
    db: &jwl_testkit::TestDatabase,
    acquire_timeout: Duration,
) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(acquire_timeout)
        .connect(db.url())
        .await
}

/// The session behind a connection.
async fn backend_pid(conn: &mut sqlx::PgConnection) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
}

#[tokio::test]
async fn a_kept_connection_serves_the_next_unit_and_is_not_in_the_pool_meanwhile()
-> anyhow::Result<()> {
    let db = jwl_testkit::database().await?;
    let pool = one_connection_pool(&db, Duration::from_millis(300)).await?;
    let mut kept = stall::KeptConnection::new(pool.clone());
    let limit = Duration::from_secs(5);

    let first = kept.run(limit, backend_pid, Result::is_ok).await?;
    // the pool's one connection is kept: the pool has none to hand out
    assert!(
        matches!(pool.acquire().await, Err(sqlx::Error::PoolTimedOut)),
        "the kept connection went back to the pool"
    );
    let second = kept.run(limit, backend_pid, Result::is_ok).await?;
    assert_eq!(first, second, "the second unit ran on the kept session");

    // not kept this time: back in the pool at once
    kept.run(limit, backend_pid, |_| false).await?;
    let mut pooled = pool.acquire().await?;
    assert_eq!(backend_pid(&mut pooled).await?, first);
    Ok(())
}

#[tokio::test]
async fn a_failed_unit_gives_its_connection_back_and_its_transaction_is_rolled_back()
-> anyhow::Result<()> {
    let db = jwl_testkit::database().await?;
    let pool = one_connection_pool(&db, Duration::from_secs(5)).await?;
    let mut kept = stall::KeptConnection::new(pool.clone());
    let failed = kept
        .run(
            Duration::from_secs(5),
            async |conn| {
                let mut tx = sqlx::Connection::begin(conn).await?;
                sqlx::query("SELECT pg_advisory_xact_lock(4242)")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("SELECT 1 / 0").execute(&mut *tx).await?;
                tx.commit().await
            },
            Result::is_ok,
        )
        .await;
    assert!(failed.is_err(), "division by zero fails the unit");

    // the transaction the unit dropped is rolled back as the connection goes back to the pool:
    // its lock is free for another session
    let other = db.pool().await?;
    jwl_testkit::eventually(
        "the failed unit's lock is released",
        Duration::from_secs(10),
        || async {
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(4242)")
                .fetch_one(&other)
                .await?;
            anyhow::ensure!(taken, "still held");
            Ok(())
        },
    )
    .await?;
    // and the pool hands the connection out again
    let mut pooled = pool.acquire().await?;
    backend_pid(&mut pooled).await?;
    Ok(())
}

#[tokio::test]
async fn a_kept_connection_goes_back_to_the_pool_while_its_loop_idles() -> anyhow::Result<()> {
    let db = jwl_testkit::database().await?;
    let pool = one_connection_pool(&db, stall::KEEP_WHILE_IDLE * 5).await?;
    let mut kept = stall::KeptConnection::new(pool.clone());
    let pid = kept
        .run(Duration::from_secs(5), backend_pid, Result::is_ok)
        .await?;
    // what the loop waits for is the pool's one connection: it comes once the kept one is given
    // back for idling
    let mut pooled = kept.waiting_for(pool.acquire()).await?;
    assert_eq!(backend_pid(&mut pooled).await?, pid);
    Ok(())
}

#[tokio::test]
async fn a_checked_kept_connection_that_was_cut_is_replaced_before_the_next_unit()
-> anyhow::Result<()> {
    let db = jwl_testkit::database().await?;
    let pool = one_connection_pool(&db, Duration::from_secs(5)).await?;
    let mut kept = stall::KeptConnection::new(pool.clone()).checked_after(Duration::ZERO);
    let limit = Duration::from_secs(5);
    let cut = kept.run(limit, backend_pid, Result::is_ok).await?;

    // the server ends the kept session (as a restart would)
    let admin = db.pool().await?;
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(cut)
        .execute(&admin)
        .await?;
    jwl_testkit::eventually("the session is gone", Duration::from_secs(10), || async {
        let alive: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
                .bind(cut)
                .fetch_one(&admin)
                .await?;
        anyhow::ensure!(!alive, "still there");
        Ok(())
    })
    .await?;

    // the check finds it broken: the unit runs on a new session instead of failing
    let fresh = kept.run(limit, backend_pid, Result::is_ok).await?;
    assert_ne!(fresh, cut);
    Ok(())
}
