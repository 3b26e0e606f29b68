//! The outbox relay: exactly one active relay per schema publishes pending outbox rows in `seq`
//! order, in batches, and marks them published; the others stand by for the lease.
//!
//! A failed publish is retried from the oldest pending row after a backoff (so order is kept
//! through broker outages); an order's rows after a failed one are not sent until it is (see
//! [`steps`]); a row the broker rejects for good is parked. The active relay also
//! deletes published outbox rows and handled inbox rows past their retention.

mod lease;
mod signal;
pub mod steps;
mod wakeup;

use std::sync::Arc;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use jwl_events::Service;
use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::OutboxError;
use crate::faults::crash;
use crate::metrics::RelayMetrics;
use crate::settings::MessagingSettings;
use crate::transport::Publisher;
use lease::RelayLease;
use wakeup::Wakeup;

pub use signal::RelaySignal;
pub use steps::{OutboxBatch, PublishOutcome, claim_pending, mark, publish};

/// Publishes a schema's outbox (the schema of the pool's `search_path`).
pub struct Relay {
    pool: PgPool,
    publisher: Arc<dyn Publisher>,
    settings: Arc<MessagingSettings>,
    signal: RelaySignal,
    metrics: RelayMetrics,
}

impl Relay {
    /// `signal` is shared with whatever commits outbox rows to this schema in this process.
    pub fn new(
        service: Service,
        pool: PgPool,
        publisher: Arc<dyn Publisher>,
        settings: Arc<MessagingSettings>,
        signal: RelaySignal,
    ) -> Self {
        Self {
            pool,
            publisher,
            settings,
            signal,
            metrics: RelayMetrics::new(service.as_str()),
        }
    }

    /// Stands by until it holds the schema's lease, then publishes until `shutdown` or until
    /// the lease connection fails (then stands by again). Returns only at shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            match RelayLease::try_acquire(&self.pool, self.settings.db_stall_timeout).await {
                Ok(Some(lease)) => {
                    tracing::info!(schema = lease.schema(), "relay is active");
                    self.signal.set_leading(true);
                    let led = self.lead(lease, &shutdown).await;
                    self.signal.set_leading(false);
                    if let Err(error) = led {
                        tracing::warn!(%error, "relay stopped publishing; standing by");
                    }
                }
                Ok(None) => tracing::debug!("another relay is active; standing by"),
                Err(error) => tracing::warn!(%error, "relay cannot reach the database"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(self.settings.relay_standby_retry) => {}
            }
        }
    }

    /// Publishes while holding `lease`.
    async fn lead(
        &self,
        mut lease: RelayLease,
        shutdown: &CancellationToken,
    ) -> Result<(), OutboxError> {
        let settings = &*self.settings;
        let mut wakeup = Wakeup::new(
            self.pool.clone(),
            self.signal.clone(),
            lease.schema(),
            settings.relay_poll_interval,
            settings.db_stall_timeout,
        );
        let mut retry: Option<ExponentialBackoff> = None;
        let mut next_housekeeping = Instant::now();
        loop {
            if shutdown.is_cancelled() {
                lease.release().await;
                return Ok(());
            }
            if Instant::now() >= next_housekeeping {
                self.housekeeping(&mut lease).await?;
                wakeup.ensure_listening().await;
                next_housekeeping = Instant::now() + settings.housekeeping_interval;
            }

            let batch = lease
                .run(async |conn| claim_pending(conn, settings.relay_batch_size).await)
                .await?;
            if batch.is_empty() {
                self.metrics.pending.set(0.0);
                self.metrics.oldest_pending_age.set(0.0);
                wakeup.wait(shutdown).await;
                continue;
            }
            self.metrics.batch_size.record(batch.len() as f64);
            let publish_started = Instant::now();
            let outcome = publish(&*self.publisher, &batch).await;
            self.metrics
                .publish_duration
                .record(publish_started.elapsed().as_secs_f64());
            if let Some(faults) = &settings.faults
                && faults.crash_after_publish
                && !outcome.published.is_empty()
            {
                crash("crash_after_publish (published, not marked)");
            }
            lease.run(async |conn| mark(conn, &outcome).await).await?;
            self.record(&outcome);

            let full = batch.len() >= settings.relay_batch_size;
            if full || !outcome.failed.is_empty() {
                let backlog = lease.run(steps::pending_backlog).await?;
                self.metrics.pending.set(backlog.rows as f64);
                self.metrics
                    .oldest_pending_age
                    .set(backlog.oldest_age_seconds);
            } else {
                self.metrics.pending.set(0.0);
                self.metrics.oldest_pending_age.set(0.0);
            }
            if outcome.failed.is_empty() {
                retry = None;
                if !full {
                    wakeup.wait(shutdown).await;
                }
            } else {
                let delay = retry
                    .get_or_insert_with(|| self.retry_backoff())
                    .next()
                    .unwrap_or(settings.relay_retry_max_delay);
                self.pause(&mut lease, delay, shutdown).await?;
            }
        }
    }

    /// Waits `delay` (or until shutdown) before retrying a publish, keeping the lease session
    /// busy once per poll interval meanwhile (see [`lease`]).
    async fn pause(
        &self,
        lease: &mut RelayLease,
        delay: std::time::Duration,
        shutdown: &CancellationToken,
    ) -> Result<(), OutboxError> {
        let until = Instant::now() + delay;
        while !shutdown.is_cancelled() {
            let now = Instant::now();
            if now >= until {
                break;
            }
            let nap = (until - now).min(self.settings.relay_poll_interval);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(nap) => lease.keep_alive().await?,
            }
        }
        Ok(())
    }

    fn record(&self, outcome: &PublishOutcome) {
        self.metrics
            .published
            .increment(outcome.published.len() as u64);
        if outcome.failed.is_empty() {
            return;
        }
        self.metrics
            .publish_failures
            .increment(outcome.failed.len() as u64);
        if !outcome.deferred.is_empty() {
            tracing::debug!(
                rows = outcome.deferred.len(),
                "outbox rows held back behind a failed row of their order"
            );
        }
        for (seq, error) in &outcome.failed {
            if error.is_permanent() {
                self.metrics.parked.increment(1);
                tracing::error!(seq, %error, "outbox row rejected by the broker; parked");
            } else {
                tracing::warn!(seq, %error, "outbox row not published; will retry");
            }
        }
    }

    fn retry_backoff(&self) -> ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(self.settings.relay_retry_min_delay)
            .with_max_delay(self.settings.relay_retry_max_delay)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// Deletes rows past retention, a bounded number of chunks per run.
    async fn housekeeping(&self, lease: &mut RelayLease) -> Result<(), OutboxError> {
        const MAX_CHUNKS: usize = 20;
        let settings = &*self.settings;
        for _ in 0..MAX_CHUNKS {
            let deleted = lease
                .run(async |conn| steps::delete_published(conn, settings.outbox_retention).await)
                .await?;
            if !steps::chunk_was_full(deleted) {
                break;
            }
        }
        for _ in 0..MAX_CHUNKS {
            let deleted = lease
                .run(async |conn| steps::delete_handled(conn, settings.inbox_retention).await)
                .await?;
            if !steps::chunk_was_full(deleted) {
                break;
            }
        }
        Ok(())
    }
}
