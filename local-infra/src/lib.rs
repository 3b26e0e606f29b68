//! Private infrastructure processes for Jiangwanli: a PostgreSQL cluster, a `nats-server -js` and
//! a tansu Kafka-protocol broker, each started on a loopback port with its own data directory and
//! stopped by its owner.
//!
//! Used by `jwl up` (durable servers under `./.jwl/`) and by `jwl-testkit` (throw-away servers).
//!
//! # Lifetime of child processes
//!
//! Every server is spawned with `PR_SET_PDEATHSIG`, so it receives a signal when its owner goes
//! away, even if the owner is killed with SIGKILL. The kernel ties that signal to the *thread*
//! that called `fork`, not to the process: a server spawned from a short-lived thread (a
//! `tokio::task::spawn_blocking` worker, a test thread) would be killed when that thread exits.
//! This crate therefore performs every spawn on one dedicated, never-ending launcher thread
//! (see [`spawn_tied_to_process`]); the servers live exactly as long as the owning *process*,
//! whichever thread calls [`PostgresServer::start`] or [`NatsServer::start`].
//!
//! The API is blocking (starting PostgreSQL takes 1–5 s for `initdb`); from async code call it
//! through `tokio::task::spawn_blocking`, which is safe thanks to the launcher thread.
//!
//! # Running as root
//!
//! PostgreSQL refuses to run as root. When the effective uid is 0, `initdb` and `postgres` run as
//! the `postgres` user (or `nobody` if there is none), the data directory is chowned to it, and
//! any ancestor directory that user cannot traverse gets the search (`o+x`) bit, with a warning.

mod binary;
mod error;
mod nats;
mod nats_probe;
mod pg_probe;
mod port;
mod postgres;
mod process;
mod service_user;
mod tansu;

pub use binary::{MIN_NATS_SERVER, find_binary, find_nats_server, tools_dir};
pub use error::InfraError;
pub use nats::{NatsClusterNode, NatsOptions, NatsServer};
pub use port::free_port;
pub use postgres::{PgTuning, PostgresOptions, PostgresServer, StopMode};
pub use process::{OwnerExitSignal, spawn_tied_to_process};
pub use tansu::{TansuOptions, TansuServer, TansuStorage};
