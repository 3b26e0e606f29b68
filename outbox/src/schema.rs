//! Creates the `outbox`, `inbox`, `dead_letter_holds` and `parked_messages` tables ([`migrate`]),
//! alone or together with a service's own tables ([`migrate_with`]).

use sqlx::PgPool;
use sqlx::migrate::Migrator;

use crate::error::OutboxError;

/// Migrations with versions 1..=999; services use 14-digit versions in the same
/// `_sqlx_migrations` table, so each migrator ignores the other's versions.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Creates (or upgrades) the reliable-messaging tables in the pool's current schema
/// (its `search_path`). Idempotent; safe to run from several replicas at once.
pub async fn migrate(pool: &PgPool) -> Result<(), OutboxError> {
    run_ignoring_others(&MIGRATOR, pool).await
}

/// [`migrate`], then a service's own migrations (`sqlx::migrate!()` of its crate, 14-digit
/// versions) in the same schema.
pub async fn migrate_with(pool: &PgPool, service_migrations: &Migrator) -> Result<(), OutboxError> {
    migrate(pool).await?;
    run_ignoring_others(service_migrations, pool).await
}

/// Runs `migrations`, ignoring versions in `_sqlx_migrations` that belong to the other migrator.
async fn run_ignoring_others(migrations: &Migrator, pool: &PgPool) -> Result<(), OutboxError> {
    let mut migrator = Migrator::with_migrations(migrations.iter().cloned().collect());
    migrator.set_ignore_missing(true);
    migrator.run(pool).await?;
    Ok(())
}
