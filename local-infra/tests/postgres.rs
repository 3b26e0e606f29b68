//! Starting, stopping and restarting a real private PostgreSQL cluster.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::Duration;

use jwl_local_infra::{InfraError, PgTuning, PostgresOptions, PostgresServer, StopMode, free_port};
use sqlx::{Connection, PgConnection};

fn options(dir: &tempfile::TempDir, tuning: PgTuning) -> PostgresOptions {
    PostgresOptions {
        data_dir: dir.path().join("data"),
        port: free_port().unwrap(),
        tuning,
    }
}

async fn connect(server: &PostgresServer) -> PgConnection {
    PgConnection::connect(&server.url("postgres"))
        .await
        .expect("connects")
}

async fn count_rows(server: &PostgresServer) -> i64 {
    let mut conn = connect(server).await;
    sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

fn refuses_connections(port: u16) -> bool {
    TcpStream::connect_timeout(
        &(Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_millis(500),
    )
    .is_err()
}

fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap() // effective uid
}

#[tokio::test]
async fn durable_cluster_keeps_committed_data_across_fast_and_immediate_stops() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = PostgresServer::start(options(&dir, PgTuning::Durable)).unwrap();
    assert!(server.is_running());
    assert_eq!(
        server.url("app"),
        format!("postgres://postgres@127.0.0.1:{}/app", server.port())
    );
    assert!(server.data_dir().join("PG_VERSION").exists());
    assert!(server.log_file().exists());
    // PostgreSQL never runs as root.
    assert_ne!(uid_of(server.pid().unwrap()), 0);

    let mut conn = connect(&server).await;
    sqlx::query("CREATE TABLE t (id int)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES (1)")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);

    server.stop(StopMode::Fast).unwrap();
    assert!(!server.is_running());
    assert!(refuses_connections(server.port()));
    server.stop(StopMode::Fast).unwrap(); // stopping a stopped server is a no-op

    server.start_again().unwrap();
    assert_eq!(count_rows(&server).await, 1);

    let mut conn = connect(&server).await;
    sqlx::query("INSERT INTO t VALUES (2)")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    server.stop(StopMode::Immediate).unwrap();
    assert!(refuses_connections(server.port()));
    server.start_again().unwrap(); // crash recovery
    assert_eq!(count_rows(&server).await, 2);
    server.start_again().unwrap(); // no-op while running
    assert!(server.is_running());
}

#[tokio::test]
async fn reuses_an_existing_cluster_and_drop_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let first_options = options(&dir, PgTuning::FastCrashSafe);
    let port = first_options.port;
    let server = PostgresServer::start(first_options.clone()).unwrap();
    let mut conn = connect(&server).await;
    assert_eq!(settings(&mut conn).await, ["off", "on", "off", "300"]);
    sqlx::query("CREATE TABLE t (id int)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES (1)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let pid = server.pid().unwrap();

    drop(server);
    assert!(refuses_connections(port));
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "postmaster reaped"
    );

    // Same directory, new port: no initdb; the acknowledged commit survived the immediate stop.
    let again = PostgresServer::start(PostgresOptions {
        port: free_port().unwrap(),
        ..first_options
    })
    .unwrap();
    assert_eq!(count_rows(&again).await, 1);
}

/// fsync, synchronous_commit, full_page_writes, max_connections.
async fn settings(conn: &mut PgConnection) -> Vec<String> {
    let mut values = Vec::new();
    for name in [
        "fsync",
        "synchronous_commit",
        "full_page_writes",
        "max_connections",
    ] {
        let sql = sqlx::AssertSqlSafe(format!("SHOW {name}"));
        values.push(sqlx::query_scalar(sql).fetch_one(&mut *conn).await.unwrap());
    }
    values
}

#[tokio::test]
async fn tunings_apply_their_settings() {
    let dir = tempfile::tempdir().unwrap();
    let server = PostgresServer::start(options(&dir, PgTuning::FastUnsafe)).unwrap();
    assert_eq!(
        settings(&mut connect(&server).await).await,
        ["off", "off", "off", "300"]
    );
    drop(server);
    let server = PostgresServer::start(options(&dir, PgTuning::Durable)).unwrap();
    assert_eq!(
        settings(&mut connect(&server).await).await,
        ["on", "on", "on", "100"]
    );
}

#[test]
fn a_taken_port_is_reported_as_port_in_use() {
    let dir = tempfile::tempdir().unwrap();
    // the occupier takes a port of the kernel's choosing (a port picked as free first could be
    // taken by a concurrent test before it binds)
    let occupier = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let mut options = options(&dir, PgTuning::FastUnsafe);
    options.port = occupier.local_addr().unwrap().port();
    match PostgresServer::start(options.clone()) {
        Err(InfraError::PortInUse {
            server: "postgres",
            port,
        }) => assert_eq!(port, options.port),
        other => panic!("expected PortInUse, got {other:?}"),
    }
}

/// `jwl up` passes its default `./.jwl/pg`: a data directory relative to the working directory
/// must work although the server runs inside it.
#[tokio::test]
async fn a_relative_data_directory_is_resolved_against_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = std::env::current_dir().unwrap();
    let up_to_root: std::path::PathBuf = cwd.components().skip(1).map(|_| "..").collect();
    let relative = up_to_root
        .join(dir.path().strip_prefix("/").unwrap())
        .join("data");
    assert!(relative.is_relative());

    let server = PostgresServer::start(PostgresOptions {
        data_dir: relative,
        port: free_port().unwrap(),
        tuning: PgTuning::FastUnsafe,
    })
    .unwrap();
    assert!(dir.path().join("data").join("PG_VERSION").exists());
    let mut conn = connect(&server).await;
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
}
