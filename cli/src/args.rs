//! The command line: subcommands and their flags, each flag also settable by a `JWL_*`
//! environment variable (a flag wins over its variable).

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use jwl_events::{EventType, OrderId};
use jwl_ops::DeadLetterReason;
use jwl_outbox::{FaultPoints, MessagingSettings, TransientFault};
use jwl_service_kit::ConsolePeers;
use jwl_service_kit::auth::Scope;
use jwl_service_kit::db::{Planning, PoolSettings};
use secrecy::SecretString;

use crate::services::ServiceName;

/// Jiangwanli: a choreographed-saga order platform (NATS JetStream + PostgreSQL).
#[derive(Debug, Parser)]
#[command(name = "jwl", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole system in one process (starts private NATS and PostgreSQL unless
    /// JWL_NATS_URL / JWL_DATABASE_URL are set).
    Up(UpArgs),
    /// Run one service (production mode: external NATS and PostgreSQL).
    Serve(ServeArgs),
    /// Apply the database migrations of the named services (all when none is named).
    Migrate(MigrateArgs),
    /// Print a signed bearer token (and nothing else) on stdout.
    Token(TokenArgs),
    /// Inspect sagas: one order's history and status, or the orders that stopped moving.
    #[command(subcommand)]
    Saga(SagaCommand),
    /// Print a selection of events, re-deliver it to one service (`--to`), or replay the orders
    /// it touches against this build's handlers in a scratch database (`--sandbox`).
    Replay(ReplayArgs),
    /// The dead letters: list, show, discard, redrive.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Outbox rows the broker rejected for good (parked): list them, or have the relay retry
    /// them.
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// Load a running system with orders at a constant rate and report ingest, end-to-end saga
    /// latency and throughput, next to raw Postgres and JetStream baselines.
    Bench(BenchArgs),
}

// Parsed once at start-up; boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum SagaCommand {
    /// One order's events and dead letters from the broker, and its status from the order
    /// database.
    Show(SagaShowArgs),
    /// Orders not in a terminal status created longer ago than `--older-than`, with the last
    /// event each saw and the service that should act next.
    Stuck(SagaStuckArgs),
}

#[derive(Debug, Args)]
pub struct SagaShowArgs {
    /// The order.
    #[arg(value_parser = parse_order_id)]
    pub order_id: OrderId,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub databases: DatabaseArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct SagaStuckArgs {
    /// Only orders created at least this long ago.
    #[arg(long, default_value = "5m", value_parser = parse_positive_duration)]
    pub older_than: Duration,
    #[command(flatten)]
    pub databases: DatabaseArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Only this order's events.
    #[arg(long, value_parser = parse_order_id)]
    pub order: Option<OrderId>,
    /// Only events of these types (`jwl.order.created` or `order.created`; repeat or list).
    #[arg(long = "type", value_delimiter = ',', value_parser = parse_event_type)]
    pub types: Vec<EventType>,
    /// Only events stored at or after this time (RFC 3339).
    #[arg(long, value_parser = parse_rfc3339, conflicts_with = "since_ago")]
    pub since: Option<DateTime<Utc>>,
    /// Only events stored within this long before now (`10m`, `2h`).
    #[arg(long, value_parser = parse_positive_duration)]
    pub since_ago: Option<Duration>,
    /// Only events stored at or before this time (RFC 3339).
    #[arg(long, value_parser = parse_rfc3339)]
    pub until: Option<DateTime<Utc>>,
    /// First events-stream sequence (inclusive).
    #[arg(long)]
    pub from_seq: Option<u64>,
    /// Last events-stream sequence (inclusive).
    #[arg(long)]
    pub to_seq: Option<u64>,
    /// Most events selected (the first ones in stream order).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Re-deliver the selection (the types this service consumes) to its replay channel.
    #[arg(long, value_enum)]
    pub to: Option<ServiceName>,
    /// Have the service run its handler again (`jwl-replay-mode: rerun`) instead of letting its
    /// inbox skip events it already handled.
    #[arg(long, requires = "to")]
    pub rerun: bool,
    /// Print what `--to` would send, and send nothing.
    #[arg(long, requires = "to")]
    pub dry_run: bool,
    /// Feed the recorded events of every order the selection touches (whole orders) to this
    /// build's handlers in a scratch database on the server of JWL_DATABASE_URL (dropped
    /// afterwards), and print how their events differ from the recorded ones; exit status 1
    /// when they differ.
    #[arg(long, conflicts_with_all = ["to", "types"])]
    pub sandbox: bool,
    /// PostgreSQL URL of the server the sandbox creates its scratch database on (the user needs
    /// CREATEDB).
    #[arg(long, env = "JWL_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    #[command(
        flatten,
        next_help_heading = "Sandbox settings (as `jwl serve` reads them)"
    )]
    pub sandbox_settings: SandboxSettingsArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The settings the sandbox's dispatch handler runs with (the other handlers have none).
#[derive(Debug, Args)]
pub struct SandboxSettingsArgs {
    /// Time a waybill may wait for a courier.
    #[arg(long, env = "JWL_DISPATCH_DEADLINE", default_value = "60s", value_parser = parse_positive_duration)]
    pub dispatch_deadline: Duration,
    /// Farthest distance (km) between a courier and the pickup point.
    #[arg(long, env = "JWL_DISPATCH_RADIUS_KM", default_value = "5", value_parser = parse_radius_km)]
    pub dispatch_radius_km: f64,
    /// Live waybills per courier.
    #[arg(long, env = "JWL_COURIER_CAPACITY", default_value = "1", value_parser = clap::value_parser!(u32).range(1..))]
    pub courier_capacity: u32,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List the unresolved dead letters, oldest first.
    Ls(DlqLsArgs),
    /// One dead letter in full.
    Show(DlqShowArgs),
    /// Give up on dead letters: release the consumer's hold on the order, record the reason in
    /// `jwl.dlqlog.<seq>` and delete them.
    Discard(DlqDiscardArgs),
    /// Re-deliver dead letters to their consumer's service, record each outcome and delete
    /// them, resumably.
    Redrive(DlqRedriveArgs),
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// The parked outbox rows of each service (those with a database URL), oldest first.
    Ls(OutboxLsArgs),
    /// Un-park rows of one service, so its relay publishes them again.
    Retry(OutboxRetryArgs),
}

#[derive(Debug, Args)]
pub struct OutboxLsArgs {
    /// Only these services (all by default; repeat or list).
    #[arg(long = "service", value_enum, value_delimiter = ',')]
    pub services: Vec<ServiceName>,
    #[command(flatten)]
    pub databases: DatabaseArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("rows").required(true).args(["seqs", "all"])))]
pub struct OutboxRetryArgs {
    /// The service whose outbox holds the rows.
    #[arg(value_enum)]
    pub service: ServiceName,
    /// The rows to un-park, by `seq` (see `jwl outbox ls`; repeat or list).
    #[arg(long = "seq", value_delimiter = ',')]
    pub seqs: Vec<i64>,
    /// Every parked row of the service.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub databases: DatabaseArgs,
}

#[derive(Debug, Args)]
pub struct DeadLetterFilterArgs {
    /// Only this durable consumer (e.g. `payment__order_created`).
    #[arg(long)]
    pub consumer: Option<String>,
    /// Only dead letters of this event type.
    #[arg(long = "type", value_parser = parse_event_type)]
    pub event_type: Option<EventType>,
    /// Only this reason: decode, permanent or max_attempts.
    #[arg(long)]
    pub reason: Option<DeadLetterReason>,
    /// Only this order's dead letters.
    #[arg(long, value_parser = parse_order_id)]
    pub order: Option<OrderId>,
    /// Only dead letters at least this old.
    #[arg(long, value_parser = parse_positive_duration)]
    pub older_than: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct DlqLsArgs {
    #[command(flatten)]
    pub filter: DeadLetterFilterArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct DlqShowArgs {
    /// The dead letter's sequence in the dead-letter stream (see `jwl dlq ls`).
    pub seq: u64,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct DlqDiscardArgs {
    /// Sequences of the dead letters to discard.
    #[arg(required = true)]
    pub seqs: Vec<u64>,
    /// Why they are discarded (kept in the outcome record).
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

#[derive(Debug, Args)]
pub struct DlqRedriveArgs {
    #[command(flatten)]
    pub filter: DeadLetterFilterArgs,
    /// Most dead letters redriven per second or minute (`50/s`, `600/m`).
    #[arg(long, default_value = "50/s", value_parser = parse_rate)]
    pub rate: Rate,
    /// Where the run's selection and progress are kept (default
    /// `<data dir>/redrive-<run id>.json`).
    #[arg(long, conflicts_with = "resume")]
    pub state_file: Option<PathBuf>,
    /// Continue the run recorded in this state file (its frozen selection; the filters are
    /// not used).
    #[arg(long, value_name = "STATE_FILE")]
    pub resume: Option<PathBuf>,
    /// Stop after this many dead letters in this invocation (resume later for the rest).
    #[arg(long)]
    pub max: Option<usize>,
    /// Have the service run its handler again (`jwl-replay-mode: rerun`).
    #[arg(long)]
    pub rerun: bool,
    #[command(flatten)]
    pub data_dir: DataDirArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Base URL of the system's HTTP API (`jwl up` serves every service there). Several,
    /// comma-separated (the replicas of the order service), share the orders round robin.
    #[arg(long, default_value = "http://127.0.0.1:8080", value_delimiter = ',')]
    pub url: Vec<String>,
    /// Base URL of the inventory service's API (stock), where it is not behind `--url`.
    #[arg(long, value_name = "URL")]
    pub inventory_url: Option<String>,
    /// Base URL of the dispatch service's API (couriers), where it is not behind `--url`.
    #[arg(long, value_name = "URL")]
    pub dispatch_url: Option<String>,
    /// Orders sent per second (constant arrival rate).
    #[arg(long, default_value = "50", conflicts_with = "sweep")]
    pub rate: NonZeroU32,
    /// Run one bench per offered rate (orders/s), one after the other on the same running
    /// system, and print a table of them (`--sweep 50,100,200,400`).
    #[arg(long, value_delimiter = ',', value_name = "RATES")]
    pub sweep: Vec<NonZeroU32>,
    /// How long to send (`30s`, `2m`), per sweep step; ignored with `--orders`.
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration)]
    pub duration: Duration,
    /// Send exactly this many orders (per sweep step) instead of sending for `--duration`.
    #[arg(long)]
    pub orders: Option<NonZeroU64>,
    /// Before the first step, send orders at its rate for this long and wait for their sagas
    /// to end, counting none of it: the figures are then those of a warm system (its
    /// connections open, its statements prepared, its caches filled), not of its first
    /// seconds. `0s`: no warm-up.
    #[arg(long, default_value = "5s", value_parser = parse_duration_or_zero)]
    pub warmup: Duration,
    /// Most order requests in flight at once.
    #[arg(long, default_value = "256")]
    pub concurrency: NonZeroUsize,
    /// Longest wait, after sending, for every accepted order to reach the end of its saga.
    /// Orders without a courier end at the dispatch deadline (60 s by default): with
    /// `--no-courier-ratio`, set this above it.
    #[arg(long, default_value = "60s", value_parser = parse_positive_duration)]
    pub settle_timeout: Duration,
    /// How long each baseline (Postgres commits, JetStream publishes) is measured.
    #[arg(long, default_value = "3s", value_parser = parse_positive_duration)]
    pub baseline_duration: Duration,
    /// Distinct SKUs stocked (per sweep step), ordered with Zipf-like popularity.
    #[arg(long, default_value = "1000")]
    pub skus: NonZeroU32,
    /// Exponent of the SKU popularity: the SKU of rank r is ordered in proportion to 1/r^s
    /// (0 = uniform, 1 = classic Zipf).
    #[arg(long, default_value = "1.0", value_parser = parse_skew)]
    pub sku_skew: f64,
    /// Couriers spread over the city (per sweep step); default: enough to serve every order
    /// that should be dispatched, with a margin.
    #[arg(long)]
    pub couriers: Option<NonZeroU64>,
    /// Courier location updates sent per second during the run (`PUT
    /// /v1/couriers/{id}/location`, round robin, each courier moving a few tens of metres);
    /// default: couriers / 5 (every courier every 5 s); 0 switches them off.
    #[arg(long, value_parser = parse_non_negative)]
    pub courier_updates_per_second: Option<f64>,
    /// Share of orders paid with the declining card (`tok_decline`): they end `rejected`.
    #[arg(long, default_value = "0", value_parser = parse_ratio)]
    pub decline_ratio: f64,
    /// Share of orders for a SKU stocked at 0: they end `cancelled` (out_of_stock).
    #[arg(long, default_value = "0", value_parser = parse_ratio)]
    pub out_of_stock_ratio: f64,
    /// Share of orders picked up where no courier is within the dispatch radius (hundreds of
    /// km outside the city): they end `cancelled` (no_courier) at the dispatch deadline.
    #[arg(long, default_value = "0", value_parser = parse_ratio)]
    pub no_courier_ratio: f64,
    /// Seed of the load model (SKU choice, positions, order of outcomes).
    #[arg(long, default_value = "1")]
    pub seed: u64,
    /// A process of the system under test whose CPU time (with all its descendants') counts in
    /// the cost per saga (repeat for each). Default: every `jwl up` / `jwl serve` process and
    /// the `postgres`, `nats-server` and `tansu` processes below them.
    #[arg(long = "system-pid", value_name = "PID")]
    pub system_pids: Vec<u32>,
    /// Wait before and after the measured window so that PostgreSQL's cumulative statistics
    /// (flushed by an idle backend within 10 s) include every commit of the window.
    #[arg(long, default_value = "11s", value_parser = parse_duration_or_zero)]
    pub pg_stats_wait: Duration,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw saga latency (p50, p99) against the achieved sagas/s of every step as a PNG.
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,
    /// PostgreSQL for the commit-rate baseline (a scratch table in schema `jwl_bench`) and the
    /// transactions and statements per saga; skipped when unset.
    #[arg(long, env = "JWL_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The system's broker, where the bench watches the sagas end (it follows the events as
    /// they are published); without its address the bench polls every order. On NATS it also
    /// measures the JetStream publish baseline (a scratch stream, deleted afterwards).
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub jwt: JwtArgs,
    /// Only used to find the JWT secret file when JWL_JWT_SECRET is unset.
    #[command(flatten)]
    pub data_dir: DataDirArgs,
}

/// Which broker carries the events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum BrokerKind {
    /// NATS JetStream (`JWL_NATS_URL`).
    #[default]
    Nats,
    /// Kafka, or a Kafka-protocol broker such as tansu (`JWL_KAFKA_BROKERS`).
    Kafka,
}

/// The broker and how to reach it. With `kafka`, the NATS settings are ignored (a warning is
/// logged when `JWL_NATS_URL` is set).
#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// The broker: `nats` (JetStream) or `kafka`.
    #[arg(
        long = "broker",
        id = "broker",
        env = "JWL_BROKER",
        default_value = "nats",
        value_parser = parse_broker
    )]
    pub kind: BrokerKind,
    /// Kafka bootstrap brokers, `host:port` separated by commas (with `--broker kafka`; `jwl
    /// up` starts a private tansu under the data dir when unset).
    #[arg(long, env = "JWL_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Partitions of the Kafka topics this process creates (the streams' topics and each
    /// consumer group's retry topic; a topic that exists keeps its own). Default: 8.
    #[arg(long, env = "JWL_KAFKA_PARTITIONS", value_parser = clap::value_parser!(i32).range(1..))]
    pub kafka_partitions: Option<i32>,
    /// The NATS server (JetStream enabled), or a comma-separated list of the nodes of a
    /// cluster (with `--broker nats`; `jwl up` starts a private `nats-server -js` under the data
    /// dir when unset).
    #[arg(long, env = "JWL_NATS_URL", hide_env_values = true)]
    pub nats_url: Option<String>,
    #[command(flatten)]
    pub nats_security: NatsSecurityArgs,
}

/// Credentials and TLS for NATS (see "Securing the bus" in the README). At most one kind of
/// credential; a user and password may also come from the URL (`nats://user:password@host`).
/// Prefer the variables to the flags: a flag's value is visible to other local users.
#[derive(Debug, Args)]
pub struct NatsSecurityArgs {
    /// NATS user (with JWL_NATS_PASSWORD).
    #[arg(long, env = "JWL_NATS_USER")]
    pub nats_user: Option<String>,
    /// Password of JWL_NATS_USER.
    #[arg(long, env = "JWL_NATS_PASSWORD", hide_env_values = true, value_parser = parse_secret)]
    pub nats_password: Option<SecretString>,
    /// NATS authentication token.
    #[arg(long, env = "JWL_NATS_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub nats_token: Option<SecretString>,
    /// File holding the user's nkey seed (`SU…`).
    #[arg(long, env = "JWL_NATS_NKEY_SEED_FILE", value_name = "FILE",
          value_parser = parse_path)]
    pub nats_nkey_seed_file: Option<PathBuf>,
    /// `.creds` file (user JWT and nkey seed) for a server in operator (JWT) mode.
    #[arg(long, env = "JWL_NATS_CREDS_FILE", value_name = "FILE",
          value_parser = parse_path)]
    pub nats_creds_file: Option<PathBuf>,
    /// PEM file of the CA the server's certificate must chain to (implies TLS required).
    #[arg(long, env = "JWL_NATS_TLS_CA_FILE", value_name = "FILE",
          value_parser = parse_path)]
    pub nats_tls_ca_file: Option<PathBuf>,
    /// PEM client certificate, for a server that verifies clients (implies TLS required).
    #[arg(long, env = "JWL_NATS_TLS_CERT_FILE", value_name = "FILE",
          value_parser = parse_path)]
    pub nats_tls_cert_file: Option<PathBuf>,
    /// PEM private key of JWL_NATS_TLS_CERT_FILE.
    #[arg(long, env = "JWL_NATS_TLS_KEY_FILE", value_name = "FILE",
          value_parser = parse_path)]
    pub nats_tls_key_file: Option<PathBuf>,
    /// Refuse to connect without TLS (also implied by a `tls://` URL).
    #[arg(long, env = "JWL_NATS_TLS_REQUIRED",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub nats_tls_required: bool,
}

/// `nats` or `kafka`, in any case; empty (an empty `JWL_BROKER`) counts as unset: `nats`.
fn parse_broker(value: &str) -> Result<BrokerKind, String> {
    match value.trim() {
        "" => Ok(BrokerKind::Nats),
        value => BrokerKind::from_str(value, true)
            .map_err(|_| format!("unknown broker {value:?}: use nats or kafka")),
    }
}

/// A file path; an empty one (an empty variable) counts as unset.
fn parse_path(value: &str) -> Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(value))
}

/// A secret argument, held so that it never shows in Debug output.
fn parse_secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value))
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A number of operations per second or per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    PerSecond(NonZeroU32),
    PerMinute(NonZeroU32),
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub data_dir: DataDirArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub databases: DatabaseArgs,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub settings: SettingsArgs,
    #[command(flatten)]
    pub messaging: MessagingArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The service to run.
    #[arg(value_enum)]
    pub service: ServiceName,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub databases: DatabaseArgs,
    #[command(flatten)]
    pub jwt: JwtArgs,
    /// Only used to find the JWT secret file when JWL_JWT_SECRET is unset.
    #[command(flatten)]
    pub data_dir: DataDirArgs,
    #[command(flatten)]
    pub settings: SettingsArgs,
    #[command(flatten)]
    pub messaging: MessagingArgs,
    #[command(flatten)]
    pub faults: FaultArgs,
}

/// Reliable-messaging tunables.
#[derive(Debug, Args)]
pub struct MessagingArgs {
    /// How long the broker waits for a consumer's ack before redelivering (keep it above the
    /// longest batch handling time).
    #[arg(long, env = "JWL_ACK_WAIT", default_value = "30s", value_parser = parse_positive_duration)]
    pub ack_wait: Duration,
    /// How long a database connection may go without answering before it is given up: the
    /// bound on one consumer batch, relay step or timer run, and how long PostgreSQL keeps a
    /// silent session inside a transaction or holding the relay lease (half-open connections
    /// after a partition). Keep it above the longest batch handling.
    #[arg(long, env = "JWL_DB_STALL_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub db_stall_timeout: Duration,
    /// Replicas of every stream the services create (events, dead letters, replay, dead-letter
    /// log); an existing stream with another count is changed to it. More than 1 needs a
    /// JetStream cluster of at least that many servers.
    #[arg(long, env = "JWL_STREAM_REPLICAS", default_value = "1",
          value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: u8,
    /// Database connections of each service's HTTP routes: a pool of their own next to the
    /// consumers' (10), so a flood of requests waits for these and never takes the consumers'.
    #[arg(long, env = "JWL_HTTP_DB_POOL_SIZE", default_value = "5")]
    pub http_db_pool_size: NonZeroU32,
    /// Partitions of each service's outbox: rows are split by order, every partition has its own
    /// relay lease, so replicas publish different partitions in parallel. All replicas of a
    /// service must use the same count; a replica with another count stands by until no relay
    /// of the schema's recorded count is left (docs/scaling.md).
    #[arg(long, env = "JWL_OUTBOX_PARTITIONS", default_value = "1",
          value_parser = clap::value_parser!(u8).range(1..=64))]
    pub outbox_partitions: u8,
    /// Workers of each consumer: its messages are split among them by order, each worker
    /// handles its share in batches, one transaction each, in parallel with the others (a
    /// handler may allow fewer). One makes the biggest batches and the fewest commits (measured
    /// best on 2 cores, docs/performance.md); raise it for a service whose handler waits on
    /// something outside the database (a slow payment processor) or on a host with many cores.
    #[arg(long, env = "JWL_CONSUMER_WORKERS", default_value = "1",
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub consumer_workers: u16,
    /// The most messages one consumer batch (one transaction) holds, and how many the
    /// consumer asks the broker for ahead.
    #[arg(long, env = "JWL_CONSUMER_BATCH_SIZE", default_value = "256",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub consumer_batch_size: u16,
}

/// Fault points for failure-injection tests (hidden; all off by default). Read once at start.
#[derive(Debug, Args)]
pub struct FaultArgs {
    /// Abort after this consumer commits a batch, before acking it.
    #[arg(long, env = "JWL_FAULT_CRASH_AFTER_COMMIT", hide = true)]
    pub fault_crash_after_commit: Option<String>,
    /// Abort in the relay after publishing, before marking the rows.
    #[arg(long, env = "JWL_FAULT_CRASH_AFTER_PUBLISH", hide = true,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub fault_crash_after_publish: bool,
    /// `<consumer>:<n>`: that consumer's handler fails transiently on each message's first n
    /// deliveries.
    #[arg(long, env = "JWL_FAULT_TRANSIENT_FIRST", hide = true)]
    pub fault_transient_first: Option<TransientFault>,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Services to migrate (default: all five).
    #[arg(value_enum)]
    pub services: Vec<ServiceName>,
    #[command(flatten)]
    pub databases: DatabaseArgs,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The token's subject (customer id, courier id, operator name).
    #[arg(long)]
    pub sub: String,
    /// Scopes to grant: orders:write, orders:read, couriers:write, admin (repeat or list).
    #[arg(long = "scope", required = true, num_args = 1.., value_delimiter = ',')]
    pub scopes: Vec<Scope>,
    /// How long the token is valid (`15m`, `24h`, …; at most 30 days).
    #[arg(long, default_value = "1h", value_parser = parse_token_ttl)]
    pub ttl: Duration,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub data_dir: DataDirArgs,
}

#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Address the HTTP API listens on.
    #[arg(long, env = "JWL_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// A separate address for `/metrics` (and a `/readyz` that says which check failed); the
    /// API listener then no longer serves `/metrics`. Unset: `/metrics` is on the API listener.
    #[arg(long, env = "JWL_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct DataDirArgs {
    /// Where `jwl up` keeps its private NATS and PostgreSQL data and the dev JWT secret.
    #[arg(long, env = "JWL_DATA_DIR", default_value = "./.jwl")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct JwtArgs {
    /// HS256 secret for bearer tokens (default: the `jwt-secret` file in the data dir).
    #[arg(long, env = "JWL_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// The `iss` of bearer tokens: set on the tokens `jwl` issues and required on every token
    /// accepted (unset: not set, not checked).
    #[arg(long, env = "JWL_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The `aud` of bearer tokens: set on the tokens `jwl` issues and required on every token
    /// accepted (unset: not set, and a token naming any audience is refused).
    #[arg(long, env = "JWL_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
}

/// The shared database URL and the per-service overrides.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL shared by all services (each uses its own schema).
    #[arg(long, env = "JWL_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Database of the order service (overrides JWL_DATABASE_URL).
    #[arg(long, env = "JWL_ORDER_DATABASE_URL", hide_env_values = true)]
    pub order_database_url: Option<String>,
    /// Database of the payment service (overrides JWL_DATABASE_URL).
    #[arg(long, env = "JWL_PAYMENT_DATABASE_URL", hide_env_values = true)]
    pub payment_database_url: Option<String>,
    /// Database of the inventory service (overrides JWL_DATABASE_URL).
    #[arg(long, env = "JWL_INVENTORY_DATABASE_URL", hide_env_values = true)]
    pub inventory_database_url: Option<String>,
    /// Database of the fulfillment service (overrides JWL_DATABASE_URL).
    #[arg(long, env = "JWL_FULFILLMENT_DATABASE_URL", hide_env_values = true)]
    pub fulfillment_database_url: Option<String>,
    /// Database of the dispatch service (overrides JWL_DATABASE_URL).
    #[arg(long, env = "JWL_DISPATCH_DATABASE_URL", hide_env_values = true)]
    pub dispatch_database_url: Option<String>,
}

/// Business tunables (see `jwl_service_kit::Settings`).
#[derive(Debug, Args)]
pub struct SettingsArgs {
    /// Time from order creation to courier assignment before the order is cancelled.
    #[arg(long, env = "JWL_ORDER_DEADLINE", default_value = "5m", value_parser = parse_positive_duration)]
    pub order_deadline: Duration,
    /// Time a waybill may wait for a courier.
    #[arg(long, env = "JWL_DISPATCH_DEADLINE", default_value = "60s", value_parser = parse_positive_duration)]
    pub dispatch_deadline: Duration,
    /// Farthest distance (km) between a courier and the pickup point.
    #[arg(long, env = "JWL_DISPATCH_RADIUS_KM", default_value = "5", value_parser = parse_radius_km)]
    pub dispatch_radius_km: f64,
    /// Live waybills per courier.
    #[arg(long, env = "JWL_COURIER_CAPACITY", default_value = "1", value_parser = clap::value_parser!(u32).range(1..))]
    pub courier_capacity: u32,
    /// How long an Idempotency-Key of POST /v1/orders is remembered (a repeat after that places
    /// a new order); expired keys are deleted.
    #[arg(long, env = "JWL_IDEMPOTENCY_TTL", default_value = "24h", value_parser = parse_positive_duration)]
    pub idempotency_ttl: Duration,
    /// Orders per second one process accepts (over it: 429 with Retry-After).
    #[arg(long, env = "JWL_INGEST_RATE", default_value = "500")]
    pub ingest_rate: NonZeroU32,
    /// Orders accepted at once above that rate.
    #[arg(long, env = "JWL_INGEST_BURST", default_value = "1000")]
    pub ingest_burst: NonZeroU32,
    /// Order requests one process handles at the same time (over it: 503 with Retry-After).
    #[arg(long, env = "JWL_INGEST_IN_FLIGHT", default_value = "256")]
    pub ingest_in_flight: NonZeroUsize,
    /// Orders per second one caller (token subject) may place (over it: 429 with Retry-After).
    #[arg(long, env = "JWL_INGEST_CALLER_RATE", default_value = "20")]
    pub ingest_caller_rate: NonZeroU32,
    /// Orders one caller may place at once above that rate.
    #[arg(long, env = "JWL_INGEST_CALLER_BURST", default_value = "50")]
    pub ingest_caller_burst: NonZeroU32,
    /// How long an accepted order may queue behind the open ones: new orders are refused (503
    /// with Retry-After) while more are open than the system finishes in this time; `off` for no
    /// backlog limit.
    #[arg(long, env = "JWL_ADMISSION_TARGET", default_value = "10s", value_parser = parse_optional_duration)]
    pub admission_target: OptionalDuration,
    /// Open orders always admitted, whatever the measured finish rate.
    #[arg(long, env = "JWL_ADMISSION_MIN_OPEN", default_value = "200")]
    pub admission_min_open: NonZeroU32,
    /// How long payment waits for the card processor to answer a call before giving it up.
    #[arg(long, env = "JWL_PROCESSOR_TIMEOUT", default_value = "2s", value_parser = parse_positive_duration)]
    pub processor_timeout: Duration,
    /// Share of card processor calls the simulator fails (1: an outage); also set at run time
    /// with PUT /v1/payment-processor.
    #[arg(long, env = "JWL_PROCESSOR_ERROR_RATE", default_value = "0", value_parser = parse_ratio)]
    pub processor_error_rate: f64,
    /// Share of card processor calls the simulator never answers (they time out).
    #[arg(long, env = "JWL_PROCESSOR_TIMEOUT_RATE", default_value = "0", value_parser = parse_ratio)]
    pub processor_timeout_rate: f64,
    /// Time each simulated card processor call takes.
    #[arg(long, env = "JWL_PROCESSOR_LATENCY", default_value = "0ms", value_parser = parse_duration_or_zero)]
    pub processor_latency: Duration,
    /// Factor on that time (10: ten times slower).
    #[arg(long, env = "JWL_PROCESSOR_SLOWDOWN", default_value = "1", value_parser = parse_slowdown)]
    pub processor_slowdown: f64,
    /// Span of the card processor breaker's sliding window (and how often its baseline learns).
    #[arg(long, env = "JWL_PROCESSOR_BREAKER_WINDOW", default_value = "10s", value_parser = parse_positive_duration)]
    pub processor_breaker_window: Duration,
    /// Fewest calls in the window for the breaker to open.
    #[arg(long, env = "JWL_PROCESSOR_BREAKER_MIN_CALLS", default_value = "10", value_parser = clap::value_parser!(u32).range(1..))]
    pub processor_breaker_min_calls: u32,
    /// How long the breaker stays open before it lets one probe call through.
    #[arg(long, env = "JWL_PROCESSOR_BREAKER_OPEN_FOR", default_value = "5s", value_parser = parse_positive_duration)]
    pub processor_breaker_open_for: Duration,
    /// Floor of the breaker's error-rate threshold (the threshold is 3 × the learned baseline,
    /// never below this).
    #[arg(long, env = "JWL_PROCESSOR_BREAKER_MIN_ERROR_RATE", default_value = "0.2", value_parser = parse_ratio)]
    pub processor_breaker_min_error_rate: f64,
    /// Floor of the breaker's p99 latency threshold (the threshold is 4 × the learned baseline
    /// p99, never below this).
    #[arg(long, env = "JWL_PROCESSOR_BREAKER_MIN_P99", default_value = "500ms", value_parser = parse_positive_duration)]
    pub processor_breaker_min_p99: Duration,
    /// Base URLs of the other services, `service=url,…` (payment, inventory, fulfillment,
    /// dispatch), whose admin read routes the order service's console calls to show an order's
    /// state in each. Unset: the console says so (`jwl up`: its own listener for all four).
    #[arg(long, env = "JWL_CONSOLE_PEERS", value_name = "SERVICE=URL,...", value_parser = ConsolePeers::parse)]
    pub console_peers: Option<ConsolePeers>,
}

/// A positive duration, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalDuration(pub Option<Duration>);

/// `off`, or a humantime duration greater than zero.
fn parse_optional_duration(text: &str) -> Result<OptionalDuration, String> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(OptionalDuration(None));
    }
    parse_positive_duration(text).map(|duration| OptionalDuration(Some(duration)))
}

impl MessagingArgs {
    /// The production messaging settings with these tunables and `faults`.
    pub fn to_settings(&self, faults: Option<FaultPoints>) -> MessagingSettings {
        MessagingSettings {
            ack_wait: self.ack_wait,
            db_stall_timeout: self.db_stall_timeout,
            stream_replicas: Some(usize::from(self.stream_replicas)),
            outbox_partitions: usize::from(self.outbox_partitions),
            consumer_workers: usize::from(self.consumer_workers),
            consumer_batch_size: usize::from(self.consumer_batch_size),
            faults,
            ..MessagingSettings::default()
        }
    }

    /// The settings of a service's own pool (its consumers, handlers, relay and timers) with
    /// these tunables: each statement planned once, by index ([`Planning::OnceByIndex`]).
    pub fn to_pool_settings(&self) -> PoolSettings {
        PoolSettings {
            stall_timeout: self.db_stall_timeout,
            planning: Planning::OnceByIndex,
            ..PoolSettings::default()
        }
    }

    /// The settings of the HTTP routes' pool: [`Self::to_pool_settings`] with
    /// `JWL_HTTP_DB_POOL_SIZE` connections, each pinged before use (a request is not retried,
    /// so a connection broken by a database restart must not fail one), and PostgreSQL's own
    /// choice of plans (the routes' lists and filters vary in what they select).
    pub fn to_http_pool_settings(&self) -> PoolSettings {
        PoolSettings {
            max_connections: self.http_db_pool_size.get(),
            ping_before_acquire: true,
            planning: Planning::Adaptive,
            ..self.to_pool_settings()
        }
    }
}

impl FaultArgs {
    /// The fault points switched on, or `None` when none is.
    pub fn to_fault_points(&self) -> Option<FaultPoints> {
        FaultPoints {
            crash_after_commit: self.fault_crash_after_commit.clone(),
            crash_after_publish: self.fault_crash_after_publish,
            transient_first: self.fault_transient_first.clone(),
        }
        .switched_on()
    }
}

/// A humantime duration (`90s`, `5m`, `1h 30m`) greater than zero.
fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration.is_zero() {
        Err("must be greater than zero".to_owned())
    } else {
        Ok(duration)
    }
}

/// The longest `jwl token --ttl`: a leaked token stays usable until it expires.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// A token lifetime: positive and at most [`MAX_TOKEN_TTL`].
fn parse_token_ttl(text: &str) -> Result<Duration, String> {
    let ttl = parse_positive_duration(text)?;
    if ttl > MAX_TOKEN_TTL {
        Err("must be at most 30 days (30d)".to_owned())
    } else {
        Ok(ttl)
    }
}

/// A finite number of kilometres greater than zero.
fn parse_radius_km(text: &str) -> Result<f64, String> {
    let km: f64 = text.trim().parse().map_err(|e| format!("{e}"))?;
    if km.is_finite() && km > 0.0 {
        Ok(km)
    } else {
        Err("must be a positive number of kilometres".to_owned())
    }
}

/// A humantime duration, zero allowed.
fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

/// A share between 0 and 1.
fn parse_ratio(text: &str) -> Result<f64, String> {
    let value: f64 = text.trim().parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err("must be between 0 and 1".to_owned())
    }
}

/// A slowdown factor: finite, 1 to 1000.
fn parse_slowdown(text: &str) -> Result<f64, String> {
    let value: f64 = text.trim().parse().map_err(|e| format!("{e}"))?;
    if (1.0..=1000.0).contains(&value) {
        Ok(value)
    } else {
        Err("must be a factor between 1 and 1000".to_owned())
    }
}

/// A finite number, zero or more.
fn parse_non_negative(text: &str) -> Result<f64, String> {
    let value: f64 = text.trim().parse().map_err(|e| format!("{e}"))?;
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err("must be a finite number, zero or more".to_owned())
    }
}

/// A popularity exponent: finite, 0 to 5.
fn parse_skew(text: &str) -> Result<f64, String> {
    let value: f64 = text.trim().parse().map_err(|e| format!("{e}"))?;
    if (0.0..=5.0).contains(&value) {
        Ok(value)
    } else {
        Err("must be between 0 and 5".to_owned())
    }
}

/// An order id (a UUID).
fn parse_order_id(text: &str) -> Result<OrderId, String> {
    OrderId::parse(text.trim()).map_err(|e| e.to_string())
}

/// An event type by its wire name (`jwl.order.created`) or without the `jwl.` prefix.
fn parse_event_type(text: &str) -> Result<EventType, String> {
    let text = text.trim();
    EventType::parse(text)
        .or_else(|| EventType::parse(&format!("jwl.{text}")))
        .ok_or_else(|| {
            let known: Vec<&str> = EventType::ALL.iter().map(|ty| ty.as_str()).collect();
            format!("unknown event type (one of {})", known.join(", "))
        })
}

/// An RFC 3339 time.
fn parse_rfc3339(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|time| time.with_timezone(&Utc))
        .map_err(|e| e.to_string())
}

/// `50/s`, `600/m` or `50` (per second), greater than zero.
fn parse_rate(text: &str) -> Result<Rate, String> {
    let (count, unit) = text.trim().split_once('/').unwrap_or((text.trim(), "s"));
    let count: NonZeroU32 = count
        .trim()
        .parse()
        .map_err(|_| format!("{count:?} is not a positive whole number"))?;
    match unit.trim() {
        "s" => Ok(Rate::PerSecond(count)),
        "m" => Ok(Rate::PerMinute(count)),
        other => Err(format!("unknown unit {other:?} (s or m)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_humantime_and_refuse_zero() {
        assert_eq!(parse_positive_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_positive_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_positive_duration("0s").is_err());
        assert!(parse_positive_duration("soon").is_err());
    }

    #[test]
    fn radius_must_be_positive_and_finite() {
        assert_eq!(parse_radius_km("2.5"), Ok(2.5));
        for bad in ["0", "-1", "NaN", "inf", "far"] {
            assert!(parse_radius_km(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_event_types_and_times_parse() {
        let fifty = NonZeroU32::new(50).unwrap();
        assert_eq!(parse_rate("50/s"), Ok(Rate::PerSecond(fifty)));
        assert_eq!(parse_rate("50"), Ok(Rate::PerSecond(fifty)));
        assert_eq!(parse_rate("50/m"), Ok(Rate::PerMinute(fifty)));
        for bad in ["0/s", "-1/s", "x/s", "5/h"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_event_type("order.created"),
            Ok(EventType::OrderCreated)
        );
        assert_eq!(
            parse_event_type("jwl.dispatch.failed"),
            Ok(EventType::DispatchFailed)
        );
        assert!(parse_event_type("order.shipped").is_err());
        assert!(parse_rfc3339("2026-11-24T10:00:00Z").is_ok());
        assert!(parse_rfc3339("yesterday").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_takes_ack_wait_and_fault_points() {
        let cli = Cli::try_parse_from([
            "jwl",
            "serve",
            "payment",
            "--nats-url",
            "nats://127.0.0.1:4222",
            "--ack-wait",
            "3s",
            "--consumer-workers",
            "2",
            "--fault-crash-after-publish",
            "--fault-transient-first",
            "payment__order_created:2",
        ])
        .unwrap();
        let Command::Serve(serve) = cli.command else {
            panic!("not serve: {:?}", cli.command);
        };
        let faults = serve.faults.to_fault_points().unwrap();
        assert!(faults.crash_after_publish);
        assert_eq!(faults.crash_after_commit, None);
        assert_eq!(
            faults.transient_first.map(|f| f.to_string()).as_deref(),
            Some("payment__order_created:2")
        );
        let settings = serve.messaging.to_settings(None);
        assert_eq!(settings.ack_wait, Duration::from_secs(3));
        assert_eq!(
            (settings.consumer_workers, settings.consumer_batch_size),
            (2, 256)
        );
        assert_eq!(settings.faults, None);
        assert_eq!(
            serve.messaging.to_pool_settings().stall_timeout,
            Duration::from_secs(30)
        );
        let http = serve.messaging.to_http_pool_settings();
        assert_eq!(http.max_connections, 5);
        assert!(http.ping_before_acquire);
        assert_eq!(http.stall_timeout, Duration::from_secs(30));
        assert_eq!(http.planning, Planning::Adaptive);
        assert_eq!(serve.messaging.to_pool_settings().max_connections, 10);
        assert_eq!(
            serve.messaging.to_pool_settings().planning,
            Planning::OnceByIndex
        );
    }

    #[test]
    fn bench_defaults_and_order_count() {
        let cli = Cli::try_parse_from(["jwl", "bench"]).unwrap();
        let Command::Bench(bench) = cli.command else {
            panic!("not bench: {:?}", cli.command);
        };
        assert_eq!(bench.url, ["http://127.0.0.1:8080"]);
        assert_eq!(bench.rate.get(), 50);
        assert_eq!(bench.duration, Duration::from_secs(30));
        assert_eq!(bench.orders, None);
        assert_eq!(bench.concurrency.get(), 256);
        assert_eq!(bench.settle_timeout, Duration::from_secs(60));
        let cli = Cli::try_parse_from(["jwl", "bench", "--orders", "20", "--rate", "20"]).unwrap();
        let Command::Bench(bench) = cli.command else {
            panic!("not bench: {:?}", cli.command);
        };
        assert_eq!(bench.orders.map(NonZeroU64::get), Some(20));
        assert!(Cli::try_parse_from(["jwl", "bench", "--rate", "0"]).is_err());
    }

    #[test]
    fn bench_city_sweep_and_cost_flags() {
        let cli = Cli::try_parse_from(["jwl", "bench"]).unwrap();
        let Command::Bench(bench) = cli.command else {
            panic!("not bench: {:?}", cli.command);
        };
        assert_eq!(bench.skus.get(), 1000);
        assert_eq!(bench.sku_skew, 1.0);
        assert_eq!(bench.couriers, None);
        assert_eq!(bench.courier_updates_per_second, None);
        assert_eq!(
            (
                bench.decline_ratio,
                bench.out_of_stock_ratio,
                bench.no_courier_ratio
            ),
            (0.0, 0.0, 0.0)
        );
        assert!(bench.sweep.is_empty());
        assert_eq!((bench.inventory_url, bench.dispatch_url), (None, None));
        assert!(bench.system_pids.is_empty());
        assert_eq!(bench.pg_stats_wait, Duration::from_secs(11));

        let cli = Cli::try_parse_from([
            "jwl",
            "bench",
            "--sweep",
            "50,100",
            "--decline-ratio",
            "0.1",
            "--system-pid",
            "12",
            "--system-pid",
            "34",
            "--pg-stats-wait",
            "0s",
            "--plot",
            "out.png",
            "--url",
            "http://a:1,http://b:2",
            "--dispatch-url",
            "http://c:3",
        ])
        .unwrap();
        let Command::Bench(bench) = cli.command else {
            panic!("not bench: {:?}", cli.command);
        };
        let rates: Vec<u32> = bench.sweep.iter().map(|r| r.get()).collect();
        assert_eq!(rates, [50, 100]);
        assert_eq!(bench.decline_ratio, 0.1);
        assert_eq!(bench.system_pids, [12, 34]);
        assert_eq!(bench.pg_stats_wait, Duration::ZERO);
        assert_eq!(bench.url, ["http://a:1", "http://b:2"]);
        assert_eq!(bench.dispatch_url.as_deref(), Some("http://c:3"));
        for bad in [
            &["--decline-ratio", "1.5"][..],
            &["--sku-skew", "-1"],
            &["--courier-updates-per-second", "NaN"],
            &["--sweep", "50,0"],
            &["--sweep", "50", "--rate", "20"],
        ] {
            let mut argv = vec!["jwl", "bench"];
            argv.extend_from_slice(bad);
            assert!(Cli::try_parse_from(&argv).is_err(), "{bad:?}");
        }
    }

    /// Unset flags and variables give the documented defaults of the services.
    #[test]
    fn business_defaults_match_the_services_defaults() {
        let cli =
            Cli::try_parse_from(["jwl", "serve", "order", "--nats-url", "nats://x:4222"]).unwrap();
        let Command::Serve(serve) = cli.command else {
            panic!("not serve: {:?}", cli.command);
        };
        assert_eq!(
            *serve.settings.to_settings(),
            jwl_service_kit::Settings::default()
        );
    }

    #[test]
    fn console_peers_are_read_and_checked() {
        let argv = |peers: &'static str| {
            [
                "jwl",
                "serve",
                "order",
                "--nats-url",
                "nats://x:4222",
                "--console-peers",
                peers,
            ]
        };
        let cli =
            Cli::try_parse_from(argv("payment=http://pay:8080,dispatch=http://d:8080/")).unwrap();
        let Command::Serve(serve) = cli.command else {
            panic!("not serve: {:?}", cli.command);
        };
        let peers = serve.settings.to_settings().console_peers.clone();
        assert_eq!(peers.payment.as_deref(), Some("http://pay:8080"));
        assert_eq!(peers.dispatch.as_deref(), Some("http://d:8080"));
        assert_eq!(peers.inventory, None);
        assert!(Cli::try_parse_from(argv("order=http://o:8080")).is_err());
        assert!(Cli::try_parse_from(argv("payment=pay:8080")).is_err());
    }
}
