//! Payment decisions: given the payment's current state (or none yet) and an incoming saga
//! event, which transition is allowed. Pure functions, no I/O.
//!
//! Rules: a payment is authorised or declined once; captured at most once and only when
//! authorised; voided at most once and only when authorised; never captured once voided, never
//! voided once captured. A void that arrives before the authorisation leaves a tombstone, and the
//! late `order.created` is then declined without asking the processor.

/// The state of an order's payment as stored in `payments.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentState {
    /// Tombstone: a void was requested before the order was authorised.
    VoidRequested,
    /// The amount is held on the card.
    Authorized,
    /// The processor refused, or the order was cancelled before it was authorised.
    Declined,
    /// The held amount was taken.
    Captured,
    /// The hold was released.
    Voided,
}

impl PaymentState {
    /// Every state.
    pub const ALL: [PaymentState; 5] = [
        PaymentState::VoidRequested,
        PaymentState::Authorized,
        PaymentState::Declined,
        PaymentState::Captured,
        PaymentState::Voided,
    ];

    /// The stored (and, except for the tombstone, public) name.
    pub const fn as_str(self) -> &'static str {
        match self {
            PaymentState::VoidRequested => "void_requested",
            PaymentState::Authorized => "authorized",
            PaymentState::Declined => "declined",
            PaymentState::Captured => "captured",
            PaymentState::Voided => "voided",
        }
    }

    /// The state stored under `name`.
    pub fn parse(name: &str) -> Option<PaymentState> {
        PaymentState::ALL
            .into_iter()
            .find(|state| state.as_str() == name)
    }

    /// Whether a payment exists in this state (a tombstone is only a note that one must not be
    /// made, so it is not shown as a payment).
    pub const fn is_payment(self) -> bool {
        !matches!(self, PaymentState::VoidRequested)
    }
}

/// The decline reason recorded when a void arrived before the order was authorised.
pub const CANCELLED_BEFORE_AUTHORIZATION: &str = "order_cancelled_before_authorization";

/// What to do with `order.created`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderCreatedDecision {
    /// No payment yet: ask the processor and record its answer.
    Authorize,
    /// A void arrived first: decline at once, without asking the processor.
    DeclineCancelled,
    /// The order was already handled (a duplicate `order.created`): do nothing.
    AlreadyHandled,
}

/// What to do when a courier was assigned (`dispatch.courier_assigned`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureDecision {
    /// Authorised: capture now.
    Capture,
    /// Already captured: do nothing.
    AlreadyCaptured,
    /// Voided, void requested or declined: never capture; a contradiction, dead-lettered.
    Refuse,
    /// No payment yet: the authorisation that must precede the assignment has not been
    /// recorded; retry later.
    AwaitAuthorization,
}

/// What to do when the saga asks for a void (`inventory.rejected`, `dispatch.failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoidDecision {
    /// Authorised: void now.
    Void,
    /// No payment yet: record a tombstone so the late `order.created` is declined.
    RecordTombstone,
    /// Already voided or a tombstone already recorded: do nothing.
    AlreadyVoided,
    /// Declined: no hold exists, nothing to void.
    NothingToVoid,
    /// Captured: never void a captured payment; a contradiction, dead-lettered.
    RefuseCaptured,
}

/// The decision for `order.created` given the current state.
pub fn on_order_created(current: Option<PaymentState>) -> OrderCreatedDecision {
    match current {
        None => OrderCreatedDecision::Authorize,
        Some(PaymentState::VoidRequested) => OrderCreatedDecision::DeclineCancelled,
        Some(
            PaymentState::Authorized
            | PaymentState::Declined
            | PaymentState::Captured
            | PaymentState::Voided,
        ) => OrderCreatedDecision::AlreadyHandled,
    }
}

/// The decision for a capture request given the current state.
pub fn on_capture_requested(current: Option<PaymentState>) -> CaptureDecision {
    match current {
        None => CaptureDecision::AwaitAuthorization,
        Some(PaymentState::Authorized) => CaptureDecision::Capture,
        Some(PaymentState::Captured) => CaptureDecision::AlreadyCaptured,
        Some(PaymentState::VoidRequested | PaymentState::Declined | PaymentState::Voided) => {
            CaptureDecision::Refuse
        }
    }
}

/// The decision for a void request given the current state.
pub fn on_void_requested(current: Option<PaymentState>) -> VoidDecision {
    match current {
        None => VoidDecision::RecordTombstone,
        Some(PaymentState::Authorized) => VoidDecision::Void,
        Some(PaymentState::VoidRequested | PaymentState::Voided) => VoidDecision::AlreadyVoided,
        Some(PaymentState::Declined) => VoidDecision::NothingToVoid,
        Some(PaymentState::Captured) => VoidDecision::RefuseCaptured,
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;
    use PaymentState::*;

    /// Every possible current state: no payment, then each stored state.
    fn all_currents() -> Vec<Option<PaymentState>> {
        std::iter::once(None)
            .chain(PaymentState::ALL.into_iter().map(Some))
            .collect()
    }

    /// Checks that `table` lists every current state exactly once and that `decide` agrees.
    fn check_table<D: std::fmt::Debug + PartialEq>(
        table: &[(Option<PaymentState>, D)],
        decide: impl Fn(Option<PaymentState>) -> D,
    ) {
        let currents = all_currents();
        assert_eq!(table.len(), currents.len(), "one row per current state");
        for current in currents {
            let rows: Vec<_> = table.iter().filter(|(c, _)| *c == current).collect();
            assert_eq!(rows.len(), 1, "exactly one row for {current:?}");
            assert_eq!(decide(current), rows[0].1, "decision for {current:?}");
        }
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_rejected() {
        for state in PaymentState::ALL {
            assert_eq!(PaymentState::parse(state.as_str()), Some(state));
        }
        assert_eq!(PaymentState::parse("pending"), None);
        assert_eq!(PaymentState::parse("Authorized"), None);
        assert_eq!(
            PaymentState::ALL.map(PaymentState::as_str),
            [
                "void_requested",
                "authorized",
                "declined",
                "captured",
                "voided"
            ]
        );
    }

    #[test]
    fn only_the_tombstone_is_not_a_payment() {
        assert!(!VoidRequested.is_payment());
        for state in [Authorized, Declined, Captured, Voided] {
            assert!(state.is_payment(), "{state:?}");
        }
    }

    #[test]
    fn order_created_authorizes_once_and_declines_after_a_tombstone() {
        use OrderCreatedDecision::*;
        check_table(
            &[
                (None, Authorize),
                (Some(VoidRequested), DeclineCancelled),
                (Some(Authorized), AlreadyHandled),
                (Some(Declined), AlreadyHandled),
                (Some(Captured), AlreadyHandled),
                (Some(Voided), AlreadyHandled),
            ],
            on_order_created,
        );
    }

    #[test]
    fn capture_only_from_authorized_and_never_after_a_void() {
        use CaptureDecision::*;
        check_table(
            &[
                (None, AwaitAuthorization),
                (Some(VoidRequested), Refuse),
                (Some(Authorized), Capture),
                (Some(Declined), Refuse),
                (Some(Captured), AlreadyCaptured),
                (Some(Voided), Refuse),
            ],
            on_capture_requested,
        );
    }

    #[test]
    fn void_only_from_authorized_never_after_a_capture_and_tombstones_early_voids() {
        use VoidDecision::*;
        check_table(
            &[
                (None, RecordTombstone),
                (Some(VoidRequested), AlreadyVoided),
                (Some(Authorized), Void),
                (Some(Declined), NothingToVoid),
                (Some(Captured), RefuseCaptured),
                (Some(Voided), AlreadyVoided),
            ],
            on_void_requested,
        );
    }

    #[test]
    fn applying_the_decisions_captures_and_voids_at_most_once() {
        // Simulate the state machine the handler runs: the state after each decision.
        fn after_capture(state: Option<PaymentState>) -> Option<PaymentState> {
            match on_capture_requested(state) {
                CaptureDecision::Capture => Some(Captured),
                _ => state,
            }
        }
        fn after_void(state: Option<PaymentState>) -> Option<PaymentState> {
            match on_void_requested(state) {
                VoidDecision::Void => Some(Voided),
                VoidDecision::RecordTombstone => Some(VoidRequested),
                _ => state,
            }
        }
        for start in all_currents() {
            // capture then void: a captured payment stays captured
            let captured = after_capture(start);
            if captured == Some(Captured) {
                assert_eq!(after_void(captured), Some(Captured), "from {start:?}");
            }
            // void then capture: a voided payment stays voided
            let voided = after_void(start);
            if matches!(voided, Some(Voided | VoidRequested)) {
                assert_eq!(after_capture(voided), voided, "from {start:?}");
            }
            // repeating either changes nothing more
            assert_eq!(after_capture(captured), captured);
            assert_eq!(after_void(voided), voided);
        }
    }
}
