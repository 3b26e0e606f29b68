//! The NATS JetStream broker ([`JetStreamBroker`]): connection, health, and the transport traits
//! implemented over async-nats, the operator tools' reads ([`super::History`]) included.

mod delivery;
mod denials;
mod history;
mod provision;
mod publish;
mod security;
mod urls;

pub use security::{CredentialSettings, NatsCredentials, NatsSecurity, NatsTls, SecurityError};
pub use urls::{redact_userinfo, server_list};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream;
use async_trait::async_trait;

use super::{
    Broker, ConsumerBacklog, ConsumerSpec, Deliveries, OutboundMessage, PublishReceipt, Publisher,
    Subscriber, TransportError,
};
use crate::settings::MessagingSettings;

/// A connection to NATS with JetStream. Cheap to clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct JetStreamBroker {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    /// Publishes the server refused for lack of permission (reported on the side).
    denials: Arc<denials::Denials>,
    /// The last error of a background connection attempt, e.g. `authorization violation`.
    last_error: Arc<Mutex<Option<String>>>,
}

impl JetStreamBroker {
    /// Connects to `url` (one server, or a comma-separated list of the nodes of a cluster) with a
    /// connection name of `jwl-<pid>`, with the credentials of the URL if it has any. The
    /// connection is established in the background if no server is up yet, and re-established,
    /// to any listed or discovered node, whenever it drops.
    pub async fn connect(url: &str) -> Result<Self, TransportError> {
        Self::connect_named(url, &format!("jwl-{}", std::process::id())).await
    }

    /// Like [`connect`](Self::connect), with this connection name (shown by the server's
    /// monitoring), e.g. `jwl-payment`.
    pub async fn connect_named(url: &str, connection_name: &str) -> Result<Self, TransportError> {
        Self::connect_secured(url, connection_name, &NatsSecurity::default()).await
    }

    /// Like [`connect_named`](Self::connect_named), authenticating and encrypting as `security`
    /// says. A server that is up and refuses the connection for good (it rejects the
    /// credentials, or the TLS handshake fails) is an error at once ([`TransportError::Refused`]);
    /// one that is not reachable yet is retried in the background.
    pub async fn connect_secured(
        url: &str,
        connection_name: &str,
        security: &NatsSecurity,
    ) -> Result<Self, TransportError> {
        let shown = redact_userinfo(url);
        let prepared = security
            .prepare(url)
            .map_err(|error| TransportError::Security(error.to_string()))?;
        if prepared.servers.is_empty() {
            return Err(TransportError::Connect {
                url: shown,
                source: "no NATS server URL given".into(),
            });
        }
        let denials = Arc::new(denials::Denials::default());
        let last_error = Arc::new(Mutex::new(None));
        let options = |retry: bool| -> Result<async_nats::ConnectOptions, TransportError> {
            let options = client_options(connection_name, retry, &denials, &last_error);
            prepared
                .apply(options)
                .map_err(|error| TransportError::Security(error.to_string()))
        };
        // One attempt on every listed server first: a server that answers and refuses is a
        // configuration error to report now, not a connection to retry forever.
        let client = match options(false)?.connect(prepared.servers.clone()).await {
            Ok(client) => client,
            Err(error) => match refusal(&error) {
                Some(why) => {
                    return Err(TransportError::Refused {
                        url: shown,
                        why: format!("{why} (authenticating with {})", prepared.auth),
                    });
                }
                None => {
                    tracing::info!(nats = %shown, %error,
                        "NATS is not reachable yet; connecting in the background");
                    options(true)?
                        .connect(prepared.servers.clone())
                        .await
                        .map_err(|error| TransportError::Connect {
                            url: shown,
                            source: error.into(),
                        })?
                }
            },
        };
        let jetstream = jetstream::new(client.clone());
        Ok(Self {
            client,
            jetstream,
            denials,
            last_error,
        })
    }

    /// The last error of a connection attempt since the connection was last up (the client
    /// keeps retrying in the background), e.g. `nats: authorization violation`.
    pub fn last_connect_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|last| last.clone())
    }

    /// Creates the events, dead-letter, replay and dead-letter log streams with
    /// `settings.stream_replicas` replicas, or brings their limits and replica count up to
    /// `settings`, after checking that the server is recent enough (consumers with
    /// several filter subjects need nats-server ≥ 2.10; an older one would ignore them and
    /// deliver every subject).
    /// Idempotent; on a server that cannot update a setting, the existing stream is kept.
    pub async fn ensure_streams(&self, settings: &MessagingSettings) -> Result<(), TransportError> {
        let version = self.client.server_info().version;
        if !supports_filter_subjects(&version) {
            return Err(TransportError::Unsupported(format!(
                "nats-server {version} is too old: Jiangwanli needs nats-server 2.10 or later \
                 (consumers with several filter subjects); scripts/install-deps installs one"
            )));
        }
        provision::ensure_streams(&self.jetstream, settings).await
    }

    /// Whether `stream` can be used now: its info answers within `timeout` and, on a cluster,
    /// it has a leader. A stream whose cluster lost its leader (too many nodes down) fails this
    /// while the connection itself is fine.
    pub async fn stream_available(
        &self,
        stream: &str,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        let unavailable = |why: String| TransportError::Unavailable {
            stream: stream.to_owned(),
            why,
        };
        let handle = match tokio::time::timeout(timeout, self.jetstream.get_stream(stream)).await {
            Ok(Ok(handle)) => handle,
            Ok(Err(error)) => return Err(unavailable(error.to_string())),
            Err(_) => return Err(unavailable(format!("no answer within {timeout:?}"))),
        };
        match &handle.cached_info().cluster {
            Some(cluster) if cluster.leader.is_none() => {
                Err(unavailable("the stream has no leader".to_owned()))
            }
            _ => Ok(()),
        }
    }

    /// Whether the connection to the server is up.
    pub fn is_healthy(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// The underlying JetStream context (for tests that publish or inspect streams directly).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }
}

/// Whether a server of `version` (`2.10.4`, `2.11.0-beta.1`) supports several filter subjects
/// per consumer. An unparsable version is given the benefit of the doubt.
fn supports_filter_subjects(version: &str) -> bool {
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    let major: Option<u32> = parts.next().and_then(|part| part.parse().ok());
    let minor: Option<u32> = parts.next().and_then(|part| part.parse().ok());
    match (major, minor) {
        (Some(major), Some(minor)) => (major, minor) >= (2, 10),
        _ => true,
    }
}

/// The client's options apart from credentials and TLS: reconnect forever, notice a half-open
/// connection, log connection events, record publish denials and the last connection error.
fn client_options(
    connection_name: &str,
    retry_on_initial_connect: bool,
    denials: &Arc<denials::Denials>,
    last_error: &Arc<Mutex<Option<String>>>,
) -> async_nats::ConnectOptions {
    let (denials, last_error) = (denials.clone(), last_error.clone());
    let options = async_nats::ConnectOptions::new()
        .name(connection_name)
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        // a half-open connection (peer gone without a FIN) is noticed after two unanswered
        // pings: ~10 s instead of the client's default ~2 min
        .ping_interval(Duration::from_secs(5))
        .event_callback(move |event| {
            let (denials, last_error) = (denials.clone(), last_error.clone());
            async move {
                let remember = |error: Option<String>| {
                    if let Ok(mut last) = last_error.lock() {
                        *last = error;
                    }
                };
                match &event {
                    async_nats::Event::Connected => {
                        remember(None);
                        tracing::info!("connected to nats");
                        return;
                    }
                    async_nats::Event::ServerError(async_nats::ServerError::Other(error)) => {
                        denials.record(error);
                    }
                    async_nats::Event::ClientError(error) => remember(Some(error.to_string())),
                    _ => {}
                }
                tracing::warn!(event = %event, "nats connection event");
            }
        });
    if retry_on_initial_connect {
        options.retry_on_initial_connect()
    } else {
        options
    }
}

/// Why the server refused the connection for good (credentials, TLS), or `None` when it may
/// just not be reachable yet.
fn refusal(error: &async_nats::ConnectError) -> Option<String> {
    use async_nats::ConnectErrorKind;
    use std::error::Error as _;
    match error.kind() {
        ConnectErrorKind::AuthorizationViolation => {
            return Some(
                "the server rejected the credentials (authorization violation)".to_owned(),
            );
        }
        ConnectErrorKind::Authentication => {
            return Some("signing the server's challenge with the nkey failed".to_owned());
        }
        ConnectErrorKind::Tls => return Some(format!("TLS cannot be set up: {error}")),
        _ => {}
    }
    // A failed TLS handshake (an untrusted server certificate, a client certificate the
    // server does not accept) or a server error surfaces as an I/O error around the cause.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = error.source();
    while let Some(current) = cause {
        let inner = current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        for candidate in [Some(current), inner].into_iter().flatten() {
            if let Some(tls) = candidate.downcast_ref::<rustls::Error>() {
                return Some(format!("the TLS handshake failed: {tls}"));
            }
            if let Some(server) = candidate.downcast_ref::<async_nats::ServerError>() {
                return Some(format!("the server refused the connection: {server}"));
            }
        }
        cause = current.source();
    }
    None
}

/// Reconnect quickly at first, then every 2 s at most.
fn reconnect_delay(attempts: usize) -> Duration {
    let exponent = u32::try_from(attempts.min(5)).unwrap_or(5);
    Duration::from_millis(50 * 2u64.pow(exponent)).min(Duration::from_secs(2))
}

#[async_trait]
impl Publisher for JetStreamBroker {
    async fn publish_batch(
        &self,
        batch: &[OutboundMessage],
    ) -> Vec<Result<PublishReceipt, TransportError>> {
        publish::publish_batch(&self.jetstream, &self.denials, batch).await
    }
}

#[async_trait]
impl Subscriber for JetStreamBroker {
    async fn subscribe(&self, spec: &ConsumerSpec) -> Result<Deliveries, TransportError> {
        let consumer = provision::ensure_consumer(&self.jetstream, spec).await?;
        delivery::pull(consumer, spec).await
    }

    async fn backlog(&self, spec: &ConsumerSpec) -> Result<ConsumerBacklog, TransportError> {
        let failed = |source: async_nats::Error| TransportError::Subscribe {
            consumer: spec.durable_name.clone(),
            source,
        };
        let stream = self
            .jetstream
            .get_stream_no_info(&spec.stream)
            .await
            .map_err(|error| failed(error.into()))?;
        let info = stream
            .consumer_info(&spec.durable_name)
            .await
            .map_err(|error| failed(error.into()))?;
        Ok(ConsumerBacklog {
            pending: info.num_pending,
            ack_pending: info.num_ack_pending as u64,
            redelivered: info.num_redelivered as u64,
        })
    }
}

#[async_trait]
impl Broker for JetStreamBroker {
    async fn ensure_streams(&self, settings: &MessagingSettings) -> Result<(), TransportError> {
        JetStreamBroker::ensure_streams(self, settings).await
    }

    fn is_healthy(&self) -> bool {
        JetStreamBroker::is_healthy(self)
    }

    async fn stream_available(
        &self,
        stream: &str,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        JetStreamBroker::stream_available(self, stream, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::supports_filter_subjects;

    #[test]
    fn servers_from_2_10_support_several_filter_subjects() {
        assert!(!supports_filter_subjects("2.9.10"));
        assert!(supports_filter_subjects("2.10.0"));
        assert!(supports_filter_subjects("2.15.1"));
        assert!(supports_filter_subjects("2.11.0-beta.1"));
        assert!(supports_filter_subjects("3.0.0"));
        assert!(!supports_filter_subjects("1.4.1"));
    }
}
