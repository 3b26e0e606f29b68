//! The subcommands, and the start-up steps they share (connecting a service's pool and the
//! broker, migrating).

pub mod bench;
pub mod dlq;
mod listeners;
pub mod migrate;
pub mod outbox;
pub mod replay;
pub mod saga;
pub mod serve;
pub mod token;
pub mod up;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use jwl_outbox::transport::Broker;
use jwl_outbox::transport::nats::{NatsSecurity, redact_userinfo};
use jwl_outbox::{JetStreamBroker, MessagingSettings, TransportError};
use jwl_service_kit::db::PoolSettings;
use sqlx::PgPool;
use tokio::time::Instant;

use crate::args::NatsArgs;
use crate::services::ServiceEntry;

/// A pool on `url` in the service's schema (created if missing).
async fn connect_pool(
    entry: &ServiceEntry,
    url: &str,
    settings: &PoolSettings,
) -> anyhow::Result<PgPool> {
    jwl_service_kit::db::connect_with(url, entry.schema, settings)
        .await
        .with_context(|| format!("connecting the {} service to its database", entry.name))
}

/// Connects a pool and applies the service's migrations.
async fn connect_and_migrate(
    entry: &ServiceEntry,
    url: &str,
    settings: &PoolSettings,
) -> anyhow::Result<PgPool> {
    let pool = connect_pool(entry, url, settings).await?;
    (entry.migrate)(&pool).await.with_context(|| {
        format!(
            "migrating the {} service (schema {})",
            entry.name, entry.schema
        )
    })?;
    tracing::info!(service = %entry.name, schema = entry.schema, "migrations applied");
    Ok(pool)
}

/// The pool of the service's HTTP routes: its own, in the service's schema, exported on
/// `/metrics` as `pool="<schema>_http"` (so requests never take the consumers' connections).
async fn connect_http_pool(
    entry: &ServiceEntry,
    url: &str,
    settings: &PoolSettings,
) -> anyhow::Result<PgPool> {
    let label = format!("{}_http", entry.schema);
    jwl_service_kit::db::connect_labelled(url, entry.schema, &label, settings)
        .await
        .with_context(|| {
            format!(
                "connecting the {} service's HTTP routes to its database",
                entry.name
            )
        })
}

/// How long start-up waits for the first connection to NATS.
const NATS_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long start-up tries to provision the streams before a service goes on without them.
const STREAMS_START_TIMEOUT: Duration = Duration::from_secs(15);

/// What start-up does when the streams cannot be provisioned yet (no stream leader, a node of
/// the cluster down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamsUnavailable {
    /// Start anyway: the service reports not ready, and its messaging keeps provisioning with
    /// backoff until the streams answer.
    StartNotReady,
    /// Fail (an operator command has nothing to do without them).
    Fail,
}

/// Connects to NATS (`url`: one URL or a comma-separated list of cluster nodes) with the
/// credentials and TLS of `security`, waiting for the connection to come up, and makes sure the
/// streams exist with their configured replicas. Fails when the broker can never serve (it
/// refuses the credentials or the TLS handshake, it is too old, or it refuses the replica
/// count). The rest of the process sees only the [`Broker`] trait: another broker plugs in
/// here.
async fn connect_broker(
    url: &str,
    security: &NatsSecurity,
    client_name: &str,
    messaging: &MessagingSettings,
    unavailable: StreamsUnavailable,
) -> anyhow::Result<Arc<dyn Broker>> {
    let shown = redact_userinfo(url);
    let broker = JetStreamBroker::connect_secured(url, client_name, security)
        .await
        .with_context(|| format!("connecting to NATS at {shown}"))?;
    // The client connects in the background when the server was not up at first; say clearly
    // when it is not there, or when it came up and refuses the credentials.
    let deadline = Instant::now() + NATS_CONNECT_TIMEOUT;
    while !broker.is_healthy() {
        let last_error = broker.last_connect_error();
        if let Some(error) = last_error
            .as_deref()
            .filter(|error| error.contains("authorization violation"))
        {
            bail!(
                "NATS at {shown} refused the connection: {error} (check JWL_NATS_USER/\
                 JWL_NATS_PASSWORD, JWL_NATS_TOKEN, JWL_NATS_NKEY_SEED_FILE or JWL_NATS_CREDS_FILE)"
            );
        }
        if Instant::now() >= deadline {
            let last = last_error.map_or(String::new(), |error| format!("; last error: {error}"));
            bail!("NATS at {shown} is not reachable (waited {NATS_CONNECT_TIMEOUT:?}{last})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let provisioned = tokio::time::timeout(STREAMS_START_TIMEOUT, broker.ensure_streams(messaging))
        .await
        .unwrap_or_else(|_| {
            Err(TransportError::Unavailable {
                stream: messaging.events_stream.clone(),
                why: format!("provisioning took more than {STREAMS_START_TIMEOUT:?}"),
            })
        });
    match provisioned {
        Ok(()) => {}
        Err(error) if error.is_fatal() || unavailable == StreamsUnavailable::Fail => {
            return Err(error).with_context(|| {
                format!("creating the JetStream streams on {shown} (is JetStream enabled?)")
            });
        }
        Err(error) => tracing::warn!(%error, nats = %shown,
            "the JetStream streams are not available yet; starting not ready and retrying"),
    }
    Ok(Arc::new(broker))
}

/// Connects an operator command to NATS (see [`connect_broker`]) with the default settings.
async fn connect_operator(
    nats: &NatsArgs,
    command: &str,
) -> anyhow::Result<(Arc<dyn Broker>, MessagingSettings)> {
    // an operator tool creates missing streams but never changes a deployment's replica count
    let settings = MessagingSettings {
        stream_replicas: None,
        ..MessagingSettings::default()
    };
    let broker = connect_broker(
        &nats.nats_url,
        &nats.security.to_security()?,
        &format!("jwl-{command}"),
        &settings,
        StreamsUnavailable::Fail,
    )
    .await?;
    Ok((broker, settings))
}

/// Prints `value` as pretty JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
