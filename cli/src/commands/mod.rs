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
use jwl_outbox::{JetStreamBroker, KafkaBroker, KafkaSettings, MessagingSettings, TransportError};
use jwl_service_kit::db::PoolSettings;
use sqlx::PgPool;
use tokio::time::Instant;

use crate::args::BrokerArgs;
use crate::config::BrokerTarget;
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
    // a machine too loaded to open a connection within the acquire timeout must not fail start-up
    jwl_service_kit::db::retry_startup(settings, || (entry.migrate)(&pool))
        .await
        .with_context(|| {
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

/// How long start-up waits for the first connection to the broker.
const BROKER_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
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

/// Connects to the broker of `target`, waiting for the connection to come up, and makes sure
/// the streams exist (with their configured replicas on NATS; as topics on Kafka). Fails when
/// the broker can never serve (it refuses the credentials or the TLS handshake, it is too old,
/// or it refuses the replica count). The rest of the process sees only the [`Broker`] trait.
async fn connect_broker(
    target: &BrokerTarget,
    client_name: &str,
    messaging: &MessagingSettings,
    unavailable: StreamsUnavailable,
) -> anyhow::Result<Arc<dyn Broker>> {
    match target {
        BrokerTarget::Nats { url, security } => {
            let shown = redact_userinfo(url);
            let broker = connect_nats(url, &shown, security, client_name).await?;
            provision(&broker, messaging, unavailable, &format!("NATS at {shown}"))
                .await
                .with_context(|| {
                    format!("creating the JetStream streams on {shown} (is JetStream enabled?)")
                })?;
            Ok(Arc::new(broker))
        }
        BrokerTarget::Kafka {
            brokers,
            partitions,
        } => {
            let defaults = KafkaSettings::new(brokers.clone());
            let kafka = KafkaSettings {
                client_id: client_name.to_owned(),
                partitions: partitions.unwrap_or(defaults.partitions),
                ..defaults
            };
            let broker = KafkaBroker::connect(kafka, messaging)
                .await
                .with_context(|| format!("connecting to Kafka at {brokers}"))?;
            let deadline = Instant::now() + BROKER_CONNECT_TIMEOUT;
            while !broker.is_healthy() {
                if Instant::now() >= deadline {
                    bail!(
                        "Kafka at {brokers} is not reachable (waited {BROKER_CONNECT_TIMEOUT:?}; \
                         check JWL_KAFKA_BROKERS)"
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            provision(
                &broker,
                messaging,
                unavailable,
                &format!("Kafka at {brokers}"),
            )
            .await
            .with_context(|| format!("creating the topics on Kafka at {brokers}"))?;
            Ok(Arc::new(broker))
        }
    }
}

/// Connects to NATS (`url`: one URL or a comma-separated list of cluster nodes, `shown`
/// without its credentials) with the credentials and TLS of `security`, waiting for the
/// connection to come up.
async fn connect_nats(
    url: &str,
    shown: &str,
    security: &NatsSecurity,
    client_name: &str,
) -> anyhow::Result<JetStreamBroker> {
    let broker = JetStreamBroker::connect_secured(url, client_name, security)
        .await
        .with_context(|| format!("connecting to NATS at {shown}"))?;
    // The client connects in the background when the server was not up at first; say clearly
    // when it is not there, or when it came up and refuses the credentials.
    let deadline = Instant::now() + BROKER_CONNECT_TIMEOUT;
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
            bail!("NATS at {shown} is not reachable (waited {BROKER_CONNECT_TIMEOUT:?}{last})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(broker)
}

/// Makes sure the streams exist; when they cannot be provisioned yet, fails or (with
/// [`StreamsUnavailable::StartNotReady`]) logs and goes on (`shown` names the broker).
async fn provision(
    broker: &dyn Broker,
    messaging: &MessagingSettings,
    unavailable: StreamsUnavailable,
    shown: &str,
) -> Result<(), TransportError> {
    let provisioned = tokio::time::timeout(STREAMS_START_TIMEOUT, broker.ensure_streams(messaging))
        .await
        .unwrap_or_else(|_| {
            Err(TransportError::Unavailable {
                stream: messaging.events_stream.clone(),
                why: format!("provisioning took more than {STREAMS_START_TIMEOUT:?}"),
            })
        });
    match provisioned {
        Ok(()) => Ok(()),
        Err(error) if error.is_fatal() || unavailable == StreamsUnavailable::Fail => Err(error),
        Err(error) => {
            tracing::warn!(%error, broker = %shown,
                "the streams are not available yet; starting not ready and retrying");
            Ok(())
        }
    }
}

/// Connects an operator command to the configured broker (see [`connect_broker`]) with the
/// default settings.
async fn connect_operator(
    broker: &BrokerArgs,
    command: &str,
) -> anyhow::Result<(Arc<dyn Broker>, MessagingSettings)> {
    // an operator tool creates missing streams but never changes a deployment's replica count
    let settings = MessagingSettings {
        stream_replicas: None,
        ..MessagingSettings::default()
    };
    let broker = connect_broker(
        &broker.target()?,
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
