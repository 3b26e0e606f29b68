//! `jwl up`: the whole system in one process for a laptop. Starts a private broker (NATS, or
//! tansu with `--broker kafka`) and PostgreSQL under the data dir unless external ones are
//! configured, runs all five services (one pool and
//! schema each, one shared broker connection) behind ONE HTTP listener, prints the URL and a dev
//! admin token, and on Ctrl-C stops the services, then the private servers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use jwl_service_kit::auth::{JwtKeys, Scope};
use jwl_service_kit::http::{self, Readiness};
use jwl_service_kit::{ConsolePeers, ServiceContext};
use tokio_util::sync::CancellationToken;

use super::listeners::Listeners;
use super::{StreamsUnavailable, connect_and_migrate, connect_broker, connect_http_pool};
use crate::args::{BrokerKind, UpArgs};
use crate::private_servers::PrivateServers;
use crate::services::ServiceName;
use crate::supervise::{Supervisor, cancel_on_signal};

/// Validity of the admin token printed at start-up.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// The running system, before its tasks are started.
struct Started {
    contexts: Vec<(ServiceName, ServiceContext)>,
    listeners: Listeners,
    keys: JwtKeys,
    /// What the operator tools (`jwl saga`, `replay`, `dlq`) need to reach this system.
    operator_env: Vec<(&'static str, String)>,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let data_dir = &args.data_dir.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data dir {}", data_dir.display()))?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    http::install_metrics_recorder();

    let mut servers = PrivateServers::default();
    let started = shutdown
        .run_until_cancelled(start(&args, &mut servers))
        .await;
    let outcome = match started {
        None => Ok(()),
        Some(Err(error)) => Err(error),
        Some(Ok(started)) => run_services(started, &args, &shutdown).await,
    };
    let stopped = servers.stop().await;
    jwl_service_kit::telemetry::traces::shutdown().await;
    outcome.and(stopped)
}

/// Private servers (as needed), secret, broker, pools, migrations, routes, listener.
async fn start(args: &UpArgs, servers: &mut PrivateServers) -> anyhow::Result<Started> {
    let data_dir = &args.data_dir.data_dir;
    let keys = args.jwt.load_or_generate_keys(data_dir)?;

    // the chosen broker, a private one under the data dir when none is configured
    let target = match (
        args.broker.kind,
        args.broker.nats_url(),
        args.broker.kafka_brokers(),
    ) {
        (BrokerKind::Nats, None, _) => {
            let url = servers.start_nats(data_dir).await?;
            args.broker.target_or(Some(url), None)?
        }
        (BrokerKind::Kafka, _, None) => {
            let brokers = servers.start_tansu(data_dir).await?;
            args.broker.target_or(None, Some(brokers))?
        }
        _ => args.broker.target()?,
    };
    let needs_private_postgres = ServiceName::ALL
        .iter()
        .any(|&name| args.databases.url_for(name).is_none());
    let private_database_url = if needs_private_postgres {
        Some(servers.start_postgres(data_dir).await?)
    } else {
        None
    };

    // printed in the banner: credentials of an external server are never shown
    let mut operator_env = target.operator_env();
    if let Some(url) = &private_database_url {
        operator_env.push(("JWL_DATABASE_URL", url.clone()));
    }
    let messaging = args.messaging.to_settings(None);
    let broker = connect_broker(
        &target,
        "jwl-up",
        &messaging,
        StreamsUnavailable::StartNotReady,
    )
    .await?;
    let mut settings = args.settings.to_settings();
    if args.settings.console_peers.is_none() && args.http.http_addr.port() != 0 {
        // every route is on this one listener: the console reads the others' state from it
        let mut own = args.http.http_addr;
        if own.ip().is_unspecified() {
            own.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Arc::make_mut(&mut settings).console_peers = ConsolePeers::all_at(&format!("http://{own}"));
    }
    let pool_settings = args.messaging.to_pool_settings();
    let http_pool_settings = args.messaging.to_http_pool_settings();

    let mut contexts = Vec::with_capacity(ServiceName::ALL.len());
    let mut routes = Router::new();
    let mut api = Vec::with_capacity(ServiceName::ALL.len());
    for name in ServiceName::ALL {
        let entry = name.entry();
        let url = args
            .databases
            .url_for(name)
            .or(private_database_url.as_deref())
            .context("no database URL (internal error: the private PostgreSQL was not started)")?;
        let pool = connect_and_migrate(entry, url, &pool_settings).await?;
        let http_pool = connect_http_pool(entry, url, &http_pool_settings).await?;
        let ctx = ServiceContext::new(
            entry.service,
            pool,
            broker.clone(),
            messaging.clone(),
            settings.clone(),
        )
        .with_http_pool(http_pool);
        routes = routes.merge((entry.router)(&ctx));
        api.push((entry.openapi)());
        contexts.push((name, ctx));
    }

    let readiness = Readiness::new(
        contexts.iter().map(|(_, ctx)| ctx.pool.clone()).collect(),
        broker,
    )
    .with_stream(&messaging.events_stream);
    let listeners = Listeners::bind(
        &args.http,
        routes,
        api,
        keys.clone(),
        readiness,
        " (set JWL_HTTP_ADDR to use another address)",
    )
    .await?;
    Ok(Started {
        contexts,
        listeners,
        keys,
        operator_env,
    })
}

async fn run_services(
    started: Started,
    args: &UpArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let Started {
        contexts,
        listeners,
        keys,
        operator_env,
    } = started;
    let addr = listeners.api_addr().unwrap_or(args.http.http_addr);
    let metrics_addr = listeners.metrics_addr();
    let pools: Vec<_> = contexts
        .iter()
        .flat_map(|(_, ctx)| [ctx.pool.clone(), ctx.http_pool.clone()])
        .collect();

    let mut tasks = Supervisor::new(shutdown.clone());
    for (name, ctx) in contexts {
        tasks.spawn(
            format!("{name} service"),
            (name.entry().run)(ctx, shutdown.clone()),
        );
    }
    listeners.spawn(&mut tasks, shutdown);

    let token = keys
        .issue("dev-admin", &[Scope::Admin], DEV_TOKEN_TTL)
        .context("issuing the dev admin token")?;
    println!("{}", banner(addr, metrics_addr, &token, &operator_env));

    let outcome = tasks.wait().await;
    for pool in pools {
        pool.close().await;
    }
    outcome
}

/// What `jwl up` prints once it serves: URL, dev token and curl examples.
fn banner(
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    token: &str,
    operator_env: &[(&str, String)],
) -> String {
    let url = format!("http://{addr}");
    let metrics_url = format!("http://{}/metrics", metrics_addr.unwrap_or(addr));
    let operator_env: String = operator_env
        .iter()
        .map(|(name, value)| format!(" {name}={value}"))
        .collect();
    format!(
        "\nJiangwanli is up at {url}\n\
         API description (OpenAPI 3.1): {url}/openapi.json\n\
         Operator's console: {url}/console (sign in with the admin token below)\n\
         Metrics: {metrics_url}\n\
         \n\
         Dev admin token (valid 24h):\n\
         \x20 export TOKEN={token}\n\
         \n\
         Try:\n\
         \x20 curl -sX PUT {url}/v1/stock/sku-1 -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' -d '{{\"on_hand\":100}}'\n\
         \x20 curl -sX PUT {url}/v1/couriers/courier-1/location -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' -d '{{\"lat\":31.2304,\"lon\":121.4737}}'\n\
         \x20 curl -si -X POST {url}/v1/orders -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' \\\n\
         \x20      -d '{{\"items\":[{{\"sku\":\"sku-1\",\"qty\":1,\"unit_price_cents\":1299}}],\"pickup\":{{\"lat\":31.2304,\"lon\":121.4737}},\"dropoff\":{{\"lat\":31.2243,\"lon\":121.4768}},\"payment_token\":\"tok_ok\"}}'\n\
         \x20 curl -s {url}/v1/orders/<order_id> -H \"Authorization: Bearer $TOKEN\"\n\
         \n\
         Other tokens: jwl token --sub customer-1 --scope orders:write --scope orders:read\n\
         Operator tools (jwl saga show ID, jwl replay, jwl dlq ls) need:\n\
         \x20 export{operator_env}\n\
         Press Ctrl-C to stop.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_shows_the_url_token_and_a_curl() {
        let text = banner(
            "127.0.0.1:8080".parse().unwrap(),
            Some("127.0.0.1:9090".parse().unwrap()),
            "abc.def.ghi",
            &[("JWL_NATS_URL", "nats://127.0.0.1:4222".to_owned())],
        );
        assert!(text.contains("http://127.0.0.1:8080"));
        assert!(text.contains("Metrics: http://127.0.0.1:9090/metrics"));
        assert!(text.contains("http://127.0.0.1:8080/openapi.json"));
        assert!(text.contains("Operator's console: http://127.0.0.1:8080/console"));
        assert!(text.contains("export TOKEN=abc.def.ghi"));
        assert!(text.contains("curl -si -X POST http://127.0.0.1:8080/v1/orders"));
        assert!(text.contains("export JWL_NATS_URL=nats://127.0.0.1:4222"));
    }
}
