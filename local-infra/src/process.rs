//! Spawning child processes that cannot outlive this process, and waiting for / signalling them.
//!
//! `PR_SET_PDEATHSIG` delivers a signal to the child when the *thread* that forked it exits.
//! All spawns therefore go through one launcher thread that lives until the process exits, so
//! children die with the process, not with whichever (possibly short-lived) thread asked.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Sender, SyncSender};
use std::time::{Duration, Instant};

use crate::error::InfraError;

/// The signal a child receives when this process exits (or is killed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerExitSignal {
    /// SIGKILL: the child has no state worth shutting down cleanly.
    Kill,
    /// SIGTERM: ask the child to shut down.
    Terminate,
    /// SIGQUIT: PostgreSQL's "immediate shutdown" (the postmaster stops its backends, then exits).
    Quit,
}

impl OwnerExitSignal {
    fn number(self) -> libc::c_int {
        match self {
            Self::Kill => libc::SIGKILL,
            Self::Terminate => libc::SIGTERM,
            Self::Quit => libc::SIGQUIT,
        }
    }
}

struct SpawnRequest {
    command: Command,
    reply: SyncSender<io::Result<Child>>,
}

/// Spawns `command` so that the child receives `signal` when this process exits, however it
/// exits. The fork happens on a dedicated launcher thread, so the calling thread may end at any
/// time without affecting the child. Also useful for tests that run `jwl` processes.
pub fn spawn_tied_to_process(mut command: Command, signal: OwnerExitSignal) -> io::Result<Child> {
    let parent_pid = std::process::id() as libc::pid_t;
    let signal_number = signal.number();
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
    // functions (prctl, getppid, raise, _exit). std runs it after setuid/setgid, which matters
    // because a credential change clears the parent-death signal.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                signal_number as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The owner may have died between fork and prctl; then no signal would ever come.
            if libc::getppid() != parent_pid {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    // Its own process group: a Ctrl-C in the terminal goes to the owner, which then stops its
    // servers in order (e.g. after draining its own work), instead of hitting them directly.
    command.process_group(0);
    let (reply, response) = mpsc::sync_channel(1);
    match launcher() {
        Some(launcher) => {
            let request = SpawnRequest { command, reply };
            if let Err(mpsc::SendError(request)) = launcher.send(request) {
                return request.command.spawn_here();
            }
            response
                .recv()
                .map_err(|_| io::Error::other("the process launcher thread stopped"))?
        }
        None => command.spawn_here(),
    }
}

trait SpawnHere {
    fn spawn_here(self) -> io::Result<Child>;
}

impl SpawnHere for Command {
    fn spawn_here(mut self) -> io::Result<Child> {
        tracing::warn!("process launcher thread unavailable; spawning on the calling thread");
        self.spawn()
    }
}

/// The launcher thread's queue; `None` if the thread could not be created.
fn launcher() -> Option<&'static Sender<SpawnRequest>> {
    static LAUNCHER: OnceLock<Option<Sender<SpawnRequest>>> = OnceLock::new();
    LAUNCHER
        .get_or_init(|| {
            let (sender, requests) = mpsc::channel::<SpawnRequest>();
            let spawned = std::thread::Builder::new()
                .name("jwl-process-launcher".into())
                .spawn(move || {
                    // The sender lives in a static, so this loop (and the thread) ends only with the process.
                    for SpawnRequest { mut command, reply } in requests {
                        let _ = reply.send(command.spawn());
                    }
                });
            match spawned {
                Ok(_) => Some(sender),
                Err(e) => {
                    tracing::warn!(error = %e, "could not start the process launcher thread");
                    None
                }
            }
        })
        .as_ref()
}

/// Sends `signal` to a child that has not been reaped yet (so its pid cannot have been reused).
pub(crate) fn send_signal(child: &mut Child, signal: libc::c_int) -> io::Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    let pid = libc::pid_t::try_from(child.id()).map_err(io::Error::other)?;
    // SAFETY: plain syscall on a pid we own and have not reaped.
    if unsafe { libc::kill(pid, signal) } != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ESRCH) {
            return Err(error);
        }
    }
    Ok(())
}

/// Polls until the child exits or `timeout` passes; `None` on timeout.
pub(crate) fn wait_for_exit(
    child: &mut Child,
    timeout: Duration,
) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `first`, waits up to `grace`; if the child is still there, SIGKILLs it and waits a bit.
/// Returns whether the child is gone.
pub(crate) fn stop_child(
    child: &mut Child,
    first: libc::c_int,
    grace: Duration,
) -> io::Result<bool> {
    send_signal(child, first)?;
    if wait_for_exit(child, grace)?.is_some() {
        return Ok(true);
    }
    tracing::warn!(
        pid = child.id(),
        signal = first,
        ?grace,
        "child did not exit in time; sending SIGKILL"
    );
    send_signal(child, libc::SIGKILL)?;
    Ok(wait_for_exit(child, Duration::from_secs(5))?.is_some())
}

/// The last `max_lines` lines of a log file, for error messages (empty if unreadable).
pub(crate) fn log_tail(path: &Path, max_lines: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(max_lines)..].join("\n")
}

/// Why a server whose process exited while starting failed: its port was taken (its log says
/// "address already in use", in any case), or something else its log tail shows.
pub(crate) fn start_failure(
    server: &'static str,
    port: u16,
    status: ExitStatus,
    log_path: &Path,
) -> InfraError {
    let log_tail = log_tail(log_path, 30);
    if log_tail
        .to_ascii_lowercase()
        .contains("address already in use")
    {
        return InfraError::PortInUse { server, port };
    }
    InfraError::ExitedDuringStart {
        server,
        status: status.to_string(),
        log: log_path.to_owned(),
        log_tail,
    }
}

/// A server's log file (created if missing, appended to) as the child's stdout and stderr.
pub(crate) fn log_output(path: &Path) -> Result<(Stdio, Stdio), InfraError> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| InfraError::io(format!("opening {}", path.display()), e))?;
    let log_for_stderr = log
        .try_clone()
        .map_err(|e| InfraError::io("duplicating the log handle", e))?;
    Ok((log.into(), log_for_stderr.into()))
}

/// The process of a private server, while it runs: what every server wrapper does with it.
#[derive(Debug)]
pub(crate) struct ServerChild {
    server: &'static str,
    child: Option<Child>,
}

impl ServerChild {
    /// No process yet.
    pub(crate) fn new(server: &'static str) -> Self {
        Self {
            server,
            child: None,
        }
    }

    /// Spawns `command` tied to this process (see [`spawn_tied_to_process`]) as the server's
    /// process.
    pub(crate) fn spawn(
        &mut self,
        command: Command,
        signal: OwnerExitSignal,
    ) -> Result<(), InfraError> {
        let program = command.get_program().to_string_lossy().into_owned();
        let child = spawn_tied_to_process(command, signal)
            .map_err(|e| InfraError::io(format!("starting {program}"), e))?;
        self.child = Some(child);
        Ok(())
    }

    /// Process id, if started.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Sends `signal` and waits up to `grace` for the process to exit, SIGKILLing it after
    /// that; the process is forgotten either way. No-op when there is none.
    pub(crate) fn stop(&mut self, signal: libc::c_int, grace: Duration) -> Result<(), InfraError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let server = self.server;
        let exited = stop_child(&mut child, signal, grace)
            .map_err(|e| InfraError::io(format!("stopping {server} (pid {})", child.id()), e))?;
        if !exited {
            tracing::warn!(pid = child.id(), server, "did not exit even after SIGKILL");
        }
        Ok(())
    }

    /// Polls `probe` (given the pid) every `poll` until it answers `Ok`. Fails at once when the
    /// process exits ([`start_failure`]) and with [`InfraError::StartTimeout`] after `timeout`,
    /// naming the probe's last problem and the log's tail.
    pub(crate) fn wait_until_ready(
        &mut self,
        port: u16,
        log_path: &Path,
        timeout: Duration,
        poll: Duration,
        mut probe: impl FnMut(u32) -> Result<(), String>,
    ) -> Result<(), InfraError> {
        let server = self.server;
        let deadline = Instant::now() + timeout;
        loop {
            let child = self
                .child
                .as_mut()
                .ok_or_else(|| InfraError::io(server, io::Error::other("no process")))?;
            if let Some(status) = child
                .try_wait()
                .map_err(|e| InfraError::io(format!("waiting for {server}"), e))?
            {
                return Err(start_failure(server, port, status, log_path));
            }
            let last_problem = match probe(child.id()) {
                Ok(()) => return Ok(()),
                Err(problem) => problem,
            };
            if Instant::now() >= deadline {
                return Err(InfraError::StartTimeout {
                    server,
                    timeout,
                    last_problem,
                    log: log_path.to_owned(),
                    log_tail: log_tail(log_path, 30),
                });
            }
            std::thread::sleep(poll);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_alive(pid: u32) -> bool {
        // A zombie has no "State: S/R" but "Z"; treat zombies as dead.
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map(|s| {
                !s.lines()
                    .any(|l| l.starts_with("State:") && l.contains('Z'))
            })
            .unwrap_or(false)
    }

    #[test]
    fn child_survives_the_thread_that_asked_for_it() {
        let child = std::thread::spawn(|| {
            let mut command = Command::new("sleep");
            command.arg("30");
            spawn_tied_to_process(command, OwnerExitSignal::Kill).unwrap()
        })
        .join()
        .unwrap();
        let mut child = child;
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            is_alive(child.id()),
            "the child must outlive the thread that requested it"
        );
        assert!(stop_child(&mut child, libc::SIGTERM, Duration::from_secs(5)).unwrap());
    }

    #[test]
    fn pdeathsig_survives_a_uid_change_and_fires_when_the_spawning_thread_ends() {
        // Documents the kernel behaviour this module exists for: spawn directly (not via the
        // launcher) from a thread that then ends, and the child is killed.
        if unsafe { libc::geteuid() } != 0 {
            return; // the uid change needs root; the thread rule is the same without it
        }
        let nobody = crate::service_user::lookup("nobody").expect("nobody exists");
        let pid = std::thread::spawn(move || {
            let mut command = Command::new("sleep");
            command.arg("30").uid(nobody.uid).gid(nobody.gid);
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(
                        libc::PR_SET_PDEATHSIG,
                        libc::SIGKILL as libc::c_ulong,
                        0,
                        0,
                        0,
                    );
                    Ok(())
                });
            }
            let child = command.spawn().unwrap();
            let pid = child.id();
            std::mem::forget(child);
            pid
        })
        .join()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !is_alive(pid),
            "PDEATHSIG must kill the child when its spawning thread ends"
        );
        // SAFETY: reap the zombie we forgot.
        unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0) };
    }
}
