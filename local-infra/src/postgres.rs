//! A private PostgreSQL cluster: `initdb` once, then `postgres` on 127.0.0.1:<port> with no
//! Unix sockets, logging to `postgres.log` in the data directory; on request with
//! `pg_stat_statements` preloaded when the installation ships it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::binary::find_binary;
use crate::error::InfraError;
use crate::pg_probe;
use crate::process::{self, OwnerExitSignal, ServerChild, spawn_tied_to_process};
use crate::service_user::ServiceUser;

const SERVER: &str = "postgres";
/// The superuser `initdb` creates; `url()` connects as it (trust authentication on loopback).
const SUPERUSER: &str = "postgres";
const LOG_FILE: &str = "postgres.log";
/// The statement statistics library (contrib), loaded by [`PostgresServer::start_with_stat_statements`].
const STAT_STATEMENTS: &str = "pg_stat_statements";
const INITDB_TIMEOUT: Duration = Duration::from_secs(180);
/// Generous: after an immediate stop the server replays WAL before it accepts connections.
const START_TIMEOUT: Duration = Duration::from_secs(120);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Durability settings of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgTuning {
    /// PostgreSQL's defaults: every commit is durable (`jwl up`).
    Durable,
    /// Durable, with `max_connections` 300 instead of 100: room for several `jwl serve`
    /// replicas of every service on one server (each process holds up to about 20
    /// connections: its consumers' pool, its HTTP pool, one relay lease session per partition).
    DurableManyClients,
    /// `fsync`, `synchronous_commit` and `full_page_writes` off and `max_connections` 300: a
    /// crash of the machine may corrupt the cluster, and even an immediate stop of the server
    /// loses the last few hundred milliseconds of acknowledged commits. For throw-away data
    /// that is never subjected to a server crash.
    FastUnsafe,
    /// Like `FastUnsafe` but with `synchronous_commit` on: acknowledged commits survive a crash
    /// of the *server* (immediate stop, SIGKILL) — only a crash of the machine can lose or
    /// corrupt data. With `fsync` off a commit costs a `write`, not a disk flush, so it is
    /// nearly as fast. The right choice for tests that inject PostgreSQL crashes (jwl-testkit).
    FastCrashSafe,
}

/// How to stop the server (PostgreSQL's shutdown modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// SIGINT: disconnect clients, write a checkpoint, exit cleanly.
    Fast,
    /// SIGQUIT: exit at once; the next start runs crash recovery (like a power cut without data loss
    /// of committed transactions in `Durable` mode).
    Immediate,
}

/// Where and how to run the cluster.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// The cluster's directory; created and `initdb`-ed if it has no `PG_VERSION`, reused otherwise.
    pub data_dir: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    pub tuning: PgTuning,
}

/// A running (or stopped, restartable) private PostgreSQL server. Dropping it stops it
/// (immediate mode, bounded wait, then SIGKILL).
#[derive(Debug)]
pub struct PostgresServer {
    options: PostgresOptions,
    postgres_binary: PathBuf,
    run_as: Option<ServiceUser>,
    child: ServerChild,
    /// `pg_stat_statements` is in `shared_preload_libraries`.
    stat_statements: bool,
}

impl PostgresServer {
    /// Initialises the cluster if needed, starts the server and waits until it accepts
    /// connections. Blocking (1–5 s for a new cluster, well under a second for an existing one).
    pub fn start(options: PostgresOptions) -> Result<Self, InfraError> {
        Self::start_loading(options, false)
    }

    /// Like [`start`](Self::start), and also preloads `pg_stat_statements` when the library is
    /// part of the server's installation (its absence is not an error; see
    /// [`stat_statements_loaded`](Self::stat_statements_loaded)).
    pub fn start_with_stat_statements(options: PostgresOptions) -> Result<Self, InfraError> {
        Self::start_loading(options, true)
    }

    /// Whether `pg_stat_statements` is preloaded (`CREATE EXTENSION` then makes its view).
    pub fn stat_statements_loaded(&self) -> bool {
        self.stat_statements
    }

    fn start_loading(
        mut options: PostgresOptions,
        stat_statements: bool,
    ) -> Result<Self, InfraError> {
        // The server runs with its data directory as working directory, so a relative path
        // (such as `jwl up`'s default `./.jwl/pg`) would point below itself.
        options.data_dir = std::path::absolute(&options.data_dir)
            .map_err(|e| InfraError::io(format!("resolving {}", options.data_dir.display()), e))?;
        let initdb = find_binary("initdb")?;
        let postgres_binary = sibling_postgres(&initdb)?;
        let run_as = ServiceUser::for_postgres()?;
        prepare_data_dir(&options.data_dir, run_as.as_ref())?;
        if let Some(user) = &run_as {
            // Only matters for binaries under a private directory such as ~/.cache/jwl/tools.
            user.make_reachable(&postgres_binary)?;
        }
        if !options.data_dir.join("PG_VERSION").exists() {
            run_initdb(&initdb, &options.data_dir, run_as.as_ref())?;
        }
        let stat_statements = stat_statements && ships_library(&postgres_binary, STAT_STATEMENTS);
        let mut server = Self {
            options,
            postgres_binary,
            run_as,
            child: ServerChild::new(SERVER),
            stat_statements,
        };
        server.launch()?;
        Ok(server)
    }

    /// `postgres://postgres@127.0.0.1:PORT/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@127.0.0.1:{}/{db}",
            self.options.port
        )
    }

    pub fn port(&self) -> u16 {
        self.options.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.options.data_dir
    }

    /// The server's log file (in the data directory).
    pub fn log_file(&self) -> PathBuf {
        self.options.data_dir.join(LOG_FILE)
    }

    /// Process id of the running server (the postmaster), if started.
    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// Stops the server and waits for it to exit (escalating to SIGKILL if it hangs). No-op when
    /// it is not running.
    pub fn stop(&mut self, mode: StopMode) -> Result<(), InfraError> {
        let (signal, grace) = match mode {
            StopMode::Fast => (libc::SIGINT, Duration::from_secs(60)),
            StopMode::Immediate => (libc::SIGQUIT, Duration::from_secs(15)),
        };
        self.child.stop(signal, grace)
    }

    /// Starts the stopped server again on the same directory and port. No-op when running.
    pub fn start_again(&mut self) -> Result<(), InfraError> {
        if self.is_running() {
            return Ok(());
        }
        self.launch()
    }

    fn launch(&mut self) -> Result<(), InfraError> {
        let data_dir = &self.options.data_dir;
        let log_path = data_dir.join(LOG_FILE);
        let (stdout, stderr) = process::log_output(&log_path)?;

        let mut command = Command::new(&self.postgres_binary);
        command
            .arg("-D")
            .arg(data_dir)
            .arg("-p")
            .arg(self.options.port.to_string())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
            ])
            .args(
                tuning_settings(self.options.tuning)
                    .iter()
                    .flat_map(|setting| ["-c", setting]),
            )
            .args(
                self.stat_statements
                    .then_some(["-c", "shared_preload_libraries=pg_stat_statements"])
                    .into_iter()
                    .flatten(),
            )
            .current_dir(data_dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        if let Some(user) = &self.run_as {
            user.apply(&mut command);
        }
        self.child.spawn(command, OwnerExitSignal::Quit)?;
        if let Err(error) = self.wait_until_ready(&log_path) {
            let _ = self.child.stop(libc::SIGQUIT, Duration::from_secs(5));
            return Err(error);
        }
        tracing::debug!(port = self.options.port, data_dir = %self.options.data_dir.display(), "postgres is ready");
        Ok(())
    }

    /// Ready = our postmaster wrote "ready" in `postmaster.pid` and answers on the port.
    fn wait_until_ready(&mut self, log_path: &Path) -> Result<(), InfraError> {
        let (port, data_dir) = (self.options.port, &self.options.data_dir);
        self.child
            .wait_until_ready(port, log_path, START_TIMEOUT, POLL_INTERVAL, |pid| {
                match postmaster_status(data_dir, pid) {
                    Some(status) if status == "ready" => {
                        pg_probe::accepts_connections(port, SUPERUSER, Duration::from_secs(2))
                    }
                    Some(status) => Err(format!("postmaster status {status:?}")),
                    None => Err("postmaster.pid not written yet".to_owned()),
                }
            })
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let Err(e) = self.child.stop(libc::SIGQUIT, Duration::from_secs(5)) {
            tracing::warn!(error = %e, "could not stop postgres");
        }
    }
}

fn tuning_settings(tuning: PgTuning) -> &'static [&'static str] {
    match tuning {
        PgTuning::Durable => &[],
        PgTuning::DurableManyClients => &["max_connections=300"],
        PgTuning::FastUnsafe => &[
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
            "max_connections=300",
        ],
        PgTuning::FastCrashSafe => &["fsync=off", "full_page_writes=off", "max_connections=300"],
    }
}

/// The `postgres` next to `initdb` (same installation and version), else any on the search path.
fn sibling_postgres(initdb: &Path) -> Result<PathBuf, InfraError> {
    let resolved = std::fs::canonicalize(initdb).unwrap_or_else(|_| initdb.to_owned());
    match resolved.parent().map(|dir| dir.join("postgres")) {
        Some(candidate) if candidate.is_file() => Ok(candidate),
        _ => find_binary("postgres"),
    }
}

/// Whether the installation of `postgres_binary` has the loadable module `name`: in
/// `<prefix>/lib` (Debian: `/usr/lib/postgresql/<N>/lib`) or `<prefix>/lib/postgresql` (source
/// builds), where `pg_config --pkglibdir` points.
fn ships_library(postgres_binary: &Path, name: &str) -> bool {
    let Some(prefix) = postgres_binary.parent().and_then(Path::parent) else {
        return false;
    };
    let file = format!("{name}.so");
    [prefix.join("lib"), prefix.join("lib/postgresql")]
        .iter()
        .any(|dir| dir.join(&file).is_file())
}

/// Creates the data directory (mode 0700) and, when running as root, hands it to the service user.
fn prepare_data_dir(data_dir: &Path, run_as: Option<&ServiceUser>) -> Result<(), InfraError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| InfraError::io(format!("creating {}", data_dir.display()), e))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| InfraError::io(format!("chmod 0700 {}", data_dir.display()), e))?;
    if let Some(user) = run_as {
        use std::os::unix::fs::MetadataExt;
        let owner = data_dir
            .metadata()
            .map_err(|e| InfraError::io(format!("stat {}", data_dir.display()), e))?
            .uid();
        if owner != user.uid {
            // A cluster created by another account (or a fresh directory): hand all of it over.
            user.chown(data_dir, true)?;
        }
        user.make_reachable(data_dir)?;
    }
    Ok(())
}

fn run_initdb(
    initdb: &Path,
    data_dir: &Path,
    run_as: Option<&ServiceUser>,
) -> Result<(), InfraError> {
    let mut output =
        tempfile::tempfile().map_err(|e| InfraError::io("creating a file for initdb output", e))?;
    let output_for_stderr = output
        .try_clone()
        .map_err(|e| InfraError::io("duplicating a file handle", e))?;
    let mut command = Command::new(initdb);
    command
        .arg("-D")
        .arg(data_dir)
        .args([
            "-A",
            "trust",
            "-U",
            SUPERUSER,
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ])
        .current_dir(data_dir)
        .stdin(Stdio::null())
        .stdout(
            output
                .try_clone()
                .map_err(|e| InfraError::io("duplicating a file handle", e))?,
        )
        .stderr(output_for_stderr);
    if let Some(user) = run_as {
        user.apply(&mut command);
    }
    let mut child = spawn_tied_to_process(command, OwnerExitSignal::Kill)
        .map_err(|e| InfraError::io(format!("starting {}", initdb.display()), e))?;
    let status = match process::wait_for_exit(&mut child, INITDB_TIMEOUT)
        .map_err(|e| InfraError::io("waiting for initdb", e))?
    {
        Some(status) if status.success() => return Ok(()),
        Some(status) => status.to_string(),
        None => {
            let _ = process::stop_child(&mut child, libc::SIGKILL, Duration::from_secs(5));
            format!("timed out after {INITDB_TIMEOUT:?}")
        }
    };
    use std::io::{Read, Seek};
    let mut text = String::new();
    let _ = output
        .seek(std::io::SeekFrom::Start(0))
        .and_then(|_| output.read_to_string(&mut text));
    Err(InfraError::InitDb {
        data_dir: data_dir.to_owned(),
        status,
        output: text,
    })
}

/// Line 1 (pid) and line 8 (status) of `postmaster.pid`, if it belongs to `pid`.
fn postmaster_status(data_dir: &Path, pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let mut lines = text.lines();
    if lines.next()?.trim().parse::<u32>().ok()? != pid {
        return None;
    }
    Some(lines.nth(6)?.trim().to_owned())
}
