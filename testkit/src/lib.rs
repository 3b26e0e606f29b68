//! Test harness for Jiangwanli: real PostgreSQL and real `nats-server`, private to the test
//! process, plus [`eventually`] for waiting on a condition instead of sleeping.
//!
//! * [`database()`] — a fresh, empty database with a random name. All databases of one test
//!   process live in ONE private PostgreSQL cluster, started lazily on first use in a temporary
//!   directory and stopped and removed when the process exits; or in the server named by
//!   `JWL_TEST_DATABASE_URL` (a server URL such as `postgres://postgres@127.0.0.1:5999/postgres`)
//!   when that is set — `scripts/test` sets it so that the whole suite shares one cluster.
//!   Private clusters use `PgTuning::FastCrashSafe`: no fsync, yet acknowledged commits survive
//!   a crash of the server.
//! * [`nats()`] — a private `nats-server -js` per call (free port, temporary store), killed and
//!   removed on drop; it can be restarted, killed and started again for fault injection.
//! * [`nats_cluster()`] — several private `nats-server -js` nodes clustered over loopback
//!   routes (free ports, a store each), each node killable and restartable on its own.
//! * [`secure_nats()`] — a private `nats-server` requiring TLS (certificates made by the test)
//!   and client certificates, with the deployment's users and permissions
//!   (`deploy/nats/jwl-auth.conf`), each with a random password.
//! * [`tansu()`] — a private tansu (Kafka-protocol broker) per call (free port, temporary SQLite
//!   storage, or memory when the installed tansu has no SQLite), restartable; `None` when tansu
//!   is not installed (it is optional), so that Kafka tests can skip.
//! * [`service`] — helpers for the service crates' integration tests: a pool in a service's
//!   schema, a `ServiceContext` on a private nats-server, requests through the real HTTP edge,
//!   delivering and publishing events, reading the outbox.
//! * [`cluster()`] / [`TestCluster::start`] — PostgreSQL fault injection (stop, start again).
//!
//! Child processes are spawned by `jwl-local-infra` on its dedicated launcher thread, so they
//! are tied to the test *process*, not to the test thread that happened to start them (the
//! kernel's parent-death signal follows the spawning thread). A test binary that is killed
//! takes its servers with it; its temporary directories are swept by the next test process.
//!
//! Every `#[tokio::test]` has its own runtime: connection pools and clients are per test, only
//! the server processes are shared.

mod cluster;
mod database;
mod eventually;
mod nats;
mod nats_cluster;
mod scratch;
mod secure_nats;
pub mod service;
mod shared_server;
mod tansu;

pub use cluster::{TestCluster, cluster};
pub use database::{TestDatabase, database};
pub use eventually::{PollOutcome, eventually};
pub use jwl_local_infra::StopMode;
pub use nats::{TestNats, nats};
pub use nats_cluster::{TestNatsCluster, nats_cluster};
pub use secure_nats::{AUTH_CONF, Pki, SecureNats, USERS, password_variable, secure_nats};
pub use tansu::{TestTansu, tansu};

/// Environment variable naming an existing PostgreSQL server to create test databases in.
pub const TEST_DATABASE_URL_ENV: &str = "JWL_TEST_DATABASE_URL";
