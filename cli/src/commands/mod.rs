//! The subcommands, and the start-up steps they share (connecting a service's pool and the
//! broker, migrating).

pub mod bench;
pub mod dlq;
pub mod migrate;
pub mod replay;
pub mod saga;
pub mod serve;
pub mod token;
pub mod up;

use std::time::Duration;

use anyhow::{Context, bail};
use jwl_outbox::{JetStreamBroker, MessagingSettings};
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

/// How long start-up waits for the first connection to NATS.
const NATS_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects to NATS (waiting for the connection to come up) and makes sure the event and
/// dead-letter streams exist.
async fn connect_broker(
    url: &str,
    client_name: &str,
    messaging: &MessagingSettings,
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
    broker.ensure_streams(messaging).await.with_context(|| {
        format!("creating the JetStream streams on {shown} (is JetStream enabled?)")
    })?;
    Ok(broker)
}

/// Connects an operator command to NATS (see [`connect_broker`]) with the default settings.
async fn connect_operator(
    url: &str,
    command: &str,
) -> anyhow::Result<(JetStreamBroker, MessagingSettings)> {
    let settings = MessagingSettings::default();
    let broker = connect_broker(url, &format!("jwl-{command}"), &settings).await?;
    Ok((broker, settings))
}

/// Prints `value` as pretty JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `scheme://user:pass@host…` → `scheme://***@host…`, so credentials never reach logs.
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_userinfo;

    #[test]
    fn credentials_are_redacted_from_urls() {
        assert_eq!(
            redact_userinfo("nats://user:pw@nats.local:4222"),
            "nats://***@nats.local:4222"
        );
        assert_eq!(
            redact_userinfo("nats://127.0.0.1:4222"),
            "nats://127.0.0.1:4222"
        );
        assert_eq!(redact_userinfo("tls://a@b/c@d"), "tls://***@b/c@d");
        assert_eq!(redact_userinfo("not a url"), "not a url");
    }
}
