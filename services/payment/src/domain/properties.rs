//! Property tests of the payment decisions: whatever order the saga's events arrive in, however
//! often each is delivered again, and whether the card is approved, an order's money is held at
//! most once, taken at most once, never both taken and released, and never taken without a
//! hold. The model applies each decision the way the handler's store does.

use proptest::prelude::*;

use super::*;

/// A delivery the payment service can receive for one order.
#[derive(Debug, Clone, Copy)]
enum Event {
    /// `order.created`; the processor approves the card or not.
    OrderCreated { approved: bool },
    /// `dispatch.courier_assigned`: capture.
    CourierAssigned,
    /// `inventory.rejected` or `dispatch.failed`: void.
    VoidRequested,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        any::<bool>().prop_map(|approved| Event::OrderCreated { approved }),
        Just(Event::CourierAssigned),
        Just(Event::VoidRequested),
    ]
}

/// One order's payment as the store would hold it, and what was asked of the card processor.
#[derive(Debug, Default)]
struct Model {
    state: Option<PaymentState>,
    processor_authorizations: u32,
    approved: bool,
    captures: u32,
    voids: u32,
}

/// What the consumer does with a delivery after its handler ran.
enum Handled {
    Done,
    /// The handler asked for a redelivery (its precondition is not recorded yet).
    Retry,
}

impl Model {
    fn apply(&mut self, event: Event) -> Handled {
        match event {
            Event::OrderCreated { approved } => match on_order_created(self.state) {
                OrderCreatedDecision::Authorize => {
                    self.processor_authorizations += 1;
                    self.approved = approved;
                    self.state = Some(if approved {
                        PaymentState::Authorized
                    } else {
                        PaymentState::Declined
                    });
                }
                OrderCreatedDecision::DeclineCancelled => self.state = Some(PaymentState::Declined),
                OrderCreatedDecision::AlreadyHandled => {}
            },
            Event::CourierAssigned => match on_capture_requested(self.state) {
                CaptureDecision::Capture => {
                    self.captures += 1;
                    self.state = Some(PaymentState::Captured);
                }
                CaptureDecision::AwaitAuthorization => return Handled::Retry,
                CaptureDecision::AlreadyCaptured | CaptureDecision::Refuse => {}
            },
            Event::VoidRequested => match on_void_requested(self.state) {
                VoidDecision::Void => {
                    self.voids += 1;
                    self.state = Some(PaymentState::Voided);
                }
                VoidDecision::RecordTombstone => self.state = Some(PaymentState::VoidRequested),
                VoidDecision::AlreadyVoided
                | VoidDecision::NothingToVoid
                | VoidDecision::RefuseCaptured => {}
            },
        }
        Handled::Done
    }

    fn check(&self) -> Result<(), TestCaseError> {
        prop_assert!(self.processor_authorizations <= 1, "{self:?}");
        prop_assert!(self.captures <= 1, "captured twice: {self:?}");
        prop_assert!(self.voids <= 1, "voided twice: {self:?}");
        prop_assert!(
            self.captures + self.voids <= 1,
            "captured and voided: {self:?}"
        );
        if self.captures == 1 {
            prop_assert!(self.approved, "captured without an approved hold: {self:?}");
        }
        prop_assert_eq!(
            self.state == Some(PaymentState::Captured),
            self.captures == 1,
            "{:?}",
            self
        );
        Ok(())
    }
}

/// Redeliveries of one message before the test stops retrying it.
const MAX_REDELIVERIES: usize = 8;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn money_is_held_taken_and_released_at_most_once(
        events in prop::collection::vec(event(), 0..24),
    ) {
        let mut model = Model::default();
        let mut queue: std::collections::VecDeque<(Event, usize)> =
            events.into_iter().map(|event| (event, 0)).collect();
        while let Some((event, redeliveries)) = queue.pop_front() {
            if let Handled::Retry = model.apply(event)
                && redeliveries < MAX_REDELIVERIES
            {
                queue.push_back((event, redeliveries + 1));
            }
            model.check()?;
        }
    }

    #[test]
    fn a_void_before_the_order_means_the_card_is_never_asked(
        events in prop::collection::vec(event(), 0..16),
    ) {
        let mut model = Model::default();
        model.apply(Event::VoidRequested);
        for event in events {
            model.apply(event);
            model.check()?;
        }
        prop_assert_eq!(model.processor_authorizations, 0);
        prop_assert_eq!(model.captures, 0);
    }
}
