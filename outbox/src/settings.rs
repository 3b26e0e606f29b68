//! Tunables of streams, consumers and the relay ([`MessagingSettings`]).

use std::time::Duration;

use crate::error::OutboxError;
use crate::faults::FaultPoints;

/// The most replicas JetStream allows a stream.
pub const MAX_STREAM_REPLICAS: usize = 5;

/// The most relay partitions of one schema (each costs a lease connection per process that
/// leads it, and a claim walks about `partitions` × batch pending rows).
pub const MAX_OUTBOX_PARTITIONS: usize = 64;

/// Everything that can be tuned about reliable messaging. `Default` holds production values;
/// tests shorten the timings.
#[derive(Debug, Clone, PartialEq)]
pub struct MessagingSettings {
    /// Stream holding all events (`jwl.evt.>`).
    pub events_stream: String,
    /// Stream holding dead letters (`jwl.dlq.>`).
    pub dlq_stream: String,
    /// Stream of messages replayed to one service's handlers (`jwl.replay.>`).
    pub replay_stream: String,
    /// Stream recording how dead letters were resolved (`jwl.dlqlog.>`).
    pub dlq_log_stream: String,
    /// How long the events stream keeps a message.
    pub events_max_age: Duration,
    /// How long the replay stream keeps a message.
    pub replay_max_age: Duration,
    /// How long the dead-letter log stream keeps a record.
    pub dlq_log_max_age: Duration,
    /// Broker-side deduplication window on `Nats-Msg-Id` (all streams).
    pub duplicate_window: Duration,
    /// Replicas of every stream (`JWL_STREAM_REPLICAS`): new streams are created with this many,
    /// and an existing stream with another count is changed to it (a clustered server allows
    /// that). `None` creates missing streams with one replica and leaves the replica count of
    /// existing ones alone (the operator tools, which must not rescale a deployment's streams).
    pub stream_replicas: Option<usize>,

    /// Most messages handled in one consumer transaction (default 256). Below saturation a
    /// batch is what is ready, usually a few messages; at saturation a batch's round trips
    /// (begin, inbox claim, locks, the handler's statements, outbox insert, commit) are paid once
    /// for this many messages, which is what lets a one-worker consumer (inventory) keep up.
    pub consumer_batch_size: usize,
    /// Batches one consumer loop handles at once, each in its own transaction. Messages are
    /// split between them by order id, so one order's messages are still handled one after the
    /// other, in stream order.
    pub consumer_workers: usize,
    /// Unacknowledged messages the broker lets one durable consumer have at once.
    pub max_ack_pending: u32,
    /// How long the broker waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// Delivery attempts before a transiently failing message is dead-lettered.
    pub max_attempts: u32,
    /// Redelivery delay after a transient failure, indexed by attempt (1 = first delivery); the
    /// last entry repeats. A little jitter is added.
    pub nak_backoff: Vec<Duration>,
    /// Redelivery delay for a whole batch whose transaction could not be committed.
    pub batch_failure_nak_delay: Duration,

    /// Partitions of the outbox (`JWL_OUTBOX_PARTITIONS`): rows are split by a stable hash of
    /// their order, each partition has its own lease and relay task, so replicas publish
    /// different partitions in parallel while each order's rows keep their order. Every replica
    /// of a service must run with the same count; see `docs/scaling.md` for changing it.
    pub outbox_partitions: usize,
    /// Most outbox rows published per relay round.
    pub relay_batch_size: usize,
    /// Fallback poll of the outbox when no notification arrives.
    pub relay_poll_interval: Duration,
    /// How often a relay process retries to take each partition lease it does not hold (this
    /// bounds the hand-over after a holder's connection drops), and refreshes its entry among the
    /// schema's relay processes (used to share the partitions out).
    pub relay_standby_retry: Duration,
    /// Relay retry backoff after a failed publish: first and largest delay. The largest delay
    /// bounds how long publishing lags behind a broker that came back (e.g. a stream's new
    /// leader elected after a node died); a retry is one batch, cheap even when it fails.
    pub relay_retry_min_delay: Duration,
    pub relay_retry_max_delay: Duration,
    /// How often the active relay deletes old published outbox rows and old inbox rows.
    pub housekeeping_interval: Duration,
    /// Published outbox rows older than this are deleted.
    pub outbox_retention: Duration,
    /// Inbox rows older than this are deleted (keep it above `events_max_age`).
    pub inbox_retention: Duration,

    /// How long database work may go without an answer before the connection is given up: the
    /// client-side bound on one consumer batch, relay step or timer run, and the server-side
    /// `idle_session_timeout` of the relay lease session, so that a lease held by a session whose
    /// client went silent (half-open after a partition) is freed for another relay. Keep it above
    /// the longest batch handling and above `relay_poll_interval` (the active relay runs a
    /// statement on its lease session at least that often).
    pub db_stall_timeout: Duration,

    /// Faults to inject, for failure-injection tests only; `None` (the default) injects none.
    pub faults: Option<FaultPoints>,
}

impl Default for MessagingSettings {
    fn default() -> Self {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        Self {
            events_stream: "JWL_EVENTS".to_owned(),
            dlq_stream: "JWL_DLQ".to_owned(),
            replay_stream: "JWL_REPLAY".to_owned(),
            dlq_log_stream: "JWL_DLQ_LOG".to_owned(),
            events_max_age: 7 * DAY,
            replay_max_age: DAY,
            dlq_log_max_age: 90 * DAY,
            duplicate_window: Duration::from_secs(120),
            stream_replicas: Some(1),
            consumer_batch_size: 256,
            consumer_workers: 1,
            max_ack_pending: 1024,
            ack_wait: Duration::from_secs(30),
            max_attempts: 8,
            nak_backoff: [1, 2, 5, 10, 30].map(Duration::from_secs).to_vec(),
            batch_failure_nak_delay: Duration::from_secs(1),
            outbox_partitions: 1,
            relay_batch_size: 256,
            relay_poll_interval: Duration::from_secs(1),
            relay_standby_retry: Duration::from_secs(3),
            relay_retry_min_delay: Duration::from_millis(200),
            relay_retry_max_delay: Duration::from_secs(1),
            housekeeping_interval: Duration::from_secs(60),
            outbox_retention: DAY,
            inbox_retention: 14 * DAY,
            db_stall_timeout: Duration::from_secs(30),
            faults: None,
        }
    }
}

impl MessagingSettings {
    /// Rejects settings the loops cannot work with.
    pub fn validate(&self) -> Result<(), OutboxError> {
        let fail = |what: &str| Err(OutboxError::InvalidSettings(what.to_owned()));
        let streams = [
            &self.events_stream,
            &self.dlq_stream,
            &self.replay_stream,
            &self.dlq_log_stream,
        ];
        if streams.iter().any(|name| name.is_empty()) {
            return fail("stream names must not be empty");
        }
        if self
            .stream_replicas
            .is_some_and(|replicas| !(1..=MAX_STREAM_REPLICAS).contains(&replicas))
        {
            return fail("stream_replicas must be between 1 and 5");
        }
        if !(1..=MAX_OUTBOX_PARTITIONS).contains(&self.outbox_partitions) {
            return fail("outbox_partitions must be between 1 and 64");
        }
        if self.consumer_batch_size == 0 || self.relay_batch_size == 0 {
            return fail("batch sizes must be at least 1");
        }
        if self.consumer_workers == 0 {
            return fail("consumer_workers must be at least 1");
        }
        if self.max_ack_pending == 0 {
            return fail("max_ack_pending must be at least 1");
        }
        if self.max_attempts == 0 {
            return fail("max_attempts must be at least 1");
        }
        if self.nak_backoff.is_empty() {
            return fail("nak_backoff must have at least one delay");
        }
        if self.ack_wait.is_zero() || self.relay_poll_interval.is_zero() {
            return fail("ack_wait and relay_poll_interval must be positive");
        }
        if self.db_stall_timeout <= self.relay_poll_interval {
            return fail("db_stall_timeout must exceed relay_poll_interval");
        }
        if self.relay_retry_min_delay > self.relay_retry_max_delay {
            return fail("relay_retry_min_delay must not exceed relay_retry_max_delay");
        }
        Ok(())
    }

    /// Redelivery delay after the `attempt`-th delivery failed transiently (without jitter).
    pub fn nak_delay(&self, attempt: u32) -> Duration {
        let index = (attempt.max(1) - 1) as usize;
        self.nak_backoff
            .get(index)
            .or(self.nak_backoff.last())
            .copied()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(MessagingSettings::default().validate().is_ok());
    }

    #[test]
    fn nak_delay_is_indexed_by_attempt_and_repeats_the_last_entry() {
        let s = MessagingSettings::default();
        assert_eq!(s.nak_delay(1), Duration::from_secs(1));
        assert_eq!(s.nak_delay(3), Duration::from_secs(5));
        assert_eq!(s.nak_delay(5), Duration::from_secs(30));
        assert_eq!(s.nak_delay(50), Duration::from_secs(30));
        assert_eq!(s.nak_delay(0), Duration::from_secs(1));
    }

    #[test]
    fn stream_replicas_are_between_1_and_5() {
        for (replicas, valid) in [
            (Some(0), false),
            (Some(1), true),
            (Some(3), true),
            (Some(5), true),
            (Some(6), false),
            (None, true),
        ] {
            let s = MessagingSettings {
                stream_replicas: replicas,
                ..Default::default()
            };
            assert_eq!(s.validate().is_ok(), valid, "{replicas:?}");
        }
    }

    #[test]
    fn outbox_partitions_are_between_1_and_64() {
        for (partitions, valid) in [(0, false), (1, true), (4, true), (64, true), (65, false)] {
            let s = MessagingSettings {
                outbox_partitions: partitions,
                ..Default::default()
            };
            assert_eq!(s.validate().is_ok(), valid, "{partitions}");
        }
    }

    #[test]
    fn empty_backoff_is_rejected() {
        let s = MessagingSettings {
            nak_backoff: vec![],
            ..Default::default()
        };
        assert!(s.validate().is_err());
    }
}
