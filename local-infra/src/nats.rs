//! A private `nats-server` with JetStream on 127.0.0.1:<port>, its store in a given directory;
//! or several of them clustered over loopback routes ([`NatsServer::start_cluster`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::binary::find_nats_server;
use crate::error::InfraError;
use crate::nats_probe;
use crate::process::{self, OwnerExitSignal, ServerChild};

const SERVER: &str = "nats-server";
const LOG_FILE: &str = "nats-server.log";
/// JetStream recovers its store before answering; allow for a large store.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Where to run the server.
#[derive(Clone, Debug, Default)]
pub struct NatsOptions {
    /// JetStream store directory (`-sd`); created if missing. The log file is written here too.
    pub store_dir: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// A configuration file (`-c`), e.g. with TLS and users; the address, port, store and
    /// server name given here override its own. A server with a configuration is taken to be
    /// ready once it names itself to a client and logs that it is ready (its clients may need
    /// TLS and credentials, which the readiness probe does not have).
    pub config_file: Option<PathBuf>,
    /// Environment variables of the server process, e.g. the passwords a configuration file
    /// refers to as `$NAME`.
    pub env: Vec<(String, String)>,
}

/// One node of a cluster: where it listens for routes, and the other nodes' route ports.
#[derive(Clone, Debug)]
pub struct NatsClusterNode {
    /// The cluster's name (the same for every node).
    pub cluster_name: String,
    /// Route port of this node on 127.0.0.1.
    pub cluster_port: u16,
    /// Route ports of the other nodes on 127.0.0.1.
    pub routes: Vec<u16>,
}

/// A running (or stopped, restartable) private `nats-server -js`. Dropping it kills it.
#[derive(Debug)]
pub struct NatsServer {
    options: NatsOptions,
    cluster: Option<NatsClusterNode>,
    binary: PathBuf,
    /// Unique server name, checked by the readiness probe so that a foreign server on the port
    /// is never mistaken for ours.
    server_name: String,
    child: ServerChild,
}

impl NatsServer {
    /// Starts the server and waits until it accepts clients and JetStream answers (~30 ms).
    pub fn start(options: NatsOptions) -> Result<Self, InfraError> {
        let mut server = Self::prepare(options, None)?;
        server.launch()?;
        Ok(server)
    }

    /// Starts one server per entry, clustered with each other over loopback routes, and waits
    /// until every one accepts clients and JetStream answers (a JetStream cluster answers once
    /// its nodes have elected a meta leader). A node can be killed and started again alone.
    pub fn start_cluster(
        nodes: Vec<(NatsOptions, NatsClusterNode)>,
    ) -> Result<Vec<Self>, InfraError> {
        let mut servers = Vec::with_capacity(nodes.len());
        for (options, cluster) in nodes {
            let mut server = Self::prepare(options, Some(cluster))?;
            server.spawn()?;
            servers.push(server);
        }
        for server in &mut servers {
            let log_path = server.log_file();
            if let Err(error) = server.wait_until_ready(&log_path) {
                for server in &mut servers {
                    let _ = server.kill();
                }
                return Err(error);
            }
        }
        Ok(servers)
    }

    /// The server's unique name (as shown in a stream's cluster info as its leader).
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    fn prepare(
        mut options: NatsOptions,
        cluster: Option<NatsClusterNode>,
    ) -> Result<Self, InfraError> {
        static STARTED: AtomicU64 = AtomicU64::new(0);
        options.store_dir = std::path::absolute(&options.store_dir)
            .map_err(|e| InfraError::io(format!("resolving {}", options.store_dir.display()), e))?;
        let binary = find_nats_server()?;
        std::fs::create_dir_all(&options.store_dir)
            .map_err(|e| InfraError::io(format!("creating {}", options.store_dir.display()), e))?;
        let server_name = format!(
            "jwl-{}-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed),
            options.port
        );
        Ok(Self {
            options,
            cluster,
            binary,
            server_name,
            child: ServerChild::new(SERVER),
        })
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.options.port)
    }

    pub fn port(&self) -> u16 {
        self.options.port
    }

    pub fn store_dir(&self) -> &Path {
        &self.options.store_dir
    }

    /// The server's log file (in the store directory).
    pub fn log_file(&self) -> PathBuf {
        self.options.store_dir.join(LOG_FILE)
    }

    /// Process id of the running server, if started.
    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// SIGKILL: the server dies at once, as in a crash. No-op when not running.
    pub fn kill(&mut self) -> Result<(), InfraError> {
        self.child.stop(libc::SIGKILL, STOP_TIMEOUT)
    }

    /// SIGTERM, waiting for the server to exit (SIGKILL if it hangs). No-op when not running.
    pub fn stop(&mut self) -> Result<(), InfraError> {
        self.child.stop(libc::SIGTERM, STOP_TIMEOUT)
    }

    /// Stops the server (SIGTERM) and starts it again on the same port and store.
    pub fn restart(&mut self) -> Result<(), InfraError> {
        self.stop()?;
        self.launch()
    }

    /// Starts a stopped or killed server again on the same port and store. No-op when running.
    pub fn start_again(&mut self) -> Result<(), InfraError> {
        if self.is_running() {
            return Ok(());
        }
        self.launch()
    }

    fn launch(&mut self) -> Result<(), InfraError> {
        self.spawn()?;
        let log_path = self.log_file();
        if let Err(error) = self.wait_until_ready(&log_path) {
            let _ = self.kill();
            return Err(error);
        }
        tracing::debug!(port = self.options.port, store = %self.options.store_dir.display(), "nats-server is ready");
        Ok(())
    }

    /// Starts the process without waiting for it to be ready.
    fn spawn(&mut self) -> Result<(), InfraError> {
        let (stdout, stderr) = process::log_output(&self.log_file())?;
        let mut command = Command::new(&self.binary);
        if let Some(config_file) = &self.options.config_file {
            command.arg("-c").arg(config_file);
        }
        command.envs(self.options.env.iter().map(|(name, value)| (name, value)));
        command
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.options.port.to_string())
            .arg("-sd")
            .arg(&self.options.store_dir)
            .arg("-n")
            .arg(&self.server_name);
        if let Some(cluster) = &self.cluster {
            let routes: Vec<String> = cluster
                .routes
                .iter()
                .map(|port| format!("nats://127.0.0.1:{port}"))
                .collect();
            command
                .arg("--cluster_name")
                .arg(&cluster.cluster_name)
                .arg("--cluster")
                .arg(format!("nats://127.0.0.1:{}", cluster.cluster_port))
                .arg("--routes")
                .arg(routes.join(","));
        }
        command.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        self.child.spawn(command, OwnerExitSignal::Kill)
    }

    fn wait_until_ready(&mut self, log_path: &Path) -> Result<(), InfraError> {
        let (port, name) = (self.options.port, &self.server_name);
        let configured = self.options.config_file.is_some();
        self.child
            .wait_until_ready(port, log_path, START_TIMEOUT, POLL_INTERVAL, |_| {
                if configured {
                    nats_probe::configured_server_ready(
                        port,
                        name,
                        log_path,
                        Duration::from_secs(1),
                    )
                } else {
                    nats_probe::jetstream_ready(port, name, Duration::from_secs(1))
                }
            })
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            tracing::warn!(error = %e, "could not kill nats-server");
        }
    }
}
