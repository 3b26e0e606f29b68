//! [`RelaySignal`]: telling a schema's relay that outbox rows were committed, at the cost the
//! situation allows.
//!
//! [`enqueue`](crate::enqueue) only inserts the row. A `NOTIFY` inside the writing transaction
//! would take PostgreSQL's database-wide notification lock at commit and hold it through the
//! commit's WAL flush, so every event-writing commit of the cluster would be serialised behind
//! one fsync at a time: no group commit. Instead, whoever committed rows says so afterwards:
//! - this process's relay partitions are woken in-process, always; when they lead every partition
//!   of the schema (the usual case: one process, or one partition) that is all — no database
//!   work at all;
//! - otherwise (another replica leads some partition), one `NOTIFY` in a transaction of its own,
//!   which writes no WAL, so the lock is held for microseconds; a process leading partitions
//!   `LISTEN`s and wakes its partition relays.
//!
//! A missed signal costs latency, never an event: the relay also polls every
//! `relay_poll_interval`.
//!
//! Given the rows it committed ([`RelaySignal::committed_rows`]), the signal may instead have them
//! published at once, without a claim (see [`handover`](super::handover)).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

use super::handover::{Enqueued, Handover};
use super::steps::publish;
use crate::enqueue::CHANNEL_PREFIX;
use crate::faults::crash;
use crate::stall;
use crate::transport::Publisher;

/// A handle shared by a schema's relay and everything in the same process that commits outbox
/// rows to that schema. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RelaySignal {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Bumped at every wake-up; each partition relay watches it (a wake-up that comes while it
    /// is busy is seen at its next wait).
    wake: watch::Sender<u64>,
    /// Partitions of the schema this process's relay leads, out of `partitions`.
    led: AtomicUsize,
    partitions: AtomicUsize,
    /// Bound on the cross-process `NOTIFY` (a half-open connection must not hang the caller).
    stall_timeout: Duration,
    handover: Handover,
}

impl RelaySignal {
    /// A signal whose cross-process `NOTIFY` is bounded by `stall_timeout` (see
    /// [`MessagingSettings::db_stall_timeout`](crate::MessagingSettings::db_stall_timeout)).
    pub fn new(stall_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                wake: watch::Sender::new(0),
                led: AtomicUsize::new(0),
                partitions: AtomicUsize::new(1),
                stall_timeout,
                handover: Handover::default(),
            }),
        }
    }

    /// Call after committing a transaction that enqueued events to the schema of `pool` (its
    /// `search_path`). Never fails: a notification that cannot be sent is logged, and the relay's
    /// poll picks the rows up.
    pub async fn committed(&self, pool: &PgPool) {
        self.wake();
        if self.leads_all() {
            return;
        }
        let sent = stall::with_connection(pool, self.inner.stall_timeout, async |conn| {
            sqlx::query("SELECT pg_notify($1 || current_schema(), '')")
                .bind(CHANNEL_PREFIX)
                .execute(conn)
                .await
        })
        .await;
        if let Err(error) = sent {
            tracing::debug!(%error, "could not notify the relay; it will find the rows when it polls");
        }
    }

    /// Call after committing a transaction that wrote `rows` to the outbox of the schema of
    /// `pool`: publishes them at once, without a claim, when nothing can be out of order (the
    /// relay runs in this process and leads every partition, and every earlier pending row of
    /// their orders was acknowledged by the broker; see [`handover`](super::handover)), else as
    /// [`committed`](Self::committed). Never fails, never waits for the broker: a hand-over that
    /// fails is the relay's to retry.
    pub async fn committed_rows(&self, pool: &PgPool, rows: Enqueued) {
        if rows.is_empty() {
            return;
        }
        let taken = if self.leads_all() {
            self.inner.handover.take(rows)
        } else {
            None
        };
        let Some((publisher, crash_after_publish, rows)) = taken else {
            return self.committed(pool).await;
        };
        let signal = self.clone();
        tokio::spawn(async move {
            let outcome = publish(&*publisher, rows.batch()).await;
            if crash_after_publish && !outcome.published.is_empty() {
                crash("crash_after_publish (handed over, not marked)");
            }
            if signal.inner.handover.published(&rows, &outcome) {
                signal.wake();
            }
        });
    }

    /// Makes [`committed_rows`](Self::committed_rows) hand rows over, publishing with the
    /// relay's `publisher`.
    pub(crate) fn enable_handover(
        &self,
        service: &'static str,
        publisher: Arc<dyn Publisher>,
        crash_after_publish: bool,
    ) {
        self.inner
            .handover
            .enable(service, publisher, crash_after_publish);
    }

    pub(crate) fn handover(&self) -> &Handover {
        &self.inner.handover
    }

    /// Wakes this process's partition relays.
    pub(crate) fn wake(&self) {
        self.inner.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// How many wake-ups this signal has sent (wrapping): a caller's tests compare it before and
    /// after a request to see whether the request woke the relay.
    pub fn wakeups(&self) -> u64 {
        *self.inner.wake.borrow()
    }

    /// Whether this process's relay leads every partition of the schema.
    fn leads_all(&self) -> bool {
        self.inner.led.load(Ordering::Acquire) >= self.inner.partitions.load(Ordering::Acquire)
    }

    /// Sets the schema's partition count (1 until the relay says otherwise).
    pub(crate) fn set_partitions(&self, partitions: usize) {
        self.inner.partitions.store(partitions, Ordering::Release);
    }

    /// Counts one more (`true`) or one fewer (`false`) partition led by this process.
    pub(crate) fn set_leading(&self, leading: bool) {
        if leading {
            self.inner.led.fetch_add(1, Ordering::AcqRel);
        } else {
            // never below 0, whatever the call order
            let was = self
                .inner
                .led
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
            if was == Ok(1) {
                self.inner.handover.forget();
            }
        }
    }

    /// How many partitions this process's relay leads.
    pub(crate) fn led(&self) -> usize {
        self.inner.led.load(Ordering::Acquire)
    }

    /// A receiver of in-process wake-ups, for one partition relay.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.wake.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_leading_relay_is_woken_in_process_even_if_signalled_before_it_waits() {
        let signal = RelaySignal::new(Duration::from_secs(1));
        signal.set_partitions(2);
        signal.set_leading(true);
        signal.set_leading(true);
        let mut partitions = [signal.subscribe(), signal.subscribe()];
        for partition in &mut partitions {
            partition.mark_unchanged();
        }
        // no pool is touched when leading every partition: a pool that cannot connect proves it
        let pool = PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("a lazy pool needs no server");
        signal.committed(&pool).await;
        for partition in &mut partitions {
            tokio::time::timeout(Duration::from_secs(1), partition.changed())
                .await
                .expect("the stored wake-up is delivered to every partition")
                .expect("the sender lives in the signal");
        }
    }

    #[test]
    fn leading_some_partitions_is_not_leading_all() {
        let signal = RelaySignal::new(Duration::from_secs(1));
        assert!(!signal.leads_all(), "a relay leading nothing");
        signal.set_leading(true);
        assert!(signal.leads_all(), "one partition of one");
        signal.set_partitions(4);
        assert!(!signal.leads_all(), "one partition of four");
        signal.set_leading(false);
        signal.set_leading(false);
        assert_eq!(signal.led(), 0);
    }
}
