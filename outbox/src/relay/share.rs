//! Sharing a schema's relay partitions out between its relay processes.
//!
//! Every process tries to take every partition lease it does not hold, once per standby retry,
//! so a partition whose holder died is taken over within about that time. Left at that, the
//! first process up would keep every partition; so each process also records itself in
//! `outbox_relay_members` with the number of partitions it leads, and a process leading more
//! than its floor share (`partitions / live processes`) while another leads less gives one
//! partition up, and does not try to take it back for a while (the one leading less takes it at
//! its next retry). This converges to an even split without any process electing another.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::stall;

/// What this process's partition relays are doing, shared between them and [`share_out`].
#[derive(Debug)]
pub(crate) struct Board {
    slots: Vec<Slot>,
}

#[derive(Debug, Default)]
struct Slot {
    leading: AtomicBool,
    /// Asked to hand its lease back.
    giving_up: AtomicBool,
    /// Not to be taken again before this instant (given up recently).
    not_before: Mutex<Option<Instant>>,
}

impl Board {
    pub fn new(partitions: usize) -> Self {
        Self {
            slots: (0..partitions).map(|_| Slot::default()).collect(),
        }
    }

    fn slot(&self, partition: usize) -> Option<&Slot> {
        self.slots.get(partition)
    }

    /// Whether this process may try to take `partition`'s lease now.
    pub fn may_try(&self, partition: usize) -> bool {
        self.slot(partition).is_some_and(|slot| {
            let not_before = slot.not_before.lock().unwrap_or_else(|e| e.into_inner());
            not_before.is_none_or(|instant| Instant::now() >= instant)
        })
    }

    pub fn started(&self, partition: usize) {
        if let Some(slot) = self.slot(partition) {
            slot.leading.store(true, Ordering::Release);
        }
    }

    pub fn stopped(&self, partition: usize) {
        if let Some(slot) = self.slot(partition) {
            slot.leading.store(false, Ordering::Release);
            slot.giving_up.store(false, Ordering::Release);
        }
    }

    /// Whether the relay of `partition` should hand its lease back.
    pub fn giving_up(&self, partition: usize) -> bool {
        self.slot(partition)
            .is_some_and(|slot| slot.giving_up.load(Ordering::Acquire))
    }

    /// How many partitions this process leads.
    pub fn led(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| slot.leading.load(Ordering::Acquire))
            .count()
    }

    /// Asks the relay of the highest partition this process leads (and is not already giving
    /// up) to hand its lease back, and keeps the process from taking it again for `cooldown`.
    pub fn give_one_up(&self, cooldown: Duration) -> Option<usize> {
        let (partition, slot) = self.slots.iter().enumerate().rev().find(|(_, slot)| {
            slot.leading.load(Ordering::Acquire) && !slot.giving_up.load(Ordering::Acquire)
        })?;
        *slot.not_before.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + cooldown);
        slot.giving_up.store(true, Ordering::Release);
        Some(partition)
    }
}

/// Whether a process leading `mine` of `partitions` partitions should give one up, when the
/// other live processes of the same partition count lead `others`.
pub(crate) fn should_give_one_up(partitions: usize, mine: usize, others: &[usize]) -> bool {
    let floor_share = partitions / (others.len() + 1);
    mine > floor_share && others.iter().any(|&theirs| theirs < floor_share)
}

/// Records this process among the schema's relay processes every `every`, and gives a partition
/// up when it leads more than its share (see the module doc). Removes its record at shutdown.
pub(crate) async fn share_out(
    pool: PgPool,
    board: std::sync::Arc<Board>,
    partitions: usize,
    every: Duration,
    poll_interval: Duration,
    stall_timeout: Duration,
    shutdown: CancellationToken,
) {
    let member = Uuid::new_v4();
    // a process is live while it refreshed its record within three rounds
    let live_for = every * 3 + poll_interval;
    // the one leading less retries within `every`; the lease is handed back within the poll
    let cooldown = every * 2 + poll_interval;
    let count = i32::try_from(partitions).unwrap_or(i32::MAX);
    while !shutdown.is_cancelled() {
        let mine = board.led();
        let beat = stall::with_connection(&pool, stall_timeout, async |conn| {
            sqlx::query_scalar::<_, i32>(
                "WITH beat AS (
                     INSERT INTO outbox_relay_members (member, partitions, led, seen_at)
                     VALUES ($1, $2, $3, now())
                     ON CONFLICT (member) DO UPDATE
                     SET partitions = EXCLUDED.partitions, led = EXCLUDED.led, seen_at = now()
                 ), gone AS (
                     DELETE FROM outbox_relay_members
                     WHERE seen_at < now() - make_interval(secs => $4 * 100)
                 )
                 SELECT led FROM outbox_relay_members
                 WHERE member <> $1 AND partitions = $2
                   AND seen_at > now() - make_interval(secs => $4)",
            )
            .bind(member)
            .bind(count)
            .bind(i32::try_from(mine).unwrap_or(i32::MAX))
            .bind(live_for.as_secs_f64())
            .fetch_all(conn)
            .await
        })
        .await;
        match beat {
            Ok(others) => {
                let others: Vec<usize> = others
                    .into_iter()
                    .map(|led| usize::try_from(led).unwrap_or(0))
                    .collect();
                if should_give_one_up(partitions, mine, &others)
                    && let Some(partition) = board.give_one_up(cooldown)
                {
                    tracing::info!(
                        partition,
                        led = mine,
                        others = ?others,
                        "giving a relay partition up to a process that leads fewer"
                    );
                }
            }
            Err(error) => tracing::debug!(%error, "cannot record this relay process"),
        }
        let jitter = every.mul_f64(fastrand::f64() * 0.2);
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(every + jitter) => {}
        }
    }
    let left = stall::with_connection(&pool, stall_timeout, async |conn| {
        sqlx::query("DELETE FROM outbox_relay_members WHERE member = $1")
            .bind(member)
            .execute(conn)
            .await
    })
    .await;
    if let Err(error) = left {
        tracing::debug!(%error, "cannot remove this relay process's record");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_gives_up_only_above_its_share_and_only_to_one_below_it() {
        // 4 partitions, 2 processes
        assert!(should_give_one_up(4, 4, &[0]));
        assert!(should_give_one_up(4, 3, &[1]));
        assert!(!should_give_one_up(4, 2, &[2]));
        assert!(!should_give_one_up(4, 2, &[1]), "at its share");
        // 4 partitions, 3 processes: floor share 1
        assert!(should_give_one_up(4, 2, &[2, 0]));
        assert!(!should_give_one_up(4, 2, &[1, 1]));
        // more processes than partitions: nobody is owed one
        assert!(!should_give_one_up(2, 2, &[0, 0, 0]));
        // alone
        assert!(!should_give_one_up(4, 4, &[]));
    }

    #[test]
    fn the_highest_partition_led_is_given_up_and_not_retaken_during_the_cooldown() {
        let board = Board::new(4);
        for partition in [0, 1, 2] {
            board.started(partition);
        }
        assert_eq!(board.led(), 3);
        assert_eq!(board.give_one_up(Duration::from_secs(60)), Some(2));
        assert!(board.giving_up(2) && !board.giving_up(1));
        assert_eq!(
            board.give_one_up(Duration::from_secs(60)),
            Some(1),
            "one already giving up is skipped"
        );
        board.stopped(2);
        assert!(!board.giving_up(2));
        assert!(!board.may_try(2), "in its cooldown");
        assert!(board.may_try(3));
        assert_eq!(board.led(), 2);
    }
}
