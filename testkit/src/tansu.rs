//! A private tansu (Kafka-protocol broker) per test, with fault injection (restart, kill), or
//! `None` when tansu is not installed (it is optional: `scripts/install-deps` builds it).

use std::path::{Path, PathBuf};

use anyhow::Context;
use jwl_local_infra::{
    InfraError, TansuOptions, TansuServer, TansuStorage, find_binary, free_port,
};
use tempfile::TempDir;

use crate::scratch;
use crate::shared_server::SharedServer;

const START_ATTEMPTS: usize = 5;

/// A private tansu broker on a free port with its storage in a temporary directory: SQLite when
/// the installed tansu has it (topics, offsets and groups survive [`restart`](Self::restart)),
/// else memory. Dropping it kills the broker and removes the directory.
#[derive(Debug)]
pub struct TestTansu {
    // Field order matters: the broker dies before its directory is removed.
    server: SharedServer<TansuServer>,
    bootstrap_servers: String,
    storage: TansuStorage,
    log_file: PathBuf,
    _dir: TempDir,
}

/// Starts a private tansu broker for the calling test, or returns `None` (after saying so on
/// stderr) when tansu is not installed, so that the test can skip.
pub async fn tansu() -> anyhow::Result<Option<TestTansu>> {
    if let Err(error) = find_binary("tansu") {
        eprintln!("skipping: {error}");
        return Ok(None);
    }
    tokio::task::spawn_blocking(start_blocking)
        .await
        .context("tansu start task failed")?
        .map(Some)
}

fn start_blocking() -> anyhow::Result<TestTansu> {
    let dir = scratch::new_dir("tansu")?;
    let data_dir = dir.path().join("data");
    let mut storage = TansuStorage::Sqlite;
    let mut attempt = 0;
    let server = loop {
        attempt += 1;
        match TansuServer::start(TansuOptions {
            data_dir: data_dir.clone(),
            port: free_port()?,
            storage,
        }) {
            Ok(server) => break server,
            Err(InfraError::PortInUse { .. }) if attempt < START_ATTEMPTS => continue,
            Err(InfraError::Unsupported { what, .. }) if storage == TansuStorage::Sqlite => {
                eprintln!("tansu: no {what}; using memory storage");
                storage = TansuStorage::Memory;
            }
            Err(error) => return Err(error).context("starting a private tansu for a test"),
        }
    };
    let (bootstrap_servers, log_file) = (server.bootstrap_servers(), server.log_file());
    Ok(TestTansu {
        server: SharedServer::new(server, "tansu"),
        bootstrap_servers,
        storage,
        log_file,
        _dir: dir,
    })
}

impl TestTansu {
    /// `127.0.0.1:PORT` (unchanged by restarts), for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// Whether topics, offsets and groups survive a restart (SQLite storage).
    pub fn is_persistent(&self) -> bool {
        self.storage == TansuStorage::Sqlite
    }

    /// The broker's log file, for diagnosing a failing test.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// Stops the broker (SIGTERM) and starts it again on the same port and storage; returns once
    /// it answers.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.server.run(TansuServer::restart).await
    }

    /// SIGKILLs the broker (a crash). Bring it back with [`start_again`](Self::start_again).
    pub async fn kill(&self) -> anyhow::Result<()> {
        self.server.run(TansuServer::kill).await
    }

    /// Starts a killed or stopped broker again. No-op when running.
    pub async fn start_again(&self) -> anyhow::Result<()> {
        self.server.run(TansuServer::start_again).await
    }
}
