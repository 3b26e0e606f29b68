//! A private `nats-server -js` per test, with fault injection (kill, restart).

use std::path::{Path, PathBuf};

use anyhow::Context;
use jwl_local_infra::{InfraError, NatsOptions, NatsServer, free_port};
use tempfile::TempDir;

use crate::scratch;
use crate::shared_server::SharedServer;

const START_ATTEMPTS: usize = 5;

/// A private `nats-server` with JetStream on a free port and a temporary store. Dropping it
/// kills the server and removes the store. Methods take `&self`, so a test can share it (e.g.
/// in an `Arc`) between the code under test and the fault injector.
#[derive(Debug)]
pub struct TestNats {
    // Field order matters: the server dies before its store is removed.
    server: SharedServer<NatsServer>,
    url: String,
    port: u16,
    log_file: PathBuf,
    server_name: String,
    dir: TempDir,
}

/// Starts a private `nats-server -js` for the calling test.
pub async fn nats() -> anyhow::Result<TestNats> {
    tokio::task::spawn_blocking(start_blocking)
        .await
        .context("nats-server start task failed")?
}

fn start_blocking() -> anyhow::Result<TestNats> {
    start_in(scratch::new_dir("nats")?, None, Vec::new())
}

/// Starts a server whose store is under `dir`, with `config_file` (written under `dir`) and the
/// environment `env`.
pub(crate) fn start_in(
    dir: TempDir,
    config_file: Option<PathBuf>,
    env: Vec<(String, String)>,
) -> anyhow::Result<TestNats> {
    let store_dir = dir.path().join("store");
    let mut attempt = 0;
    let server = loop {
        attempt += 1;
        match NatsServer::start(NatsOptions {
            store_dir: store_dir.clone(),
            port: free_port()?,
            config_file: config_file.clone(),
            env: env.clone(),
        }) {
            Ok(server) => break server,
            Err(InfraError::PortInUse { .. }) if attempt < START_ATTEMPTS => continue,
            Err(error) => return Err(error).context("starting a private nats-server for a test"),
        }
    };
    Ok(TestNats::from_server(server, dir))
}

impl TestNats {
    /// Wraps a started server whose store is under `dir`.
    pub(crate) fn from_server(server: NatsServer, dir: TempDir) -> Self {
        let (url, port, log_file) = (server.url(), server.port(), server.log_file());
        let server_name = server.server_name().to_owned();
        Self {
            server: SharedServer::new(server, "nats-server"),
            url,
            port,
            log_file,
            server_name,
            dir,
        }
    }

    /// The server's unique name (a stream's cluster info names its leader by it).
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// `nats://127.0.0.1:PORT` (unchanged by restarts).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The server's log file, for diagnosing a failing test.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// Stops the server (SIGTERM) and starts it again on the same port and store; returns once
    /// JetStream answers. Streams and durable consumers survive.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.server.run(NatsServer::restart).await
    }

    /// SIGKILLs the server (a crash). Bring it back with [`start_again`](Self::start_again).
    pub async fn kill(&self) -> anyhow::Result<()> {
        self.server.run(NatsServer::kill).await
    }

    /// Stops the server gracefully (SIGTERM).
    pub async fn stop(&self) -> anyhow::Result<()> {
        self.server.run(NatsServer::stop).await
    }

    /// Starts a killed or stopped server again on the same port and store. No-op when running.
    pub async fn start_again(&self) -> anyhow::Result<()> {
        self.server.run(NatsServer::start_again).await
    }

    pub async fn is_running(&self) -> bool {
        self.server
            .run(|server| Ok::<_, InfraError>(server.is_running()))
            .await
            .unwrap_or(false)
    }
}
