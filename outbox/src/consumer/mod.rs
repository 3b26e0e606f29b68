//! The consumer loop of one durable consumer — a service's consumer of the events stream (every
//! event type it subscribes to, in stream order), or its replay consumer — pull continuously,
//! batch what is ready, hand batches to [`batch`], and survive broker and database outages and
//! the outages of the handler's own dependencies ([`HandlerError::Unavailable`],
//! [`Handler::ready`]).

mod batch;
mod dead_letter;
mod fast_path;
mod holds;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::{FutureExt, StreamExt};
use jwl_events::Service;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::handler::Handler;
#[cfg(doc)]
use crate::handler::HandlerError;
use crate::metrics::ConsumerMetrics;
use crate::naming::{durable_name, events_durable};
use crate::protocol::replay;
use crate::relay::RelaySignal;
use crate::settings::MessagingSettings;
use crate::stall::{self, KeptConnection};
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
    /// Paused with the messages in hand held (see [`ConsumerLoop::pull_until`]).
    Paused(Pause),
}

/// What a paused loop waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pause {
    /// The database to answer again.
    Database,
    /// The handler to be ready again ([`Handler::ready`]): a dependency it needs is
    /// unavailable.
    Dependency,
}

impl Pause {
    fn as_str(self) -> &'static str {
        match self {
            Pause::Database => "database",
            Pause::Dependency => "dependency",
        }
    }
}

/// Set by the first worker (or the distributor) that finds the loop must pause; the others stop
/// too.
#[derive(Default)]
struct PauseSignal {
    token: CancellationToken,
    cause: OnceLock<Pause>,
}

impl PauseSignal {
    fn pause(&self, cause: Pause) {
        let _first = self.cause.set(cause);
        self.token.cancel();
    }

    fn is_paused(&self) -> bool {
        self.token.is_cancelled()
    }

    fn cause(&self) -> Pause {
        self.cause.get().copied().unwrap_or(Pause::Database)
    }
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
        let handles: Vec<(String, &'static str)> = handles.collect();
        // every consumer name a dead letter of this loop can carry: its types' and its own
        crate::metrics::dead_letters_from_zero(
            handles
                .iter()
                .map(|(name, _)| name.as_str())
                .chain([consumer.as_str()]),
            &dead_letter::DeadLetterReason::ALL.map(dead_letter::DeadLetterReason::as_str),
        );
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
                    .flat_map(|&ty| jwl_events::type_filters(ty))
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
            self.sample_backlog(&spec, &shutdown),
            self.publish_owed_until(&shutdown),
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

    /// Every [`OWED_DEAD_LETTERS_INTERVAL`], publishes the dead letters owed by released messages
    /// that head a hold (see [`Self::publish_owed_dead_letters`]), until shutdown. Only the
    /// events consumer does it (both of a service's loops share its tables).
    async fn publish_owed_until(&self, shutdown: &CancellationToken) {
        if self.source != ConsumerSource::Events {
            return;
        }
        while !shutdown.is_cancelled() {
            sleep_or_shutdown(OWED_DEAD_LETTERS_INTERVAL, shutdown).await;
            if shutdown.is_cancelled() {
                break;
            }
            if let Err(error) = self.publish_owed_dead_letters().await {
                tracing::debug!(consumer = %self.consumer, %error,
                    "could not look for owed dead letters; trying again later");
            }
        }
    }

    /// Subscribes and handles deliveries, re-subscribing after interruptions, until shutdown.
    ///
    /// When the database goes down, what was received and not handled is held (not nak'ed: a
    /// nak is a delivery, and JetStream counts every delivery, so each outage would bring a
    /// healthy message one step closer to `max_attempts`). The subscription stays open while
    /// the database is waited for: what it still delivers is held too, and every held message's
    /// ack timer is renewed. Once the database answers, the held messages are handled first.
    ///
    /// A dependency of the handler that is unavailable (the handler is not
    /// [ready](Handler::ready), or it returned [`HandlerError::Unavailable`]) pauses the loop
    /// the same way, until the handler is ready again: no message is handed to it meanwhile, and
    /// none spends a delivery attempt.
    async fn pull_until(&self, spec: &ConsumerSpec, shutdown: &CancellationToken) {
        let mut backoff = reconnect_backoff();
        let mut held: VecDeque<Box<dyn Delivery>> = VecDeque::new();
        // kept through a database outage
        let mut open: Option<Deliveries> = None;
        while !shutdown.is_cancelled() {
            let mut deliveries = match open.take() {
                Some(deliveries) => deliveries,
                None => match self.broker.subscribe(spec).await {
                    Ok(deliveries) => {
                        tracing::info!(consumer = %self.consumer, "consuming");
                        deliveries
                    }
                    Err(error) => {
                        self.broker_interrupted(error, &mut held, &mut backoff, shutdown)
                            .await;
                        continue;
                    }
                },
            };
            match self
                .consume(&mut deliveries, shutdown, &mut backoff, &mut held)
                .await
            {
                Interrupted::Shutdown => break,
                Interrupted::Broker(error) => {
                    self.broker_interrupted(error, &mut held, &mut backoff, shutdown)
                        .await
                }
                Interrupted::Paused(pause) => {
                    let paused = match pause {
                        Pause::Database => &self.metrics.paused_database,
                        Pause::Dependency => &self.metrics.paused_dependency,
                    };
                    paused.set(1.0);
                    self.metrics.held.set(held.len() as f64);
                    tracing::warn!(consumer = %self.consumer, held = held.len(),
                        cause = pause.as_str(),
                        "{} unavailable; holding the messages in hand until it is back",
                        pause.as_str());
                    tokio::select! {
                        () = self.wait_to_resume(pause, shutdown) => {}
                        () = keep_held(&mut deliveries, &mut held, self.settings.ack_wait,
                            &self.metrics.held) => {}
                    }
                    tracing::info!(consumer = %self.consumer, held = held.len(),
                        cause = pause.as_str(),
                        "{} available again; handling the held messages first", pause.as_str());
                    paused.set(0.0);
                    self.metrics.held.set(0.0);
                    open = Some(deliveries);
                }
            }
        }
        // shutting down: another replica (or the next start) takes them
        self.nak_all(held.into(), Duration::ZERO).await;
    }

    /// Held messages cannot be kept alive without the broker: hands them back, then waits
    /// before the next subscription.
    async fn broker_interrupted(
        &self,
        error: TransportError,
        held: &mut VecDeque<Box<dyn Delivery>>,
        backoff: &mut ExponentialBackoff,
        shutdown: &CancellationToken,
    ) {
        self.nak_all(held.drain(..).collect(), Duration::ZERO).await;
        let delay = backoff.next().unwrap_or(MAX_RECONNECT_DELAY);
        tracing::warn!(consumer = %self.consumer, %error, ?delay,
            "broker subscription interrupted; re-subscribing");
        sleep_or_shutdown(delay, shutdown).await;
    }

    async fn nak_all(&self, deliveries: Vec<Box<dyn Delivery>>, delay: Duration) {
        futures::future::join_all(
            deliveries
                .iter()
                .map(|delivery| self.nak(delivery.as_ref(), delay)),
        )
        .await;
    }

    /// Reads deliveries until shutdown or an interruption, and hands them to
    /// `consumer_workers` workers by order id ([`order_key`]): each worker handles its messages
    /// in batches, one transaction at a time, so one order's messages stay in stream order while
    /// different orders' batches are handled at once.
    ///
    /// `held` (messages received before, not handled) go first. Interrupted by the database, it
    /// leaves every delivery received and not settled in `held`, each order's in the order
    /// received.
    async fn consume(
        &self,
        deliveries: &mut Deliveries,
        shutdown: &CancellationToken,
        backoff: &mut ExponentialBackoff,
        held: &mut VecDeque<Box<dyn Delivery>>,
    ) -> Interrupted {
        let workers = self
            .settings
            .consumer_workers
            .min(self.handler.max_workers())
            .max(1);
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers)
            .map(|_| mpsc::channel::<Box<dyn Delivery>>(self.settings.consumer_batch_size))
            .unzip();
        // set by a worker that finds the database down or a dependency unavailable (or by the
        // distributor, when the handler is not ready): the others stop too
        let paused = PauseSignal::default();
        let committed = AtomicBool::new(false);
        // the delivery in hand when the database went down (after everything in the channels)
        let mut in_hand: Option<Box<dyn Delivery>> = None;
        let distribute = async {
            let interrupted = loop {
                let next = if shutdown.is_cancelled() {
                    break Interrupted::Shutdown;
                } else if paused.is_paused() {
                    break Interrupted::Paused(paused.cause());
                } else if self.handler.ready().now_or_never().is_none() {
                    // the gate: hand nothing out while the handler cannot work
                    paused.pause(Pause::Dependency);
                    break Interrupted::Paused(paused.cause());
                } else if let Some(delivery) = held.pop_front() {
                    Some(Ok(delivery))
                } else {
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => break Interrupted::Shutdown,
                        _ = paused.token.cancelled() => break Interrupted::Paused(paused.cause()),
                        next = deliveries.next() => next,
                    }
                };
                let delivery = match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(error)) => break Interrupted::Broker(error),
                    None => break Interrupted::Broker(subscription_ended()),
                };
                let worker = worker_of(order_key(self.source, delivery.subject()), workers);
                tokio::select! {
                    biased;
                    _ = paused.token.cancelled() => {
                        in_hand = Some(delivery);
                        break Interrupted::Paused(paused.cause());
                    }
                    permit = senders[worker].reserve() => match permit {
                        Ok(permit) => permit.send(delivery),
                        // the worker is gone (cannot happen while this loop holds the sender)
                        Err(_closed) => self.nak(delivery.as_ref(), Duration::ZERO).await,
                    }
                }
            };
            // the workers finish what they were given (or nak it), then see the channel close
            drop(senders);
            interrupted
        };
        let work = futures::future::join_all(
            receivers
                .into_iter()
                .map(|receiver| self.work(receiver, &paused, &committed)),
        );
        let (interrupted, unhandled) = tokio::join!(distribute, work);
        if committed.load(Ordering::Relaxed) {
            *backoff = reconnect_backoff();
        }
        // each worker's are in the order received, and precede what the distributor had in
        // hand, then the held ones it did not hand out, then what the client prefetched
        let not_given: Vec<Box<dyn Delivery>> = held.drain(..).collect();
        let unhandled: Vec<Box<dyn Delivery>> = unhandled
            .into_iter()
            .flatten()
            .chain(in_hand)
            .chain(not_given)
            .chain(prefetched(deliveries))
            .collect();
        if matches!(interrupted, Interrupted::Paused(_)) {
            held.extend(unhandled);
            // renewed at once: they may have waited behind a stalled batch
            keep_in_progress_once(held.make_contiguous()).await;
        } else {
            // shutdown, or the broker: nothing was left unhandled by the workers
            self.nak_all(unhandled, Duration::ZERO).await;
        }
        interrupted
    }

    /// One worker: batches of what is ready in `receiver` (or arrives within the handler's
    /// [`Handler::linger`]), one transaction at a time, until the channel closes. After a batch
    /// whose transaction the database refused (e.g. at commit), the next that many messages are
    /// handled one per transaction, so the one at fault fails alone
    /// and the others are not pushed towards `max_attempts` with it. Once the loop pauses (the
    /// database is down or a dependency unavailable, found here or elsewhere), what is left is
    /// returned unsettled, in the order received.
    async fn work(
        &self,
        mut receiver: mpsc::Receiver<Box<dyn Delivery>>,
        paused: &PauseSignal,
        committed: &AtomicBool,
    ) -> Vec<Box<dyn Delivery>> {
        let mut handle_alone = 0usize;
        let mut unhandled = Vec::new();
        // one transaction after another on the same connection while messages keep coming
        let mut conn = KeptConnection::new(self.pool.clone());
        while let Some(first) = conn.waiting_for(receiver.recv()).await {
            if paused.is_paused() {
                unhandled.push(first);
                while let Ok(delivery) = receiver.try_recv() {
                    unhandled.push(delivery);
                }
                continue;
            }
            let limit = if handle_alone > 0 {
                1
            } else {
                self.settings.consumer_batch_size
            };
            let mut batch = Vec::with_capacity(limit);
            batch.push(first);
            take_ready(&mut receiver, &mut batch, limit);
            let linger = self.handler.linger();
            if limit > 1 && !linger.is_zero() {
                let until = tokio::time::Instant::now() + linger;
                while batch.len() < limit {
                    tokio::select! {
                        biased;
                        _ = paused.token.cancelled() => break,
                        next = tokio::time::timeout_at(until, receiver.recv()) => match next {
                            Ok(Some(delivery)) => {
                                batch.push(delivery);
                                take_ready(&mut receiver, &mut batch, limit);
                            }
                            // the wait is over, or the channel closed (shutdown, interruption)
                            Ok(None) | Err(_) => break,
                        },
                    }
                }
            }
            let size = batch.len();
            match self.handle_batch(batch, &mut conn).await {
                BatchResult::Committed => {
                    handle_alone = handle_alone.saturating_sub(size);
                    committed.store(true, Ordering::Relaxed);
                }
                BatchResult::DatabaseDown(batch) => {
                    unhandled.extend(batch);
                    paused.pause(Pause::Database);
                }
                BatchResult::DependencyDown(batch) => {
                    unhandled.extend(batch);
                    paused.pause(Pause::Dependency);
                }
                BatchResult::Refused if size > 1 => handle_alone = size,
                BatchResult::Refused => handle_alone = handle_alone.saturating_sub(1),
            }
        }
        unhandled
    }

    /// Waits until what `pause` waits for is back (or shutdown).
    async fn wait_to_resume(&self, pause: Pause, shutdown: &CancellationToken) {
        match pause {
            Pause::Database => self.wait_for_database(shutdown).await,
            Pause::Dependency => {
                // at least a moment, so that a handler that reports a dependency unavailable
                // while ready does not make the loop spin
                sleep_or_shutdown(MIN_DEPENDENCY_PAUSE, shutdown).await;
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = self.handler.ready() => {}
                }
            }
        }
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

const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// Shortest pause for an unavailable dependency.
const MIN_DEPENDENCY_PAUSE: Duration = Duration::from_millis(100);

/// Longest pause between two renewals of the held messages during a database outage.
const KEEP_HELD_INTERVAL: Duration = Duration::from_secs(2);

/// Adds to `batch` what is ready in `receiver`, up to `limit` in all.
fn take_ready(
    receiver: &mut mpsc::Receiver<Box<dyn Delivery>>,
    batch: &mut Vec<Box<dyn Delivery>>,
    limit: usize,
) {
    while batch.len() < limit {
        match receiver.try_recv() {
            Ok(delivery) => batch.push(delivery),
            Err(_empty_or_closed) => break,
        }
    }
}

/// Messages already received from the subscription but not handed to a worker.
fn prefetched(deliveries: &mut Deliveries) -> Vec<Box<dyn Delivery>> {
    let mut prefetched = Vec::new();
    while let Some(Some(Ok(delivery))) = deliveries.next().now_or_never() {
        prefetched.push(delivery);
    }
    prefetched
}

/// Every third of `ack_wait` (at most [`KEEP_HELD_INTERVAL`], so the subscription is read
/// often enough for its heartbeats), adds what the subscription delivered meanwhile to `held`
/// and tells the broker that all of them are still being worked on, so none is redelivered
/// (which would count as an attempt); never returns.
async fn keep_held(
    deliveries: &mut Deliveries,
    held: &mut VecDeque<Box<dyn Delivery>>,
    ack_wait: Duration,
    held_gauge: &metrics::Gauge,
) {
    loop {
        tokio::time::sleep((ack_wait / 3).min(KEEP_HELD_INTERVAL)).await;
        held.extend(prefetched(deliveries));
        held_gauge.set(held.len() as f64);
        keep_in_progress_once(held.make_contiguous()).await;
    }
}

async fn keep_in_progress_once(held: &[Box<dyn Delivery>]) {
    let renewed = futures::future::join_all(held.iter().map(|delivery| delivery.in_progress()));
    for error in renewed.await.into_iter().filter_map(Result::err) {
        tracing::debug!(%error, "could not renew a held message; it will be redelivered");
    }
}

/// The part of a subject that names the order: that of an event subject, or `<order>` of
/// `jwl.replay.<service>.<order>.…` (the whole subject if it is of neither shape).
fn order_key(source: ConsumerSource, subject: &str) -> &str {
    let order = match source {
        ConsumerSource::Events => jwl_events::subject_order(subject),
        ConsumerSource::Replay => subject.split('.').nth(3),
    };
    order.unwrap_or(subject)
}

/// Which of `workers` handles the messages of `key` (stable for the life of the process).
fn worker_of(key: &str, workers: usize) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
    (hash % workers as u64) as usize
}

/// How often the events consumer looks for dead letters owed by released messages.
const OWED_DEAD_LETTERS_INTERVAL: Duration = Duration::from_secs(2);

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_order_always_goes_to_the_same_worker() {
        let order = "01a2378a-de41-7701-8d03-b7e6933b6820";
        let created = format!("jwl.evt.order.created.{order}");
        // an event of the legacy layout goes to the same worker as the order's others
        let captured = format!("jwl.evt.{order}.payment.captured");
        let replayed = format!("jwl.replay.payment.{order}.order.created");
        assert_eq!(order_key(ConsumerSource::Events, &created), order);
        assert_eq!(order_key(ConsumerSource::Events, &captured), order);
        assert_eq!(order_key(ConsumerSource::Replay, &replayed), order);
        assert_eq!(order_key(ConsumerSource::Events, "odd"), "odd");
        let worker = worker_of(order, 4);
        assert!(worker < 4);
        assert_eq!(worker_of(order, 4), worker);
        // and orders are spread over the workers
        let used: std::collections::HashSet<usize> = (0..64)
            .map(|i| worker_of(&format!("order-{i}"), 4))
            .collect();
        assert_eq!(used.len(), 4);
    }
}
