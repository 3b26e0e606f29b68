//! Waking the relay: in-process through its [`RelaySignal`], `LISTEN` on the schema's outbox
//! channel for commits of other processes, and a poll as fallback.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use super::RelaySignal;
use crate::enqueue::notify_channel;
use crate::stall;

/// Waits for an in-process signal, an outbox notification, the poll interval, or shutdown,
/// whichever comes first.
pub(crate) struct Wakeup {
    pool: PgPool,
    signal: RelaySignal,
    channel: String,
    listener: Option<PgListener>,
    poll_interval: Duration,
    stall_timeout: Duration,
}

impl Wakeup {
    pub fn new(
        pool: PgPool,
        signal: RelaySignal,
        schema: &str,
        poll_interval: Duration,
        stall_timeout: Duration,
    ) -> Self {
        Self {
            pool,
            signal,
            channel: notify_channel(schema),
            listener: None,
            poll_interval,
            stall_timeout,
        }
    }

    /// (Re)starts listening if not listening, within the stall timeout; on failure the relay
    /// just polls.
    pub async fn ensure_listening(&mut self) {
        if self.listener.is_some() {
            return;
        }
        let listening = tokio::time::timeout(self.stall_timeout, self.listen())
            .await
            .unwrap_or_else(|_elapsed| Err(stall::stalled(self.stall_timeout)));
        match listening {
            Ok(listener) => self.listener = Some(listener),
            Err(error) => tracing::warn!(%error, "relay cannot LISTEN; polling the outbox"),
        }
    }

    async fn listen(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(&self.channel).await?;
        Ok(listener)
    }

    /// Returns when signalled in-process, when a notification arrives (buffered ones count),
    /// after the poll interval, or at shutdown.
    pub async fn wait(&mut self, shutdown: &CancellationToken) {
        let Some(listener) = self.listener.as_mut() else {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = self.signal.notified() => {}
                _ = tokio::time::sleep(self.poll_interval) => {}
            }
            return;
        };
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = self.signal.notified() => {
                while listener.next_buffered().is_some() {}
                return;
            }
            received = tokio::time::timeout(self.poll_interval, listener.recv()) => received,
        };
        match received {
            Ok(Ok(_)) => while listener.next_buffered().is_some() {},
            Ok(Err(error)) => {
                tracing::warn!(%error, "relay LISTEN connection failed; polling until it is back");
                self.listener = None;
            }
            Err(_poll_interval_elapsed) => {}
        }
    }
}
