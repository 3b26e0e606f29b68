//! Inventory decisions, pure and without I/O: which transition an order's reservation may take
//! on each saga event, whether an order's lines can all be reserved from the stock available,
//! and what an admin may set a SKU's stock to.
//!
//! Rules: reservation is all or nothing (available = on_hand − reserved; an unknown SKU has
//! nothing available); an order is reserved or rejected once, released at most once and only
//! while reserved, committed at most once and only while reserved, never released once
//! committed nor committed once released. A release that arrives before the reservation leaves
//! a tombstone, and the late reservation is skipped.

use std::collections::BTreeMap;

use jwl_events::LineItem;

/// Longest SKU accepted by the stock API, in characters.
pub const MAX_SKU_LEN: usize = 64;

/// Largest `on_hand` an admin may set.
pub const MAX_ON_HAND: i64 = 1_000_000_000;

/// The state of an order's reservation, as stored in `order_reservations.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderState {
    /// Tombstone: a release was requested before anything was reserved.
    ReleaseRequested,
    /// Every line is reserved.
    Reserved,
    /// At least one line was short; nothing was reserved.
    Rejected,
    /// The reservation was given back to stock.
    Released,
    /// The reserved stock left with the courier.
    Committed,
}

impl OrderState {
    /// Every state.
    pub const ALL: [OrderState; 5] = [
        OrderState::ReleaseRequested,
        OrderState::Reserved,
        OrderState::Rejected,
        OrderState::Released,
        OrderState::Committed,
    ];

    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            OrderState::ReleaseRequested => "release_requested",
            OrderState::Reserved => "reserved",
            OrderState::Rejected => "rejected",
            OrderState::Released => "released",
            OrderState::Committed => "committed",
        }
    }

    /// The state stored under `name`.
    pub fn parse(name: &str) -> Option<OrderState> {
        OrderState::ALL
            .into_iter()
            .find(|state| state.as_str() == name)
    }
}

/// What to do with `payment.authorized`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizedDecision {
    /// Nothing recorded yet: try to reserve every line.
    Reserve,
    /// A release arrived first: reserve nothing (payment voids on the same failure).
    SkipReleased,
    /// Already reserved or rejected (a duplicate): do nothing.
    AlreadyHandled,
}

/// What to do with `dispatch.failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseDecision {
    /// Reserved: give the stock back and report it.
    Release,
    /// Nothing recorded yet: record a tombstone so the late reservation is skipped.
    RecordTombstone,
    /// Rejected: nothing was reserved, nothing to give back.
    NothingReserved,
    /// Already released, or a tombstone already recorded: do nothing.
    AlreadyReleased,
    /// Committed: the stock has left; never release it. A contradiction, dead-lettered.
    RefuseCommitted,
}

/// What to do with `payment.captured`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitDecision {
    /// Reserved: ship the reserved quantities.
    Commit,
    /// Already committed: do nothing.
    AlreadyCommitted,
    /// Released, rejected or tombstoned: there is nothing reserved to ship. A contradiction,
    /// dead-lettered.
    Refuse,
    /// Nothing recorded yet: the reservation that must precede the capture has not been
    /// recorded; retry later.
    AwaitReservation,
}

/// The decision for `payment.authorized` given the order's current state.
pub fn on_payment_authorized(current: Option<OrderState>) -> AuthorizedDecision {
    match current {
        None => AuthorizedDecision::Reserve,
        Some(OrderState::ReleaseRequested) => AuthorizedDecision::SkipReleased,
        Some(
            OrderState::Reserved
            | OrderState::Rejected
            | OrderState::Released
            | OrderState::Committed,
        ) => AuthorizedDecision::AlreadyHandled,
    }
}

/// The decision for `dispatch.failed` given the order's current state.
pub fn on_dispatch_failed(current: Option<OrderState>) -> ReleaseDecision {
    match current {
        None => ReleaseDecision::RecordTombstone,
        Some(OrderState::Reserved) => ReleaseDecision::Release,
        Some(OrderState::Rejected) => ReleaseDecision::NothingReserved,
        Some(OrderState::Released | OrderState::ReleaseRequested) => {
            ReleaseDecision::AlreadyReleased
        }
        Some(OrderState::Committed) => ReleaseDecision::RefuseCommitted,
    }
}

/// The decision for `payment.captured` given the order's current state.
pub fn on_payment_captured(current: Option<OrderState>) -> CommitDecision {
    match current {
        None => CommitDecision::AwaitReservation,
        Some(OrderState::Reserved) => CommitDecision::Commit,
        Some(OrderState::Committed) => CommitDecision::AlreadyCommitted,
        Some(OrderState::ReleaseRequested | OrderState::Rejected | OrderState::Released) => {
            CommitDecision::Refuse
        }
    }
}

/// The quantity of one SKU an order needs (its lines for that SKU merged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub sku: String,
    pub qty: i64,
}

/// The order's lines with duplicate SKUs merged (quantities added), sorted by SKU — the order
/// in which stock rows are locked.
pub fn merge_lines(items: &[LineItem]) -> Vec<Line> {
    let mut merged: BTreeMap<&str, i64> = BTreeMap::new();
    for item in items {
        *merged.entry(item.sku.as_str()).or_default() += i64::from(item.qty);
    }
    merged
        .into_iter()
        .map(|(sku, qty)| Line {
            sku: sku.to_owned(),
            qty,
        })
        .collect()
}

/// One SKU's stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockLevel {
    pub on_hand: i64,
    pub reserved: i64,
    pub shipped: i64,
}

impl StockLevel {
    /// What can still be reserved: `on_hand − reserved`.
    pub const fn available(&self) -> i64 {
        self.on_hand - self.reserved
    }
}

/// Whether an order can be reserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReservationDecision {
    /// Every line fits: reserve these (merged, sorted) lines.
    Reserve(Vec<Line>),
    /// These SKUs (sorted, each once) are short; reserve nothing.
    Reject { unavailable_skus: Vec<String> },
}

/// All or nothing: reserve `lines` (merged, see [`merge_lines`]) if every SKU has at least the
/// quantity available in `stock`; a SKU missing from `stock` has nothing available.
pub fn decide_reservation(
    lines: Vec<Line>,
    stock: &BTreeMap<String, StockLevel>,
) -> ReservationDecision {
    let unavailable_skus: Vec<String> = lines
        .iter()
        .filter(|line| stock.get(&line.sku).map_or(0, StockLevel::available) < line.qty)
        .map(|line| line.sku.clone())
        .collect();
    if unavailable_skus.is_empty() {
        ReservationDecision::Reserve(lines)
    } else {
        ReservationDecision::Reject { unavailable_skus }
    }
}

/// [`decide_reservation`] for several orders in turn, as if each were handled on its own after
/// the ones before it: every reservation is taken out of `stock` before the next order is
/// decided.
pub fn decide_reservations(
    orders: impl IntoIterator<Item = Vec<Line>>,
    stock: &mut BTreeMap<String, StockLevel>,
) -> Vec<ReservationDecision> {
    orders
        .into_iter()
        .map(|lines| {
            let decision = decide_reservation(lines, stock);
            if let ReservationDecision::Reserve(lines) = &decision {
                for line in lines {
                    if let Some(level) = stock.get_mut(&line.sku) {
                        level.reserved += line.qty;
                    }
                }
            }
            decision
        })
        .collect()
}

/// Why a SKU or an `on_hand` value is refused by the stock API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StockInputError {
    #[error("a SKU must be 1..={MAX_SKU_LEN} characters, got {0}")]
    SkuLength(usize),
    #[error("a SKU may only contain A-Z, a-z, 0-9, '.', '_' and '-', found {0:?}")]
    SkuCharacter(char),
    #[error("on_hand must be in 0..={MAX_ON_HAND}, got {0}")]
    OnHandOutOfRange(i64),
    #[error("on_hand {requested} is below the {reserved} units reserved for orders")]
    OnHandBelowReserved { requested: i64, reserved: i64 },
}

/// A SKU the stock API accepts: 1..=64 characters of `[A-Za-z0-9._-]`.
pub fn validate_sku(sku: &str) -> Result<(), StockInputError> {
    let len = sku.chars().count();
    if len == 0 || len > MAX_SKU_LEN {
        return Err(StockInputError::SkuLength(len));
    }
    match sku
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(bad) => Err(StockInputError::SkuCharacter(bad)),
        None => Ok(()),
    }
}

/// An `on_hand` an admin may ask for, before looking at the stock: 0..=[`MAX_ON_HAND`].
pub fn validate_on_hand(on_hand: i64) -> Result<(), StockInputError> {
    if (0..=MAX_ON_HAND).contains(&on_hand) {
        Ok(())
    } else {
        Err(StockInputError::OnHandOutOfRange(on_hand))
    }
}

/// Whether `on_hand` may replace the current stock: never below what is reserved.
pub fn check_new_on_hand(on_hand: i64, current: &StockLevel) -> Result<(), StockInputError> {
    if on_hand < current.reserved {
        Err(StockInputError::OnHandBelowReserved {
            requested: on_hand,
            reserved: current.reserved,
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;
    use OrderState::*;

    fn all_currents() -> Vec<Option<OrderState>> {
        std::iter::once(None)
            .chain(OrderState::ALL.into_iter().map(Some))
            .collect()
    }

    /// Checks that `table` lists every current state exactly once and that `decide` agrees.
    fn check_table<D: std::fmt::Debug + PartialEq>(
        table: &[(Option<OrderState>, D)],
        decide: impl Fn(Option<OrderState>) -> D,
    ) {
        let currents = all_currents();
        assert_eq!(table.len(), currents.len(), "one row per current state");
        for current in currents {
            let rows: Vec<_> = table.iter().filter(|(c, _)| *c == current).collect();
            assert_eq!(rows.len(), 1, "exactly one row for {current:?}");
            assert_eq!(decide(current), rows[0].1, "decision for {current:?}");
        }
    }

    fn item(sku: &str, qty: u32) -> LineItem {
        LineItem {
            sku: sku.to_owned(),
            qty,
            unit_price_cents: 100,
        }
    }

    fn line(sku: &str, qty: i64) -> Line {
        Line {
            sku: sku.to_owned(),
            qty,
        }
    }

    fn stock(levels: &[(&str, i64, i64)]) -> BTreeMap<String, StockLevel> {
        levels
            .iter()
            .map(|&(sku, on_hand, reserved)| {
                (
                    sku.to_owned(),
                    StockLevel {
                        on_hand,
                        reserved,
                        shipped: 0,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn state_names_round_trip() {
        for state in OrderState::ALL {
            assert_eq!(OrderState::parse(state.as_str()), Some(state));
        }
        assert_eq!(OrderState::parse("pending"), None);
        assert_eq!(
            OrderState::ALL.map(OrderState::as_str),
            [
                "release_requested",
                "reserved",
                "rejected",
                "released",
                "committed"
            ]
        );
    }

    #[test]
    fn payment_authorized_reserves_once_and_is_skipped_after_a_tombstone() {
        use AuthorizedDecision::*;
        check_table(
            &[
                (None, Reserve),
                (Some(ReleaseRequested), SkipReleased),
                (Some(Reserved), AlreadyHandled),
                (Some(Rejected), AlreadyHandled),
                (Some(Released), AlreadyHandled),
                (Some(Committed), AlreadyHandled),
            ],
            on_payment_authorized,
        );
    }

    #[test]
    fn dispatch_failed_releases_only_a_reservation_and_never_a_committed_one() {
        use ReleaseDecision::*;
        check_table(
            &[
                (None, RecordTombstone),
                (Some(ReleaseRequested), AlreadyReleased),
                (Some(Reserved), Release),
                (Some(Rejected), NothingReserved),
                (Some(Released), AlreadyReleased),
                (Some(Committed), RefuseCommitted),
            ],
            on_dispatch_failed,
        );
    }

    #[test]
    fn payment_captured_commits_only_a_reservation_and_never_a_released_one() {
        use CommitDecision::*;
        check_table(
            &[
                (None, AwaitReservation),
                (Some(ReleaseRequested), Refuse),
                (Some(Reserved), Commit),
                (Some(Rejected), Refuse),
                (Some(Released), Refuse),
                (Some(Committed), AlreadyCommitted),
            ],
            on_payment_captured,
        );
    }

    #[test]
    fn merging_adds_duplicate_skus_and_sorts_by_sku() {
        let items = [item("b", 2), item("a", 1), item("b", 3), item("c", 1)];
        assert_eq!(
            merge_lines(&items),
            [line("a", 1), line("b", 5), line("c", 1)]
        );
        assert_eq!(merge_lines(&[item("x", 7)]), [line("x", 7)]);
        // quantities add up beyond u32 without overflow
        assert_eq!(
            merge_lines(&[item("x", u32::MAX), item("x", u32::MAX)]),
            [line("x", 2 * i64::from(u32::MAX))]
        );
        // SKUs are compared exactly (case matters)
        assert_eq!(
            merge_lines(&[item("a", 1), item("A", 1)]),
            [line("A", 1), line("a", 1)]
        );
    }

    #[test]
    fn available_is_on_hand_minus_reserved() {
        let level = StockLevel {
            on_hand: 10,
            reserved: 4,
            shipped: 99,
        };
        assert_eq!(level.available(), 6);
    }

    #[test]
    fn reserves_when_every_line_fits_exactly_or_with_room() {
        let lines = vec![line("a", 3), line("b", 1)];
        assert_eq!(
            decide_reservation(lines.clone(), &stock(&[("a", 5, 2), ("b", 1, 0)])),
            ReservationDecision::Reserve(lines)
        );
    }

    #[test]
    fn rejects_everything_when_one_line_is_short() {
        let decision = decide_reservation(
            vec![line("a", 1), line("b", 2)],
            &stock(&[("a", 10, 0), ("b", 5, 4)]),
        );
        assert_eq!(
            decision,
            ReservationDecision::Reject {
                unavailable_skus: vec!["b".to_owned()]
            }
        );
    }

    #[test]
    fn unknown_skus_have_nothing_available_and_every_short_sku_is_named() {
        let decision = decide_reservation(
            vec![line("a", 1), line("b", 1), line("c", 1)],
            &stock(&[("b", 1, 0), ("c", 0, 0)]),
        );
        assert_eq!(
            decision,
            ReservationDecision::Reject {
                unavailable_skus: vec!["a".to_owned(), "c".to_owned()]
            }
        );
    }

    #[test]
    fn merged_duplicates_are_checked_against_their_total() {
        // two lines of 3 fit separately in 5 but not together
        let lines = merge_lines(&[item("a", 3), item("a", 3)]);
        assert_eq!(
            decide_reservation(lines, &stock(&[("a", 5, 0)])),
            ReservationDecision::Reject {
                unavailable_skus: vec!["a".to_owned()]
            }
        );
    }

    #[test]
    fn orders_decided_in_turn_take_stock_from_the_ones_after_them() {
        let mut levels = stock(&[("a", 5, 1), ("b", 2, 0)]);
        let decisions = decide_reservations(
            [
                vec![line("a", 3)],
                vec![line("a", 1), line("b", 2)],
                vec![line("a", 1)],
                vec![line("b", 1)],
            ],
            &mut levels,
        );
        assert_eq!(
            decisions,
            [
                ReservationDecision::Reserve(vec![line("a", 3)]),
                ReservationDecision::Reserve(vec![line("a", 1), line("b", 2)]),
                // a: 5 on hand, 1 + 3 + 1 reserved
                ReservationDecision::Reject {
                    unavailable_skus: vec!["a".to_owned()]
                },
                ReservationDecision::Reject {
                    unavailable_skus: vec!["b".to_owned()]
                },
            ]
        );
        // a rejection takes nothing
        assert_eq!(levels["a"].reserved, 5);
        assert_eq!(levels["b"].reserved, 2);
    }

    #[test]
    fn skus_are_validated() {
        for good in ["a", "TEA-LONGJING-250G", "sku_1.v2", &"x".repeat(64)] {
            assert_eq!(validate_sku(good), Ok(()), "{good}");
        }
        assert_eq!(validate_sku(""), Err(StockInputError::SkuLength(0)));
        assert_eq!(
            validate_sku(&"x".repeat(65)),
            Err(StockInputError::SkuLength(65))
        );
        for (bad, found) in [("a b", ' '), ("a/b", '/'), ("茶", '茶'), ("a%2F", '%')] {
            assert_eq!(
                validate_sku(bad),
                Err(StockInputError::SkuCharacter(found)),
                "{bad}"
            );
        }
    }

    #[test]
    fn on_hand_must_be_in_range() {
        for good in [0, 1, MAX_ON_HAND] {
            assert_eq!(validate_on_hand(good), Ok(()));
        }
        for bad in [-1, MAX_ON_HAND + 1, i64::MIN, i64::MAX] {
            assert_eq!(
                validate_on_hand(bad),
                Err(StockInputError::OnHandOutOfRange(bad))
            );
        }
    }

    #[test]
    fn on_hand_may_not_go_below_reserved() {
        let current = StockLevel {
            on_hand: 10,
            reserved: 4,
            shipped: 2,
        };
        assert_eq!(check_new_on_hand(4, &current), Ok(()));
        assert_eq!(check_new_on_hand(100, &current), Ok(()));
        assert_eq!(
            check_new_on_hand(3, &current),
            Err(StockInputError::OnHandBelowReserved {
                requested: 3,
                reserved: 4
            })
        );
    }
}
