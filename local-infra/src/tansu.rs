//! A private [tansu](https://github.com/tansu-io/tansu) broker (a Kafka-protocol broker in one
//! process) on `127.0.0.1:<port>`, with its storage in a given directory: SQLite (persistent
//! across restarts, needs a tansu built with the `libsql` feature) or memory.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::binary::find_binary;
use crate::error::InfraError;
use crate::process::{self, OwnerExitSignal, ServerChild};

const SERVER: &str = "tansu";
const LOG_FILE: &str = "tansu.log";
/// The SQLite database, relative to the data directory (tansu resolves it against its working
/// directory).
const SQLITE_FILE: &str = "tansu.db";
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// tansu stops within ~2 s of SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Where a tansu broker keeps its topics, offsets and groups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TansuStorage {
    /// `sqlite://tansu.db` in the data directory: survives a restart. Needs a tansu built with
    /// the `libsql` feature ([`TansuServer::start`] fails with [`InfraError::Unsupported`]
    /// otherwise).
    #[default]
    Sqlite,
    /// `memory://`: everything is lost when the broker stops (needs the `dynostore` feature).
    Memory,
}

/// Where and how to run the broker.
#[derive(Clone, Debug, Default)]
pub struct TansuOptions {
    /// Working directory of the broker (its SQLite database and log file); created if missing.
    pub data_dir: PathBuf,
    /// TCP port on 127.0.0.1 (listened on and advertised to clients).
    pub port: u16,
    pub storage: TansuStorage,
}

/// A running (or stopped, restartable) private tansu broker. Dropping it kills it.
#[derive(Debug)]
pub struct TansuServer {
    options: TansuOptions,
    binary: PathBuf,
    cluster_id: String,
    child: ServerChild,
}

impl TansuServer {
    /// Starts the broker and waits until it answers a metadata request.
    pub fn start(mut options: TansuOptions) -> Result<Self, InfraError> {
        static STARTED: AtomicU64 = AtomicU64::new(0);
        options.data_dir = std::path::absolute(&options.data_dir)
            .map_err(|e| InfraError::io(format!("resolving {}", options.data_dir.display()), e))?;
        std::fs::create_dir_all(&options.data_dir)
            .map_err(|e| InfraError::io(format!("creating {}", options.data_dir.display()), e))?;
        let binary = find_binary(SERVER)?;
        let cluster_id = format!(
            "jwl-{}-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed),
            options.port
        );
        let mut server = Self {
            options,
            binary,
            cluster_id,
            child: ServerChild::new(SERVER),
        };
        server.launch()?;
        Ok(server)
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.options.port)
    }

    pub fn port(&self) -> u16 {
        self.options.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.options.data_dir
    }

    pub fn storage(&self) -> TansuStorage {
        self.options.storage
    }

    /// The broker's log file (in the data directory).
    pub fn log_file(&self) -> PathBuf {
        self.options.data_dir.join(LOG_FILE)
    }

    /// Process id of the running broker, if started.
    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// Whether the broker process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// SIGKILL: the broker dies at once, as in a crash. No-op when not running.
    pub fn kill(&mut self) -> Result<(), InfraError> {
        self.child.stop(libc::SIGKILL, STOP_TIMEOUT)
    }

    /// SIGTERM, waiting for the broker to exit (SIGKILL if it hangs). No-op when not running.
    pub fn stop(&mut self) -> Result<(), InfraError> {
        self.child.stop(libc::SIGTERM, STOP_TIMEOUT)
    }

    /// Stops the broker (SIGTERM) and starts it again on the same port and storage (with
    /// [`TansuStorage::Memory`], empty).
    pub fn restart(&mut self) -> Result<(), InfraError> {
        self.stop()?;
        self.launch()
    }

    /// Starts a stopped or killed broker again on the same port and storage. No-op when running.
    pub fn start_again(&mut self) -> Result<(), InfraError> {
        if self.is_running() {
            return Ok(());
        }
        self.launch()
    }

    fn launch(&mut self) -> Result<(), InfraError> {
        let log_path = self.log_file();
        let (stdout, stderr) = process::log_output(&log_path)?;
        let url = format!("tcp://127.0.0.1:{}", self.options.port);
        let storage = match self.options.storage {
            TansuStorage::Sqlite => format!("sqlite://{SQLITE_FILE}"),
            TansuStorage::Memory => "memory://tansu/".to_owned(),
        };
        let mut command = Command::new(&self.binary);
        command
            .arg("broker")
            .arg("--cluster-id")
            .arg(&self.cluster_id)
            .arg("--listener-url")
            .arg(&url)
            .arg("--advertised-listener-url")
            .arg(&url)
            .arg("--storage-engine")
            .arg(&storage)
            .current_dir(&self.options.data_dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        self.child.spawn(command, OwnerExitSignal::Kill)?;
        let port = self.options.port;
        let ready =
            self.child
                .wait_until_ready(port, &log_path, START_TIMEOUT, POLL_INTERVAL, |_| {
                    metadata_answers(port, Duration::from_secs(2))
                });
        if let Err(error) = ready {
            let _ = self.kill();
            let without_libsql = self.options.storage == TansuStorage::Sqlite
                && matches!(error, InfraError::ExitedDuringStart { ref log_tail, .. }
                    if log_tail.contains("libsql"));
            return Err(if without_libsql {
                InfraError::Unsupported {
                    server: SERVER,
                    what: "SQLite storage: this tansu was built without the `libsql` feature \
                           (scripts/install-deps builds it with it)"
                        .to_owned(),
                }
            } else {
                error
            });
        }
        tracing::debug!(port, data = %self.options.data_dir.display(), "tansu is ready");
        Ok(())
    }
}

impl Drop for TansuServer {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            tracing::warn!(error = %e, "could not kill tansu");
        }
    }
}

/// The correlation id of the readiness probe's request.
const PROBE_CORRELATION_ID: i32 = 0x6a_77_6c; // "jwl"

/// `Ok(())` if the broker on 127.0.0.1:`port` answers a Kafka `Metadata` (v0, all topics)
/// request, which it does once its storage is open. Speaks the protocol directly: a
/// length-prefixed request header (api key 3, version 0, correlation id, client id) and an empty
/// topic array; the answer must carry the same correlation id.
fn metadata_answers(port: u16, timeout: Duration) -> Result<(), String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream =
        TcpStream::connect_timeout(&address, timeout).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let client_id = b"jwl-probe";
    let mut body = Vec::with_capacity(32);
    body.extend_from_slice(&3i16.to_be_bytes()); // Metadata
    body.extend_from_slice(&0i16.to_be_bytes()); // version 0
    body.extend_from_slice(&PROBE_CORRELATION_ID.to_be_bytes());
    body.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    body.extend_from_slice(client_id);
    body.extend_from_slice(&0i32.to_be_bytes()); // no topics: all of them
    let mut request = (body.len() as i32).to_be_bytes().to_vec();
    request.extend_from_slice(&body);
    stream
        .write_all(&request)
        .map_err(|e| format!("send: {e}"))?;
    let mut header = [0u8; 8];
    stream
        .read_exact(&mut header)
        .map_err(|e| format!("read: {e}"))?;
    let [s0, s1, s2, s3, c0, c1, c2, c3] = header;
    let size = i32::from_be_bytes([s0, s1, s2, s3]);
    let correlation_id = i32::from_be_bytes([c0, c1, c2, c3]);
    if correlation_id != PROBE_CORRELATION_ID || size < 4 {
        return Err(format!(
            "not a Kafka metadata answer (size {size}, correlation id {correlation_id})"
        ));
    }
    Ok(())
}
