//! Running a set of long-lived tasks (service loops, the HTTP server) until a shutdown signal or
//! the first failure, then stopping all of them gracefully within a grace period.

use std::future::Future;
use std::time::Duration;

use anyhow::anyhow;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long tasks get to finish after shutdown starts before they are aborted.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Named tasks sharing one shutdown token.
pub struct Supervisor {
    shutdown: CancellationToken,
    tasks: JoinSet<(String, anyhow::Result<()>)>,
}

impl Supervisor {
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            shutdown,
            tasks: JoinSet::new(),
        }
    }

    pub fn spawn(
        &mut self,
        name: impl Into<String>,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let name = name.into();
        self.tasks.spawn(async move { (name, task.await) });
    }

    /// Waits until shutdown is requested or a task fails or ends on its own (which also triggers
    /// shutdown), then waits for the rest. Returns the first failure.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut first_error: Option<anyhow::Error> = None;
        let mut grace_deadline = None;
        loop {
            let next = match grace_deadline {
                None => tokio::select! {
                    next = self.tasks.join_next() => next,
                    () = self.shutdown.cancelled() => {
                        grace_deadline = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
                        continue;
                    }
                },
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            let stuck = self.tasks.len();
                            self.tasks.abort_all();
                            first_error.get_or_insert_with(|| {
                            anyhow!("{stuck} task(s) did not stop within {SHUTDOWN_GRACE:?} and were aborted")
                        });
                            break;
                        }
                    }
                }
            };
            let Some(joined) = next else { break };
            let failure = match joined {
                Ok((name, Ok(()))) if self.shutdown.is_cancelled() => {
                    tracing::info!(task = %name, "stopped");
                    None
                }
                Ok((name, Ok(()))) => Some(anyhow!("{name} stopped unexpectedly")),
                Ok((name, Err(error))) => Some(error.context(format!("{name} failed"))),
                Err(join_error) => Some(anyhow!("a task panicked or was aborted: {join_error}")),
            };
            if let Some(error) = failure {
                tracing::error!(
                    error = format!("{error:#}"),
                    "shutting down after a failure"
                );
                first_error.get_or_insert(error);
                self.shutdown.cancel();
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Cancels `shutdown` on the first Ctrl-C or SIGTERM; a second signal exits at once.
pub fn cancel_on_signal(shutdown: CancellationToken) {
    tokio::spawn(async move {
        if wait_for_signal().await.is_err() {
            tracing::warn!("cannot listen for shutdown signals; stop with SIGKILL");
            return;
        }
        tracing::info!("shutdown requested; stopping (press Ctrl-C again to exit at once)");
        shutdown.cancel();
        if wait_for_signal().await.is_ok() {
            eprintln!("second signal: exiting without waiting");
            std::process::exit(130);
        }
    });
}

async fn wait_for_signal() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = terminate.recv() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_task_cancels_the_others_and_is_reported() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(shutdown.clone());
        let token = shutdown.clone();
        supervisor.spawn("patient", async move {
            token.cancelled().await;
            Ok(())
        });
        supervisor.spawn("broken", async { Err(anyhow!("boom")) });
        let error = supervisor.wait().await.unwrap_err();
        assert!(shutdown.is_cancelled());
        assert_eq!(format!("{error:#}"), "broken failed: boom");
    }

    #[tokio::test]
    async fn shutdown_waits_for_every_task_and_succeeds() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(shutdown.clone());
        for name in ["a", "b"] {
            let token = shutdown.clone();
            supervisor.spawn(name, async move {
                token.cancelled().await;
                Ok(())
            });
        }
        shutdown.cancel();
        supervisor.wait().await.unwrap();
    }

    #[tokio::test]
    async fn a_task_ending_early_is_a_failure() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(shutdown.clone());
        supervisor.spawn("quitter", async { Ok(()) });
        let error = supervisor.wait().await.unwrap_err();
        assert!(error.to_string().contains("quitter stopped unexpectedly"));
    }

    #[tokio::test(start_paused = true)]
    async fn stuck_tasks_are_aborted_after_the_grace_period() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(shutdown.clone());
        supervisor.spawn("stuck", std::future::pending());
        shutdown.cancel();
        let error = supervisor.wait().await.unwrap_err();
        assert!(error.to_string().contains("did not stop"), "{error}");
    }
}
