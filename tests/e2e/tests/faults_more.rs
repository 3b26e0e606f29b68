//! Failure injection end to end, continued (issue 3): every service killed mid-load, PostgreSQL
//! stopped (`-m immediate`) mid-load, events replayed after the broker's dedup window and a
//! cancel reaching dispatch before the order's forward events, customer cancels at random steps
//! and the order deadline for orders stuck behind a stopped service. Each test starts its own
//! system, waits with `eventually`, ends with the invariants of the README (How delivery is guaranteed) and prints one
//! summary line.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jwl_e2e::{
    Injected, NewOrder, OrderStatus, OrderView, Outcomes, PlacedOrder, Service, System,
    SystemOptions, with_system,
};
use jwl_events::{EventType, HeaderStyle};
use jwl_testkit::StopMode;
use reqwest::StatusCode;

/// How long one saga may take on a busy 2-core machine (with a restart in it).
const SAGA_TIMEOUT: Duration = Duration::from_secs(90);
const PRICE_CENTS: i64 = 1250;
/// Live waybills per courier in these tests.
const COURIER_CAPACITY: u32 = 5;

/// A short ack wait, so that what a killed service had not acked comes back quickly.
fn options() -> SystemOptions {
    SystemOptions {
        ack_wait: Duration::from_secs(3),
        courier_capacity: COURIER_CAPACITY,
        ..SystemOptions::default()
    }
}

fn order() -> NewOrder {
    NewOrder::one_tea(PRICE_CENTS)
}

/// Stock for every order and `couriers` couriers next to the pickup point.
async fn prepare(system: &System, couriers: usize) -> anyhow::Result<()> {
    system.set_stock("TEA", 1_000).await?;
    system.line_up_couriers(couriers, 0.05).await
}

fn summary(test: &str, orders: usize, outcomes: &Outcomes, started: Instant) {
    println!(
        "e2e {test}: {orders} orders, outcomes [{outcomes}], wall {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// `POST /v1/orders/{id}/cancel` as the customer who placed `placed`; the status it answered.
async fn cancel(system: &System, placed: &PlacedOrder) -> anyhow::Result<StatusCode> {
    let token = system.tokens().customer(&placed.customer_id)?;
    let reply = system.api().cancel_order(&token, &placed.order_id).await?;
    anyhow::ensure!(
        matches!(reply.status, StatusCode::ACCEPTED | StatusCode::CONFLICT),
        "cancelling order {} answered {}: {}",
        placed.order_id,
        reply.status,
        reply.body
    );
    Ok(reply.status)
}

fn assert_cancelled(view: &OrderView, reason: &str) {
    assert_eq!(view.status, OrderStatus::Cancelled, "{view:?}");
    assert_eq!(view.reason.as_deref(), Some(reason), "{view:?}");
}

/// Scenario 3: each of the five services in turn is SIGKILLed while the orders just placed are
/// in flight, and started again; every order ends and nothing is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_killed_mid_load_and_restarted() -> anyhow::Result<()> {
    const ORDERS_PER_KILL: usize = 4;
    let started = Instant::now();
    with_system(options(), async |system| {
        prepare(system, 5).await?;
        let mut placed = Vec::new();
        for service in Service::ALL {
            let batch = system
                .place_orders((0..ORDERS_PER_KILL).map(|_| order()).collect())
                .await?;
            placed.extend(batch);
            let process = system.service(service);
            process.kill().await?;
            assert!(!process.is_running(), "{service} still runs after SIGKILL");
            process.restart().await?;
        }
        let views = system.wait_all_terminal(&placed, SAGA_TIMEOUT).await?;
        for view in &views {
            assert_eq!(view.status, OrderStatus::Dispatched, "{view:?}");
        }
        let outcomes = system.check_invariants(&placed).await?;
        assert_eq!(outcomes.total(), ORDERS_PER_KILL * Service::ALL.len());
        summary("each_service_killed", placed.len(), &outcomes, started);
        Ok(())
    })
    .await
}

/// Scenario 5: PostgreSQL (the system's own cluster) stops with `-m immediate` while orders are
/// in flight. Meanwhile `POST /v1/orders` answers `503` with `Retry-After` promptly; once it is
/// back, every order accepted before completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_mid_load_and_restarted() -> anyhow::Result<()> {
    const ORDERS: usize = 6;
    /// Well above the pool's acquire timeout, well below a hang.
    const PROMPT: Duration = Duration::from_secs(15);
    let started = Instant::now();
    let options = SystemOptions {
        private_cluster: true,
        ..options()
    };
    with_system(options, async |system| {
        prepare(system, 5).await?;
        let placed = system
            .place_orders((0..ORDERS).map(|_| order()).collect())
            .await?;
        let cluster = system
            .cluster()
            .ok_or_else(|| anyhow::anyhow!("the system should run its own cluster"))?;
        cluster.stop(StopMode::Immediate).await?;

        let token = system.tokens().customer("while-down")?;
        let asked = Instant::now();
        let reply = system.api().post_order_once(&token, &order()).await?;
        let took = asked.elapsed();
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "POST /v1/orders with the database down: {}",
            reply.body
        );
        let retry_after = reply
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        assert!(
            retry_after.is_some_and(|secs| secs > 0),
            "a 503 needs Retry-After in seconds: {:?}",
            reply.headers
        );
        assert!(took < PROMPT, "the 503 took {took:?}");

        cluster.start_again().await?;
        let views = system.wait_all_terminal(&placed, SAGA_TIMEOUT).await?;
        for view in &views {
            assert_eq!(view.status, OrderStatus::Dispatched, "{view:?}");
        }
        let outcomes = system.check_invariants(&placed).await?;
        println!("e2e postgres_stopped: the 503 came after {took:?}");
        summary("postgres_stopped", placed.len(), &outcomes, started);
        Ok(())
    })
    .await
}

/// Scenario 7 (duplicates): every event of a completed order is published again with its own
/// `ce-id` under a new broker message id — what a duplicate after the dedup window amounts to.
/// Nothing happens twice (the invariants see the first copies), and a later order completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_after_the_dedup_window_have_no_second_effect() -> anyhow::Result<()> {
    let started = Instant::now();
    with_system(options(), async |system| {
        prepare(system, 2).await?;
        let first = system.place_order("alice", order()).await?;
        let view = system.wait_terminal(&first.order_id, SAGA_TIMEOUT).await?;
        assert_eq!(view.status, OrderStatus::Dispatched, "{view:?}");
        system
            .check_invariants(std::slice::from_ref(&first))
            .await?;

        let contents = system.broker().events().await?;
        let mut injected = Injected::default();
        for event in contents
            .events
            .iter()
            .filter(|e| e.envelope.order_id().to_string() == first.order_id)
        {
            let wire = jwl_events::encode(&event.envelope, HeaderStyle::Nats);
            let sequence = system
                .broker()
                .nats()?
                .publish_raw(
                    &wire.subject,
                    &wire.headers,
                    wire.payload,
                    &format!("replay-{}", uuid::Uuid::new_v4()),
                )
                .await?;
            injected.replays.insert(sequence);
        }
        assert!(
            injected.replays.len() >= 5,
            "replayed {:?}",
            injected.replays
        );

        let second = system.place_order("bob", order()).await?;
        let view = system.wait_terminal(&second.order_id, SAGA_TIMEOUT).await?;
        assert_eq!(view.status, OrderStatus::Dispatched, "{view:?}");
        let placed = [first, second];
        let outcomes = system.check_invariants_with(&placed, &injected).await?;
        println!(
            "e2e duplicates: {} events replayed with their own ids",
            injected.replays.len()
        );
        summary(
            "duplicates_after_dedup_window",
            placed.len(),
            &outcomes,
            started,
        );
        Ok(())
    })
    .await
}

/// The dispatch consumer of `waybill_created`.
const DISPATCH_WAYBILL_CREATED: &str = "dispatch__fulfillment_waybill_created";
/// The order service's consumer of `waybill_created`.
const ORDER_WAYBILL_CREATED: &str = "order__fulfillment_waybill_created";

/// Waits until the events stream holds an event of type `ty` for every one of `orders`.
async fn wait_for_events(
    system: &System,
    orders: &[PlacedOrder],
    ty: EventType,
) -> anyhow::Result<()> {
    let description = format!("{} for {} orders", ty.as_str(), orders.len());
    jwl_e2e::eventually(&description, SAGA_TIMEOUT, || async {
        let contents = system
            .broker()
            .events()
            .await
            .map_err(|e| format!("{e:#}"))?;
        let missing = orders
            .iter()
            .filter(|placed| {
                !contents.events.iter().any(|e| {
                    e.envelope.event_type() == ty
                        && e.envelope.order_id().to_string() == placed.order_id
                })
            })
            .count();
        if missing == 0 {
            Ok(())
        } else {
            Err(format!("{missing} orders have none yet"))
        }
    })
    .await
}

/// Scenario 7 (cancel before created): with dispatch down, orders are placed and cancelled, and
/// their waybills are created; dispatch comes back with its `waybill_created` consumer failing
/// each message once (so it comes back after a 1 s backoff), so every `order.cancel_requested`
/// reaches dispatch before the order's `waybill_created`. Dispatch records a tombstone, fails
/// each waybill on arrival, and every order ends cancelled by the customer, nothing held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaching_dispatch_before_the_waybill_is_honoured() -> anyhow::Result<()> {
    const ORDERS: usize = 5;
    let started = Instant::now();
    with_system(options(), async |system| {
        prepare(system, 5).await?;
        let dispatch = system.service(Service::Dispatch);
        dispatch.kill().await?;
        let placed = system
            .place_orders((0..ORDERS).map(|_| order()).collect())
            .await?;
        for order in &placed {
            assert_eq!(cancel(system, order).await?, StatusCode::ACCEPTED);
        }
        wait_for_events(system, &placed, EventType::WaybillCreated).await?;
        let fault = format!("{DISPATCH_WAYBILL_CREATED}:1");
        dispatch
            .restart_with(&[("JWL_FAULT_TRANSIENT_FIRST", fault.as_str())])
            .await?;
        let views = system.wait_all_terminal(&placed, SAGA_TIMEOUT).await?;
        for view in &views {
            assert_cancelled(view, "customer");
        }
        let outcomes = system.check_invariants(&placed).await?;
        let log = std::fs::read_to_string(dispatch.log_path())?;
        let tombstones = log
            .matches("cancellation before the waybill; tombstone recorded")
            .count();
        assert_eq!(tombstones, ORDERS, "every cancel should have come first");
        summary("cancel_before_waybill", placed.len(), &outcomes, started);
        Ok(())
    })
    .await
}

/// Scenario 7 (waybill cancelled before created): no courier is in reach, so the waybills wait;
/// the orders are cancelled while the order service's `waybill_created` consumer fails each
/// message twice (1 s + 2 s backoff). The order service thus sees `dispatch.failed` and
/// `waybill_cancelled` before `waybill_created`: the orders still end cancelled by the customer,
/// with every event in their timeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waybill_cancelled_before_waybill_created_reaches_the_order_service() -> anyhow::Result<()>
{
    const ORDERS: usize = 5;
    let started = Instant::now();
    with_system(options(), async |system| {
        prepare(system, 0).await?;
        let order_service = system.service(Service::Order);
        let fault = format!("{ORDER_WAYBILL_CREATED}:2");
        order_service
            .restart_with(&[("JWL_FAULT_TRANSIENT_FIRST", fault.as_str())])
            .await?;
        let placed = system
            .place_orders((0..ORDERS).map(|_| order()).collect())
            .await?;
        wait_for_events(system, &placed, EventType::WaybillCreated).await?;
        for order in &placed {
            assert_eq!(cancel(system, order).await?, StatusCode::ACCEPTED);
        }
        let views = system.wait_all_terminal(&placed, SAGA_TIMEOUT).await?;
        for view in &views {
            assert_cancelled(view, "customer");
        }
        let outcomes = system.check_invariants(&placed).await?;
        let log = std::fs::read_to_string(order_service.log_path())?;
        let injected = log.matches("fault point transient_first").count();
        assert_eq!(injected, ORDERS * 2, "each waybill_created failed twice");
        summary(
            "waybill_cancelled_before_created",
            placed.len(),
            &outcomes,
            started,
        );
        Ok(())
    })
    .await
}

/// A delay from 0 to `max_ms` milliseconds, drawn at random.
fn random_delay(max_ms: u64) -> Duration {
    let drawn = uuid::Uuid::new_v4().as_u128() % u128::from(max_ms + 1);
    Duration::from_millis(u64::try_from(drawn).unwrap_or(max_ms))
}

/// Scenario 10 (customer cancel): 100 orders, each cancelled by its customer right away, after
/// a random 0–300 ms or after a random 300–600 ms, so the cancel lands at every step of the
/// saga. Each order ends cancelled by the customer, dispatched (the cancel came after the
/// courier assignment) or rejected; a cancel of a terminal order answers `409` and changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_cancel_at_a_random_step() -> anyhow::Result<()> {
    const ORDERS: usize = 100;
    const AT_ONCE: usize = 20;
    const MAX_DELAY_MS: u64 = 300;
    let started = Instant::now();
    let couriers = ORDERS.div_ceil(COURIER_CAPACITY as usize);
    with_system(options(), async |system| {
        prepare(system, couriers).await?;
        let cancelled: Vec<(PlacedOrder, StatusCode)> = futures::stream::iter(0..ORDERS)
            .map(|n| async move {
                let placed = system
                    .place_order(&format!("customer-{n}"), order())
                    .await?;
                // every fourth order is cancelled at once, half after a random 0–300 ms, and
                // every fourth after 300 ms more (so that some cancels come late in the saga)
                let delay = match n % 4 {
                    0 => Duration::ZERO,
                    3 => Duration::from_millis(MAX_DELAY_MS) + random_delay(MAX_DELAY_MS),
                    _ => random_delay(MAX_DELAY_MS),
                };
                // the injected timing of the cancel, not a wait for a condition
                tokio::time::sleep(delay).await;
                let status = cancel(system, &placed).await?;
                anyhow::Ok((placed, status))
            })
            .buffer_unordered(AT_ONCE)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
        let placed: Vec<PlacedOrder> = cancelled.iter().map(|(p, _)| p.clone()).collect();
        let views = system.wait_all_terminal(&placed, SAGA_TIMEOUT).await?;
        for ((_, answered), view) in cancelled.iter().zip(&views) {
            match view.status {
                OrderStatus::Cancelled => assert_cancelled(view, "customer"),
                OrderStatus::Dispatched | OrderStatus::Rejected => {}
                other => panic!("unexpected end {other:?}: {view:?}"),
            }
            if *answered == StatusCode::CONFLICT {
                assert_ne!(view.status, OrderStatus::Cancelled, "{view:?}");
            }
        }
        for (placed, view) in placed.iter().zip(&views) {
            assert_eq!(cancel(system, placed).await?, StatusCode::CONFLICT);
            let after = system.order(&placed.order_id).await?;
            assert_eq!(
                (after.status, &after.reason),
                (view.status, &view.reason),
                "a cancel of a terminal order changed it"
            );
        }
        let outcomes = system.check_invariants(&placed).await?;
        assert_eq!(outcomes.total(), ORDERS, "{outcomes}");
        let refused = cancelled
            .iter()
            .filter(|(_, s)| *s == StatusCode::CONFLICT)
            .count();
        // where the cancels landed: how many events of the order came before the request
        let mut landed: BTreeMap<usize, usize> = BTreeMap::new();
        for view in &views {
            let types = view.timeline_types();
            if let Some(step) = types
                .iter()
                .position(|t| t.ends_with("order.cancel_requested"))
            {
                *landed.entry(step).or_default() += 1;
            }
        }
        println!(
            "e2e customer_cancel: {refused} cancels answered 409 at once; cancel requests after \
             n events (n: orders): {landed:?}"
        );
        summary(
            "customer_cancel_random_step",
            placed.len(),
            &outcomes,
            started,
        );
        Ok(())
    })
    .await
}

/// Scenario 10 (deadline): inventory is down, so orders cannot get past payment; at the order
/// deadline they are cancelled, and once inventory is back everything is undone: every order
/// ends cancelled with reason `deadline`, no stock held, no money taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_expires_for_orders_stuck_behind_a_stopped_service() -> anyhow::Result<()> {
    const ORDERS: usize = 5;
    let started = Instant::now();
    let options = SystemOptions {
        order_deadline: Duration::from_secs(4),
        ..options()
    };
    with_system(options, async |system| {
        prepare(system, 5).await?;
        let inventory = system.service(Service::Inventory);
        inventory.kill().await?;
        let placed = system
            .place_orders((0..ORDERS).map(|_| order()).collect())
            .await?;
        for order in &placed {
            system
                .wait_for_order(&order.order_id, "past its deadline", SAGA_TIMEOUT, |v| {
                    v.timeline_types()
                        .iter()
                        .any(|t| t.ends_with("order.cancel_requested"))
                })
                .await?;
        }
        inventory.restart().await?;
        let views = system.wait_all_terminal(&placed, SAGA_TIMEOUT).await?;
        for view in &views {
            assert_cancelled(view, "deadline");
        }
        let outcomes = system.check_invariants(&placed).await?;
        summary(
            "deadline_behind_stopped_service",
            placed.len(),
            &outcomes,
            started,
        );
        Ok(())
    })
    .await
}
