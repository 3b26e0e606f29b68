//! The private broker (`nats-server`, or tansu for `--broker kafka`) and PostgreSQL that `jwl
//! up` runs under the data dir when no external ones are configured: started on remembered (or new free) loopback ports, reusing
//! their data across restarts, and stopped cleanly at the end. PostgreSQL preloads
//! `pg_stat_statements` when its installation ships it (for `jwl bench`'s statements per saga).

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

use anyhow::Context;
use jwl_local_infra::{
    InfraError, NatsOptions, NatsServer, PgTuning, PostgresOptions, PostgresServer, StopMode,
    TansuOptions, TansuServer, TansuStorage,
};
use sqlx::{Connection, PgConnection};

/// The database the services' schemas live in.
pub const DATABASE: &str = "jwl";

/// The private servers of one `jwl up` run.
#[derive(Default)]
pub struct PrivateServers {
    nats: Option<NatsServer>,
    tansu: Option<TansuServer>,
    postgres: Option<PostgresServer>,
}

impl PrivateServers {
    /// Starts `nats-server` under `<data_dir>/nats`.
    pub async fn start_nats(&mut self, data_dir: &Path) -> anyhow::Result<String> {
        let store_dir = data_dir.join("nats");
        let port_file = data_dir.join("nats.port");
        let server = start_on_remembered_port(port_file, move |port| {
            NatsServer::start(NatsOptions {
                store_dir: store_dir.clone(),
                port,
                config_file: None,
                env: Vec::new(),
            })
        })
        .await
        .context("starting the private nats-server")?;
        let url = server.url();
        tracing::info!(%url, store = %server.store_dir().display(), "private nats-server started");
        self.nats = Some(server);
        Ok(url)
    }

    /// Starts tansu (a Kafka-protocol broker) under `<data_dir>/tansu`, its topics in SQLite
    /// there; with a tansu built without SQLite, in memory (lost when `jwl up` stops). Returns
    /// its bootstrap servers.
    pub async fn start_tansu(&mut self, data_dir: &Path) -> anyhow::Result<String> {
        let tansu_dir = data_dir.join("tansu");
        let port_file = data_dir.join("tansu.port");
        let start = |storage: TansuStorage| {
            let (tansu_dir, port_file) = (tansu_dir.clone(), port_file.clone());
            start_on_remembered_port(port_file, move |port| {
                TansuServer::start(TansuOptions {
                    data_dir: tansu_dir.clone(),
                    port,
                    storage,
                })
            })
        };
        let server = match start(TansuStorage::Sqlite).await {
            Err(error)
                if matches!(
                    error.downcast_ref::<InfraError>(),
                    Some(InfraError::Unsupported { .. })
                ) =>
            {
                tracing::warn!(%error, "this tansu has no SQLite storage: the topics are kept in memory and lost when jwl up stops");
                start(TansuStorage::Memory).await
            }
            started => started,
        }
        .context("starting the private tansu (Kafka) broker")?;
        let brokers = server.bootstrap_servers();
        tracing::info!(%brokers, data = %server.data_dir().display(), "private tansu started");
        self.tansu = Some(server);
        Ok(brokers)
    }

    /// Starts PostgreSQL (durable settings, `pg_stat_statements` if available) under
    /// `<data_dir>/pg` and creates the `jwl` database (and the extension) if missing.
    pub async fn start_postgres(&mut self, data_dir: &Path) -> anyhow::Result<String> {
        let pg_dir = data_dir.join("pg");
        let port_file = data_dir.join("pg.port");
        let server = start_on_remembered_port(port_file, move |port| {
            PostgresServer::start_with_stat_statements(PostgresOptions {
                data_dir: pg_dir.clone(),
                port,
                tuning: PgTuning::Durable,
            })
        })
        .await
        .context("starting the private PostgreSQL")?;
        create_database_if_missing(&server.url("postgres"), DATABASE).await?;
        let url = server.url(DATABASE);
        if server.stat_statements_loaded() {
            create_stat_statements(&url).await;
        }
        tracing::info!(%url, data = %server.data_dir().display(), "private PostgreSQL started");
        self.postgres = Some(server);
        Ok(url)
    }

    /// Stops PostgreSQL (fast mode: clean checkpoint) and the broker, waiting for them to exit.
    pub async fn stop(self) -> anyhow::Result<()> {
        let Self {
            nats,
            tansu,
            postgres,
        } = self;
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            if let Some(mut postgres) = postgres {
                postgres
                    .stop(StopMode::Fast)
                    .context("stopping the private PostgreSQL")?;
            }
            if let Some(mut nats) = nats {
                nats.stop().context("stopping the private nats-server")?;
            }
            if let Some(mut tansu) = tansu {
                tansu.stop().context("stopping the private tansu")?;
            }
            Ok(())
        })
        .await
        .context("the task stopping the private servers failed")?
    }
}

/// Runs the blocking `start(port)` on the port remembered in `port_file` if it is still free,
/// else on a new free port (which is then remembered); retries once if the port was taken
/// between choosing and binding.
async fn start_on_remembered_port<S, F>(port_file: PathBuf, start: F) -> anyhow::Result<S>
where
    S: Send + 'static,
    F: Fn(u16) -> Result<S, InfraError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || -> anyhow::Result<S> {
        let mut port = remembered_port(&port_file)
            .filter(|&p| is_free(p))
            .map_or_else(jwl_local_infra::free_port, Ok)?;
        let mut attempts_left = 2;
        loop {
            match start(port) {
                Ok(server) => {
                    remember_port(&port_file, port);
                    return Ok(server);
                }
                Err(InfraError::PortInUse { .. }) if attempts_left > 0 => {
                    attempts_left -= 1;
                    port = jwl_local_infra::free_port()?;
                }
                Err(error) => return Err(error.into()),
            }
        }
    })
    .await
    .context("the task starting a private server failed")?
}

fn remembered_port(file: &Path) -> Option<u16> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn remember_port(file: &Path, port: u16) {
    if let Err(error) = std::fs::write(file, format!("{port}\n")) {
        tracing::warn!(%error, file = %file.display(), "could not remember the port; a new one is chosen next time");
    }
}

fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// `CREATE EXTENSION IF NOT EXISTS pg_stat_statements`; a failure is only logged (the
/// statistics are optional).
async fn create_stat_statements(url: &str) {
    let created = async {
        let mut conn = PgConnection::connect(url).await?;
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&mut conn)
            .await?;
        conn.close().await
    }
    .await;
    if let Err(error) = created {
        tracing::warn!(%error, "pg_stat_statements is loaded but its extension could not be created");
    }
}

/// `CREATE DATABASE <name>` unless it exists (tolerating a concurrent creator).
async fn create_database_if_missing(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(admin_url)
        .await
        .context("connecting to the private PostgreSQL")?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await
            .context("looking up the jwl database")?;
    if !exists {
        // `name` is a constant of this module, not input.
        let ddl = format!("CREATE DATABASE \"{name}\"");
        match sqlx::query(sqlx::AssertSqlSafe(ddl))
            .execute(&mut conn)
            .await
        {
            Ok(_) => tracing::info!(database = name, "created database"),
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P04") => {}
            Err(error) => return Err(error).with_context(|| format!("creating database {name}")),
        }
    }
    conn.close().await.ok();
    Ok(())
}
