//! The scratch database of one sandbox run: `jwl_sandbox_<uuid>` created on the server of the
//! given URL, one schema per service migrated by the current build, dropped at the end.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgConnection, PgPool};

use crate::SandboxError;
use crate::handlers::SandboxService;

/// Connections of each service's scratch pool (events are fed one at a time).
const POOL_SIZE: u32 = 2;

/// A scratch database and a pool in each service's schema of it.
pub(crate) struct Scratch {
    /// The server's URL options, on the database the caller named (used to drop the scratch).
    server: PgConnectOptions,
    pub name: String,
    pools: Vec<(SandboxService, PgPool)>,
}

impl Scratch {
    /// Creates `jwl_sandbox_<uuid>` on the server of `database_url` and migrates every service's
    /// schema in it. On failure, whatever was created is dropped again.
    pub async fn create(database_url: &str) -> Result<Scratch, SandboxError> {
        let server = PgConnectOptions::from_str(database_url).map_err(SandboxError::Database)?;
        let name = format!("jwl_sandbox_{}", uuid::Uuid::new_v4().simple());
        let mut admin = server.connect().await.map_err(SandboxError::Database)?;
        // names built here from a UUID and the services' constant schemas: nothing from input
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .map_err(SandboxError::Database)?;
        admin.close().await.ok();
        let mut scratch = Scratch {
            server,
            name,
            pools: Vec::new(),
        };
        if let Err(error) = scratch.migrate().await {
            scratch.drop_database().await;
            return Err(error);
        }
        Ok(scratch)
    }

    async fn migrate(&mut self) -> Result<(), SandboxError> {
        let scratch = self.server.clone().database(&self.name);
        for service in SandboxService::ALL {
            let schema = service.schema();
            let mut conn = scratch.connect().await.map_err(SandboxError::Database)?;
            sqlx::query(AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}"
            )))
            .execute(&mut conn)
            .await
            .map_err(SandboxError::Database)?;
            conn.close().await.ok();
            let pool = PgPoolOptions::new()
                .max_connections(POOL_SIZE)
                .connect_with(scratch.clone().options([("search_path", schema)]))
                .await
                .map_err(SandboxError::Database)?;
            self.pools.push((service, pool.clone()));
            service
                .migrate(&pool)
                .await
                .map_err(|source| SandboxError::Migrate {
                    service: service.name(),
                    error: source,
                })?;
        }
        Ok(())
    }

    /// The pool in `service`'s schema.
    pub fn pool(&self, service: SandboxService) -> &PgPool {
        self.pools
            .iter()
            .find(|(s, _)| *s == service)
            .map(|(_, pool)| pool)
            .unwrap_or_else(|| unreachable!("every service's pool is created by `create`"))
    }

    /// Closes the pools and drops the database (`WITH (FORCE)`: no session may keep it).
    /// Best effort: a failure is logged, and the database's name says what to drop by hand.
    pub async fn drop_database(self) {
        for (_, pool) in &self.pools {
            pool.close().await;
        }
        let dropped = async {
            let mut admin: PgConnection = self.server.connect().await?;
            sqlx::query(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&mut admin)
            .await?;
            admin.close().await
        };
        if let Err(error) = dropped.await {
            tracing::warn!(database = %self.name, %error,
                "could not drop the sandbox's scratch database; drop it by hand");
        }
    }
}
