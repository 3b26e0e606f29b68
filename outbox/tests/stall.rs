//! `jwl_outbox::stall`: database work past the stall timeout is given up and its connection
//! closed rather than returned to the pool, against a real PostgreSQL.

use std::io::ErrorKind;
use std::time::Duration;

use jwl_outbox::stall;
use sqlx::postgres::PgPoolOptions;

#[tokio::test]
async fn work_past_the_stall_timeout_is_given_up_and_its_connection_closed() -> anyhow::Result<()> {
    let db = jwl_testkit::database().await?;
    // one connection only: a connection kept busy by the abandoned statement would block the next
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(db.url())
        .await?;
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
