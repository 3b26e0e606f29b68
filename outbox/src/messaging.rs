//! [`Messaging`]: a service's relay and consumer loops, run together until shutdown.

use std::sync::Arc;

use backon::{BackoffBuilder, ExponentialBuilder};
use jwl_events::Service;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::consumer::{ConsumerLoop, ConsumerSource};
use crate::error::OutboxError;
use crate::handler::Handler;
use crate::relay::{Relay, RelaySignal};
use crate::settings::MessagingSettings;
use crate::transport::Broker;

/// Reliable messaging of one service process.
#[derive(Clone)]
pub struct Messaging {
    service: Service,
    pool: PgPool,
    broker: Arc<dyn Broker>,
    settings: Arc<MessagingSettings>,
    relay_signal: RelaySignal,
}

impl Messaging {
    /// `pool` must have the service's schema as its `search_path`.
    pub fn new(
        service: Service,
        pool: PgPool,
        broker: impl Broker,
        settings: MessagingSettings,
    ) -> Self {
        let relay_signal = RelaySignal::new(settings.db_stall_timeout);
        Self {
            service,
            pool,
            broker: Arc::new(broker),
            settings: Arc::new(settings),
            relay_signal,
        }
    }

    /// Shares `signal` with the relay, so that code of this process which commits outbox rows
    /// outside the consumer loops (HTTP handlers, timers) wakes it in-process. Without it they
    /// wake it by `NOTIFY`.
    pub fn with_relay_signal(mut self, signal: RelaySignal) -> Self {
        self.relay_signal = signal;
        self
    }

    /// Runs the relay, the service's consumer of the events stream (`<service>__events`, filtered
    /// to the subscriptions of `handler`) and its replay consumer (`<service>__replay` on
    /// `jwl.replay.<service>.>`) until `shutdown`; returns when
    /// all of them stopped. Transient broker and database errors are waited out.
    pub async fn run(
        self,
        handler: Arc<dyn Handler>,
        shutdown: CancellationToken,
    ) -> Result<(), OutboxError> {
        self.start(Some(handler), shutdown).await
    }

    /// Runs only the relay (for a service that consumes nothing) until `shutdown`.
    pub async fn relay_only(self, shutdown: CancellationToken) -> Result<(), OutboxError> {
        self.start(None, shutdown).await
    }

    async fn start(
        self,
        handler: Option<Arc<dyn Handler>>,
        shutdown: CancellationToken,
    ) -> Result<(), OutboxError> {
        self.settings.validate()?;
        self.provision(&shutdown).await?;
        // a panicking task stops the others, and `start` reports it
        let stop = shutdown.child_token();
        let mut tasks = JoinSet::new();
        let relay = Relay::new(
            self.service,
            self.pool.clone(),
            self.broker.clone(),
            self.settings.clone(),
            self.relay_signal.clone(),
        );
        tasks.spawn(relay.run(stop.clone()));
        if let Some(handler) = handler {
            for source in [ConsumerSource::Events, ConsumerSource::Replay] {
                let consumer = ConsumerLoop::new(
                    self.service,
                    source,
                    self.pool.clone(),
                    self.broker.clone(),
                    handler.clone(),
                    self.settings.clone(),
                    self.relay_signal.clone(),
                );
                tasks.spawn(consumer.run(stop.clone()));
            }
        }
        let mut failure = None;
        while let Some(joined) = tasks.join_next().await {
            if let Err(error) = joined {
                tracing::error!(%error, "messaging task failed; stopping messaging");
                stop.cancel();
                failure.get_or_insert(OutboxError::Task(error.to_string()));
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Ensures the streams exist, retrying until the broker answers (or shutdown); fails only if
    /// the broker cannot ever do it (too old, or it refuses the streams' replica count).
    async fn provision(&self, shutdown: &CancellationToken) -> Result<(), OutboxError> {
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(std::time::Duration::from_millis(200))
            .with_max_delay(std::time::Duration::from_secs(5))
            .with_jitter()
            .without_max_times()
            .build();
        while !shutdown.is_cancelled() {
            match self.broker.ensure_streams(&self.settings).await {
                Ok(()) => return Ok(()),
                Err(error) if error.is_fatal() => return Err(error.into()),
                Err(error) => {
                    let delay = backoff.next().unwrap_or(std::time::Duration::from_secs(5));
                    tracing::warn!(%error, ?delay, "cannot provision streams yet; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        Ok(())
    }
}
