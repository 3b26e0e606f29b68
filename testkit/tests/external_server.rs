//! With `JWL_TEST_DATABASE_URL` set, databases are created in that server and the shared
//! cluster is not testkit's to stop. (Its own test binary: it sets a process-wide variable.)

use jwl_testkit::{TEST_DATABASE_URL_ENV, TestCluster, cluster, database};

#[tokio::test]
async fn databases_go_to_the_named_server() {
    let server = TestCluster::start().await.unwrap();
    // SAFETY: the only test in this binary; no other thread reads the environment concurrently.
    unsafe { std::env::set_var(TEST_DATABASE_URL_ENV, server.server_url()) };

    let db = database().await.unwrap();
    assert_eq!(db.url(), server.url(db.name()));
    let pool = db.pool().await.unwrap();
    let current: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(current, db.name());

    let error = cluster().await.unwrap_err().to_string();
    assert!(error.contains(TEST_DATABASE_URL_ENV), "{error}");
}
