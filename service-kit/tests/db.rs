//! `db::connect` against a real PostgreSQL: schema creation (also concurrent), `search_path`,
//! bounded failure when the database is unreachable, and 503 mapping once it goes away.

use std::time::{Duration, Instant};

use jwl_service_kit::ApiError;
use jwl_service_kit::db::{self, DbError, Planning, PoolSettings};
use jwl_testkit::{StopMode, TestCluster, eventually};

#[tokio::test]
async fn connect_creates_the_schema_and_uses_it_as_search_path() {
    let database = jwl_testkit::database().await.unwrap();
    let pool = db::connect(database.url(), "jwl_widgets").await.unwrap();

    let schema: String = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(schema, "jwl_widgets");
    sqlx::query("CREATE TABLE widget (id int PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    let owner: String = sqlx::query_scalar(
        "SELECT table_schema::text FROM information_schema.tables WHERE table_name = 'widget'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        owner, "jwl_widgets",
        "unqualified tables land in the service's schema"
    );
    db::ping(&pool).await.unwrap();

    // A second connect reuses the existing schema and sees the table.
    let again = db::connect(database.url(), "jwl_widgets").await.unwrap();
    sqlx::query("INSERT INTO widget VALUES (1)")
        .execute(&again)
        .await
        .unwrap();
}

/// The stall timeout reaches the server: a session of the pool idle inside a transaction for
/// that long is ended, and the socket timeouts are set from it.
#[tokio::test]
async fn sessions_carry_the_stall_timeouts_and_idle_transactions_are_ended() {
    let database = jwl_testkit::database().await.unwrap();
    let settings = PoolSettings {
        stall_timeout: Duration::from_millis(1500),
        ..PoolSettings::default()
    };
    let pool = db::connect_with(database.url(), "jwl_stalls", &settings)
        .await
        .unwrap();
    let (idle_in_transaction, user_timeout, keepalive_count): (String, String, String) =
        sqlx::query_as(
            "SELECT current_setting('idle_in_transaction_session_timeout'),
                    current_setting('tcp_user_timeout'), current_setting('tcp_keepalives_count')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(idle_in_transaction, "1500ms");
    // 0 over a Unix socket, where the server has no TCP settings to apply
    assert!(
        ["1500", "1500ms", "0"].contains(&user_timeout.as_str()),
        "{user_timeout}"
    );
    assert!(
        ["3", "0"].contains(&keepalive_count.as_str()),
        "{keepalive_count}"
    );

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap();
    // a client that stopped talking in the middle of its transaction
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ended = sqlx::query("SELECT 1").execute(&mut *tx).await;
    assert!(
        ended.is_err(),
        "the server ended the idle transaction's session"
    );
}

/// A connection given back to the pool with a statement still running (its caller gave up) is
/// closed once it does not answer within the stall timeout, instead of holding the pool's slot
/// until the statement ends (or forever, if the connection went half-open).
#[tokio::test]
async fn a_connection_given_back_mid_statement_is_closed_after_the_stall_timeout() {
    let database = jwl_testkit::database().await.unwrap();
    let settings = PoolSettings {
        max_connections: 1,
        acquire_timeout: Duration::from_secs(20),
        stall_timeout: Duration::from_millis(500),
        ..PoolSettings::default()
    };
    let pool = db::connect_with(database.url(), "jwl_release", &settings)
        .await
        .unwrap();
    let abandoned = tokio::time::timeout(
        Duration::from_millis(200),
        sqlx::query("SELECT pg_sleep(10)").execute(&pool),
    )
    .await;
    assert!(abandoned.is_err(), "the caller gave up on the statement");

    let started = Instant::now();
    db::ping(&pool).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "the only pool slot came back after {waited:?}, not when the 10 s statement ended"
    );
}

/// The plans a session of `pool` runs two statements with (`EXPLAIN EXECUTE` of statements
/// prepared on it, each run six times): a lookup of two ids, and a batch update joining the
/// table to arrays of ids and labels; and how often it planned the lookup generically and with
/// its arguments.
async fn plans_on(pool: &sqlx::PgPool) -> anyhow::Result<(String, String, (i64, i64))> {
    let mut conn = pool.acquire().await?;
    sqlx::raw_sql(
        "PREPARE lookup (int[]) AS SELECT label FROM widget WHERE id = ANY($1);
         PREPARE relabel (int[], text[]) AS UPDATE widget SET label = m.label
           FROM unnest($1, $2) AS m(id, label) WHERE widget.id = m.id;",
    )
    .execute(&mut *conn)
    .await?;
    let lookup = explained(&mut conn, "EXPLAIN EXECUTE lookup ('{1,2}')").await?;
    let relabel = explained(&mut conn, "EXPLAIN EXECUTE relabel ('{1,2}', '{a,b}')").await?;
    let counts = sqlx::query_as(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE name = 'lookup'",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok((lookup, relabel, counts))
}

/// The plan of the sixth run of `explain` (an `EXPLAIN EXECUTE`): past the five runs after
/// which PostgreSQL's own choice may switch to a generic plan.
async fn explained(conn: &mut sqlx::PgConnection, explain: &'static str) -> anyhow::Result<String> {
    let mut plan: Vec<String> = Vec::new();
    for _ in 0..6 {
        plan = sqlx::query_scalar(explain).fetch_all(&mut *conn).await?;
    }
    Ok(plan.join("\n"))
}

/// A pool planning once by index keeps one generic plan per statement from its first run, and
/// that plan finds rows by index even where the statistics say the table is nearly empty (as
/// on a fresh system), where PostgreSQL's own choice (a pool leaving planning to it) scans the
/// table whole, alone or to hash it for a join: plans a generic plan would keep while the table
/// grows. Statements sqlx prepares are planned the same way.
#[tokio::test]
async fn a_pool_planning_once_by_index_keeps_one_indexed_plan_per_statement() -> anyhow::Result<()>
{
    let database = jwl_testkit::database().await?;
    let adaptive = db::connect(database.url(), "jwl_plans").await?;
    sqlx::raw_sql(
        "CREATE TABLE widget (id int PRIMARY KEY, label text NOT NULL);
         INSERT INTO widget SELECT n, 'w' || n FROM generate_series(1, 30) AS n;
         ANALYZE widget;",
    )
    .execute(&adaptive)
    .await?;
    let settings = PoolSettings {
        planning: Planning::OnceByIndex,
        ..PoolSettings::default()
    };
    let by_index = db::connect_with(database.url(), "jwl_plans", &settings).await?;

    let (lookup, _, _) = plans_on(&adaptive).await?;
    assert!(
        lookup.contains("Seq Scan on widget"),
        "PostgreSQL's own choice:\n{lookup}"
    );
    let (lookup, relabel, counts) = plans_on(&by_index).await?;
    assert!(
        lookup.contains("widget_pkey") && !lookup.contains("Seq Scan"),
        "the lookup, planned by index:\n{lookup}"
    );
    assert!(
        relabel.contains("Nested Loop") && relabel.contains("Index Cond: (id = m.id)"),
        "the batch update looks each row up by its key:\n{relabel}"
    );
    assert_eq!(
        counts,
        (6, 0),
        "the generic plan for all six runs, none with arguments"
    );

    let mut conn = by_index.acquire().await?;
    for id in 1..=3 {
        let label: String = sqlx::query_scalar("SELECT label FROM widget WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
        assert_eq!(label, format!("w{id}"));
    }
    let prepared: (i64, i64) = sqlx::query_as(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements
         WHERE statement = 'SELECT label FROM widget WHERE id = $1'",
    )
    .fetch_one(&mut *conn)
    .await?;
    assert_eq!(prepared, (3, 0), "a statement sqlx prepared, planned once");
    Ok(())
}

#[tokio::test]
async fn two_schemas_in_one_database_are_separate() {
    let database = jwl_testkit::database().await.unwrap();
    let a = db::connect(database.url(), "jwl_a").await.unwrap();
    let b = db::connect(database.url(), "jwl_b").await.unwrap();
    sqlx::query("CREATE TABLE thing (v text)")
        .execute(&a)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE thing (v text)")
        .execute(&b)
        .await
        .unwrap();
    sqlx::query("INSERT INTO thing VALUES ('a')")
        .execute(&a)
        .await
        .unwrap();
    let in_b: i64 = sqlx::query_scalar("SELECT count(*) FROM thing")
        .fetch_one(&b)
        .await
        .unwrap();
    assert_eq!(in_b, 0);
}

#[tokio::test]
async fn concurrent_connects_to_a_new_schema_all_succeed() {
    let database = jwl_testkit::database().await.unwrap();
    let connects = (0..8).map(|_| db::connect(database.url(), "jwl_raced"));
    for result in futures::future::join_all(connects).await {
        let pool = result.expect("every racer gets a pool");
        db::ping(&pool).await.unwrap();
    }
}

#[tokio::test]
async fn unreachable_database_fails_within_the_retry_budget() {
    let port = jwl_local_infra_free_port();
    let settings = PoolSettings {
        startup_retry_for: Duration::from_secs(1),
        ..PoolSettings::default()
    };
    let started = Instant::now();
    let error = db::connect_with(
        &format!("postgres://postgres@127.0.0.1:{port}/none"),
        "jwl_x",
        &settings,
    )
    .await
    .unwrap_err();
    assert!(matches!(error, DbError::Connect(_)), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "gave up after {:?}",
        started.elapsed()
    );
}

/// A port nothing listens on: bind one, then release it.
fn jwl_local_infra_free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn queries_fail_fast_with_503_while_the_database_is_down() {
    let cluster = TestCluster::start().await.unwrap();
    let database = cluster.database().await.unwrap();
    let pool = db::connect(database.url(), "jwl_outage").await.unwrap();
    db::ping(&pool).await.unwrap();

    cluster.stop(StopMode::Immediate).await.unwrap();
    let started = Instant::now();
    // The first query may fail on a broken pooled connection, later ones on connecting; all
    // must be errors (not hangs) that map to 503.
    for _ in 0..3 {
        let error = db::ping(&pool).await.unwrap_err();
        let status = ApiError::from(error).status();
        assert_eq!(status, 503);
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );

    cluster.start_again().await.unwrap();
    eventually("the pool recovers", Duration::from_secs(30), || {
        db::ping(&pool)
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_pool_that_pings_before_acquire_answers_the_first_query_after_a_restart() {
    let cluster = TestCluster::start().await.unwrap();
    let database = cluster.database().await.unwrap();
    let settings = PoolSettings {
        max_connections: 2,
        ping_before_acquire: true,
        ..PoolSettings::default()
    };
    let pool = db::connect_with(database.url(), "jwl_restarted", &settings)
        .await
        .unwrap();
    // the pool holds an idle connection to the server that is about to restart
    db::ping(&pool).await.unwrap();

    cluster.stop(StopMode::Immediate).await.unwrap();
    cluster.start_again().await.unwrap();

    // the pool finds its connection broken, replaces it, and the first query succeeds (without
    // the check the broken connection is usually handed out and the query fails: see
    // `queries_fail_fast_with_503_while_the_database_is_down`, and the e2e fault tests, whose
    // reads after a restart failed with 503 before the HTTP pool had it)
    for _ in 0..3 {
        db::ping(&pool).await.unwrap();
    }
}

/// A start-up step (a service's migrations) that cannot get a connection within the acquire
/// timeout is tried again, whatever wraps the pool's error; a step that fails for any other
/// reason is not.
#[tokio::test]
async fn a_start_up_step_outlasts_a_pool_timeout_but_not_other_errors() -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let database = jwl_testkit::database().await?;
    let settings = PoolSettings {
        max_connections: 1,
        acquire_timeout: Duration::from_millis(200),
        startup_retry_for: Duration::from_secs(30),
        ..PoolSettings::default()
    };
    let pool = db::connect_with(database.url(), "jwl_startup", &settings).await?;

    // the pool's only connection is taken: the first try times out waiting for it
    let mut held = Some(pool.acquire().await?);
    let tries = AtomicUsize::new(0);
    db::retry_startup(&settings, || {
        if tries.fetch_add(1, Ordering::SeqCst) == 1 {
            held = None;
        }
        // the reliable-messaging tables' own migrations: the pool timeout reaches the caller
        // wrapped as a service's migrations wrap it (outbox error, sqlx migrate error)
        let pool = pool.clone();
        async move { Ok(jwl_outbox::migrate(&pool).await?) }
    })
    .await?;
    assert_eq!(
        tries.load(Ordering::SeqCst),
        2,
        "tried again after the pool timed out"
    );
    assert!(held.is_none());

    let tries = AtomicUsize::new(0);
    let error = db::retry_startup(&settings, || {
        tries.fetch_add(1, Ordering::SeqCst);
        let pool = pool.clone();
        async move {
            sqlx::query("ALTER TABLE widget ADD COLUMN name text")
                .execute(&pool)
                .await
                .context("migrating the widgets")?;
            Ok(())
        }
    })
    .await
    .expect_err("there is no widget table");
    assert_eq!(tries.load(Ordering::SeqCst), 1, "{error:#}");
    assert!(format!("{error:#}").contains("does not exist"), "{error:#}");
    Ok(())
}
