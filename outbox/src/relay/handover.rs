//! Hand-over: the outbox rows a transaction of this process committed are published at once by
//! a task of their own, without waiting for the relay to claim them, whenever that cannot reorder
//! an order's events; the relay marks them published later, with its own rows.
//!
//! The relay's order guarantee rests on causality: a later event of an order is written only
//! after the earlier one committed (its cause was delivered, or its transaction read the state
//! the earlier one wrote), so a claim walking the pending rows in `seq` order publishes an order's
//! events in order. A hand-over skips the claim, so the writing transaction checks instead: the
//! outbox insert returns, for each row, the pending rows of the same order written before it (by
//! `outbox_pending_order_idx`), and the rows are handed over only if the broker has already
//! acknowledged every one of those (published, not marked yet) or they are the transaction's own.
//! Otherwise — an earlier row still waits for the relay, is being retried after a failure, or was
//! written by another process — the relay is woken and publishes them all in order, as before.
//! Two transactions of this process writing rows of one order at the same time cannot see each
//! other's rows, so a hand-over also waits for no other: while one of an order is in flight, the
//! next rows of that order go to the relay (which publishes the rows in flight again first).
//! A hand-over also needs the relay running in this process and leading every partition of the
//! schema: with another leader, a row written by another process could precede ours unseen.
//!
//! A hand-over that fails, in part or whole, wakes the relay, which claims the rows and retries
//! them from the oldest. A crash after the commit leaves the rows pending for the relay. A claim
//! that comes while a hand-over is in flight (a poll, another process's `NOTIFY`) publishes those
//! rows a second time: the broker's duplicate window (the inboxes, on Kafka) absorbs it, and the
//! relay's rounds keep the order.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use metrics::Counter;
use tokio::sync::watch;

use super::steps::{OutboxBatch, PublishOutcome, ordering_key};
use crate::metrics::{HANDOVER_OUTCOME, OUTBOX_HANDOVERS};
use crate::transport::{OutboundMessage, Publisher};

/// One row as the outbox insert returns it (see [`insert_rows`](crate::enqueue)).
#[derive(sqlx::FromRow)]
pub(crate) struct Written {
    seq: i64,
    order_hash: i32,
    /// The pending rows of the same order written before it.
    earlier: Vec<i64>,
}

/// The outbox rows a transaction wrote ([`enqueue`](crate::enqueue()),
/// [`enqueue_all`](crate::enqueue_all)): once it has committed, hand them to
/// [`RelaySignal::committed_rows`](super::RelaySignal::committed_rows).
#[derive(Debug, Default)]
pub struct Enqueued {
    rows: OutboxBatch,
    /// Each row's `order_hash`, parallel to `rows`.
    order_hashes: Vec<i32>,
    /// The pending rows of the same orders written before them, by earlier statements of the
    /// same transaction too ([`Enqueued::others_earlier`] leaves those out).
    earlier: Vec<i64>,
}

impl Enqueued {
    pub(crate) fn push(&mut self, written: Written, message: OutboundMessage) {
        self.rows.seqs.push(written.seq);
        self.rows.messages.push(message);
        self.order_hashes.push(written.order_hash);
        self.earlier.extend(written.earlier);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows as the relay's publish takes them.
    pub(crate) fn batch(&self) -> &OutboxBatch {
        &self.rows
    }

    /// The ordering keys of the rows (each once).
    fn keys(&self) -> impl Iterator<Item = &str> {
        let mut seen = HashSet::new();
        self.rows
            .messages
            .iter()
            .map(ordering_key)
            .filter(move |key| seen.insert(*key))
    }

    /// The earlier pending rows that are not the transaction's own: rows of one statement do not
    /// see each other, rows of a later statement of the same transaction do.
    fn others_earlier(&self) -> impl Iterator<Item = &i64> {
        let own: HashSet<i64> = self.rows.seqs.iter().copied().collect();
        self.earlier.iter().filter(move |seq| !own.contains(seq))
    }
}

/// What a hand-over needs from the relay of this process: set once it runs.
struct Publishing {
    publisher: Arc<dyn Publisher>,
    crash_after_publish: bool,
    handed: Counter,
    refused: Counter,
}

/// The hand-over state of a schema in this process, kept by its [`RelaySignal`](super::RelaySignal).
pub(crate) struct Handover {
    state: Mutex<State>,
    /// Bumped when handed-over rows were acknowledged: the partition relays take them to mark.
    acknowledged: watch::Sender<u64>,
    publishing: OnceLock<Publishing>,
}

#[derive(Default)]
struct State {
    /// Rows the broker acknowledged, handed over or published by the relay, that no relay of
    /// this process has marked yet.
    acked: HashSet<i64>,
    /// Rows handed over and acknowledged, with their `order_hash`, for their partition's relay
    /// to mark.
    to_mark: Vec<(i64, i32)>,
    /// The ordering keys (orders) of the hand-overs in flight (one at a time per order).
    in_flight: HashSet<String>,
}

impl std::fmt::Debug for Handover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handover")
            .field("publishing", &self.publishing.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Handover {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            acknowledged: watch::Sender::new(0),
            publishing: OnceLock::new(),
        }
    }
}

impl Handover {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes hand-overs possible, publishing with `publisher` (the relay's, once it runs).
    pub(crate) fn enable(
        &self,
        service: &'static str,
        publisher: Arc<dyn Publisher>,
        crash_after_publish: bool,
    ) {
        let counter = |outcome: &'static str| {
            metrics::counter!(OUTBOX_HANDOVERS, "service" => service,
                HANDOVER_OUTCOME => outcome)
        };
        let _ = self.publishing.set(Publishing {
            publisher,
            crash_after_publish,
            handed: counter("handed_over"),
            refused: counter("to_relay"),
        });
    }

    /// Takes `rows` to publish now (`Some`: the publisher and the batch), when the relay runs in
    /// this process, every earlier pending row of their orders is acknowledged and no hand-over
    /// of those orders is in flight; `None`: the relay must be woken. Only call it while this
    /// process leads every partition.
    pub(crate) fn take(&self, rows: Enqueued) -> Option<(Arc<dyn Publisher>, bool, Enqueued)> {
        let publishing = self.publishing.get()?;
        let keys: Vec<&str> = rows.keys().collect();
        let taken = {
            let mut state = self.state();
            let free = rows.others_earlier().all(|seq| state.acked.contains(seq))
                && keys.iter().all(|key| !state.in_flight.contains(*key));
            if free {
                state
                    .in_flight
                    .extend(keys.iter().map(|key| (*key).to_owned()));
            }
            free
        };
        if !taken {
            publishing.refused.increment(1);
            return None;
        }
        publishing.handed.increment(1);
        Some((
            publishing.publisher.clone(),
            publishing.crash_after_publish,
            rows,
        ))
    }

    /// Records what became of a hand-over: the acknowledged rows are the relays' to mark.
    /// Returns whether some were not published (the relay must be woken for them).
    pub(crate) fn published(&self, rows: &Enqueued, outcome: &PublishOutcome) -> bool {
        let published: HashSet<i64> = outcome.published.iter().copied().collect();
        {
            let mut state = self.state();
            for (seq, hash) in rows.rows.seqs.iter().zip(&rows.order_hashes) {
                if published.contains(seq) {
                    state.acked.insert(*seq);
                    state.to_mark.push((*seq, *hash));
                }
            }
            for key in rows.keys() {
                state.in_flight.remove(key);
            }
        }
        if !published.is_empty() {
            self.acknowledged.send_modify(|n| *n = n.wrapping_add(1));
        }
        published.len() < rows.rows.len()
    }

    /// The relay published these (acknowledged, not marked).
    pub(crate) fn acked(&self, seqs: &[i64]) {
        if !seqs.is_empty() {
            self.state().acked.extend(seqs.iter().copied());
        }
    }

    /// A relay marked these published.
    pub(crate) fn marked(&self, seqs: &[i64]) {
        if seqs.is_empty() {
            return;
        }
        let mut state = self.state();
        for seq in seqs {
            state.acked.remove(seq);
        }
    }

    /// Takes the handed-over rows of partition `index` of `count` to mark.
    pub(crate) fn take_to_mark(&self, index: usize, count: usize) -> Vec<i64> {
        let mut state = self.state();
        if state.to_mark.is_empty() {
            return Vec::new();
        }
        let count = i64::try_from(count.max(1)).unwrap_or(1);
        let index = i64::try_from(index).unwrap_or(0);
        let mut taken = Vec::new();
        state.to_mark.retain(|&(seq, hash)| {
            let mine = i64::from(hash) % count == index;
            if mine {
                taken.push(seq);
            }
            !mine
        });
        taken
    }

    /// Forgets every row: this process leads no partition any more (the next leader publishes
    /// what is not marked again).
    pub(crate) fn forget(&self) {
        let mut state = self.state();
        state.acked.clear();
        state.to_mark.clear();
    }

    /// A receiver of the acknowledgements of handed-over rows, for one partition relay.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.acknowledged.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(seq: i64, order_hash: i32, earlier: &[i64]) -> Written {
        Written {
            seq,
            order_hash,
            earlier: earlier.to_vec(),
        }
    }

    /// A row of the order whose hash is `order_hash` (its ordering key is the subject).
    fn message(seq: i64, order_hash: i32) -> OutboundMessage {
        OutboundMessage {
            dedup_id: seq.to_string(),
            subject: format!("jwl.evt.{order_hash}.payment.captured"),
            headers: Vec::new(),
            payload: bytes::Bytes::new(),
        }
    }

    fn rows(written: Vec<Written>) -> Enqueued {
        let mut rows = Enqueued::default();
        for w in written {
            let message = message(w.seq, w.order_hash);
            rows.push(w, message);
        }
        rows
    }

    struct NoBroker;

    #[async_trait::async_trait]
    impl Publisher for NoBroker {
        async fn publish_batch(
            &self,
            batch: &[OutboundMessage],
        ) -> Vec<Result<crate::transport::PublishReceipt, crate::transport::TransportError>>
        {
            batch
                .iter()
                .map(|_| {
                    Err(crate::transport::TransportError::Receive(
                        "no broker".into(),
                    ))
                })
                .collect()
        }
    }

    fn enabled() -> Handover {
        let handover = Handover::default();
        handover.enable("test", Arc::new(NoBroker), false);
        handover
    }

    #[test]
    fn nothing_is_handed_over_before_the_relay_runs() {
        assert!(
            Handover::default()
                .take(rows(vec![written(1, 7, &[])]))
                .is_none()
        );
    }

    #[test]
    fn rows_behind_an_unacknowledged_row_of_their_order_go_to_the_relay() {
        let handover = enabled();
        let (_, _, first) = handover
            .take(rows(vec![written(5, 7, &[])]))
            .expect("no earlier row");
        assert!(
            handover.take(rows(vec![written(6, 7, &[5])])).is_none(),
            "row 5 is in flight"
        );
        let failed = PublishOutcome::default();
        assert!(handover.published(&first, &failed), "the relay is woken");
        assert!(
            handover.take(rows(vec![written(6, 7, &[5])])).is_none(),
            "row 5 failed: pending, not acknowledged"
        );
        handover.acked(&[5]);
        assert!(
            handover.take(rows(vec![written(6, 7, &[5])])).is_some(),
            "the relay published row 5"
        );
        handover.marked(&[5]);
        assert!(
            handover.take(rows(vec![written(7, 8, &[5])])).is_none(),
            "marked: if the insert still saw it pending, it is not known any more"
        );
    }

    #[test]
    fn rows_of_an_order_with_a_hand_over_in_flight_go_to_the_relay() {
        let handover = enabled();
        let first = rows(vec![written(1, 7, &[])]);
        let (_, _, first) = handover.take(first).expect("nothing in flight");
        assert!(
            handover.take(rows(vec![written(2, 7, &[])])).is_none(),
            "a concurrent transaction's row of the same order"
        );
        let outcome = PublishOutcome {
            published: vec![1],
            ..PublishOutcome::default()
        };
        assert!(!handover.published(&first, &outcome));
        assert!(
            handover.take(rows(vec![written(2, 7, &[])])).is_some(),
            "the first hand-over is over"
        );
    }

    #[test]
    fn a_transactions_own_earlier_rows_do_not_hold_it_back() {
        let handover = enabled();
        // row 9 written by a later statement of the transaction that wrote row 8
        let own = rows(vec![written(8, 7, &[]), written(9, 7, &[8])]);
        assert!(handover.take(own).is_some());
    }

    #[test]
    fn acknowledged_hand_overs_are_marked_by_their_partitions_relay() {
        let handover = enabled();
        let batch = rows(vec![
            written(1, 4, &[]),
            written(2, 5, &[]),
            written(3, 6, &[]),
        ]);
        let outcome = PublishOutcome {
            published: vec![1, 2],
            ..PublishOutcome::default()
        };
        assert!(
            handover.published(&batch, &outcome),
            "row 3 was not published: the relay must be woken"
        );
        assert_eq!(
            handover.take_to_mark(1, 2),
            vec![2],
            "hash 5 is partition 1 of 2"
        );
        assert_eq!(handover.take_to_mark(0, 2), vec![1]);
        assert!(handover.take_to_mark(0, 2).is_empty(), "taken once");
        assert!(
            handover.take(rows(vec![written(4, 4, &[1])])).is_some(),
            "row 1 is acknowledged until marked"
        );
        assert!(
            handover.take(rows(vec![written(5, 6, &[3])])).is_none(),
            "row 3 failed"
        );
        handover.forget();
        assert!(handover.take(rows(vec![written(6, 4, &[1])])).is_none());
    }
}
