//! One service as its own `jwl serve <name>` child process: spawned tied to the test process
//! (it dies with it, even on SIGKILL), logging to its own file, with [`ServiceProcess::kill`]
//! (SIGKILL) and [`ServiceProcess::restart`] for failure injection.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use jwl_events::Service;
use jwl_local_infra::{OwnerExitSignal, free_port, spawn_tied_to_process};
use jwl_testkit::eventually;

/// How long a service may take from spawn to a `200` on `/readyz` (it connects, migrates and
/// provisions its consumers first; the machine may be busy with other tests).
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Spawn attempts when the chosen port turns out to be taken by someone else.
const PORT_ATTEMPTS: usize = 4;
/// Lines of a log shown in error messages.
const ERROR_LOG_LINES: usize = 30;

/// A `jwl serve <service>` child process and what is needed to start it again identically.
#[derive(Debug)]
pub struct ServiceProcess {
    service: Service,
    binary: PathBuf,
    /// `JWL_*` and `RUST_LOG` variables, without `JWL_HTTP_ADDR` (see `addr`).
    env: Vec<(String, String)>,
    addr: SocketAddr,
    log_path: PathBuf,
    probe: reqwest::Client,
    child: Mutex<Option<Child>>,
}

/// A service's `/metrics` page, in the Prometheus text format.
#[derive(Debug, Clone)]
pub struct MetricsPage(String);

impl MetricsPage {
    /// The sum of the samples of `metric` whose labels include every one of `labels`
    /// (`[("partition", "0")]`); 0 when there are none.
    pub fn sum(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (name, rest) = series.split_once('{').unwrap_or((series, ""));
                let wanted = name == metric
                    && labels
                        .iter()
                        .all(|(key, value)| rest.contains(&format!("{key}=\"{value}\"")));
                if wanted {
                    value.parse::<f64>().ok()
                } else {
                    None
                }
            })
            .sum()
    }
}

/// What one readiness poll found.
enum Probe {
    Ready,
    Exited(ExitStatus),
}

impl ServiceProcess {
    /// Spawns `jwl serve <service>` on a free loopback port with `env`, appending its stdout
    /// and stderr to `log_path`, and waits until its `/readyz` answers `200`.
    pub async fn start(
        service: Service,
        binary: &Path,
        env: Vec<(String, String)>,
        log_path: PathBuf,
    ) -> anyhow::Result<Self> {
        let probe = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .context("building the readiness HTTP client")?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port().context("choosing a port for a service")?;
            let process = Self {
                service,
                binary: binary.to_owned(),
                env: env.clone(),
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                log_path: log_path.clone(),
                probe: probe.clone(),
                child: Mutex::new(None),
            };
            process.spawn(&[])?;
            match process.wait_ready().await {
                Ok(()) => return Ok(process),
                // Someone else took the port between choosing and binding it: try another.
                Err(error) if attempt < PORT_ATTEMPTS && process.log_mentions_port_in_use() => {
                    eprintln!(
                        "jwl-e2e: {service} could not bind {}: {error:#}; retrying on another port",
                        process.addr
                    );
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Which service this is.
    pub fn service(&self) -> Service {
        self.service
    }

    /// The address its HTTP API listens on (kept across restarts).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its log file (stdout and stderr of every run, appended).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The process id of the running child, if one runs.
    pub fn pid(&self) -> Option<u32> {
        self.lock_child().as_ref().map(Child::id)
    }

    /// Whether the child is running (not killed, not exited).
    pub fn is_running(&self) -> bool {
        let mut child = self.lock_child();
        match child.as_mut() {
            Some(running) => matches!(running.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Its `/metrics` page (the API listener serves it unless `JWL_METRICS_ADDR` is set).
    pub async fn metrics(&self) -> anyhow::Result<MetricsPage> {
        let url = format!("{}/metrics", self.base_url());
        let response = self
            .probe
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        anyhow::ensure!(
            response.status().is_success(),
            "GET {url}: {}",
            response.status()
        );
        let text = response
            .text()
            .await
            .with_context(|| format!("GET {url}"))?;
        Ok(MetricsPage(text))
    }

    /// SIGKILLs the service (a crash: no graceful shutdown) and reaps it. No-op if not running.
    pub async fn kill(&self) -> anyhow::Result<()> {
        let child = self.lock_child().take();
        let Some(mut child) = child else {
            return Ok(());
        };
        let service = self.service;
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            // Fails only if it already exited, which is what we want anyway.
            let _ = child.kill();
            child
                .wait()
                .with_context(|| format!("reaping the killed {service} service"))?;
            Ok(())
        })
        .await
        .context("kill task failed")??;
        self.append_log_marker("killed with SIGKILL by the test harness")?;
        Ok(())
    }

    /// Kills the service if it runs, starts it again with the same port and environment, and
    /// waits until it is ready.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.restart_with(&[]).await
    }

    /// [`ServiceProcess::restart`] with `extra_env` added for this run only (e.g. the
    /// `JWL_FAULT_*` fault points); the next restart goes back to the usual environment.
    pub async fn restart_with(&self, extra_env: &[(&str, &str)]) -> anyhow::Result<()> {
        self.kill().await?;
        self.spawn(extra_env)?;
        self.wait_ready().await
    }

    /// Waits until the service exits by itself (e.g. a fault point aborted it), within
    /// `timeout`, reaps it and returns how it ended.
    pub async fn wait_exit(&self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let what = format!("the {} service to exit", self.service);
        let status = eventually(&what, timeout, || async {
            self.exit_status().ok_or("it still runs")
        })
        .await
        .with_context(|| format!("log {}", self.log_path.display()))?;
        self.lock_child().take();
        self.append_log_marker(&format!("exited by itself ({status})"))?;
        Ok(status)
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    fn spawn(&self, extra_env: &[(&str, &str)]) -> anyhow::Result<()> {
        self.append_log_marker(&format!(
            "starting `jwl serve {}` on {}",
            self.service, self.addr
        ))?;
        let log = self.open_log()?;
        let log_for_stderr = log.try_clone().context("duplicating the log file handle")?;
        let mut command = Command::new(&self.binary);
        command.arg("serve").arg(self.service.as_str());
        for (key, _) in std::env::vars_os() {
            let is_jwl = key
                .to_str()
                .is_some_and(|k| k.starts_with("JWL_") && k != "JWL_TOOLS_DIR");
            if is_jwl {
                command.env_remove(key);
            }
        }
        command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(extra_env.iter().copied())
            .env("JWL_HTTP_ADDR", self.addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_for_stderr));
        let child = spawn_tied_to_process(command, OwnerExitSignal::Kill).with_context(|| {
            format!("spawning {} serve {}", self.binary.display(), self.service)
        })?;
        *self.lock_child() = Some(child);
        Ok(())
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.base_url());
        let what = format!("the {} service at {url} to be ready", self.service);
        let outcome = eventually(&what, READY_TIMEOUT, || async {
            if let Some(status) = self.exit_status() {
                return Ok(Probe::Exited(status));
            }
            match self.probe.get(&url).send().await {
                Ok(response) if response.status() == reqwest::StatusCode::OK => Ok(Probe::Ready),
                Ok(response) => Err(format!("/readyz answered {}", response.status())),
                Err(error) => Err(error.to_string()),
            }
        })
        .await;
        match outcome {
            Ok(Probe::Ready) => Ok(()),
            Ok(Probe::Exited(status)) => anyhow::bail!(
                "the {} service exited ({status}) before it was ready; log {}:\n{}",
                self.service,
                self.log_path.display(),
                self.log_tail(ERROR_LOG_LINES)
            ),
            Err(error) => Err(error.context(format!(
                "log {}:\n{}",
                self.log_path.display(),
                self.log_tail(ERROR_LOG_LINES)
            ))),
        }
    }

    fn exit_status(&self) -> Option<ExitStatus> {
        let mut child = self.lock_child();
        child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    fn log_mentions_port_in_use(&self) -> bool {
        self.log_tail(ERROR_LOG_LINES)
            .to_ascii_lowercase()
            .contains("address already in use")
    }

    fn open_log(&self) -> anyhow::Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))
    }

    fn append_log_marker(&self, what: &str) -> anyhow::Result<()> {
        let mut log = self.open_log()?;
        writeln!(
            log,
            "==== jwl-e2e {}: {what} ====",
            chrono::Utc::now().to_rfc3339()
        )
        .with_context(|| format!("writing to {}", self.log_path.display()))
    }

    fn lock_child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.lock_child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The last `lines` lines of the file at `path` (empty if unreadable).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
