//! Property tests of the inventory decisions: several orders over a few SKUs, their saga events
//! (reserve on `payment.authorized`, release on `dispatch.failed`, ship on `payment.captured`)
//! in any order and delivered any number of times, interleaved with admins setting stock. Stock
//! never goes negative, never more is reserved than is on hand, an order ships at most once and
//! never after its release, and the stock's counters always equal the sum of what the orders
//! hold. The model applies each decision the way the handler's store does.

use std::collections::{BTreeMap, VecDeque};

use proptest::prelude::*;

use super::*;

const SKUS: [&str; 3] = ["sku-a", "sku-b", "sku-c"];
const ORDERS: usize = 4;

#[derive(Debug, Clone, Copy)]
enum Event {
    PaymentAuthorized(usize),
    DispatchFailed(usize),
    PaymentCaptured(usize),
    /// An admin sets a SKU's `on_hand` (refused below what is reserved).
    SetStock {
        sku: usize,
        on_hand: i64,
    },
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (0..ORDERS).prop_map(Event::PaymentAuthorized),
        (0..ORDERS).prop_map(Event::DispatchFailed),
        (0..ORDERS).prop_map(Event::PaymentCaptured),
        (0..SKUS.len(), 0..12i64).prop_map(|(sku, on_hand)| Event::SetStock { sku, on_hand }),
    ]
}

/// An order's lines: one to three lines of SKUs from [`SKUS`], a SKU possibly repeated.
fn lines() -> impl Strategy<Value = Vec<LineItem>> {
    prop::collection::vec((0..SKUS.len(), 1..5u32), 1..4).prop_map(|lines| {
        lines
            .into_iter()
            .map(|(sku, qty)| LineItem {
                sku: SKUS[sku].to_owned(),
                qty,
                unit_price_cents: 100,
            })
            .collect()
    })
}

#[derive(Debug)]
struct Order {
    lines: Vec<LineItem>,
    state: Option<OrderState>,
    /// What it holds in stock while reserved.
    reserved: Vec<Line>,
    shipped: Vec<Line>,
    commits: u32,
    releases: u32,
}

#[derive(Debug)]
struct Model {
    stock: BTreeMap<String, StockLevel>,
    orders: Vec<Order>,
}

/// What the consumer does with a delivery after its handler ran.
enum Handled {
    Done,
    /// The handler asked for a redelivery (its precondition is not recorded yet).
    Retry,
}

impl Model {
    fn new(initial: &[i64], orders: Vec<Vec<LineItem>>) -> Self {
        let stock = SKUS
            .iter()
            .zip(initial)
            .map(|(sku, &on_hand)| {
                let level = StockLevel {
                    on_hand,
                    reserved: 0,
                    shipped: 0,
                };
                ((*sku).to_owned(), level)
            })
            .collect();
        let orders = orders
            .into_iter()
            .map(|lines| Order {
                lines,
                state: None,
                reserved: Vec::new(),
                shipped: Vec::new(),
                commits: 0,
                releases: 0,
            })
            .collect();
        Self { stock, orders }
    }

    fn level(&mut self, sku: &str) -> &mut StockLevel {
        self.stock
            .get_mut(sku)
            .unwrap_or_else(|| panic!("the model stocks every SKU, not {sku}"))
    }

    fn apply(&mut self, event: Event) -> Handled {
        match event {
            Event::PaymentAuthorized(i) => match on_payment_authorized(self.orders[i].state) {
                AuthorizedDecision::Reserve => {
                    let lines = merge_lines(&self.orders[i].lines);
                    match decide_reservation(lines, &self.stock) {
                        ReservationDecision::Reserve(lines) => {
                            for line in &lines {
                                self.level(&line.sku).reserved += line.qty;
                            }
                            let order = &mut self.orders[i];
                            order.reserved = lines;
                            order.state = Some(OrderState::Reserved);
                        }
                        ReservationDecision::Reject { .. } => {
                            self.orders[i].state = Some(OrderState::Rejected)
                        }
                    }
                }
                AuthorizedDecision::SkipReleased | AuthorizedDecision::AlreadyHandled => {}
            },
            Event::DispatchFailed(i) => match on_dispatch_failed(self.orders[i].state) {
                ReleaseDecision::Release => {
                    let lines = std::mem::take(&mut self.orders[i].reserved);
                    for line in &lines {
                        self.level(&line.sku).reserved -= line.qty;
                    }
                    let order = &mut self.orders[i];
                    order.releases += 1;
                    order.state = Some(OrderState::Released);
                }
                ReleaseDecision::RecordTombstone => {
                    self.orders[i].state = Some(OrderState::ReleaseRequested)
                }
                ReleaseDecision::NothingReserved
                | ReleaseDecision::AlreadyReleased
                | ReleaseDecision::RefuseCommitted => {}
            },
            Event::PaymentCaptured(i) => match on_payment_captured(self.orders[i].state) {
                CommitDecision::Commit => {
                    let lines = std::mem::take(&mut self.orders[i].reserved);
                    for line in &lines {
                        let level = self.level(&line.sku);
                        level.on_hand -= line.qty;
                        level.reserved -= line.qty;
                        level.shipped += line.qty;
                    }
                    let order = &mut self.orders[i];
                    order.shipped = lines;
                    order.commits += 1;
                    order.state = Some(OrderState::Committed);
                }
                CommitDecision::AwaitReservation => return Handled::Retry,
                CommitDecision::AlreadyCommitted | CommitDecision::Refuse => {}
            },
            Event::SetStock { sku, on_hand } => {
                let level = self.level(SKUS[sku]);
                if validate_on_hand(on_hand).is_ok() && check_new_on_hand(on_hand, level).is_ok() {
                    level.on_hand = on_hand;
                }
            }
        }
        Handled::Done
    }

    fn check(&self) -> Result<(), TestCaseError> {
        for (sku, level) in &self.stock {
            prop_assert!(level.reserved >= 0, "{sku} reserved below 0: {self:?}");
            prop_assert!(level.shipped >= 0, "{sku} shipped below 0: {self:?}");
            prop_assert!(
                level.on_hand >= level.reserved,
                "{sku}: more reserved than on hand: {self:?}"
            );
            let held: i64 = self.held(sku, |order| &order.reserved);
            prop_assert_eq!(level.reserved, held, "{} reserved vs orders", sku);
            let shipped: i64 = self.held(sku, |order| &order.shipped);
            prop_assert_eq!(level.shipped, shipped, "{} shipped vs orders", sku);
        }
        for order in &self.orders {
            prop_assert!(order.commits <= 1, "shipped twice: {order:?}");
            prop_assert!(order.releases <= 1, "released twice: {order:?}");
            prop_assert!(
                order.commits + order.releases <= 1,
                "shipped and released: {order:?}"
            );
        }
        Ok(())
    }

    fn held(&self, sku: &str, lines: impl Fn(&Order) -> &Vec<Line>) -> i64 {
        self.orders
            .iter()
            .flat_map(|order| lines(order).iter())
            .filter(|line| line.sku == sku)
            .map(|line| line.qty)
            .sum()
    }
}

/// Redeliveries of one message before the test stops retrying it.
const MAX_REDELIVERIES: usize = 8;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn stock_never_goes_negative_and_each_order_ships_at_most_once(
        initial in prop::collection::vec(0..12i64, SKUS.len()),
        orders in prop::collection::vec(lines(), ORDERS),
        events in prop::collection::vec(event(), 0..40),
    ) {
        let mut model = Model::new(&initial, orders);
        let mut queue: VecDeque<(Event, usize)> =
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
}
