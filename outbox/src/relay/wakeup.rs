//! Waking the relay's partitions: in-process through its [`RelaySignal`], which
//! [`forward_notifications`] also bumps for each `NOTIFY` on the schema's outbox channel (commits
//! of other processes), and a poll as fallback.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::RelaySignal;
use crate::enqueue::notify_channel;
use crate::stall;

/// Waits for a wake-up of the [`RelaySignal`], the poll interval, or shutdown, whichever comes
/// first. One per partition relay.
pub(crate) struct Wakeup {
    wakeups: watch::Receiver<u64>,
    poll_interval: Duration,
}

impl Wakeup {
    pub fn new(signal: &RelaySignal, poll_interval: Duration) -> Self {
        Self {
            wakeups: signal.subscribe(),
            poll_interval,
        }
    }

    /// Forgets the wake-ups so far (the caller is about to look at the outbox anyway).
    pub fn reset(&mut self) {
        self.wakeups.mark_unchanged();
    }

    /// Whether a wake-up came since the last reset or wait (more rows may be pending).
    pub fn woken(&self) -> bool {
        self.wakeups.has_changed().unwrap_or(true)
    }

    /// Returns when woken (a wake-up since the last wait counts), after the poll interval, at
    /// shutdown, or at `deadline` if that comes first: returns whether it was the deadline (no
    /// wake-up, poll or shutdown before it).
    pub async fn wait_until(
        &mut self,
        shutdown: &CancellationToken,
        deadline: Option<Instant>,
    ) -> bool {
        let poll = Instant::now() + self.poll_interval;
        let (until, is_deadline) = match deadline {
            Some(deadline) if deadline < poll => (deadline, true),
            _ => (poll, false),
        };
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = self.wakeups.changed() => false,
            _ = tokio::time::sleep_until(until) => is_deadline,
        }
    }
}

/// While this process's relay leads a partition, `LISTEN`s on the schema's outbox channel and
/// wakes the partitions at each notification; a process leading nothing keeps no `LISTEN`
/// connection. When it cannot listen, the partitions just poll, and listening is retried every
/// `retry`. Returns at shutdown.
pub(crate) async fn forward_notifications(
    pool: PgPool,
    signal: RelaySignal,
    poll_interval: Duration,
    stall_timeout: Duration,
    retry: Duration,
    shutdown: CancellationToken,
) {
    let mut listener: Option<PgListener> = None;
    while !shutdown.is_cancelled() {
        if signal.led() == 0 {
            listener = None;
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(poll_interval) => {}
            }
            continue;
        }
        let Some(listening) = listener.as_mut() else {
            let started = tokio::time::timeout(stall_timeout, listen(&pool))
                .await
                .unwrap_or_else(|_elapsed| Err(stall::stalled(stall_timeout)));
            match started {
                Ok(started) => {
                    listener = Some(started);
                    // rows committed before the LISTEN began were not notified
                    signal.wake();
                }
                Err(error) => {
                    tracing::warn!(%error, "relay cannot LISTEN; polling the outbox");
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(retry) => {}
                    }
                }
            }
            continue;
        };
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = tokio::time::timeout(poll_interval, listening.recv()) => received,
        };
        match received {
            Ok(Ok(_)) => {
                while listening.next_buffered().is_some() {}
                signal.wake();
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "relay LISTEN connection failed; polling until it is back");
                listener = None;
            }
            // re-checks whether this process still leads anything
            Err(_poll_interval_elapsed) => {}
        }
    }
}

/// A listener on the outbox channel of the pool's current schema.
async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let schema: Option<String> = sqlx::query_scalar("SELECT current_schema()::text")
        .fetch_one(pool)
        .await?;
    let schema = schema.ok_or_else(|| {
        sqlx::Error::Configuration("the pool's search_path names no existing schema".into())
    })?;
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(&notify_channel(&schema)).await?;
    Ok(listener)
}
