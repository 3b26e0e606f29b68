//! `jwl-e2e-system`: the system in a shape `jwl up` cannot run — a JetStream cluster, several
//! `jwl serve` replicas of every service, relay partitions — started the way the end-to-end tests
//! start it ([`jwl_e2e::System`]), against a private PostgreSQL with durable settings (every
//! commit flushed, as in production, `pg_stat_statements` loaded, room for 300 connections), and kept running until Ctrl-C
//! or SIGTERM. `scripts/bench-cluster` runs it and points `jwl bench` at it.
//!
//! On standard output it prints, once everything is ready, one `key=value` line each:
//! `pid` (its own: `jwl bench --system-pid` counts it with every descendant, i.e. the services,
//! the NATS nodes and PostgreSQL), `order_urls` (every replica, comma-separated), `inventory_url`
//! and `dispatch_url` (the first replica's), `database_url`, `nats_url`, `jwt_secret`, then `ready`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use jwl_e2e::{Service, System, SystemOptions};
use jwl_local_infra::{PgTuning, PostgresOptions, PostgresServer, StopMode};

/// Start the system as the end-to-end tests do and keep it running.
#[derive(Debug, Parser)]
#[command(name = "jwl-e2e-system")]
struct Args {
    /// NATS nodes: 1 is one server, more a JetStream cluster over loopback routes.
    #[arg(long, default_value_t = 1)]
    nats_nodes: usize,
    /// `JWL_STREAM_REPLICAS` of the services.
    #[arg(long, default_value_t = 1)]
    stream_replicas: usize,
    /// `jwl serve` processes of each service.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// `JWL_OUTBOX_PARTITIONS` of the services.
    #[arg(long, default_value_t = 1)]
    outbox_partitions: usize,
    /// `RUST_LOG` of the services.
    #[arg(long, default_value = "warn")]
    log: String,
    /// Where PostgreSQL keeps its data (default: a temporary directory, removed at the end).
    #[arg(long)]
    pg_dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let pg_dir = args
        .pg_dir
        .clone()
        .unwrap_or_else(|| scratch.path().join("pg"));
    let port = jwl_local_infra::free_port().context("choosing PostgreSQL's port")?;
    let mut postgres = PostgresServer::start_with_stat_statements(PostgresOptions {
        data_dir: pg_dir,
        port,
        tuning: PgTuning::DurableManyClients,
    })
    .context("starting PostgreSQL")?;
    // the harness creates the system's database on this server (see jwl-testkit)
    // SAFETY: no other thread exists yet (the runtime is built below), so none reads the
    // environment meanwhile.
    unsafe { std::env::set_var(jwl_testkit::TEST_DATABASE_URL_ENV, postgres.url("postgres")) };

    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let outcome = runtime.block_on(run(&args, postgres.stat_statements_loaded()));
    drop(runtime);
    let stopped = postgres.stop(StopMode::Fast).context("stopping PostgreSQL");
    outcome.and(stopped)
}

async fn run(args: &Args, stat_statements: bool) -> anyhow::Result<()> {
    let options = SystemOptions {
        nats_nodes: args.nats_nodes,
        stream_replicas: args.stream_replicas,
        replicas: args.replicas,
        outbox_partitions: args.outbox_partitions,
        log_filter: args.log.clone(),
        ..SystemOptions::default()
    };
    let system = System::start(options).await?;
    if stat_statements {
        let pool = system.database().pool().await?;
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&pool)
            .await
            .context("creating the pg_stat_statements extension")?;
        pool.close().await;
    }
    let urls = |service: Service| -> Vec<String> {
        system
            .replicas(service)
            .iter()
            .map(|replica| replica.base_url())
            .collect()
    };
    println!("pid={}", std::process::id());
    println!("order_urls={}", urls(Service::Order).join(","));
    println!("inventory_url={}", urls(Service::Inventory)[0]);
    println!("dispatch_url={}", urls(Service::Dispatch)[0]);
    println!("database_url={}", system.database().url());
    println!("nats_url={}", system.nats_urls()?);
    println!("jwt_secret={}", system.jwt_secret());
    println!("ready");

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        signalled = tokio::signal::ctrl_c() => signalled.context("waiting for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    eprintln!("jwl-e2e-system: stopping");
    drop(system);
    Ok(())
}
