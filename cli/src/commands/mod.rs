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

use std::time::Duration;

use anyhow::{Context, bail};
use jwl_outbox::transport::nats::redact_userinfo;
use jwl_outbox::{JetStreamBroker, MessagingSettings, TransportError};
use jwl_service_kit::db::PoolSettings;
use sqlx::PgPool;
use tokio::time::Instant;

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

/// Connects to NATS (`url`: one URL or a comma-separated list of cluster nodes), waiting for the
/// connection to come up, and makes sure the streams exist with their configured replicas.
/// Fails when the broker can never serve (too old, or it refuses the replica count).
async fn connect_broker(
    url: &str,
    client_name: &str,
    messaging: &MessagingSettings,
    unavailable: StreamsUnavailable,
) -> anyhow::Result<JetStreamBroker> {
    let shown = redact_userinfo(url);
    let broker = JetStreamBroker::connect_named(url, client_name)
        .await
        .with_context(|| format!("connecting to NATS at {shown}"))?;
    // The client connects in the background; say clearly when the server is not there.
    let deadline = Instant::now() + NATS_CONNECT_TIMEOUT;
    while !broker.is_healthy() {
        if Instant::now() >= deadline {
            bail!("NATS at {shown} is not reachable (waited {NATS_CONNECT_TIMEOUT:?})");
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
    Ok(broker)
}

/// Connects an operator command to NATS (see [`connect_broker`]) with the default settings.
async fn connect_operator(
    url: &str,
    command: &str,
) -> anyhow::Result<(JetStreamBroker, MessagingSettings)> {
    // an operator tool creates missing streams but never changes a deployment's replica count
    let settings = MessagingSettings {
        stream_replicas: None,
        ..MessagingSettings::default()
    };
    let broker = connect_broker(
        url,
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
