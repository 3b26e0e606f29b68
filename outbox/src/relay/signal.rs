//! [`RelaySignal`]: telling a schema's relay that outbox rows were committed, at the cost the
//! situation allows.
//!
//! [`enqueue`](crate::enqueue) only inserts the row. A `NOTIFY` inside the writing transaction
//! would take PostgreSQL's database-wide notification lock at commit and hold it through the
//! commit's WAL flush, so every event-writing commit of the cluster would be serialised behind
//! one fsync at a time: no group commit. Instead, whoever committed rows says so afterwards:
//! - when this process's relay of the schema leads (the usual case: one process, or the replica
//!   holding the lease), it is woken in-process — no database work at all;
//! - otherwise (another replica leads), one `NOTIFY` in a transaction of its own, which writes no
//!   WAL, so the lock is held for microseconds; the leading relay `LISTEN`s.
//!
//! A missed signal costs latency, never an event: the relay also polls every
//! `relay_poll_interval`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;

use crate::enqueue::CHANNEL_PREFIX;
use crate::stall;

/// A handle shared by a schema's relay and everything in the same process that commits outbox
/// rows to that schema. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RelaySignal {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    notify: Notify,
    /// This process's relay of the schema holds the lease.
    leading: AtomicBool,
    /// Bound on the cross-process `NOTIFY` (a half-open connection must not hang the caller).
    stall_timeout: Duration,
}

impl RelaySignal {
    /// A signal whose cross-process `NOTIFY` is bounded by `stall_timeout` (see
    /// [`MessagingSettings::db_stall_timeout`](crate::MessagingSettings::db_stall_timeout)).
    pub fn new(stall_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                notify: Notify::new(),
                leading: AtomicBool::new(false),
                stall_timeout,
            }),
        }
    }

    /// Call after committing a transaction that enqueued events to the schema of `pool` (its
    /// `search_path`). Never fails: a notification that cannot be sent is logged, and the relay's
    /// poll picks the rows up.
    pub async fn committed(&self, pool: &PgPool) {
        if self.inner.leading.load(Ordering::Acquire) {
            self.inner.notify.notify_one();
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

    /// Marks this process's relay as leading (woken in-process) or not (woken by `NOTIFY`).
    pub(crate) fn set_leading(&self, leading: bool) {
        self.inner.leading.store(leading, Ordering::Release);
    }

    /// Waits for an in-process wake-up (one stored if it came while nobody waited).
    pub(crate) async fn notified(&self) {
        self.inner.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_leading_relay_is_woken_in_process_even_if_signalled_before_it_waits() {
        let signal = RelaySignal::new(Duration::from_secs(1));
        signal.set_leading(true);
        // no pool is touched when leading: a pool that cannot connect proves it
        let pool = PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("a lazy pool needs no server");
        signal.committed(&pool).await;
        tokio::time::timeout(Duration::from_secs(1), signal.notified())
            .await
            .expect("the stored wake-up is delivered");
    }
}
