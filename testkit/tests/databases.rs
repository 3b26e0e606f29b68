//! `database()`: fresh databases in one cluster per process (or in `JWL_TEST_DATABASE_URL`).

use std::collections::HashSet;

use jwl_testkit::{TEST_DATABASE_URL_ENV, cluster, database};

fn port_of(url: &str) -> u16 {
    url::Url::parse(url).unwrap().port().unwrap()
}

#[tokio::test]
async fn databases_are_fresh_empty_and_distinct() {
    let first = database().await.unwrap();
    let second = database().await.unwrap();
    assert_ne!(first.name(), second.name());
    assert!(first.name().starts_with("jwl_test_"));
    assert!(first.url().ends_with(&format!("/{}", first.name())));

    let pool = first.pool().await.unwrap();
    let current: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(current, first.name());
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 0);
    sqlx::query("CREATE TABLE only_in_first (id int)")
        .execute(&pool)
        .await
        .unwrap();

    let other = second.pool().await.unwrap();
    let visible: Option<String> = sqlx::query_scalar("SELECT to_regclass('only_in_first')::text")
        .fetch_one(&other)
        .await
        .unwrap();
    assert_eq!(visible, None, "databases are isolated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_share_one_server() {
    let tasks: Vec<_> = (0..12).map(|_| tokio::spawn(database())).collect();
    let mut names = HashSet::new();
    let mut ports = HashSet::new();
    for task in tasks {
        let db = task.await.unwrap().unwrap();
        names.insert(db.name().to_owned());
        ports.insert(port_of(db.url()));
    }
    assert_eq!(names.len(), 12);
    assert_eq!(ports.len(), 1, "one server per test process");

    let expected_port = match std::env::var(TEST_DATABASE_URL_ENV) {
        Ok(url) if !url.is_empty() => port_of(&url),
        _ => cluster().await.unwrap().port(),
    };
    assert_eq!(ports.into_iter().next(), Some(expected_port));
}

#[tokio::test]
async fn the_shared_cluster_is_never_a_machine_service() {
    let db = database().await.unwrap();
    let port = port_of(db.url());
    if std::env::var(TEST_DATABASE_URL_ENV).is_err() {
        assert_ne!(port, 5432);
        let shared = cluster().await.unwrap();
        assert!(shared.is_running().await);
        assert!(shared.log_file().exists());
    }
}
