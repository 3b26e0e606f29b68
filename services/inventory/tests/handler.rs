//! The inventory handler against a real database, driven through `jwl_outbox::process_one`:
//! all-or-nothing reservation, duplicates, release and commit once, tombstones, and concurrent
//! reservations of the same SKUs that never oversell, checked in the tables and the outbox.

mod common;

use common::{deliver, line, migrated_pool, payment_authorized};
use jwl_events::{
    DispatchFailed, DispatchFailureReason, Envelope, EventData, EventType, InventoryRejected,
    InventoryReleased, OrderId, PaymentCaptured, Service, WaybillId,
};
use jwl_inventory::{InventoryHandler, SERVICE};
use jwl_outbox::{Handler, HandlerError, OutboxError, Processed};
use jwl_testkit::service::outbox_events;
use sqlx::PgPool;

fn dispatch_failed(order_id: OrderId) -> Envelope {
    Envelope::new(
        Service::Dispatch,
        DispatchFailed {
            order_id,
            waybill_id: WaybillId::new(),
            reason: DispatchFailureReason::NoCourier,
        }
        .into(),
    )
}

fn payment_captured(order_id: OrderId) -> Envelope {
    Envelope::new(
        Service::Payment,
        PaymentCaptured {
            order_id,
            amount_cents: 100,
        }
        .into(),
    )
}

async fn seed_stock(pool: &PgPool, sku: &str, on_hand: i64) {
    sqlx::query("INSERT INTO stock (sku, on_hand) VALUES ($1, $2)")
        .bind(sku)
        .bind(on_hand)
        .execute(pool)
        .await
        .unwrap();
}

/// `(on_hand, reserved, shipped)` of the SKU.
async fn stock(pool: &PgPool, sku: &str) -> (i64, i64, i64) {
    sqlx::query_as("SELECT on_hand, reserved, shipped FROM stock WHERE sku = $1")
        .bind(sku)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn order_state(pool: &PgPool, order_id: OrderId) -> Option<String> {
    sqlx::query_scalar("SELECT state FROM order_reservations WHERE order_id = $1")
        .bind(order_id.0)
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// `(sku, qty, state)` of the order's reservation lines, by SKU.
async fn reservations(pool: &PgPool, order_id: OrderId) -> Vec<(String, i64, String)> {
    sqlx::query_as("SELECT sku, qty, state FROM reservations WHERE order_id = $1 ORDER BY sku")
        .bind(order_id.0)
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Every event in the outbox, decoded, in enqueue order.
async fn outbox(pool: &PgPool) -> Vec<Envelope> {
    outbox_events(pool).await.unwrap()
}

fn types(events: &[Envelope]) -> Vec<EventType> {
    events.iter().map(Envelope::event_type).collect()
}

fn handled(processed: Processed) -> Vec<Envelope> {
    match processed {
        Processed::Handled { emitted } => emitted,
        Processed::Duplicate => panic!("expected the handler to run, got a duplicate"),
    }
}

fn row(sku: &str, qty: i64, state: &str) -> (String, i64, String) {
    (sku.to_owned(), qty, state.to_owned())
}

#[tokio::test]
async fn reserves_every_line_with_duplicate_skus_merged() {
    let pool = migrated_pool().await.unwrap();
    seed_stock(&pool, "TEA", 5).await;
    seed_stock(&pool, "CAKE", 3).await;
    let authorized = payment_authorized(vec![line("TEA", 2), line("CAKE", 1), line("TEA", 1)]);
    let order_id = authorized.order_id();

    handled(deliver(&pool, &authorized).await.unwrap());

    assert_eq!(stock(&pool, "TEA").await, (5, 3, 0));
    assert_eq!(stock(&pool, "CAKE").await, (3, 1, 0));
    assert_eq!(
        reservations(&pool, order_id).await,
        [row("CAKE", 1, "reserved"), row("TEA", 3, "reserved")]
    );
    assert_eq!(
        order_state(&pool, order_id).await.as_deref(),
        Some("reserved")
    );
    let events = outbox(&pool).await;
    assert_eq!(types(&events), [EventType::InventoryReserved]);
    let (EventData::InventoryReserved(reserved), EventData::PaymentAuthorized(payment)) =
        (&events[0].data, &authorized.data)
    else {
        unreachable!()
    };
    assert_eq!(reserved.order_id, order_id);
    assert_eq!(
        reserved.items, payment.items,
        "the order's lines as received"
    );
    assert_eq!(
        (reserved.pickup, reserved.dropoff),
        (payment.pickup, payment.dropoff)
    );
    assert_eq!(events[0].source, Service::Inventory);
    assert_eq!(events[0].causation_id, Some(authorized.id));
}

#[tokio::test]
async fn reservation_is_all_or_nothing() {
    let pool = migrated_pool().await.unwrap();
    seed_stock(&pool, "TEA", 5).await;
    seed_stock(&pool, "CAKE", 1).await;

    // two SKUs, one short: nothing is reserved
    let short = payment_authorized(vec![line("TEA", 2), line("CAKE", 2)]);
    handled(deliver(&pool, &short).await.unwrap());
    assert_eq!(stock(&pool, "TEA").await, (5, 0, 0));
    assert_eq!(stock(&pool, "CAKE").await, (1, 0, 0));
    assert!(reservations(&pool, short.order_id()).await.is_empty());
    assert_eq!(
        order_state(&pool, short.order_id()).await.as_deref(),
        Some("rejected")
    );

    // an unknown SKU has nothing available
    let unknown = payment_authorized(vec![line("TEA", 1), line("GHOST", 1)]);
    handled(deliver(&pool, &unknown).await.unwrap());
    assert_eq!(stock(&pool, "TEA").await, (5, 0, 0));

    let events = outbox(&pool).await;
    assert_eq!(
        events.iter().map(|e| e.data.clone()).collect::<Vec<_>>(),
        [
            EventData::InventoryRejected(InventoryRejected {
                order_id: short.order_id(),
                unavailable_skus: vec!["CAKE".to_owned()],
            }),
            EventData::InventoryRejected(InventoryRejected {
                order_id: unknown.order_id(),
                unavailable_skus: vec!["GHOST".to_owned()],
            }),
        ]
    );

    // a rejected order releases nothing when dispatch fails (nor ever reserves)
    assert!(
        handled(
            deliver(&pool, &dispatch_failed(short.order_id()))
                .await
                .unwrap()
        )
        .is_empty()
    );
    assert_eq!(
        order_state(&pool, short.order_id()).await.as_deref(),
        Some("rejected")
    );
}

#[tokio::test]
async fn duplicate_deliveries_reserve_once() {
    let pool = migrated_pool().await.unwrap();
    seed_stock(&pool, "TEA", 5).await;
    let authorized = payment_authorized(vec![line("TEA", 2)]);
    let order_id = authorized.order_id();

    handled(deliver(&pool, &authorized).await.unwrap());
    assert!(matches!(
        deliver(&pool, &authorized).await.unwrap(),
        Processed::Duplicate
    ));
    // the same order authorised again under another event id
    let mut again = payment_authorized(vec![line("TEA", 3)]);
    let EventData::PaymentAuthorized(payment) = &mut again.data else {
        unreachable!()
    };
    payment.order_id = order_id;
    assert!(handled(deliver(&pool, &again).await.unwrap()).is_empty());

    assert_eq!(stock(&pool, "TEA").await, (5, 2, 0));
    assert_eq!(
        reservations(&pool, order_id).await,
        [row("TEA", 2, "reserved")]
    );
    assert_eq!(types(&outbox(&pool).await), [EventType::InventoryReserved]);
}

#[tokio::test]
async fn dispatch_failure_releases_once_and_a_released_order_is_never_committed() {
    let pool = migrated_pool().await.unwrap();
    seed_stock(&pool, "TEA", 5).await;
    seed_stock(&pool, "CAKE", 2).await;
    let authorized = payment_authorized(vec![line("TEA", 2), line("CAKE", 2)]);
    let order_id = authorized.order_id();
    handled(deliver(&pool, &authorized).await.unwrap());
    assert_eq!(stock(&pool, "CAKE").await, (2, 2, 0));

    let failed = dispatch_failed(order_id);
    assert_eq!(handled(deliver(&pool, &failed).await.unwrap()).len(), 1);
    assert_eq!(stock(&pool, "TEA").await, (5, 0, 0));
    assert_eq!(stock(&pool, "CAKE").await, (2, 0, 0));
    assert_eq!(
        reservations(&pool, order_id).await,
        [row("CAKE", 2, "released"), row("TEA", 2, "released")]
    );
    assert_eq!(
        order_state(&pool, order_id).await.as_deref(),
        Some("released")
    );

    // a second failure changes nothing; a capture contradicts the release: refused for good
    // (dead-lettered by the consumer, so it alerts)
    assert!(handled(deliver(&pool, &dispatch_failed(order_id)).await.unwrap()).is_empty());
    let error = deliver(&pool, &payment_captured(order_id))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, OutboxError::Handler(HandlerError::Permanent(reason))
            if reason.contains("nothing reserved (released)")),
        "{error:?}"
    );
    assert_eq!(stock(&pool, "TEA").await, (5, 0, 0));
    assert_eq!(
        order_state(&pool, order_id).await.as_deref(),
        Some("released")
    );

    let events = outbox(&pool).await;
    assert_eq!(
        types(&events),
        [EventType::InventoryReserved, EventType::InventoryReleased]
    );
    let EventData::PaymentAuthorized(payment) = &authorized.data else {
        unreachable!()
    };
    assert_eq!(
        events[1].data,
        EventData::InventoryReleased(InventoryReleased {
            order_id,
            items: payment.items.clone()
        })
    );
    assert_eq!(events[1].causation_id, Some(failed.id));
}

#[tokio::test]
async fn capture_commits_once_and_a_committed_order_is_never_released() {
    let pool = migrated_pool().await.unwrap();
    seed_stock(&pool, "TEA", 5).await;
    seed_stock(&pool, "CAKE", 3).await;
    let authorized = payment_authorized(vec![line("TEA", 2), line("CAKE", 1), line("TEA", 1)]);
    let order_id = authorized.order_id();
    handled(deliver(&pool, &authorized).await.unwrap());

    let captured = payment_captured(order_id);
    assert!(
        handled(deliver(&pool, &captured).await.unwrap()).is_empty(),
        "commit emits nothing"
    );
    assert_eq!(stock(&pool, "TEA").await, (2, 0, 3));
    assert_eq!(stock(&pool, "CAKE").await, (2, 0, 1));
    assert_eq!(
        reservations(&pool, order_id).await,
        [row("CAKE", 1, "committed"), row("TEA", 3, "committed")]
    );
    assert_eq!(
        order_state(&pool, order_id).await.as_deref(),
        Some("committed")
    );

    // redelivery and a second capture change nothing; a late failure contradicts the commit
    // and is refused for good
    assert!(matches!(
        deliver(&pool, &captured).await.unwrap(),
        Processed::Duplicate
    ));
    assert!(handled(deliver(&pool, &payment_captured(order_id)).await.unwrap()).is_empty());
    let error = deliver(&pool, &dispatch_failed(order_id))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, OutboxError::Handler(HandlerError::Permanent(reason))
            if reason.contains("shipped")),
        "{error:?}"
    );
    assert_eq!(stock(&pool, "TEA").await, (2, 0, 3));
    assert_eq!(stock(&pool, "CAKE").await, (2, 0, 1));
    assert_eq!(types(&outbox(&pool).await), [EventType::InventoryReserved]);
}

#[tokio::test]
async fn a_release_before_the_reservation_leaves_a_tombstone_and_nothing_is_reserved() {
    let pool = migrated_pool().await.unwrap();
    seed_stock(&pool, "TEA", 5).await;
    let authorized = payment_authorized(vec![line("TEA", 2)]);
    let order_id = authorized.order_id();

    assert!(handled(deliver(&pool, &dispatch_failed(order_id)).await.unwrap()).is_empty());
    assert_eq!(
        order_state(&pool, order_id).await.as_deref(),
        Some("release_requested")
    );

    assert!(handled(deliver(&pool, &authorized).await.unwrap()).is_empty());
    assert_eq!(stock(&pool, "TEA").await, (5, 0, 0));
    assert!(reservations(&pool, order_id).await.is_empty());
    assert_eq!(
        order_state(&pool, order_id).await.as_deref(),
        Some("release_requested")
    );
    // and a capture finds nothing to ship: a contradiction, refused for good
    let error = deliver(&pool, &payment_captured(order_id))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, OutboxError::Handler(HandlerError::Permanent(reason))
            if reason.contains("nothing reserved (release_requested)")),
        "{error:?}"
    );
    assert_eq!(stock(&pool, "TEA").await, (5, 0, 0));
    assert!(outbox(&pool).await.is_empty());
}

#[tokio::test]
async fn a_capture_before_the_reservation_is_retried_later() {
    let pool = migrated_pool().await.unwrap();
    seed_stock(&pool, "TEA", 5).await;
    let authorized = payment_authorized(vec![line("TEA", 2)]);
    let captured = payment_captured(authorized.order_id());

    let error = deliver(&pool, &captured).await.unwrap_err();
    assert!(
        matches!(error, OutboxError::Handler(HandlerError::Transient(_))),
        "{error:?}"
    );
    assert_eq!(order_state(&pool, authorized.order_id()).await, None);

    handled(deliver(&pool, &authorized).await.unwrap());
    handled(deliver(&pool, &captured).await.unwrap());
    assert_eq!(stock(&pool, "TEA").await, (3, 0, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservations_of_the_same_skus_never_oversell() {
    let pool = migrated_pool().await.unwrap();
    const SCARCE: i64 = 7;
    const ORDERS: usize = 40;
    seed_stock(&pool, "HOT", SCARCE).await;
    seed_stock(&pool, "COLD", 1_000).await;

    // every order wants one of each, half of them listing the SKUs the other way round
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..ORDERS {
        let items = if index % 2 == 0 {
            vec![line("HOT", 1), line("COLD", 1)]
        } else {
            vec![line("COLD", 1), line("HOT", 1)]
        };
        let event = payment_authorized(items);
        let pool = pool.clone();
        tasks.spawn(async move { deliver(&pool, &event).await });
    }
    while let Some(joined) = tasks.join_next().await {
        handled(joined.unwrap().unwrap());
    }

    assert_eq!(stock(&pool, "HOT").await, (SCARCE, SCARCE, 0));
    assert_eq!(stock(&pool, "COLD").await, (1_000, SCARCE, 0));
    let events = outbox(&pool).await;
    let reserved = types(&events)
        .into_iter()
        .filter(|ty| *ty == EventType::InventoryReserved)
        .count();
    let rejected = events
        .iter()
        .filter(
            |e| matches!(&e.data, EventData::InventoryRejected(r) if r.unavailable_skus == ["HOT"]),
        )
        .count();
    assert_eq!(
        (reserved, rejected),
        (SCARCE as usize, ORDERS - SCARCE as usize)
    );
    let reserved_rows: (i64, i64) = sqlx::query_as(
        "SELECT count(DISTINCT order_id), coalesce(sum(qty) FILTER (WHERE sku = 'HOT'), 0)::bigint
         FROM reservations WHERE state = 'reserved'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(reserved_rows, (SCARCE, SCARCE));
}

#[tokio::test]
async fn an_event_inventory_does_not_consume_is_refused_for_good() {
    let pool = migrated_pool().await.unwrap();
    let foreign = Envelope::new(
        Service::Inventory,
        InventoryRejected {
            order_id: OrderId::new(),
            unavailable_skus: vec!["TEA".to_owned()],
        }
        .into(),
    );
    let error = deliver(&pool, &foreign).await.unwrap_err();
    assert!(
        matches!(error, OutboxError::Handler(HandlerError::Permanent(_))),
        "{error:?}"
    );
}

#[test]
fn consumes_authorization_failure_and_capture_but_not_cancel_requests() {
    let subscriptions = jwl_inventory::InventoryHandler.subscriptions();
    assert_eq!(
        subscriptions,
        [
            EventType::PaymentAuthorized,
            EventType::DispatchFailed,
            EventType::PaymentCaptured,
        ]
    );
    assert!(!subscriptions.contains(&EventType::OrderCancelRequested));
}

#[tokio::test]
async fn migrations_can_run_again() {
    let pool = migrated_pool().await.unwrap();
    jwl_inventory::migrate(&pool).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'jwl_inventory'
           AND table_name IN ('stock', 'order_reservations', 'reservations', 'outbox', 'inbox')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 5);
    // the stock constraints hold in the database itself
    seed_stock(&pool, "TEA", 1).await;
    let oversold = sqlx::query("UPDATE stock SET reserved = 2 WHERE sku = 'TEA'")
        .execute(&pool)
        .await;
    assert!(oversold.is_err(), "reserved may not exceed on_hand");
    let negative = sqlx::query("UPDATE stock SET on_hand = -1, reserved = -2 WHERE sku = 'TEA'")
        .execute(&pool)
        .await;
    assert!(negative.is_err(), "stock may not be negative");
}

/// Takes the stock rows of `skus` in `tx` as one event's reservation does (in SKU order).
async fn lock_stock_of_one_event(
    tx: &mut sqlx::PgConnection,
    skus: &[&str],
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT sku FROM stock WHERE sku = ANY($1) ORDER BY sku FOR UPDATE")
        .bind(skus)
        .execute(tx)
        .await
        .map(|_| ())
}

/// Two batches at once, as two workers or two replicas run them: the first reserves an order of
/// `A` then one of `B`, the second one of `B` then one of `A`. With `lock_first`, each batch
/// starts with the handler's [`Handler::lock_batch`]. Returns how each batch ended.
async fn two_crossing_batches(
    pool: &PgPool,
    lock_first: bool,
) -> (Result<(), sqlx::Error>, Result<(), sqlx::Error>) {
    let first = [
        payment_authorized(vec![line("A", 1)]),
        payment_authorized(vec![line("B", 1)]),
    ];
    let second = [
        payment_authorized(vec![line("B", 1)]),
        payment_authorized(vec![line("A", 1)]),
    ];
    let mut one = pool.begin().await.unwrap();
    let mut two = pool.begin().await.unwrap();
    let run = async |tx: &mut sqlx::PgConnection, events: &[Envelope], order: [&str; 2]| {
        if lock_first {
            let refs: Vec<&Envelope> = events.iter().collect();
            jwl_inventory::InventoryHandler
                .lock_batch(tx, &refs)
                .await?;
        }
        lock_stock_of_one_event(tx, &[order[0]]).await?;
        // the other batch has taken its first SKU by now (or is waiting for this batch)
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        lock_stock_of_one_event(tx, &[order[1]]).await
    };
    let (a, b) = tokio::join!(
        async {
            let ended = run(&mut one, &first, ["A", "B"]).await;
            match ended {
                Ok(()) => one.commit().await,
                Err(error) => Err(error),
            }
        },
        async {
            // starts a little later, as another replica's batch would
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let ended = run(&mut two, &second, ["B", "A"]).await;
            match ended {
                Ok(()) => two.commit().await,
                Err(error) => Err(error),
            }
        }
    );
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_that_share_popular_skus_queue_instead_of_deadlocking() {
    let pool = migrated_pool().await.unwrap();
    seed_stock(&pool, "A", 100).await;
    seed_stock(&pool, "B", 100).await;

    // each event taking its own stock in turn: PostgreSQL finds a deadlock and fails a batch
    let (one, two) = two_crossing_batches(&pool, false).await;
    let deadlocked = [&one, &two].into_iter().any(|ended| {
        matches!(ended, Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("40P01"))
    });
    assert!(deadlocked, "expected a deadlock: {one:?} / {two:?}");

    // the batch's locks taken first, in one order: the second batch waits for the first
    let (one, two) = two_crossing_batches(&pool, true).await;
    assert!(one.is_ok() && two.is_ok(), "{one:?} / {two:?}");
}

/// What a database shows of `orders` and `skus` after handling: each order's state and lines,
/// each SKU's stock, and the outbox as (cause, data) in enqueue order (event ids and times are
/// new in every run).
async fn outcome(
    pool: &PgPool,
    orders: &[OrderId],
    skus: &[&str],
) -> (
    Vec<(Option<String>, Vec<(String, i64, String)>)>,
    Vec<(i64, i64, i64)>,
    Vec<(Option<jwl_events::EventId>, EventData)>,
) {
    let mut states = Vec::new();
    for order_id in orders {
        states.push((
            order_state(pool, *order_id).await,
            reservations(pool, *order_id).await,
        ));
    }
    let mut levels = Vec::new();
    for sku in skus {
        levels.push(stock(pool, sku).await);
    }
    let emitted = outbox(pool)
        .await
        .into_iter()
        .map(|event| (event.causation_id, event.data))
        .collect();
    (states, levels, emitted)
}

#[tokio::test]
async fn a_batch_handled_together_ends_where_one_by_one_ends() {
    let (alone, together) = (
        migrated_pool().await.unwrap(),
        migrated_pool().await.unwrap(),
    );
    let skus = ["TEA", "CAKE", "BUN"];
    for pool in [&alone, &together] {
        seed_stock(pool, "TEA", 6).await;
        seed_stock(pool, "CAKE", 2).await;
        seed_stock(pool, "BUN", 9).await;
    }
    // contended stock: the fourth order finds TEA short after the first three, the fifth CAKE
    // after the second; an unknown SKU is short for everyone
    let first: Vec<Envelope> = vec![
        payment_authorized(vec![line("TEA", 2), line("CAKE", 1)]),
        payment_authorized(vec![line("TEA", 1), line("CAKE", 1), line("TEA", 1)]),
        payment_authorized(vec![line("TEA", 2), line("BUN", 4)]),
        payment_authorized(vec![line("TEA", 1)]),
        payment_authorized(vec![line("CAKE", 1), line("BUN", 1)]),
        payment_authorized(vec![line("BUN", 1), line("NONE", 1)]),
        payment_authorized(vec![line("BUN", 3)]),
    ];
    let orders: Vec<OrderId> = first.iter().map(Envelope::order_id).collect();
    // then captures of three reserved orders, with two new reservations in the same batch
    let second: Vec<Envelope> = vec![
        payment_captured(orders[0]),
        payment_authorized(vec![line("BUN", 1)]),
        payment_captured(orders[2]),
        payment_authorized(vec![line("TEA", 1)]),
        payment_captured(orders[6]),
    ];
    let mut all_orders = orders.clone();
    all_orders.extend(
        second
            .iter()
            .map(Envelope::order_id)
            .filter(|o| !orders.contains(o)),
    );

    for event in first.iter().chain(&second) {
        handled(deliver(&alone, event).await.unwrap());
    }
    for batch in [&first, &second] {
        let events: Vec<&Envelope> = batch.iter().collect();
        jwl_outbox::process_batch(&together, SERVICE, &InventoryHandler, &events)
            .await
            .unwrap();
    }

    let (one_by_one, batched) = (
        outcome(&alone, &all_orders, &skus).await,
        outcome(&together, &all_orders, &skus).await,
    );
    assert_eq!(batched, one_by_one);
    // and the case is what it says: rejections among the reservations, stock shipped
    let states: Vec<Option<&str>> = batched.0.iter().map(|(s, _)| s.as_deref()).collect();
    assert_eq!(
        states,
        [
            Some("committed"),
            Some("reserved"),
            Some("committed"),
            Some("rejected"),
            Some("rejected"),
            Some("rejected"),
            Some("committed"),
            Some("reserved"),
            Some("rejected"),
        ]
    );
    assert_eq!(batched.1, [(2, 2, 4), (1, 1, 1), (2, 1, 7)]);
}

#[tokio::test]
async fn a_batch_the_batch_way_cannot_take_is_refused_and_nothing_changes() {
    let pool = migrated_pool().await.unwrap();
    seed_stock(&pool, "TEA", 5).await;
    let known = payment_authorized(vec![line("TEA", 1)]);
    handled(deliver(&pool, &known).await.unwrap());
    let before = outcome(&pool, &[known.order_id()], &["TEA"]).await;

    // the batch way takes reservations and captures, each order once (refused for good); an
    // order it already has a row for (redelivered past the inbox), or a capture of an order not
    // reserved, fails the batch whole (transiently), and one by one then decides each
    let fresh = payment_authorized(vec![line("TEA", 1)]);
    let redelivered = Envelope::new(Service::Payment, known.data.clone()).caused_by(&known);
    for (batch, permanent) in [
        (vec![&fresh, &dispatch_failed(known.order_id())], true),
        (vec![&fresh, &payment_captured(fresh.order_id())], true),
        (vec![&fresh, &redelivered], false),
        (vec![&fresh, &payment_captured(OrderId::new())], false),
    ] {
        let result = jwl_outbox::process_batch(&pool, SERVICE, &InventoryHandler, &batch).await;
        jwl_testkit::service::assert_batch_refused(&result, permanent);
    }
    assert_eq!(outcome(&pool, &[known.order_id()], &["TEA"]).await, before);
    assert_eq!(order_state(&pool, fresh.order_id()).await, None);
}
