//! The card processor payment asks to hold an order's amount, behind the [`CardProcessor`]
//! trait so that a real (slow, failing) processor or a circuit breaker can replace the
//! [`SimulatedProcessor`] without touching the handler.
//!
//! The handler calls the processor inside its batch transaction, which can still roll back
//! afterwards (a later failure in the batch, a stall, a crash before commit); the event is then
//! redelivered and the handler asks again. Every request therefore carries an
//! [`IdempotencyKey`] derived from the order and the operation, and a processor must answer a
//! repeated key with its first answer, without placing a second hold.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;

use async_trait::async_trait;
use jwl_events::OrderId;

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

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Something that can authorise (hold) an amount on a card identified by a payment token.
#[async_trait]
pub trait CardProcessor: Send + Sync + 'static {
    /// Asks the processor to hold `amount_cents` on the card behind `payment_token`. A request
    /// repeating an earlier `key` gets the earlier answer and places no second hold.
    async fn authorize(
        &self,
        key: &IdempotencyKey,
        payment_token: &str,
        amount_cents: i64,
    ) -> Authorization;
}

/// How many idempotency keys the simulator remembers (the oldest are forgotten first). A real
/// processor keeps them for a time (typically 24 h); the simulator bounds its memory instead,
/// far beyond any redelivery of a rolled-back batch.
pub const SIMULATOR_REMEMBERED_KEYS: usize = 100_000;

/// The simulated processor: declines [`DECLINED_TOKEN`] with [`DECLINED_REASON`], approves
/// every other token, whatever the amount; answers a repeated idempotency key (among the last
/// [`SIMULATOR_REMEMBERED_KEYS`]) with its first answer, without a second hold. It lives in the
/// payment process, so it forgets its keys when that process stops.
#[derive(Debug, Default)]
pub struct SimulatedProcessor {
    state: Mutex<Remembered>,
}

#[derive(Debug, Default)]
struct Remembered {
    answers: HashMap<IdempotencyKey, Authorization>,
    /// Keys in the order they were first seen, to forget the oldest.
    seen: VecDeque<IdempotencyKey>,
    /// Holds placed (approved authorisations that were not repeats).
    holds: u64,
}

impl SimulatedProcessor {
    pub fn new() -> Self {
        Self::default()
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
    ) -> Authorization {
        let mut remembered = self.remembered();
        if let Some(first) = remembered.answers.get(key) {
            tracing::debug!(%key, "repeated idempotency key; answering as the first time");
            return first.clone();
        }
        let answer = simulate(payment_token);
        if answer == Authorization::Approved {
            remembered.holds += 1;
        }
        if remembered.seen.len() >= SIMULATOR_REMEMBERED_KEYS
            && let Some(oldest) = remembered.seen.pop_front()
        {
            remembered.answers.remove(&oldest);
        }
        remembered.seen.push_back(key.clone());
        remembered.answers.insert(key.clone(), answer.clone());
        answer
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
            Authorization::Approved
        );
        let declined = IdempotencyKey::authorization(OrderId::new());
        assert_eq!(
            processor.authorize(&declined, DECLINED_TOKEN, 1).await,
            simulate(DECLINED_TOKEN)
        );
        assert_eq!(processor.holds_placed(), 1);
    }

    #[tokio::test]
    async fn a_repeated_key_gets_the_first_answer_without_a_second_hold() {
        let processor = SimulatedProcessor::new();
        let key = IdempotencyKey::authorization(OrderId::new());
        assert_eq!(
            processor.authorize(&key, "tok_ok", 100).await,
            Authorization::Approved
        );
        // even if the retry asked differently, the first answer stands
        assert_eq!(
            processor.authorize(&key, DECLINED_TOKEN, 100).await,
            Authorization::Approved
        );
        assert_eq!(processor.holds_placed(), 1);
        // another order is another hold
        let other = IdempotencyKey::authorization(OrderId::new());
        processor.authorize(&other, "tok_ok", 100).await;
        assert_eq!(processor.holds_placed(), 2);
    }
}
