//! The saga end to end: the five services as separate `jwl serve` processes, driven over HTTP.
//! Each test starts its own system, waits with `eventually` (never sleeps), checks the
//! invariants of the README (How delivery is guaranteed) and prints one summary line.
//!
//! The happy path, the three failures, the 200 mixed orders and the killed services run on both
//! brokers: each scenario is one function of the [`BrokerKind`], called by a NATS test and by a
//! `…_on_kafka` test (skipped when tansu is not installed).

use std::time::{Duration, Instant};

use jwl_e2e::api::PaymentStatus;
use jwl_e2e::{
    BrokerKind, Call, LineItem, NewOrder, OrderStatus, Outcomes, PlacedOrder, Point, Service,
    System, SystemOptions, eventually, with_system,
};
use jwl_service_kit::auth::Scope;
use reqwest::{Method, StatusCode};
use serde_json::json;

/// How long one saga may take on a busy 2-core machine.
const SAGA_TIMEOUT: Duration = Duration::from_secs(60);

/// [`SAGA_TIMEOUT`] on `broker`: the Kafka transport is slower (a saga takes seconds), and a
/// consumer killed on Kafka hands its partitions over only when its session times out (10 s),
/// so give it twice as long.
fn saga_timeout(broker: BrokerKind) -> Duration {
    match broker {
        BrokerKind::Nats => SAGA_TIMEOUT,
        BrokerKind::Kafka => 2 * SAGA_TIMEOUT,
    }
}

/// The default settings on `broker`.
fn on(broker: BrokerKind) -> SystemOptions {
    SystemOptions {
        broker,
        ..SystemOptions::default()
    }
}
const PRICE_CENTS: i64 = 1250;

fn line(sku: &str, qty: u32) -> LineItem {
    LineItem {
        sku: sku.to_owned(),
        qty,
        unit_price_cents: PRICE_CENTS,
    }
}

/// An order for `items` picked up at `pickup`, delivered 2 km north of it.
fn order(items: Vec<LineItem>, pickup: Point, payment_token: &str) -> NewOrder {
    NewOrder {
        items,
        pickup,
        dropoff: pickup.offset_km(2.0, 0.0),
        payment_token: payment_token.to_owned(),
    }
}

fn summary(test: &str, orders: usize, outcomes: &Outcomes, started: Instant) {
    println!(
        "e2e {test}: {orders} orders, outcomes [{outcomes}], wall {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// `test`, with the broker when it is not the default (`happy_path on kafka`).
fn named(test: &str, broker: BrokerKind) -> String {
    match broker {
        BrokerKind::Nats => test.to_owned(),
        BrokerKind::Kafka => format!("{test} on {broker}"),
    }
}

/// The stock level of `sku` as (on_hand, reserved, shipped).
async fn stock(system: &System, sku: &str) -> anyhow::Result<(i64, i64, Option<i64>)> {
    let level = system.api().stock(system.admin_token(), sku).await?;
    Ok((level.on_hand, level.reserved, level.shipped))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_dispatches_captures_and_delivers() -> anyhow::Result<()> {
    happy_path(BrokerKind::Nats).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_dispatches_captures_and_delivers_on_kafka() -> anyhow::Result<()> {
    happy_path(BrokerKind::Kafka).await
}

async fn happy_path(broker: BrokerKind) -> anyhow::Result<()> {
    let started = Instant::now();
    let saga_timeout = saga_timeout(broker);
    with_system(on(broker), async |system| {
        system.set_stock("TEA", 10).await?;
        let pickup = Point::JIANGWAN;
        system
            .move_courier("courier-1", pickup.offset_km(0.5, 0.5))
            .await?;
        let placed = system
            .place_order(
                "alice",
                order(vec![line("TEA", 2), line("TEA", 1)], pickup, "tok_ok"),
            )
            .await?;

        let view = system.wait_terminal(&placed.order_id, saga_timeout).await?;
        assert_eq!(view.status, OrderStatus::Dispatched, "{view:?}");
        assert_eq!(view.reason, None);
        assert_eq!(view.courier_id.as_deref(), Some("courier-1"));
        let waybill_id = view
            .waybill_id
            .clone()
            .expect("a dispatched order has a waybill");
        let types = view.timeline_types();
        for expected in [
            "jwl.order.created",
            "jwl.payment.authorized",
            "jwl.inventory.reserved",
            "jwl.fulfillment.waybill_created",
            "jwl.dispatch.courier_assigned",
            "jwl.payment.captured",
        ] {
            assert!(
                types.contains(&expected),
                "timeline {types:?} lacks {expected}"
            );
        }
        let payment = system
            .api()
            .payment(system.admin_token(), &placed.order_id)
            .await?;
        assert_eq!(payment.status, PaymentStatus::Captured);
        assert_eq!(payment.amount_cents, 3 * PRICE_CENTS);
        // fulfillment records the assignment beside the capture that ends the saga, not before
        // it (on Kafka it was seen still `open` when the order read dispatched): wait for it
        let waybill = eventually(
            "fulfillment records the assignment",
            saga_timeout,
            || async {
                let waybill = system
                    .api()
                    .waybill(system.admin_token(), &waybill_id)
                    .await?;
                anyhow::ensure!(waybill.status != "open", "the waybill is still open");
                anyhow::Ok(waybill)
            },
        )
        .await?;
        assert_eq!(
            (waybill.status.as_str(), waybill.courier_id.as_deref()),
            ("assigned", Some("courier-1"))
        );
        assert_eq!(waybill.order_id, placed.order_id);

        // The customer reads their own order; another customer may not.
        let alice = system.tokens().customer("alice")?;
        assert_eq!(
            system.api().order(&alice, &placed.order_id).await?.status,
            OrderStatus::Dispatched
        );
        let bob = system.tokens().customer("bob")?;
        let reply = system
            .api()
            .send_until_served(
                Call::new(
                    Service::Order,
                    Method::GET,
                    format!("/v1/orders/{}", placed.order_id),
                )
                .token(&bob),
            )
            .await?;
        assert!(
            matches!(reply.status, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND),
            "{reply:?}"
        );
        // A dispatched order can no longer be cancelled.
        assert_eq!(
            system
                .api()
                .cancel_order(&alice, &placed.order_id)
                .await?
                .status,
            StatusCode::CONFLICT
        );

        // The courier confirms the delivery.
        let courier = system.tokens().courier("courier-1")?;
        let confirmed = system
            .api()
            .confirm_delivery(&courier, "courier-1", &waybill_id)
            .await?;
        assert!(confirmed.status.is_success(), "{confirmed:?}");
        let delivered = system
            .wait_for_order(&placed.order_id, "delivered", saga_timeout, |v| {
                v.status == OrderStatus::Delivered
            })
            .await?;
        assert!(
            delivered
                .timeline_types()
                .contains(&"jwl.dispatch.delivered")
        );
        let again = system
            .api()
            .confirm_delivery(&courier, "courier-1", &waybill_id)
            .await?;
        assert_eq!(again.status, StatusCode::CONFLICT, "{again:?}");
        again.problem()?;

        let outcomes = system
            .check_invariants(std::slice::from_ref(&placed))
            .await?;
        assert_eq!(outcomes.count("delivered"), 1, "{outcomes}");
        assert_eq!(stock(system, "TEA").await?, (7, 0, Some(3)));
        let waybill = system
            .api()
            .waybill(system.admin_token(), &waybill_id)
            .await?;
        assert_eq!(waybill.status, "delivered");
        summary(&named("happy_path", broker), 1, &outcomes, started);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_card_rejects_the_order_and_leaves_stock_alone() -> anyhow::Result<()> {
    declined_card(BrokerKind::Nats).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_card_rejects_the_order_and_leaves_stock_alone_on_kafka() -> anyhow::Result<()> {
    declined_card(BrokerKind::Kafka).await
}

async fn declined_card(broker: BrokerKind) -> anyhow::Result<()> {
    let started = Instant::now();
    with_system(on(broker), async |system| {
        system.set_stock("TEA", 10).await?;
        system.move_courier("courier-1", Point::JIANGWAN).await?;
        let placed = system
            .place_order(
                "alice",
                order(vec![line("TEA", 2)], Point::JIANGWAN, "tok_decline"),
            )
            .await?;
        let view = system
            .wait_terminal(&placed.order_id, saga_timeout(broker))
            .await?;
        assert_eq!(
            (view.status, view.reason.as_deref()),
            (OrderStatus::Rejected, None),
            "{view:?}"
        );
        assert!(view.timeline_types().contains(&"jwl.payment.declined"));
        let payment = system
            .api()
            .payment(system.admin_token(), &placed.order_id)
            .await?;
        assert_eq!(payment.status, PaymentStatus::Declined);
        assert_eq!(payment.amount_cents, 2 * PRICE_CENTS);
        let outcomes = system
            .check_invariants(std::slice::from_ref(&placed))
            .await?;
        assert_eq!(outcomes.count("rejected"), 1, "{outcomes}");
        assert_eq!(stock(system, "TEA").await?, (10, 0, Some(0)));
        summary(&named("declined", broker), 1, &outcomes, started);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_stock_cancels_the_order_and_voids_the_payment() -> anyhow::Result<()> {
    out_of_stock(BrokerKind::Nats).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_stock_cancels_the_order_and_voids_the_payment_on_kafka() -> anyhow::Result<()> {
    out_of_stock(BrokerKind::Kafka).await
}

async fn out_of_stock(broker: BrokerKind) -> anyhow::Result<()> {
    let started = Instant::now();
    with_system(on(broker), async |system| {
        system.set_stock("TEA", 1).await?;
        system.move_courier("courier-1", Point::JIANGWAN).await?;
        // Two lines: one available, one unknown SKU — all or nothing.
        let placed = system
            .place_order(
                "alice",
                order(
                    vec![line("TEA", 1), line("NO-SUCH-SKU", 1)],
                    Point::JIANGWAN,
                    "tok_ok",
                ),
            )
            .await?;
        let view = system
            .wait_terminal(&placed.order_id, saga_timeout(broker))
            .await?;
        assert_eq!(
            (view.status, view.reason.as_deref()),
            (OrderStatus::Cancelled, Some("out_of_stock")),
            "{view:?}"
        );
        let outcomes = system
            .check_invariants(std::slice::from_ref(&placed))
            .await?;
        assert_eq!(outcomes.count("cancelled/out_of_stock"), 1, "{outcomes}");
        // the void follows the cancellation: read it once the system has drained
        let payment = system
            .api()
            .payment(system.admin_token(), &placed.order_id)
            .await?;
        assert_eq!(payment.status, PaymentStatus::Voided);
        assert_eq!(stock(system, "TEA").await?, (1, 0, Some(0)));
        summary(&named("out_of_stock", broker), 1, &outcomes, started);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_courier_in_range_cancels_and_compensates_everything() -> anyhow::Result<()> {
    no_courier_in_range(BrokerKind::Nats).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_courier_in_range_cancels_and_compensates_everything_on_kafka() -> anyhow::Result<()> {
    no_courier_in_range(BrokerKind::Kafka).await
}

async fn no_courier_in_range(broker: BrokerKind) -> anyhow::Result<()> {
    let started = Instant::now();
    let options = SystemOptions {
        dispatch_deadline: Duration::from_secs(2),
        ..on(broker)
    };
    with_system(options, async |system| {
        system.set_stock("TEA", 5).await?;
        system
            .move_courier("courier-far", Point::JIANGWAN.offset_km(50.0, 0.0))
            .await?;
        let placed = system
            .place_order(
                "alice",
                order(vec![line("TEA", 3)], Point::JIANGWAN, "tok_ok"),
            )
            .await?;
        let view = system
            .wait_terminal(&placed.order_id, saga_timeout(broker))
            .await?;
        assert_eq!(
            (view.status, view.reason.as_deref()),
            (OrderStatus::Cancelled, Some("no_courier")),
            "{view:?}"
        );
        assert_eq!(view.courier_id, None);
        let waybill_id = view
            .waybill_id
            .clone()
            .expect("the waybill was created before dispatch failed");
        let outcomes = system
            .check_invariants(std::slice::from_ref(&placed))
            .await?;
        assert_eq!(outcomes.count("cancelled/no_courier"), 1, "{outcomes}");
        let payment = system
            .api()
            .payment(system.admin_token(), &placed.order_id)
            .await?;
        assert_eq!(payment.status, PaymentStatus::Voided);
        assert_eq!(stock(system, "TEA").await?, (5, 0, Some(0)));
        let waybill = system
            .api()
            .waybill(system.admin_token(), &waybill_id)
            .await?;
        assert_eq!(waybill.status, "cancelled");
        let types = system.order(&placed.order_id).await?.timeline;
        let types: Vec<&str> = types.iter().map(|t| t.event_type.as_str()).collect();
        for expected in [
            "jwl.dispatch.failed",
            "jwl.inventory.released",
            "jwl.payment.voided",
            "jwl.fulfillment.waybill_cancelled",
        ] {
            assert!(
                types.contains(&expected),
                "timeline {types:?} lacks {expected}"
            );
        }
        summary(&named("no_courier", broker), 1, &outcomes, started);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_waybill_goes_to_a_courier_who_moves_into_range_or_is_cancelled()
-> anyhow::Result<()> {
    let started = Instant::now();
    with_system(SystemOptions::default(), async |system| {
        system.set_stock("TEA", 5).await?;
        let far = Point::JIANGWAN.offset_km(50.0, 0.0);
        system.move_courier("courier-1", far).await?;
        let first = system
            .place_order(
                "alice",
                order(vec![line("TEA", 1)], Point::JIANGWAN, "tok_ok"),
            )
            .await?;
        let waiting = system
            .wait_for_order(
                &first.order_id,
                "waiting for a courier",
                SAGA_TIMEOUT,
                |v| v.status == OrderStatus::WaybillCreated || v.status.is_terminal(),
            )
            .await?;
        assert_eq!(waiting.status, OrderStatus::WaybillCreated, "{waiting:?}");
        system
            .move_courier("courier-1", Point::JIANGWAN.offset_km(1.0, 0.0))
            .await?;
        let view = system.wait_terminal(&first.order_id, SAGA_TIMEOUT).await?;
        assert_eq!(view.status, OrderStatus::Dispatched, "{view:?}");
        assert_eq!(view.courier_id.as_deref(), Some("courier-1"));

        // courier-1 is now full (capacity 1): the next order waits, and its customer cancels it.
        let second = system
            .place_order(
                "bob",
                order(vec![line("TEA", 2)], Point::JIANGWAN, "tok_ok"),
            )
            .await?;
        let waiting = system
            .wait_for_order(
                &second.order_id,
                "waiting for a courier",
                SAGA_TIMEOUT,
                |v| v.status == OrderStatus::WaybillCreated || v.status.is_terminal(),
            )
            .await?;
        assert_eq!(waiting.status, OrderStatus::WaybillCreated, "{waiting:?}");
        let bob = system.tokens().customer("bob")?;
        let reply = system.api().cancel_order(&bob, &second.order_id).await?;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
        let view = system.wait_terminal(&second.order_id, SAGA_TIMEOUT).await?;
        assert_eq!(
            (view.status, view.reason.as_deref()),
            (OrderStatus::Cancelled, Some("customer")),
            "{view:?}"
        );
        let payment = system
            .api()
            .payment(system.admin_token(), &second.order_id)
            .await?;
        assert_eq!(payment.status, PaymentStatus::Voided);

        let placed = [first, second];
        let outcomes = system.check_invariants(&placed).await?;
        assert_eq!(stock(system, "TEA").await?, (4, 0, Some(1)));
        summary(
            "courier_moves_into_range_then_customer_cancel",
            placed.len(),
            &outcomes,
            started,
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_deadline_cancels_an_order_nobody_can_deliver() -> anyhow::Result<()> {
    let started = Instant::now();
    let options = SystemOptions {
        order_deadline: Duration::from_secs(2),
        ..SystemOptions::default()
    };
    with_system(options, async |system| {
        system.set_stock("TEA", 5).await?;
        system
            .move_courier("courier-far", Point::JIANGWAN.offset_km(50.0, 0.0))
            .await?;
        let placed = system
            .place_order(
                "alice",
                order(vec![line("TEA", 2)], Point::JIANGWAN, "tok_ok"),
            )
            .await?;
        let view = system.wait_terminal(&placed.order_id, SAGA_TIMEOUT).await?;
        assert_eq!(
            (view.status, view.reason.as_deref()),
            (OrderStatus::Cancelled, Some("deadline")),
            "{view:?}"
        );
        assert!(
            view.timeline_types()
                .contains(&"jwl.order.cancel_requested")
        );
        let outcomes = system
            .check_invariants(std::slice::from_ref(&placed))
            .await?;
        assert_eq!(stock(system, "TEA").await?, (5, 0, Some(0)));
        summary("order_deadline", 1, &outcomes, started);
        Ok(())
    })
    .await
}

/// What a test order of the mixed run is meant to exercise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Normal,
    Declined,
    Scarce,
    Far,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_orders_with_mixed_outcomes_keep_every_invariant()
-> anyhow::Result<()> {
    two_hundred_mixed_orders(BrokerKind::Nats, Duration::from_secs(180)).await
}

/// The settle deadline is longer on Kafka: its transport is slower (a saga takes seconds at
/// 50 orders/s, docs/performance.md), and 200 orders at once queue behind each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_orders_with_mixed_outcomes_keep_every_invariant_on_kafka()
-> anyhow::Result<()> {
    two_hundred_mixed_orders(BrokerKind::Kafka, Duration::from_secs(420)).await
}

/// 200 orders placed at once, every kind of outcome; all must be terminal within `settle`.
async fn two_hundred_mixed_orders(broker: BrokerKind, settle: Duration) -> anyhow::Result<()> {
    const ORDERS: usize = 200;
    const COURIERS: usize = 30;
    const SCARCE_STOCK: i64 = 10;
    let started = Instant::now();
    let options = SystemOptions {
        dispatch_deadline: Duration::from_secs(3),
        courier_capacity: 5,
        ..on(broker)
    };
    with_system(options, async |system| {
        system.set_stock("TEA", 10_000).await?;
        system.set_stock("CAKE", 10_000).await?;
        system.set_stock("SCARCE", SCARCE_STOCK).await?;
        // Couriers on a grid within ~1 km of the centre: every near pickup (≤ 1.5 km) is in range.
        for n in 0..COURIERS {
            let at =
                Point::JIANGWAN.offset_km((n / 6) as f64 * 0.4 - 0.8, (n % 6) as f64 * 0.4 - 1.0);
            system.move_courier(&format!("courier-{n}"), at).await?;
        }
        // 15% declined, 15% scarce (10 of 30 can be served), 15% far from every courier.
        let kinds: Vec<Kind> = (0..ORDERS)
            .map(|i| match i % 20 {
                0..=2 => Kind::Declined,
                3..=5 => Kind::Scarce,
                6..=8 => Kind::Far,
                _ => Kind::Normal,
            })
            .collect();
        let orders: Vec<NewOrder> = kinds
            .iter()
            .enumerate()
            .map(|(i, kind)| {
                let near = Point::JIANGWAN
                    .offset_km((i % 7) as f64 * 0.2 - 0.6, (i % 5) as f64 * 0.2 - 0.4);
                let (items, pickup, token) = match kind {
                    Kind::Declined => (vec![line("TEA", 1)], near, "tok_decline"),
                    Kind::Scarce => (vec![line("SCARCE", 1)], near, "tok_ok"),
                    Kind::Far => (
                        vec![line("TEA", 2), line("CAKE", 1)],
                        near.offset_km(60.0, 0.0),
                        "tok_ok",
                    ),
                    Kind::Normal => (
                        vec![line("TEA", 1 + (i % 3) as u32), line("CAKE", 1)],
                        near,
                        "tok_ok",
                    ),
                };
                order(items, pickup, token)
            })
            .collect();
        let placed = system.place_orders(orders).await?;
        let placed_in = started.elapsed();
        let views = system.wait_all_terminal(&placed, settle).await?;
        let outcomes = system.check_invariants(&placed).await?;

        let count = |kind: Kind| kinds.iter().filter(|k| **k == kind).count();
        for ((kind, view), PlacedOrder { order_id, .. }) in kinds.iter().zip(&views).zip(&placed) {
            let ok = match kind {
                Kind::Normal => view.status == OrderStatus::Dispatched,
                Kind::Declined => view.status == OrderStatus::Rejected,
                Kind::Far => {
                    view.status == OrderStatus::Cancelled
                        && view.reason.as_deref() == Some("no_courier")
                }
                Kind::Scarce => {
                    view.status == OrderStatus::Dispatched
                        || (view.status == OrderStatus::Cancelled
                            && view.reason.as_deref() == Some("out_of_stock"))
                }
            };
            assert!(
                ok,
                "{kind:?} order {order_id} ended {:?}/{:?}",
                view.status, view.reason
            );
        }
        let scarce_served = SCARCE_STOCK as usize;
        assert_eq!(
            outcomes.count("rejected"),
            count(Kind::Declined),
            "{outcomes}"
        );
        assert_eq!(
            outcomes.count("cancelled/no_courier"),
            count(Kind::Far),
            "{outcomes}"
        );
        assert_eq!(
            outcomes.count("cancelled/out_of_stock"),
            count(Kind::Scarce) - scarce_served,
            "{outcomes}"
        );
        assert_eq!(
            outcomes.count("dispatched"),
            count(Kind::Normal) + scarce_served,
            "{outcomes}"
        );
        assert_eq!(outcomes.total(), ORDERS);
        assert_eq!(stock(system, "SCARCE").await?, (0, 0, Some(SCARCE_STOCK)));
        let name = named("mixed_200", broker);
        println!(
            "e2e {name}: all {ORDERS} placed after {:.1}s",
            placed_in.as_secs_f64()
        );
        summary(&name, ORDERS, &outcomes, started);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_validates_authenticates_and_echoes_request_ids() -> anyhow::Result<()> {
    let started = Instant::now();
    with_system(SystemOptions::default(), async |system| {
        let api = system.api();
        let customer = system.tokens().customer("alice")?;
        let good = order(vec![line("TEA", 1)], Point::JIANGWAN, "tok_ok");
        let post = |body: serde_json::Value| {
            Call::new(Service::Order, Method::POST, "/v1/orders").json(body)
        };

        // Bad coordinates: 400 problem naming the field.
        let mut body = serde_json::to_value(&good)?;
        body["pickup"]["lat"] = json!(91.0);
        let reply = api.send(post(body).token(&customer)).await?;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
        let problem = reply.problem()?;
        let names_field = problem.field.as_deref() == Some("pickup.lat")
            || problem
                .detail
                .as_deref()
                .is_some_and(|d| d.contains("pickup.lat"));
        assert!(
            names_field,
            "the problem does not name pickup.lat: {problem:?}"
        );

        // A non-positive quantity names the line.
        let mut body = serde_json::to_value(&good)?;
        body["items"][0]["qty"] = json!(0);
        let problem = api.send(post(body).token(&customer)).await?.problem()?;
        assert_eq!(problem.status, 400);
        let names_field = problem.field.as_deref() == Some("items[0].qty")
            || problem
                .detail
                .as_deref()
                .is_some_and(|d| d.contains("items[0].qty"));
        assert!(
            names_field,
            "the problem does not name items[0].qty: {problem:?}"
        );

        // No token: 401. A token signed with another secret: 401.
        let body = serde_json::to_value(&good)?;
        let reply = api.send(post(body.clone())).await?;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
        reply.problem()?;
        let forged = jwl_e2e::Tokens::new("another-secret").customer("alice")?;
        assert_eq!(
            api.send(post(body.clone()).token(&forged)).await?.status,
            StatusCode::UNAUTHORIZED
        );

        // Wrong scope: a courier cannot place orders, a customer cannot set stock or read payments.
        let courier = system.tokens().courier("courier-1")?;
        let reply = api.send(post(body.clone()).token(&courier)).await?;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
        reply.problem()?;
        let reply = api
            .send(
                Call::new(Service::Inventory, Method::PUT, "/v1/stock/TEA")
                    .token(&customer)
                    .json(json!({ "on_hand": 5 })),
            )
            .await?;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
        let reply = api
            .send(
                Call::new(
                    Service::Payment,
                    Method::GET,
                    format!("/v1/payments/{}", uuid::Uuid::now_v7()),
                )
                .token(&customer),
            )
            .await?;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
        // A courier may only report its own location.
        let reply = api
            .send(
                Call::new(
                    Service::Dispatch,
                    Method::PUT,
                    "/v1/couriers/courier-2/location",
                )
                .token(&courier)
                .json(json!({ "lat": 31.3, "lon": 121.5 })),
            )
            .await?;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
        let only_read = system.tokens().issue("alice", &[Scope::OrdersRead])?;
        assert_eq!(
            api.send(post(body.clone()).token(&only_read)).await?.status,
            StatusCode::FORBIDDEN
        );

        // X-Request-ID is echoed on every service, on success and on error (`send` checks it).
        for service in Service::ALL {
            let reply = api
                .send(
                    Call::new(service, Method::GET, "/readyz")
                        .request_id(&format!("e2e-{service}-ready")),
                )
                .await?;
            assert_eq!(reply.status, StatusCode::OK);
        }
        let reply = api
            .send(
                Call::new(
                    Service::Payment,
                    Method::GET,
                    format!("/v1/payments/{}", uuid::Uuid::now_v7()),
                )
                .token(system.admin_token())
                .request_id("e2e-unknown-payment"),
            )
            .await?;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
        reply.problem()?;
        let reply = api
            .send(post(body).token(&customer).request_id("e2e-post-order"))
            .await?;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        assert_eq!(reply.request_id, "e2e-post-order");

        // Unknown order: 404 problem.
        let reply = api
            .send(
                Call::new(
                    Service::Order,
                    Method::GET,
                    format!("/v1/orders/{}", uuid::Uuid::now_v7()),
                )
                .token(system.admin_token()),
            )
            .await?;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
        reply.problem()?;
        println!(
            "e2e api_checks: wall {:.1}s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_services_catch_up_after_restart() -> anyhow::Result<()> {
    killed_services_catch_up(BrokerKind::Nats).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_services_catch_up_after_restart_on_kafka() -> anyhow::Result<()> {
    killed_services_catch_up(BrokerKind::Kafka).await
}

async fn killed_services_catch_up(broker: BrokerKind) -> anyhow::Result<()> {
    const IN_FLIGHT: usize = 20;
    let started = Instant::now();
    let saga_timeout = saga_timeout(broker);
    let options = SystemOptions {
        courier_capacity: 5,
        // what a killed service had received but not acked comes back after this (on NATS; on
        // Kafka when the killed consumer's session times out)
        ack_wait: Duration::from_secs(3),
        ..on(broker)
    };
    with_system(options, async |system| {
        system.set_stock("TEA", 100).await?;
        for n in 0..5 {
            system
                .move_courier(
                    &format!("courier-{n}"),
                    Point::JIANGWAN.offset_km(n as f64 * 0.2, 0.0),
                )
                .await?;
        }
        // A dead payment service: the order waits for it, then goes through after the restart.
        let payment = system.service(Service::Payment);
        payment.kill().await?;
        assert!(!payment.is_running());
        let first = system
            .place_order(
                "alice",
                order(vec![line("TEA", 1)], Point::JIANGWAN, "tok_ok"),
            )
            .await?;
        // Nobody but the (dead) payment service reacts to order.created.
        assert_eq!(
            system.order(&first.order_id).await?.status,
            OrderStatus::Pending
        );
        payment.restart().await?;
        let view = system.wait_terminal(&first.order_id, saga_timeout).await?;
        assert_eq!(view.status, OrderStatus::Dispatched, "{view:?}");

        // SIGKILL inventory and dispatch while orders are in flight, whatever they are doing.
        let orders = (0..IN_FLIGHT)
            .map(|_| order(vec![line("TEA", 1)], Point::JIANGWAN, "tok_ok"))
            .collect();
        let mut placed = system.place_orders(orders).await?;
        for service in [Service::Inventory, Service::Dispatch] {
            system.service(service).kill().await?;
        }
        for service in [Service::Inventory, Service::Dispatch] {
            system.service(service).restart().await?;
        }
        system.wait_all_terminal(&placed, saga_timeout).await?;
        placed.push(first);
        let outcomes = system.check_invariants(&placed).await?;
        assert_eq!(outcomes.count("dispatched"), IN_FLIGHT + 1, "{outcomes}");
        summary(
            &named("services_killed_and_restarted", broker),
            placed.len(),
            &outcomes,
            started,
        );
        Ok(())
    })
    .await
}
