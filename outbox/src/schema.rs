//! Creates the `outbox` and `inbox` tables ([`migrate`]).

use sqlx::PgPool;
use sqlx::migrate::Migrator;

use crate::error::OutboxError;

/// Migrations with versions 1..=999; services use 14-digit versions in the same
/// `_sqlx_migrations` table, so each migrator ignores the other's versions.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Creates (or upgrades) the `outbox` and `inbox` tables in the pool's current schema
/// (its `search_path`). Idempotent; safe to run from several replicas at once.
pub async fn migrate(pool: &PgPool) -> Result<(), OutboxError> {
    let mut migrator = Migrator::with_migrations(MIGRATOR.iter().cloned().collect());
    migrator.set_ignore_missing(true);
    migrator.run(pool).await?;
    Ok(())
}
