//! The card processor payment asks to hold an order's amount (authorise), to take it (capture)
//! and to release it (void), behind the [`CardProcessor`] trait so that a real processor can
//! replace the [`SimulatedProcessor`] without touching the handler. Like a real processor, the
//! simulator can fail, time out and slow down, at rates set by configuration (`JWL_PROCESSOR_*`)
//! and at run time ([`SimulatedProcessor::set_faults`], the admin route
//! `PUT /v1/payment-processor`), so tests and operators can stage an outage. The handler calls it
//! through [`crate::guard::GuardedProcessor`]: a timeout per call and a circuit breaker.
//!
//! The handler calls the processor inside its batch transaction, which can still roll back
//! afterwards (a later failure in the batch, a stall, a crash before commit); the event is then
//! redelivered and the handler asks again. Every request therefore carries an
//! [`IdempotencyKey`] derived from the order and the operation, and a processor must answer a
//! repeated key with its first answer, without placing a second hold.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use jwl_events::OrderId;
use serde::{Deserialize, Serialize};

/// The token the simulator declines.
pub const DECLINED_TOKEN: &str = "tok_decline";

/// The reason the simulator gives when it declines.
pub const DECLINED_REASON: &str = "card_declined";

/// The processor's answer to an authorisation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    /// The amount is held on the card.
    Approved,
    /// The processor refused; `reason` is meant for people.
    Declined { reason: String },
}

/// The key under which a processor deduplicates a request: `jwl:<operation>:<order id>`. One
/// order is authorised at most once, so the order id and the operation name the request; a
/// retry of the same request (after a rollback) carries the same key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key of the authorisation (hold) of `order_id`'s amount.
    pub fn authorization(order_id: OrderId) -> Self {
        Self(format!("jwl:authorize:{}", order_id.0))
    }

    /// The key of the capture of `order_id`'s held amount.
    pub fn capture(order_id: OrderId) -> Self {
        Self(format!("jwl:capture:{}", order_id.0))
    }

    /// The key of the void (release) of `order_id`'s held amount.
    pub fn void(order_id: OrderId) -> Self {
        Self(format!("jwl:void:{}", order_id.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why the processor gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessorError {
    /// It answered with an error (a 5xx, a connection refused).
    #[error("the card processor failed: {0}")]
    Failed(String),
    /// It did not answer in time (the request may still have been done: a retry under the same
    /// key gets its answer).
    #[error("the card processor did not answer within {} ms", .0.as_millis())]
    TimedOut(Duration),
    /// It is not called now: its circuit breaker is open (or this call made it open).
    #[error("the card processor is unavailable (circuit breaker open): {0}")]
    Unavailable(String),
}

/// A card processor: holds an amount on a card identified by a payment token, then takes it or
/// releases it. Every request carries an [`IdempotencyKey`]; a request repeating an earlier key
/// gets the earlier answer and is not done twice.
#[async_trait]
pub trait CardProcessor: Send + Sync + 'static {
    /// Asks the processor to hold `amount_cents` on the card behind `payment_token`.
    async fn authorize(
        &self,
        key: &IdempotencyKey,
        payment_token: &str,
        amount_cents: i64,
    ) -> Result<Authorization, ProcessorError>;

    /// Asks the processor to take the held `amount_cents`.
    async fn capture(&self, key: &IdempotencyKey, amount_cents: i64) -> Result<(), ProcessorError>;

    /// Asks the processor to release the held `amount_cents`.
    async fn void(&self, key: &IdempotencyKey, amount_cents: i64) -> Result<(), ProcessorError>;

    /// Resolves when the processor may be called (default: always); see
    /// [`jwl_outbox::Handler::ready`].
    async fn ready(&self) {}
}

/// The failures the simulator stages, each call drawn at random.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Share of calls answered with an error (0..=1; 1 is an outage).
    pub error_rate: f64,
    /// Share of calls never answered (the caller's timeout ends them); 0..=1.
    pub timeout_rate: f64,
    /// Time every call takes, in milliseconds (before `slowdown`).
    pub latency_ms: u64,
    /// Factor on `latency_ms` (10 is ten times slower); at least 1.
    pub slowdown: f64,
}

impl Default for Faults {
    /// A healthy, instant processor.
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            timeout_rate: 0.0,
            latency_ms: 0,
            slowdown: 1.0,
        }
    }
}

/// The longest simulated latency (`latency_ms` × `slowdown`).
pub const MAX_SIMULATED_LATENCY: Duration = Duration::from_secs(60);

/// Faults outside their ranges.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidFaults {
    pub field: &'static str,
    pub problem: String,
}

impl Faults {
    /// These faults, if every field is in its range.
    pub fn validated(self) -> Result<Self, InvalidFaults> {
        for (field, rate) in [
            ("error_rate", self.error_rate),
            ("timeout_rate", self.timeout_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(InvalidFaults {
                    field,
                    problem: format!("must be between 0 and 1, not {rate}"),
                });
            }
        }
        if !(self.slowdown >= 1.0 && self.slowdown.is_finite()) {
            return Err(InvalidFaults {
                field: "slowdown",
                problem: format!(
                    "must be a finite factor of at least 1, not {}",
                    self.slowdown
                ),
            });
        }
        if self.latency() > MAX_SIMULATED_LATENCY {
            return Err(InvalidFaults {
                field: "latency_ms",
                problem: format!(
                    "latency_ms × slowdown must be at most {} ms",
                    MAX_SIMULATED_LATENCY.as_millis()
                ),
            });
        }
        Ok(self)
    }

    /// The time a call takes: `latency_ms` × `slowdown`, saturating at [`Duration::MAX`] (any
    /// `u64` of milliseconds times a large factor is representable in `f64`, not in `Duration`).
    pub fn latency(&self) -> Duration {
        let seconds = self.latency_ms as f64 / 1000.0 * self.slowdown.clamp(1.0, 1e6);
        Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX)
    }
}

/// What the simulator draws for one call.
enum Fate {
    Answer,
    Error,
    Hang,
}

/// How many idempotency keys the simulator remembers (the oldest are forgotten first). A real
/// processor keeps them for a time (typically 24 h); the simulator bounds its memory instead,
/// far beyond any redelivery of a rolled-back batch.
pub const SIMULATOR_REMEMBERED_KEYS: usize = 100_000;

/// The simulated processor: declines [`DECLINED_TOKEN`] with [`DECLINED_REASON`], approves
/// every other token, whatever the amount; captures and voids whatever it is asked to; answers a
/// repeated idempotency key (among the last [`SIMULATOR_REMEMBERED_KEYS`]) with its first
/// answer, without doing it twice. Each call takes [`Faults::latency`], then fails with an
/// error at `error_rate`, or never answers at `timeout_rate` (having done the request, as a
/// real processor whose answer is lost). It lives in the payment process, so it forgets its
/// keys when that process stops.
#[derive(Debug, Default)]
pub struct SimulatedProcessor {
    state: Mutex<Remembered>,
    faults: Mutex<Faults>,
}

#[derive(Debug, Default)]
struct Remembered {
    answers: HashMap<IdempotencyKey, Authorization>,
    /// Keys in the order they were first seen, to forget the oldest.
    seen: VecDeque<IdempotencyKey>,
    /// Holds placed (approved authorisations that were not repeats).
    holds: u64,
    /// Captures and voids done (not repeats).
    captures: u64,
    voids: u64,
}

impl SimulatedProcessor {
    /// A healthy simulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// A simulator staging `faults` (see [`Faults::validated`]).
    pub fn with_faults(faults: Faults) -> Self {
        let simulator = Self::default();
        simulator.set_faults(faults);
        simulator
    }

    /// Stages `faults` from now on.
    pub fn set_faults(&self, faults: Faults) {
        *self
            .faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = faults;
        tracing::warn!(?faults, "simulated card processor faults set");
    }

    /// The faults staged now.
    pub fn faults(&self) -> Faults {
        *self
            .faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Captures and voids done, each idempotency key counted once.
    pub fn captures_and_voids(&self) -> (u64, u64) {
        let remembered = self.remembered();
        (remembered.captures, remembered.voids)
    }

    /// Waits the simulated latency and draws the call's fate.
    async fn call(&self) -> Fate {
        let faults = self.faults();
        let latency = faults.latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let draw = fastrand::f64();
        if draw < faults.error_rate {
            Fate::Error
        } else if draw < faults.error_rate + faults.timeout_rate {
            Fate::Hang
        } else {
            Fate::Answer
        }
    }

    /// The answer to `key`: the remembered one, or `decide()` remembered (`counted` if new).
    fn answer(
        &self,
        key: &IdempotencyKey,
        decide: impl FnOnce() -> Authorization,
        counted: impl FnOnce(&mut Remembered, &Authorization),
    ) -> Authorization {
        let mut remembered = self.remembered();
        if let Some(first) = remembered.answers.get(key) {
            tracing::debug!(%key, "repeated idempotency key; answering as the first time");
            return first.clone();
        }
        let answer = decide();
        counted(&mut remembered, &answer);
        if remembered.seen.len() >= SIMULATOR_REMEMBERED_KEYS
            && let Some(oldest) = remembered.seen.pop_front()
        {
            remembered.answers.remove(&oldest);
        }
        remembered.seen.push_back(key.clone());
        remembered.answers.insert(key.clone(), answer.clone());
        answer
    }

    /// Does the request (`answer`) unless the call fails; a hung call does it, then never
    /// answers.
    async fn simulate_call<T>(
        &self,
        key: &IdempotencyKey,
        answer: impl FnOnce() -> T,
    ) -> Result<T, ProcessorError> {
        match self.call().await {
            Fate::Answer => Ok(answer()),
            Fate::Error => Err(ProcessorError::Failed(format!(
                "simulated error (503) for {key}"
            ))),
            Fate::Hang => {
                let _lost = answer();
                std::future::pending().await
            }
        }
    }

    /// How many holds the simulator has placed: approved authorisations, each idempotency key
    /// counted once.
    pub fn holds_placed(&self) -> u64 {
        self.remembered().holds
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, Remembered> {
        // the state is consistent after every statement, so a panic elsewhere cannot corrupt it
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The simulator's decision for `payment_token`.
pub fn simulate(payment_token: &str) -> Authorization {
    if payment_token == DECLINED_TOKEN {
        Authorization::Declined {
            reason: DECLINED_REASON.to_owned(),
        }
    } else {
        Authorization::Approved
    }
}

#[async_trait]
impl CardProcessor for SimulatedProcessor {
    async fn authorize(
        &self,
        key: &IdempotencyKey,
        payment_token: &str,
        _amount_cents: i64,
    ) -> Result<Authorization, ProcessorError> {
        self.simulate_call(key, || {
            self.answer(
                key,
                || simulate(payment_token),
                |remembered, answer| {
                    if *answer == Authorization::Approved {
                        remembered.holds += 1;
                    }
                },
            )
        })
        .await
    }

    async fn capture(
        &self,
        key: &IdempotencyKey,
        _amount_cents: i64,
    ) -> Result<(), ProcessorError> {
        self.simulate_call(key, || {
            self.answer(
                key,
                || Authorization::Approved,
                |remembered, _| remembered.captures += 1,
            );
        })
        .await
    }

    async fn void(&self, key: &IdempotencyKey, _amount_cents: i64) -> Result<(), ProcessorError> {
        self.simulate_call(key, || {
            self.answer(
                key,
                || Authorization::Approved,
                |remembered, _| remembered.voids += 1,
            );
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decline_token_is_declined_as_card_declined() {
        assert_eq!(
            simulate("tok_decline"),
            Authorization::Declined {
                reason: "card_declined".to_owned()
            }
        );
    }

    #[test]
    fn every_other_token_is_approved() {
        for token in [
            "tok_ok",
            "tok_visa",
            "tok_decline_not",
            "TOK_DECLINE",
            " tok_decline",
        ] {
            assert_eq!(simulate(token), Authorization::Approved, "{token}");
        }
    }

    #[test]
    fn the_key_names_the_operation_and_the_order() {
        let order = OrderId::new();
        let key = IdempotencyKey::authorization(order);
        assert_eq!(key.as_str(), format!("jwl:authorize:{}", order.0));
        assert_eq!(key, IdempotencyKey::authorization(order));
        assert_ne!(key, IdempotencyKey::authorization(OrderId::new()));
    }

    #[tokio::test]
    async fn the_simulated_processor_answers_like_simulate() {
        let processor = SimulatedProcessor::new();
        let key = IdempotencyKey::authorization(OrderId::new());
        assert_eq!(
            processor.authorize(&key, "tok_ok", 32_200).await,
            Ok(Authorization::Approved)
        );
        let declined = IdempotencyKey::authorization(OrderId::new());
        assert_eq!(
            processor.authorize(&declined, DECLINED_TOKEN, 1).await,
            Ok(simulate(DECLINED_TOKEN))
        );
        assert_eq!(processor.holds_placed(), 1);
    }

    #[tokio::test]
    async fn a_repeated_key_gets_the_first_answer_without_a_second_hold() {
        let processor = SimulatedProcessor::new();
        let key = IdempotencyKey::authorization(OrderId::new());
        assert_eq!(
            processor.authorize(&key, "tok_ok", 100).await,
            Ok(Authorization::Approved)
        );
        // even if the retry asked differently, the first answer stands
        assert_eq!(
            processor.authorize(&key, DECLINED_TOKEN, 100).await,
            Ok(Authorization::Approved)
        );
        assert_eq!(processor.holds_placed(), 1);
        // another order is another hold
        let other = IdempotencyKey::authorization(OrderId::new());
        let _ = processor.authorize(&other, "tok_ok", 100).await;
        assert_eq!(processor.holds_placed(), 2);
    }

    #[test]
    fn capture_and_void_keys_name_their_operation() {
        let order = OrderId::new();
        assert_eq!(
            IdempotencyKey::capture(order).as_str(),
            format!("jwl:capture:{}", order.0)
        );
        assert_eq!(
            IdempotencyKey::void(order).as_str(),
            format!("jwl:void:{}", order.0)
        );
    }

    #[tokio::test]
    async fn captures_and_voids_are_done_once_per_key() {
        let processor = SimulatedProcessor::new();
        let order = OrderId::new();
        for _ in 0..2 {
            processor
                .capture(&IdempotencyKey::capture(order), 5)
                .await
                .unwrap();
            processor
                .void(&IdempotencyKey::void(order), 5)
                .await
                .unwrap();
        }
        assert_eq!(processor.captures_and_voids(), (1, 1));
    }

    #[tokio::test]
    async fn an_outage_fails_every_call_and_does_nothing() {
        let processor = SimulatedProcessor::with_faults(Faults {
            error_rate: 1.0,
            ..Faults::default()
        });
        let key = IdempotencyKey::authorization(OrderId::new());
        assert!(matches!(
            processor.authorize(&key, "tok_ok", 1).await,
            Err(ProcessorError::Failed(_))
        ));
        assert_eq!(processor.holds_placed(), 0);
        processor.set_faults(Faults::default());
        assert_eq!(
            processor.authorize(&key, "tok_ok", 1).await,
            Ok(Authorization::Approved)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_call_does_the_request_and_never_answers() {
        let processor = SimulatedProcessor::with_faults(Faults {
            timeout_rate: 1.0,
            latency_ms: 20,
            slowdown: 10.0,
            ..Faults::default()
        });
        let key = IdempotencyKey::authorization(OrderId::new());
        let started = tokio::time::Instant::now();
        let call = processor.authorize(&key, "tok_ok", 1);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), call)
                .await
                .is_err()
        );
        assert!(started.elapsed() >= Duration::from_secs(5));
        // the hold was placed: the retry under the same key gets the answer, not a second hold
        processor.set_faults(Faults::default());
        assert_eq!(
            processor.authorize(&key, "tok_ok", 1).await,
            Ok(Authorization::Approved)
        );
        assert_eq!(processor.holds_placed(), 1);
    }

    #[test]
    fn faults_out_of_range_are_refused() {
        assert!(Faults::default().validated().is_ok());
        let bad = [
            Faults {
                error_rate: 1.5,
                ..Faults::default()
            },
            Faults {
                timeout_rate: -0.1,
                ..Faults::default()
            },
            Faults {
                slowdown: 0.5,
                ..Faults::default()
            },
            Faults {
                slowdown: f64::NAN,
                ..Faults::default()
            },
            Faults {
                latency_ms: 10_000,
                slowdown: 10.0,
                ..Faults::default()
            },
            // Found by schemathesis: the product overflows `Duration` and must be refused, not
            // panic.
            Faults {
                latency_ms: u64::MAX,
                slowdown: 1e6,
                ..Faults::default()
            },
        ];
        for faults in bad {
            assert!(faults.validated().is_err(), "{faults:?}");
        }
        assert_eq!(
            Faults {
                latency_ms: 20,
                slowdown: 10.0,
                ..Faults::default()
            }
            .latency(),
            Duration::from_millis(200)
        );
    }
}
