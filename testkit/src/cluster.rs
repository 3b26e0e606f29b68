//! Private PostgreSQL clusters for tests: the one shared by a test process, and dedicated ones
//! for fault-injection tests.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context;
use jwl_local_infra::{InfraError, PgTuning, PostgresOptions, PostgresServer, StopMode, free_port};
use tempfile::TempDir;

use crate::database::{TestDatabase, create_database};
use crate::scratch;

const START_ATTEMPTS: usize = 5;

/// A private PostgreSQL cluster (`PgTuning::FastCrashSafe`) in a temporary directory. Cheap to clone (all
/// clones are the same cluster). The cluster is stopped and its directory removed when the last
/// clone of a [`TestCluster::start`]-ed cluster is dropped; the shared one lives until the test
/// process exits.
///
/// Fault injection: [`stop`](Self::stop) and [`start_again`](Self::start_again) keep the port
/// and data, so existing URLs keep working once it is back.
#[derive(Clone, Debug)]
pub struct TestCluster {
    inner: Arc<ClusterInner>,
}

#[derive(Debug)]
struct ClusterInner {
    // Field order matters: the server stops before its directory is removed.
    server: Mutex<PostgresServer>,
    // Fixed for the cluster's life, so reading them never waits for a stop or start in progress.
    port: u16,
    server_url: String,
    log_file: PathBuf,
    dir: TempDir,
}

impl TestCluster {
    /// Starts a dedicated cluster, owned by the caller. Use this for tests that stop PostgreSQL:
    /// stopping the shared cluster would disturb every other test running in the same process.
    pub async fn start() -> anyhow::Result<Self> {
        tokio::task::spawn_blocking(Self::start_blocking)
            .await
            .context("cluster start task failed")?
    }

    fn start_blocking() -> anyhow::Result<Self> {
        let dir = scratch::new_dir("pg")?;
        let data_dir = dir.path().join("data");
        let mut attempt = 0;
        let server = loop {
            attempt += 1;
            let options = PostgresOptions {
                data_dir: data_dir.clone(),
                port: free_port()?,
                tuning: PgTuning::FastCrashSafe,
            };
            match PostgresServer::start(options) {
                Ok(server) => break server,
                Err(InfraError::PortInUse { .. }) if attempt < START_ATTEMPTS => continue,
                Err(error) => {
                    return Err(error).context("starting a private PostgreSQL cluster for tests");
                }
            }
        };
        let (port, server_url, log_file) =
            (server.port(), server.url("postgres"), server.log_file());
        Ok(Self {
            inner: Arc::new(ClusterInner {
                server: Mutex::new(server),
                port,
                server_url,
                log_file,
                dir,
            }),
        })
    }

    /// The server URL, connecting to the `postgres` maintenance database as the superuser.
    pub fn server_url(&self) -> &str {
        &self.inner.server_url
    }

    /// URL of database `db` on this cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.inner.port)
    }

    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// The server's log file, for diagnosing a failing test.
    pub fn log_file(&self) -> &Path {
        &self.inner.log_file
    }

    /// A fresh, empty database with a random name on this cluster.
    pub async fn database(&self) -> anyhow::Result<TestDatabase> {
        create_database(&self.inner.server_url).await
    }

    /// Stops the server (`Immediate` simulates a crash; `Fast` a clean shutdown).
    pub async fn stop(&self, mode: StopMode) -> anyhow::Result<()> {
        self.blocking(move |server| server.stop(mode)).await
    }

    /// Starts the stopped server again on the same port and data; returns once it accepts connections.
    pub async fn start_again(&self) -> anyhow::Result<()> {
        self.blocking(PostgresServer::start_again).await
    }

    pub async fn is_running(&self) -> bool {
        self.blocking(|server| Ok::<_, InfraError>(server.is_running()))
            .await
            .unwrap_or(false)
    }

    async fn blocking<T, F>(&self, operation: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut PostgresServer) -> Result<T, InfraError> + Send + 'static,
    {
        let cluster = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut server = cluster
                .inner
                .server
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            operation(&mut server)
        })
        .await;
        Ok(result.context("cluster task failed")??)
    }
}

/// The cluster shared by all tests of this process (started on first use), for fault-injection
/// suites that want to disturb it. Errors when `JWL_TEST_DATABASE_URL` is set, because then the
/// databases live in a server testkit does not own: such suites should prefer their own
/// [`TestCluster::start`], which works in every setup, and run in a test binary of their own.
pub async fn cluster() -> anyhow::Result<TestCluster> {
    if let Some(url) = crate::database::external_server_url() {
        anyhow::bail!(
            "{} is set ({url}); that server is not owned by jwl-testkit and cannot be stopped — use TestCluster::start()",
            crate::TEST_DATABASE_URL_ENV
        );
    }
    shared_cluster().await
}

/// The shared cluster, started race-free by the first caller; later callers wait for it.
pub(crate) async fn shared_cluster() -> anyhow::Result<TestCluster> {
    static SHARED: OnceLock<Result<TestCluster, String>> = OnceLock::new();
    let shared = tokio::task::spawn_blocking(|| {
        SHARED.get_or_init(|| {
            let cluster = TestCluster::start_blocking().map_err(|e| format!("{e:#}"))?;
            SHARED_FOR_EXIT.get_or_init(|| cluster.clone());
            // SAFETY: registering a plain `extern "C" fn` with no captured state.
            unsafe { libc::atexit(stop_shared_cluster_at_exit) };
            Ok(cluster)
        })
    })
    .await
    .context("shared cluster start task failed")?;
    shared.clone().map_err(anyhow::Error::msg)
}

static SHARED_FOR_EXIT: OnceLock<TestCluster> = OnceLock::new();

/// Runs when the test binary exits: statics are never dropped, so stop the shared cluster and
/// remove its directory here. (Should this not run, the parent-death signal still stops the
/// server and the next test process removes the directory.)
extern "C" fn stop_shared_cluster_at_exit() {
    let Some(cluster) = SHARED_FOR_EXIT.get() else {
        return;
    };
    if let Ok(mut server) = cluster.inner.server.try_lock() {
        let _ = server.stop(StopMode::Immediate);
    }
    let _ = std::fs::remove_dir_all(cluster.inner.dir.path());
}
