//! The error type of this crate.

use std::path::PathBuf;
use std::time::Duration;

/// Why a private server could not be found, started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum InfraError {
    /// A required executable is not installed.
    #[error("`{name}` was not found (searched $PATH, /usr/lib/postgresql/<version>/bin and {tools_bin}); {hint}", tools_bin = crate::binary::tools_dir().join("bin").display())]
    MissingBinary { name: String, hint: String },

    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// The server could not bind its port because something else listens there.
    #[error("{server} could not listen on 127.0.0.1:{port}: address already in use")]
    PortInUse { server: &'static str, port: u16 },

    /// No unprivileged account exists to run PostgreSQL as (we are root).
    #[error(
        "running as root, but neither the `postgres` nor the `nobody` user exists to run PostgreSQL as"
    )]
    NoServiceUser,

    /// `initdb` failed.
    #[error("initdb for {data_dir} failed ({status}):\n{output}")]
    InitDb {
        data_dir: PathBuf,
        status: String,
        output: String,
    },

    /// The installed server cannot do what was asked (it was built without a feature).
    #[error("{server} does not support {what}")]
    Unsupported { server: &'static str, what: String },

    /// The server process exited while starting.
    #[error("{server} exited while starting ({status}); last lines of {log}:\n{log_tail}")]
    ExitedDuringStart {
        server: &'static str,
        status: String,
        log: PathBuf,
        log_tail: String,
    },

    /// The server did not become ready before the deadline.
    #[error(
        "{server} was not ready after {timeout:?} ({last_problem}); last lines of {log}:\n{log_tail}"
    )]
    StartTimeout {
        server: &'static str,
        timeout: Duration,
        last_problem: String,
        log: PathBuf,
        log_tail: String,
    },
}

impl InfraError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
