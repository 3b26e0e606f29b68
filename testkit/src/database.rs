//! A fresh database per test, in the shared private cluster or in `JWL_TEST_DATABASE_URL`.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection};
use url::Url;

/// An empty database created for one test. It is not dropped afterwards: the whole cluster is
/// thrown away at the end of the run.
#[derive(Clone, Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    /// Connection URL of this database (`postgres://…/jwl_test_<random>`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database name (`jwl_test_<32 hex digits>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A new connection pool to this database (bound to the calling test's runtime).
    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&self.url)
            .await
            .with_context(|| format!("connecting to test database {}", self.url))
    }
}

/// A fresh, empty database with a random name: in the server named by `JWL_TEST_DATABASE_URL`
/// if set, else in this process's private cluster (started on first use).
pub async fn database() -> anyhow::Result<TestDatabase> {
    match external_server_url() {
        Some(server_url) => create_database(&server_url).await,
        None => crate::cluster::shared_cluster().await?.database().await,
    }
}

/// `JWL_TEST_DATABASE_URL`, if set and non-empty.
pub(crate) fn external_server_url() -> Option<String> {
    std::env::var(crate::TEST_DATABASE_URL_ENV)
        .ok()
        .filter(|url| !url.trim().is_empty())
}

/// Creates `jwl_test_<uuid>` on the server at `server_url` and returns it.
pub(crate) async fn create_database(server_url: &str) -> anyhow::Result<TestDatabase> {
    let name = format!("jwl_test_{}", uuid::Uuid::new_v4().simple());
    let url = database_url(server_url, &name)?;
    let mut admin = PgConnection::connect(server_url)
        .await
        .with_context(|| format!("connecting to the test PostgreSQL server {server_url}"))?;
    // The name is generated above from hex digits only, so it is safe to splice in.
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .with_context(|| format!("creating database {name} on {server_url}"))?;
    let _ = admin.close().await;
    Ok(TestDatabase { name, url })
}

/// `server_url` with its database (path) replaced by `name`, keeping user, host and parameters.
fn database_url(server_url: &str, name: &str) -> anyhow::Result<String> {
    let mut url =
        Url::parse(server_url).with_context(|| format!("invalid PostgreSQL URL {server_url:?}"))?;
    url.set_path(&format!("/{name}"));
    Ok(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_the_database() {
        assert_eq!(
            database_url(
                "postgres://postgres@127.0.0.1:5999/postgres?sslmode=disable",
                "jwl_test_1"
            )
            .unwrap(),
            "postgres://postgres@127.0.0.1:5999/jwl_test_1?sslmode=disable"
        );
        assert_eq!(
            database_url("postgres://u:p@h:1", "d").unwrap(),
            "postgres://u:p@h:1/d"
        );
    }
}
