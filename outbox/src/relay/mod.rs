//! The outbox relay: a schema's outbox is split into `outbox_partitions` partitions by a stable
//! hash of each row's order; exactly one active relay per partition publishes its pending rows in
//! `seq` order, in batches, and marks them published. Each process runs one relay task per
//! partition and tries to take every partition's lease ([`lease`]); the partitions are shared out
//! between processes ([`share`]), and a partition whose holder died is taken over within about
//! one `relay_standby_retry`. With one partition (the default) this is one active relay per
//! schema, as before partitions existed.
//!
//! A failed publish is retried from the oldest pending row of the partition after a backoff (so
//! order is kept through broker outages); an order's rows after a failed one are not sent until
//! it is (see [`steps`]); a row the broker rejects for good is parked. The relay of partition 0
//! also deletes published outbox rows and handled inbox rows past their retention.
//!
//! Rows this process commits are usually not claimed at all: they are handed over and published
//! by a task of their own right after the commit ([`handover`]), and the relay only marks them.

mod handover;
mod lease;
mod share;
mod signal;
pub mod steps;
mod wakeup;

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use jwl_events::Service;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::OutboxError;
use crate::faults::crash;
use crate::metrics::RelayMetrics;
use crate::settings::MessagingSettings;
use crate::transport::Publisher;
use lease::{Attempt, Partition, RelayLease};
use share::Board;
use wakeup::Wakeup;

pub use handover::Enqueued;
pub(crate) use handover::Written;
pub use signal::RelaySignal;
pub use steps::{
    OutboxBatch, PublishOutcome, Unmarked, claim_pending, claim_pending_in, mark, publish,
};

/// Publishes a schema's outbox (the schema of the pool's `search_path`), one task per partition.
pub struct Relay {
    service: Service,
    pool: PgPool,
    publisher: Arc<dyn Publisher>,
    settings: Arc<MessagingSettings>,
    signal: RelaySignal,
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
            service,
            pool,
            publisher,
            settings,
            signal,
        }
    }

    /// Runs a relay task for every partition (each stands by until it holds the partition's
    /// lease, then publishes until `shutdown`, until its lease connection fails or until it gives
    /// the partition up to another process, then stands by again), the `LISTEN` forwarder and,
    /// with several partitions, the sharing out. Returns only at shutdown; a panicking task is
    /// passed on to the caller.
    pub async fn run(self, shutdown: CancellationToken) {
        let settings = self.settings.clone();
        let partitions = settings.outbox_partitions.max(1);
        self.signal.set_partitions(partitions);
        self.signal.enable_handover(
            self.service.as_str(),
            self.publisher.clone(),
            settings
                .faults
                .as_ref()
                .is_some_and(|faults| faults.crash_after_publish),
        );
        let board = Arc::new(Board::new(partitions));
        let mut tasks = JoinSet::new();
        tasks.spawn(wakeup::forward_notifications(
            self.pool.clone(),
            self.signal.clone(),
            settings.relay_poll_interval,
            settings.db_stall_timeout,
            settings.housekeeping_interval,
            shutdown.clone(),
        ));
        if partitions > 1 {
            tasks.spawn(share::share_out(
                self.pool.clone(),
                board.clone(),
                partitions,
                settings.relay_standby_retry,
                settings.relay_poll_interval,
                settings.db_stall_timeout,
                shutdown.clone(),
            ));
        }
        let shared = Arc::new(self);
        for index in 0..partitions {
            let relay = PartitionRelay {
                shared: shared.clone(),
                board: board.clone(),
                partition: Partition {
                    index,
                    count: partitions,
                },
                metrics: RelayMetrics::new(shared.service.as_str(), index),
            };
            tasks.spawn(relay.run(shutdown.clone()));
        }
        while let Some(joined) = tasks.join_next().await {
            if let Err(error) = joined
                && error.is_panic()
            {
                std::panic::resume_unwind(error.into_panic());
            }
        }
    }
}

/// How long the rows a relay published wait for their mark, at least: the mark is made in the
/// relay's first quiet moment after that (see [`PartitionRelay::idle`]), so that a relay that
/// keeps up pays one commit for the rows of many rounds, none of them in front of a hop.
const MARK_AFTER: Duration = Duration::from_millis(50);

/// How often a relay that is behind (full batches, or failures) counts its backlog for the
/// `pending` gauges, at most: the count walks every pending row, which at saturation cost
/// PostgreSQL 20–35 ms a round when it ran after every full batch; a gauge needs no more than
/// one count a second.
const BACKLOG_REFRESH: Duration = Duration::from_secs(1);

/// The rows the broker acknowledged that are not marked published yet: each claim skips them.
#[derive(Debug, Default)]
struct ToMark {
    seqs: Vec<i64>,
    /// When the oldest of them was acknowledged.
    since: Option<Instant>,
}

impl ToMark {
    fn add(&mut self, seqs: &[i64]) {
        if !seqs.is_empty() && self.since.is_none() {
            self.since = Some(Instant::now());
        }
        self.seqs.extend_from_slice(seqs);
    }

    fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// When they are due for their mark.
    fn due(&self) -> Option<Instant> {
        self.since.map(|since| since + MARK_AFTER)
    }

    /// Whether they would fill a batch: then the next claim marks them (a relay kept busy never
    /// has a quiet moment; this bounds the rows each claim skips).
    fn fill_a_batch(&self, batch_size: usize) -> bool {
        self.seqs.len() >= batch_size
    }

    fn take(&mut self) -> Vec<i64> {
        self.since = None;
        std::mem::take(&mut self.seqs)
    }
}

/// Marks every row of `to_mark` published, in one statement (none: no statement).
async fn mark_all(
    lease: &mut RelayLease,
    to_mark: &mut ToMark,
    signal: &RelaySignal,
) -> Result<(), OutboxError> {
    if to_mark.is_empty() {
        return Ok(());
    }
    let outcome = PublishOutcome {
        published: to_mark.take(),
        ..PublishOutcome::default()
    };
    lease.run(async |conn| mark(conn, &outcome).await).await?;
    signal.handover().marked(&outcome.published);
    Ok(())
}

/// The relay of one partition in this process.
struct PartitionRelay {
    shared: Arc<Relay>,
    board: Arc<Board>,
    partition: Partition,
    metrics: RelayMetrics,
}

impl PartitionRelay {
    async fn run(self, shutdown: CancellationToken) {
        let shared = &*self.shared;
        let settings = &*shared.settings;
        let Partition { index, count } = self.partition;
        self.metrics.leader.set(0.0);
        while !shutdown.is_cancelled() {
            if self.board.may_try(index) {
                let attempt = RelayLease::try_acquire(
                    &shared.pool,
                    self.partition,
                    settings.db_stall_timeout,
                )
                .await;
                match attempt {
                    Ok(Attempt::Taken(lease)) => {
                        tracing::info!(
                            schema = lease.schema(),
                            partition = index,
                            partitions = count,
                            "relay is active"
                        );
                        self.board.started(index);
                        shared.signal.set_leading(true);
                        self.metrics.leader.set(1.0);
                        let led = self.lead(lease, &shutdown).await;
                        self.metrics.leader.set(0.0);
                        // the partition's new holder reports its backlog
                        self.metrics.pending.set(0.0);
                        self.metrics.oldest_pending_age.set(0.0);
                        // only the active relay counts them (alerts take the max per service)
                        self.metrics.parked_rows.set(0.0);
                        shared.signal.set_leading(false);
                        self.board.stopped(index);
                        if let Err(error) = led {
                            tracing::warn!(partition = index, %error,
                                "relay stopped publishing; standing by");
                        }
                    }
                    Ok(Attempt::Busy) => {
                        tracing::debug!(partition = index, "another relay is active; standing by")
                    }
                    Ok(Attempt::OtherCount(recorded)) => {
                        if index == 0 && self.switch_count(recorded).await {
                            continue;
                        }
                    }
                    // every partition meets the same outage: one warning per round is enough
                    Err(error) if index == 0 => {
                        tracing::warn!(%error, "relay cannot reach the database")
                    }
                    Err(error) => tracing::debug!(partition = index, %error,
                        "relay cannot reach the database"),
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(settings.relay_standby_retry) => {}
            }
        }
    }

    /// The schema records `recorded` partitions and this relay runs with another count: records
    /// this one if no relay of `recorded` partitions is active any more. Returns whether it did.
    async fn switch_count(&self, recorded: usize) -> bool {
        let shared = &*self.shared;
        let count = self.partition.count;
        match lease::try_switch_count(
            &shared.pool,
            recorded,
            count,
            shared.settings.db_stall_timeout,
        )
        .await
        {
            Ok(true) => {
                tracing::info!(
                    partitions = count,
                    was = recorded,
                    "the schema's relays now run with this partition count"
                );
                true
            }
            Ok(false) => {
                tracing::warn!(
                    partitions = count,
                    recorded,
                    "the schema's relays run with another partition count \
                     (JWL_OUTBOX_PARTITIONS); standing by until none of them is active"
                );
                false
            }
            Err(error) => {
                tracing::warn!(%error, "relay cannot reach the database");
                false
            }
        }
    }

    /// Publishes the partition while holding `lease`, until shutdown or until the partition is
    /// given up (`Ok`), or until a statement on the lease fails (`Err`).
    async fn lead(
        &self,
        mut lease: RelayLease,
        shutdown: &CancellationToken,
    ) -> Result<(), OutboxError> {
        let shared = &*self.shared;
        let settings = &*shared.settings;
        let partition = lease.partition();
        let mut wakeup = Wakeup::new(&shared.signal, settings.relay_poll_interval);
        let mut retry: Option<ExponentialBackoff> = None;
        let mut next_housekeeping = Instant::now();
        let mut to_mark = ToMark::default();
        let mut backlog_counted: Option<Instant> = None;
        loop {
            if shutdown.is_cancelled() || self.board.giving_up(partition.index) {
                self.take_handed_over(&mut to_mark);
                mark_all(&mut lease, &mut to_mark, &shared.signal).await?;
                lease.release().await;
                return Ok(());
            }
            if partition.index == 0 && Instant::now() >= next_housekeeping {
                self.housekeeping(&mut lease).await?;
                next_housekeeping = Instant::now() + settings.housekeeping_interval;
            }

            // wake-ups from here on may concern rows this claim does not see
            wakeup.reset();
            self.take_handed_over(&mut to_mark);
            // a relay kept busy marks with its claims (one round trip and one commit for a
            // batch's worth of rows); one that keeps up marks in a quiet moment (see `idle`), so
            // that no claim in front of a hop waits for a WAL flush
            let mark_now = to_mark.fill_a_batch(settings.relay_batch_size);
            let batch = lease
                .run(async |conn| {
                    let unmarked = if mark_now {
                        Unmarked::Mark(&to_mark.seqs)
                    } else {
                        Unmarked::Keep(&to_mark.seqs)
                    };
                    steps::claim_pending_in(
                        conn,
                        partition.sql(),
                        settings.relay_batch_size,
                        unmarked,
                    )
                    .await
                })
                .await?;
            if mark_now {
                shared.signal.handover().marked(&to_mark.take());
            }
            if batch.is_empty() {
                self.metrics.pending.set(0.0);
                self.metrics.oldest_pending_age.set(0.0);
                self.idle(&mut lease, &mut wakeup, &mut to_mark, shutdown)
                    .await?;
                continue;
            }
            self.metrics.batch_size.record(batch.len() as f64);
            let publish_started = Instant::now();
            let mut outcome = publish(&*shared.publisher, &batch).await;
            self.metrics
                .publish_duration
                .record(publish_started.elapsed().as_secs_f64());
            if let Some(faults) = &settings.faults
                && faults.crash_after_publish
                && !outcome.published.is_empty()
            {
                crash("crash_after_publish (published, not marked)");
            }
            self.record(&outcome);
            if outcome.failed.is_empty() {
                shared.signal.handover().acked(&outcome.published);
                to_mark.add(&outcome.published);
            } else {
                // failures are recorded at once, with every published row not marked yet
                outcome.published.extend(to_mark.take());
                lease.run(async |conn| mark(conn, &outcome).await).await?;
                shared.signal.handover().marked(&outcome.published);
                if outcome.failed.iter().any(|(_, error)| error.is_permanent()) {
                    self.count_parked(&mut lease).await?;
                }
            }

            if batch.len() >= settings.relay_batch_size || !outcome.failed.is_empty() {
                if backlog_counted.is_none_or(|at| at.elapsed() >= BACKLOG_REFRESH) {
                    let backlog = lease
                        .run(async |conn| {
                            steps::pending_backlog(conn, partition.sql(), &to_mark.seqs).await
                        })
                        .await?;
                    self.metrics.pending.set(backlog.rows as f64);
                    self.metrics
                        .oldest_pending_age
                        .set(backlog.oldest_age_seconds);
                    backlog_counted = Some(Instant::now());
                }
            } else {
                self.metrics.pending.set(0.0);
                self.metrics.oldest_pending_age.set(0.0);
            }
            if outcome.failed.is_empty() {
                retry = None;
                // at once when the batch was full or rows were committed meanwhile
                if batch.len() < settings.relay_batch_size && !wakeup.woken() {
                    self.idle(&mut lease, &mut wakeup, &mut to_mark, shutdown)
                        .await?;
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

    /// Waits for a wake-up, the poll or shutdown. The rows published and not marked yet are
    /// marked in a quiet moment: here (nothing is pending), once [`MARK_AFTER`] has passed since
    /// the first of them was acknowledged, at once if it has already, so that the mark's WAL
    /// flush is in front of no hop. (A crash before the mark re-publishes them, which the
    /// broker's duplicate window and the inboxes absorb.)
    ///
    /// Rows handed over meanwhile join them as they are acknowledged, without a claim.
    async fn idle(
        &self,
        lease: &mut RelayLease,
        wakeup: &mut Wakeup,
        to_mark: &mut ToMark,
        shutdown: &CancellationToken,
    ) -> Result<(), OutboxError> {
        let signal = &self.shared.signal;
        let mut handed_over = signal.handover().subscribe();
        // hand-overs coming one after the other must not put the poll off
        let poll_at = Instant::now() + self.shared.settings.relay_poll_interval;
        loop {
            self.take_handed_over(to_mark);
            handed_over.mark_unchanged();
            tokio::select! {
                due = wakeup.wait_until(shutdown, to_mark.due()) => {
                    if !due {
                        return Ok(());
                    }
                    // a wake-up during the mark is not lost: the next wait returns at once
                    mark_all(lease, to_mark, signal).await?;
                }
                _ = handed_over.changed() => {}
                _ = tokio::time::sleep_until(poll_at) => return Ok(()),
            }
        }
    }

    /// Adds the rows of this partition handed over and acknowledged since the last call to those
    /// to mark (and to the published count).
    fn take_handed_over(&self, to_mark: &mut ToMark) {
        let Partition { index, count } = self.partition;
        let handed = self.shared.signal.handover().take_to_mark(index, count);
        if !handed.is_empty() {
            self.metrics.published.increment(handed.len() as u64);
            to_mark.add(&handed);
        }
    }

    /// Waits `delay` (or until shutdown) before retrying a publish, keeping the lease session
    /// busy once per poll interval meanwhile (see [`lease`]).
    async fn pause(
        &self,
        lease: &mut RelayLease,
        delay: Duration,
        shutdown: &CancellationToken,
    ) -> Result<(), OutboxError> {
        let until = Instant::now() + delay;
        while !shutdown.is_cancelled() && !self.board.giving_up(lease.partition().index) {
            let now = Instant::now();
            if now >= until {
                break;
            }
            let nap = (until - now).min(self.shared.settings.relay_poll_interval);
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
            .with_min_delay(self.shared.settings.relay_retry_min_delay)
            .with_max_delay(self.shared.settings.relay_retry_max_delay)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// Sets the parked-rows gauge (rows change parked state here, and by `jwl outbox retry`,
    /// which the next housekeeping run sees). It counts the whole schema, so only the relay of
    /// partition 0 (the one that keeps house) reports it; a row parked by another partition's
    /// relay shows at partition 0's next housekeeping run.
    async fn count_parked(&self, lease: &mut RelayLease) -> Result<(), OutboxError> {
        if self.partition.index != 0 {
            return Ok(());
        }
        let parked = lease.run(crate::parked_rows::count).await?;
        self.metrics.parked_rows.set(parked as f64);
        Ok(())
    }

    /// Counts the parked rows, and deletes rows past retention, a bounded number of chunks per
    /// run.
    async fn housekeeping(&self, lease: &mut RelayLease) -> Result<(), OutboxError> {
        const MAX_CHUNKS: usize = 20;
        self.count_parked(lease).await?;
        let settings = &*self.shared.settings;
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
