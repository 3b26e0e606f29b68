//! The consumer loop of one durable consumer — a service's consumer of the events stream (every
//! event type it subscribes to, in stream order), or its replay consumer — pull continuously,
//! batch what is ready, hand batches to [`batch`], and survive broker and database outages.

mod batch;
mod dead_letter;
mod fast_path;
mod holds;
mod replay;

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::{FutureExt, StreamExt};
use jwl_events::Service;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::handler::Handler;
use crate::metrics::ConsumerMetrics;
use crate::naming::{durable_name, events_durable};
use crate::relay::RelaySignal;
use crate::settings::MessagingSettings;
use crate::stall;
use crate::transport::{Broker, ConsumerSpec, Deliveries, Delivery, TransportError};
use batch::BatchResult;

/// What a consumer loop reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConsumerSource {
    /// The events of every type the handler subscribes to; each is handled as the inbox
    /// consumer of its type.
    Events,
    /// The service's replay channel; each message names its inbox consumer by its event type.
    Replay,
}

/// One durable consumer's loop.
pub(crate) struct ConsumerLoop {
    service: Service,
    source: ConsumerSource,
    /// Durable name.
    consumer: String,
    pool: PgPool,
    broker: Arc<dyn Broker>,
    handler: Arc<dyn Handler>,
    settings: Arc<MessagingSettings>,
    /// Woken after a batch that emitted events commits.
    relay_signal: RelaySignal,
    metrics: ConsumerMetrics,
}

/// Why the loop stopped reading a subscription.
enum Interrupted {
    Shutdown,
    Broker(TransportError),
    Database,
}

impl ConsumerLoop {
    pub fn new(
        service: Service,
        source: ConsumerSource,
        pool: PgPool,
        broker: Arc<dyn Broker>,
        handler: Arc<dyn Handler>,
        settings: Arc<MessagingSettings>,
        relay_signal: RelaySignal,
    ) -> Self {
        let (consumer, metrics_type) = match source {
            ConsumerSource::Events => (events_durable(service), "events"),
            ConsumerSource::Replay => (replay::replay_durable(service), "replay"),
        };
        let handles = handler
            .subscriptions()
            .iter()
            .map(|&ty| (durable_name(service, ty), ty.as_str()));
        let metrics = ConsumerMetrics::new(&consumer, metrics_type, handles);
        Self {
            service,
            source,
            consumer,
            pool,
            broker,
            handler,
            settings,
            relay_signal,
            metrics,
        }
    }

    /// Consumes until `shutdown`; transient broker and database errors are logged and waited
    /// out, never returned.
    pub async fn run(self, shutdown: CancellationToken) {
        let subscriptions = self.handler.subscriptions();
        let (stream, filter_subjects, replaces) = match self.source {
            ConsumerSource::Events => (
                self.settings.events_stream.clone(),
                subscriptions
                    .iter()
                    .map(|&ty| jwl_events::type_filter(ty))
                    .collect(),
                // the per-type durables of earlier versions
                subscriptions
                    .iter()
                    .map(|&ty| durable_name(self.service, ty))
                    .collect(),
            ),
            ConsumerSource::Replay => (
                self.settings.replay_stream.clone(),
                vec![replay::replay_filter(self.service)],
                Vec::new(),
            ),
        };
        let spec = ConsumerSpec {
            stream,
            durable_name: self.consumer.clone(),
            filter_subjects,
            replaces,
            ack_wait: self.settings.ack_wait,
            max_ack_pending: self.settings.max_ack_pending,
            prefetch: self.settings.consumer_batch_size,
        };
        tokio::join!(
            self.pull_until(&spec, &shutdown),
            self.sample_backlog(&spec, &shutdown)
        );
        tracing::info!(consumer = %self.consumer, "consumer stopped");
    }

    /// Every [`BACKLOG_SAMPLE_INTERVAL`], publishes the broker's counts for this consumer as
    /// gauges (pending, ack pending, redelivered), until shutdown.
    async fn sample_backlog(&self, spec: &ConsumerSpec, shutdown: &CancellationToken) {
        while !shutdown.is_cancelled() {
            match self.broker.backlog(spec).await {
                Ok(backlog) => {
                    self.metrics.pending.set(backlog.pending as f64);
                    self.metrics.ack_pending.set(backlog.ack_pending as f64);
                    self.metrics.redelivered.set(backlog.redelivered as f64);
                }
                Err(error) => {
                    tracing::debug!(consumer = %self.consumer, %error, "no backlog from the broker")
                }
            }
            sleep_or_shutdown(BACKLOG_SAMPLE_INTERVAL, shutdown).await;
        }
    }

    /// Subscribes and handles deliveries, re-subscribing after interruptions, until shutdown.
    async fn pull_until(&self, spec: &ConsumerSpec, shutdown: &CancellationToken) {
        let mut backoff = reconnect_backoff();
        while !shutdown.is_cancelled() {
            let interrupted = match self.broker.subscribe(spec).await {
                Ok(deliveries) => {
                    tracing::info!(consumer = %self.consumer, "consuming");
                    self.consume(deliveries, shutdown, &mut backoff).await
                }
                Err(error) => Interrupted::Broker(error),
            };
            match interrupted {
                Interrupted::Shutdown => break,
                Interrupted::Broker(error) => {
                    let delay = backoff.next().unwrap_or(MAX_RECONNECT_DELAY);
                    tracing::warn!(consumer = %self.consumer, %error, ?delay,
                        "broker subscription interrupted; re-subscribing");
                    sleep_or_shutdown(delay, shutdown).await;
                }
                Interrupted::Database => self.wait_for_database(shutdown).await,
            }
        }
    }

    /// Reads batches until shutdown or an interruption.
    ///
    /// After a batch whose transaction the database refused (e.g. at commit), the next that many
    /// messages are handled one per transaction, so the one at fault fails alone and the others
    /// are not pushed towards `max_attempts` with it.
    async fn consume(
        &self,
        mut deliveries: Deliveries,
        shutdown: &CancellationToken,
        backoff: &mut ExponentialBackoff,
    ) -> Interrupted {
        let mut handle_alone = 0usize;
        loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    self.nak_prefetched(&mut deliveries, Duration::ZERO).await;
                    return Interrupted::Shutdown;
                }
                next = deliveries.next() => next,
            };
            let first = match first {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => return Interrupted::Broker(error),
                None => return Interrupted::Broker(subscription_ended()),
            };
            let limit = if handle_alone > 0 {
                1
            } else {
                self.settings.consumer_batch_size
            };
            let (batch, broken) = self.take_ready(first, &mut deliveries, limit);
            let size = batch.len();
            match self.handle_batch(batch).await {
                BatchResult::Committed => handle_alone = handle_alone.saturating_sub(size),
                BatchResult::Failed {
                    database_down: true,
                } => {
                    let delay = self.settings.batch_failure_nak_delay;
                    self.nak_prefetched(&mut deliveries, delay).await;
                    return Interrupted::Database;
                }
                BatchResult::Failed {
                    database_down: false,
                } if size > 1 => handle_alone = size,
                BatchResult::Failed {
                    database_down: false,
                } => handle_alone = handle_alone.saturating_sub(1),
            }
            *backoff = reconnect_backoff();
            if let Some(error) = broken {
                return Interrupted::Broker(error);
            }
        }
    }

    /// `first`, plus whatever else is ready right now, up to `limit`. Also returns the error if
    /// the subscription broke while taking.
    fn take_ready(
        &self,
        first: Box<dyn Delivery>,
        deliveries: &mut Deliveries,
        limit: usize,
    ) -> (Vec<Box<dyn Delivery>>, Option<TransportError>) {
        let mut batch = Vec::with_capacity(limit);
        batch.push(first);
        while batch.len() < limit {
            match deliveries.next().now_or_never() {
                Some(Some(Ok(delivery))) => batch.push(delivery),
                Some(Some(Err(error))) => return (batch, Some(error)),
                Some(None) => return (batch, Some(subscription_ended())),
                None => break,
            }
        }
        (batch, None)
    }

    /// Hands back messages already received but not handled (redelivered after `delay`), so
    /// another replica, or this one later, gets them without waiting for `ack_wait`.
    async fn nak_prefetched(&self, deliveries: &mut Deliveries, delay: Duration) {
        let mut prefetched = Vec::new();
        while let Some(Some(Ok(delivery))) = deliveries.next().now_or_never() {
            prefetched.push(delivery);
        }
        futures::future::join_all(
            prefetched
                .iter()
                .map(|delivery| self.nak(delivery.as_ref(), delay)),
        )
        .await;
    }

    /// Waits until the database answers again (or shutdown). Each probe is bounded by the stall
    /// timeout: on a half-open pooled connection an unbounded one would wait forever.
    async fn wait_for_database(&self, shutdown: &CancellationToken) {
        let mut backoff = reconnect_backoff();
        let limit = self.settings.db_stall_timeout;
        while !shutdown.is_cancelled() {
            let delay = backoff.next().unwrap_or(MAX_RECONNECT_DELAY);
            sleep_or_shutdown(delay, shutdown).await;
            let probe = stall::with_connection(&self.pool, limit, async |conn| {
                sqlx::query("SELECT 1").execute(conn).await
            });
            match probe.await {
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(consumer = %self.consumer, %error, "database still unavailable")
                }
            }
        }
    }
}

const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// How often a consumer's backlog is read from the broker for its gauges.
const BACKLOG_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

fn reconnect_backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(MAX_RECONNECT_DELAY)
        .with_jitter()
        .without_max_times()
        .build()
}

fn subscription_ended() -> TransportError {
    TransportError::Receive("the subscription ended".into())
}

async fn sleep_or_shutdown(delay: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}
