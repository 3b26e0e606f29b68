//! PostgreSQL pools, one per service schema: [`connect`] creates the schema if it is missing and
//! returns a pool whose connections have `search_path` set to it; [`ping`] checks liveness.
//!
//! The first connection is retried with exponential backoff (bounded) so a service can start
//! while its database is still coming up, and so are start-up steps such as migrations
//! ([`retry_startup`]) that fail for a passing reason; afterwards a dead database surfaces as
//! errors after [`PoolSettings::acquire_timeout`] rather than as hangs.
//!
//! A connection that goes silent without closing (half-open after a partition) is bounded by
//! [`PoolSettings::stall_timeout`] on both ends: a connection given back to the pool must answer
//! a ping within it or it is closed (sqlx's own check on release would wait forever, keeping the
//! pool slot), and PostgreSQL ends a session idle inside a transaction for that long
//! (`idle_in_transaction_session_timeout`), which frees the locks a vanished client held. The
//! server's side of the socket is bounded too: `tcp_user_timeout` (data it sent left unacknowledged,
//! say a result it is blocked sending to a client that vanished) and TCP keepalives, so a session
//! whose client is gone does not outlive it by the operating system's two hours.
//!
//! How PostgreSQL plans a pool's statements is a setting of the pool ([`Planning`]): the
//! consumers' pool plans each statement once, by index; the HTTP routes' pool leaves the choice
//! to PostgreSQL.

use std::str::FromStr;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use jwl_outbox::stall;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::problem::is_transient_db_error;

/// Why a pool could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The schema name is not a plain lower-case SQL identifier.
    #[error("invalid schema name `{0}` (expected [a-z_][a-z0-9_]*, at most 63 bytes)")]
    InvalidSchema(String),
    /// The database URL does not parse (the URL itself is not repeated: it may hold a password).
    #[error("invalid database URL: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    /// The database could not be reached (after retrying) or refused the login.
    #[error("could not connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    /// The schema did not exist and could not be created.
    #[error("could not create schema `{schema}`: {source}")]
    CreateSchema { schema: String, source: sqlx::Error },
}

/// Pool sizing and timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// Upper bound on open connections of the pool.
    pub max_connections: u32,
    /// How long a query waits for a free connection before failing with `PoolTimedOut`.
    pub acquire_timeout: Duration,
    /// Idle connections above the minimum are closed after this.
    pub idle_timeout: Duration,
    /// Connections are recycled after this (picks up server-side changes, bounds leaks).
    pub max_lifetime: Duration,
    /// How long to keep retrying the first connection (database still starting).
    pub startup_retry_for: Duration,
    /// How long a connection may go without answering before it is given up (see the module
    /// documentation); `JWL_DB_STALL_TIMEOUT`.
    pub stall_timeout: Duration,
    /// Ping every connection before handing it out (bounded by [`stall::CHECK_LIMIT`] or the
    /// stall timeout, whichever is shorter), and replace it if it does not answer. For pools
    /// whose callers do not retry, such as the HTTP routes': a connection broken by a database
    /// restart or left half-open by a partition is replaced instead of failing the request.
    /// Off for the consumers' pool, whose batches retry and which runs on the hot path.
    pub ping_before_acquire: bool,
    /// How PostgreSQL plans the statements of the pool's sessions.
    pub planning: Planning,
}

/// How PostgreSQL plans the prepared statements of a pool's sessions (sqlx prepares each
/// statement once per connection).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Planning {
    /// PostgreSQL's own choice: a statement is planned with its arguments for its first five
    /// runs, then keeps a generic plan if that does not look costlier. For pools whose statements
    /// vary in what they select (the HTTP routes' lists and filters, operator commands).
    #[default]
    Adaptive,
    /// Each statement is planned once per session, without its arguments, finding rows by
    /// index: no sequential scan where an index serves, and joins as nested loops that look each
    /// row up by its key (`plan_cache_mode = force_generic_plan`, `enable_seqscan`,
    /// `enable_hashjoin` and `enable_mergejoin` off). For sessions whose statements all find
    /// their rows by key or by arrays of keys, once per batch (the consumers', their handlers'
    /// and the relays'): planning each run with its arguments cost PostgreSQL more than running
    /// it, and a plan costed while a fresh system's tables were nearly empty, where scanning a
    /// table whole (alone, or to hash it for a join) is cheapest, would be kept while they grow
    /// (docs/performance.md, *One plan per statement*).
    OnceByIndex,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(300),
            max_lifetime: Duration::from_secs(1800),
            startup_retry_for: Duration::from_secs(20),
            stall_timeout: Duration::from_secs(30),
            ping_before_acquire: false,
            planning: Planning::Adaptive,
        }
    }
}

/// A pool on `url` whose connections use `schema` (created if missing), with default settings.
pub async fn connect(url: &str, schema: &str) -> Result<PgPool, DbError> {
    connect_with(url, schema, &PoolSettings::default()).await
}

/// A pool on `url` whose connections use `schema` (created if missing), exported on `/metrics`
/// as `pool="<schema>"`.
pub async fn connect_with(
    url: &str,
    schema: &str,
    settings: &PoolSettings,
) -> Result<PgPool, DbError> {
    connect_labelled(url, schema, schema, settings).await
}

/// [`connect_with`], exported on `/metrics` as `pool="<label>"`: a second pool of one schema
/// (the HTTP routes' pool, `jwl_order_http`) needs a label of its own.
pub async fn connect_labelled(
    url: &str,
    schema: &str,
    label: &str,
    settings: &PoolSettings,
) -> Result<PgPool, DbError> {
    validate_schema(schema)?;
    let base = PgConnectOptions::from_str(url).map_err(DbError::InvalidUrl)?;

    let retry_policy = startup_backoff(settings);

    (|| ensure_schema(&base, schema))
        .retry(retry_policy)
        .when(|error: &DbError| matches!(error, DbError::Connect(e) if is_transient_db_error(e)))
        .notify(
            |error, delay| tracing::warn!(%error, ?delay, "database not reachable yet; retrying"),
        )
        .await?;

    let stall_ms = settings.stall_timeout.as_millis().to_string();
    // keepalive probes: first after the stall timeout, then every third of it, three missed
    let keepalive_idle = settings.stall_timeout.as_secs().max(1).to_string();
    let keepalive_interval = (settings.stall_timeout.as_secs() / 3).max(1).to_string();
    let options = base.options([
        ("search_path", schema),
        ("idle_in_transaction_session_timeout", stall_ms.as_str()),
        ("tcp_user_timeout", stall_ms.as_str()),
        ("tcp_keepalives_idle", keepalive_idle.as_str()),
        ("tcp_keepalives_interval", keepalive_interval.as_str()),
        ("tcp_keepalives_count", "3"),
    ]);
    let options = match settings.planning {
        Planning::Adaptive => options,
        Planning::OnceByIndex => options.options([
            ("plan_cache_mode", "force_generic_plan"),
            ("enable_seqscan", "off"),
            ("enable_hashjoin", "off"),
            ("enable_mergejoin", "off"),
        ]),
    };
    let release_check = settings.stall_timeout;
    let acquire_check = settings.stall_timeout.min(stall::CHECK_LIMIT);
    let ping_before_acquire = settings.ping_before_acquire;
    (|| {
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .min_connections(0)
            .acquire_timeout(settings.acquire_timeout)
            .idle_timeout(settings.idle_timeout)
            .max_lifetime(settings.max_lifetime)
            // sqlx's own ping before acquire is unbounded (a half-open connection would hang
            // it); where wanted, a bounded one is installed instead. Without it, a connection
            // broken by a server restart fails its query (a transient error callers retry) and
            // is then discarded by the pool.
            .test_before_acquire(false)
            .after_release(move |conn, _| Box::pin(checked(conn, release_check)));
        let pool = if ping_before_acquire {
            pool.before_acquire(move |conn, _| Box::pin(checked(conn, acquire_check)))
        } else {
            pool
        };
        pool.connect_with(options.clone())
    })
    .retry(retry_policy)
    .when(is_transient_db_error)
    .notify(|error, delay| tracing::warn!(%error, ?delay, "database not reachable yet; retrying"))
    .await
    .map_err(DbError::Connect)
    // its size and idle connections are exported on /metrics, under its label
    .inspect(|pool| crate::telemetry::watch_pool(label, pool.clone()))
}

/// Runs a start-up step on a freshly connected pool (a service's migrations), retrying it with
/// the first connection's backoff, for up to [`PoolSettings::startup_retry_for`], while it fails
/// for a reason that passes ([`sqlx::Error::PoolTimedOut`] on a machine too loaded to open a
/// connection within [`PoolSettings::acquire_timeout`], a connection dropped by a restarting
/// server). The step must be safe to run again (migrations are: each runs under sqlx's lock and
/// applied versions are skipped). Any other failure is returned at once.
pub async fn retry_startup<T, F, Fut>(settings: &PoolSettings, step: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    step.retry(startup_backoff(settings))
        .when(|error: &anyhow::Error| {
            error
                .chain()
                .any(|cause| cause.downcast_ref().is_some_and(is_transient_db_error))
        })
        .notify(|error, delay| {
            tracing::warn!(error = %format!("{error:#}"), ?delay, "start-up step failed; retrying")
        })
        .await
}

/// The backoff of start-up steps: from 100 ms up to 2 s between tries, for
/// [`PoolSettings::startup_retry_for`] in all.
fn startup_backoff(settings: &PoolSettings) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_total_delay(Some(settings.startup_retry_for))
        .with_max_times(usize::MAX)
        .with_jitter()
}

/// [`stall::answers_within`] as the pool's check of a connection given back or about to be
/// handed out (`false` closes it).
async fn checked(conn: &mut PgConnection, limit: Duration) -> Result<bool, sqlx::Error> {
    Ok(stall::answers_within(conn, limit).await)
}

/// One round trip to the database.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}

/// Creates `schema` unless it exists. Safe when several processes start at once: creation is
/// serialized by an advisory lock, and "already exists" from a concurrent creator is success.
/// When the schema exists nothing is created, so a role without `CREATE` on the database works.
async fn ensure_schema(base: &PgConnectOptions, schema: &str) -> Result<(), DbError> {
    let mut conn = PgConnection::connect_with(base)
        .await
        .map_err(DbError::Connect)?;
    let create_error = |source| DbError::CreateSchema {
        schema: schema.to_owned(),
        source,
    };

    let mut tx = conn.begin().await.map_err(DbError::Connect)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('jwl.create_schema'))")
        .execute(&mut *tx)
        .await
        .map_err(create_error)?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(&mut *tx)
            .await
            .map_err(create_error)?;
    if !exists {
        // `schema` passed `validate_schema`, so quoting it is enough to make this safe.
        let ddl = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
        match sqlx::query(sqlx::AssertSqlSafe(ddl))
            .execute(&mut *tx)
            .await
        {
            Ok(_) => {}
            Err(error) if is_already_exists(&error) => {}
            Err(error) => return Err(create_error(error)),
        }
    }
    tx.commit().await.map_err(create_error)?;
    // Close politely; a failure here changes nothing about the outcome.
    let _ = conn.close().await;
    Ok(())
}

/// `duplicate_schema` or the unique-violation a concurrent `CREATE SCHEMA` can produce.
fn is_already_exists(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("42P06" | "23505")))
}

fn validate_schema(schema: &str) -> Result<(), DbError> {
    let mut chars = schema.chars();
    let valid = schema.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(DbError::InvalidSchema(schema.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_validated() {
        assert!(validate_schema("jwl_order").is_ok());
        assert!(validate_schema("_x1").is_ok());
        for bad in [
            "",
            "1abc",
            "Order",
            "a-b",
            "a\"b",
            "a;drop",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(validate_schema(bad), Err(DbError::InvalidSchema(_))),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn invalid_urls_are_reported_without_connecting() {
        assert!(matches!(
            connect("not a url", "jwl_x").await,
            Err(DbError::InvalidUrl(_))
        ));
    }
}
