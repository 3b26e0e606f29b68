//! Retention of the order service's bookkeeping: idempotency keys older than
//! `JWL_IDEMPOTENCY_TTL` have expired (a repeat of the request then places a new order) and are
//! deleted, in batches, every [`PRUNE_EVERY`], by every replica (deleting is idempotent).

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::store;

/// How often expired keys are looked for.
pub const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Keys deleted per statement; a full batch is followed by another at once.
const BATCH: i64 = 1_000;

/// Deletes every idempotency key recorded more than `ttl` ago; returns how many.
pub async fn prune_expired_idempotency_keys(
    pool: &PgPool,
    ttl: Duration,
) -> Result<u64, sqlx::Error> {
    let mut pruned = 0;
    loop {
        let deleted = store::prune_idempotency_keys(pool, ttl, BATCH).await?;
        pruned += deleted;
        if deleted < BATCH as u64 {
            return Ok(pruned);
        }
    }
}

/// Prunes at start and every [`PRUNE_EVERY`] until `shutdown`; failures are logged and retried
/// on the next round.
pub(crate) async fn run(pool: PgPool, ttl: Duration, shutdown: CancellationToken) {
    loop {
        match prune_expired_idempotency_keys(&pool, ttl).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "expired idempotency keys deleted"),
            Err(error) => tracing::warn!(%error, "pruning idempotency keys failed; retrying later"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}
