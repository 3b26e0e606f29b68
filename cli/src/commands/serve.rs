//! `jwl serve <service>`: one service in this process (production mode): its pools (the
//! messaging runtime's and the HTTP routes'), the broker,
//! its migrations, its background work and its routes behind the edge, until Ctrl-C/SIGTERM.

use jwl_service_kit::ServiceContext;
use jwl_service_kit::http::{self, Readiness};
use tokio_util::sync::CancellationToken;

use super::listeners::Listeners;
use super::{StreamsUnavailable, connect_and_migrate, connect_broker, connect_http_pool};
use crate::args::ServeArgs;
use crate::supervise::{Supervisor, cancel_on_signal};

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    // A signal while still connecting (the database may be retried for a while) ends cleanly.
    let Some(started) = shutdown.run_until_cancelled(start(&args)).await else {
        return Ok(());
    };
    let (ctx, listeners) = started?;
    let entry = args.service.entry();
    let pools = [ctx.pool.clone(), ctx.http_pool.clone()];

    let mut tasks = Supervisor::new(shutdown.clone());
    tasks.spawn(
        format!("{} service", entry.name),
        (entry.run)(ctx, shutdown.clone()),
    );
    let metrics_addr = listeners.metrics_addr();
    listeners.spawn(&mut tasks, &shutdown);
    tracing::info!(service = %entry.name, addr = %args.http.http_addr, ?metrics_addr, "serving");

    let outcome = tasks.wait().await;
    for pool in pools {
        pool.close().await;
    }
    jwl_service_kit::telemetry::traces::shutdown().await;
    outcome
}

/// Everything up to (not including) running: connections, streams, migrations, routes, listeners.
async fn start(args: &ServeArgs) -> anyhow::Result<(ServiceContext, Listeners)> {
    let entry = args.service.entry();
    let keys = args.jwt.load_keys(&args.data_dir.data_dir)?;
    let database_url = args.databases.require_url_for(args.service)?;
    http::install_metrics_recorder();

    let faults = args.faults.to_fault_points();
    if let Some(faults) = &faults {
        tracing::warn!(
            ?faults,
            "fault points are switched on (failure-injection testing)"
        );
    }
    let messaging = args.messaging.to_settings(faults);
    let broker = connect_broker(
        &args.broker.target()?,
        &format!("jwl-{}", entry.name),
        &messaging,
        StreamsUnavailable::StartNotReady,
    )
    .await?;
    let pool = connect_and_migrate(entry, database_url, &args.messaging.to_pool_settings()).await?;
    let http_pool =
        connect_http_pool(entry, database_url, &args.messaging.to_http_pool_settings()).await?;
    let readiness =
        Readiness::new(vec![pool.clone()], broker.clone()).with_stream(&messaging.events_stream);
    let ctx = ServiceContext::new(
        entry.service,
        pool,
        broker,
        messaging,
        args.settings.to_settings(),
    )
    .with_http_pool(http_pool);
    let listeners = Listeners::bind(
        &args.http,
        (entry.router)(&ctx),
        vec![(entry.openapi)()],
        keys,
        readiness,
        "",
    )
    .await?;
    Ok((ctx, listeners))
}
