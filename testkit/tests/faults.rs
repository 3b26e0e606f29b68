//! Fault injection on a dedicated cluster and on private nats-servers.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use jwl_testkit::{StopMode, TestCluster, eventually, nats};

#[tokio::test]
async fn a_crashed_cluster_comes_back_with_its_committed_data() {
    let cluster = TestCluster::start().await.unwrap();
    let db = cluster.database().await.unwrap();
    // A short acquire timeout: with the server down, sqlx retries connecting until it expires.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect(db.url())
        .await
        .unwrap();
    sqlx::query("CREATE TABLE t (id int)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES (1)")
        .execute(&pool)
        .await
        .unwrap();

    cluster.stop(StopMode::Immediate).await.unwrap();
    assert!(!cluster.is_running().await);
    assert!(sqlx::query("SELECT 1").execute(&pool).await.is_err());

    cluster.start_again().await.unwrap();
    let rows: i64 = eventually("the pool reconnects", Duration::from_secs(30), || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM t")
            .fetch_one(&pool)
            .await
    })
    .await
    .unwrap();
    assert_eq!(rows, 1, "acknowledged commits survive an immediate stop");

    cluster.stop(StopMode::Fast).await.unwrap();
    cluster.start_again().await.unwrap();
    assert!(cluster.is_running().await);
}

#[tokio::test]
async fn nats_can_be_killed_restarted_and_started_again() {
    let first = nats().await.unwrap();
    let second = nats().await.unwrap();
    assert_ne!(first.url(), second.url());
    assert_ne!(first.port(), 4222);

    let js = jetstream::new(async_nats::connect(first.url()).await.unwrap());
    js.create_stream(stream::Config {
        name: "T".into(),
        subjects: vec!["t.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish("t.1", "one".into())
        .await
        .unwrap()
        .await
        .unwrap();

    first.kill().await.unwrap();
    assert!(!first.is_running().await);
    assert!(async_nats::connect(first.url()).await.is_err());
    first.start_again().await.unwrap();
    first.restart().await.unwrap();
    assert!(first.is_running().await);

    let js = jetstream::new(async_nats::connect(first.url()).await.unwrap());
    let mut stream = js.get_stream("T").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);

    let (port, store) = (second.port(), second.store_dir());
    assert!(store.exists());
    drop(second);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "dropped server is killed"
    );
    assert!(!store.exists(), "dropped server's store is removed");
}
