//! The card processor payment asks to hold an order's amount, behind the [`CardProcessor`]
//! trait so that a real (slow, failing) processor or a circuit breaker can replace the
//! [`SimulatedProcessor`] without touching the handler.

use async_trait::async_trait;

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

/// Something that can authorise (hold) an amount on a card identified by a payment token.
#[async_trait]
pub trait CardProcessor: Send + Sync + 'static {
    /// Asks the processor to hold `amount_cents` on the card behind `payment_token`.
    async fn authorize(&self, payment_token: &str, amount_cents: i64) -> Authorization;
}

/// The simulated processor: declines [`DECLINED_TOKEN`] with [`DECLINED_REASON`], approves
/// every other token, whatever the amount.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimulatedProcessor;

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
    async fn authorize(&self, payment_token: &str, _amount_cents: i64) -> Authorization {
        simulate(payment_token)
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

    #[tokio::test]
    async fn the_simulated_processor_answers_like_simulate() {
        let processor = SimulatedProcessor;
        assert_eq!(
            processor.authorize("tok_ok", 32_200).await,
            Authorization::Approved
        );
        assert_eq!(
            processor.authorize(DECLINED_TOKEN, 1).await,
            simulate(DECLINED_TOKEN)
        );
    }
}
