//! Scenario 11 of issue 3, the soak: `JWL_SOAK_ORDERS` orders (1,000 by default) placed at a
//! steady `JWL_SOAK_RATE` per second with mixed outcomes (paid and dispatched, declined, out of
//! stock, no courier, cancelled by the customer), while faults drawn at random hit the system:
//! a service killed (SIGKILL) and restarted, the broker restarted, a service cut off from NATS
//! for 2 s, a service's database connections black-holed for 2 s (its live ones for good, as
//! after a partition that closed nothing), a service restarted with a transient fault point, a
//! poison message. At the end it
//! prints one line of figures and fails if any order is lost, charged wrongly, leaks stock or is
//! stuck (or any other invariant of the README (How delivery is guaranteed) is broken). `JWL_SOAK_SEED` replays a run.
//!
//! The 10,000-order run by hand (see README.md, Tests):
//! `JWL_SOAK_ORDERS=10000 cargo test -p jwl-e2e --test soak -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use futures::StreamExt;
use jwl_e2e::{
    Call, Cut, Injected, LineItem, Link, NewOrder, PlacedOrder, Point, Service, System,
    SystemOptions, Verdict, eventually, with_system,
};
use jwl_events::{
    Envelope, EventData, GeoPoint, HeaderStyle, LineItem as EventLine, OrderCreated, OrderId,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::Value;

const DEFAULT_ORDERS: usize = 1_000;
/// Orders per second: what the 2-core CI machine sustains with faults going on.
const DEFAULT_RATE: f64 = 12.0;
/// A fault every this long while orders are placed.
const FAULT_EVERY: Duration = Duration::from_secs(5);
/// How long a service stays cut off from NATS or its database.
const CUT_FOR: Duration = Duration::from_secs(2);
/// `JWL_DB_STALL_TIMEOUT` of the services: how long they wait on a black-holed connection.
const DB_STALL_TIMEOUT: Duration = Duration::from_secs(6);
/// How long the orders may take to end after the last one is placed.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(180);
/// How long placing (or cancelling) one order is retried while the order service is down.
const REQUEST_RETRY_FOR: Duration = Duration::from_secs(60);
/// Placements in flight at once.
const IN_FLIGHT: usize = 128;
const PRICE_CENTS: i64 = 1250;
const COURIERS: usize = 8;
/// Stock of the scarce SKU: the out-of-stock orders ask for more than it has.
const SCARCE_STOCK: i64 = 5;
/// Consumers a transient fault point can be switched on for, with their service.
const TRANSIENT_CONSUMERS: [(Service, &str); 2] = [
    (Service::Payment, "payment__order_created"),
    (Service::Inventory, "inventory__payment_authorized"),
];

/// How an order is meant to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    Dispatched,
    Declined,
    OutOfStock,
    NoCourier,
    /// Cancelled by the customer this many milliseconds after it was placed.
    CustomerCancel(u64),
}

fn draw_intent(rng: &mut StdRng) -> Intent {
    match rng.random_range(0..100) {
        0..70 => Intent::Dispatched,
        70..78 => Intent::Declined,
        78..85 => Intent::OutOfStock,
        85..92 => Intent::NoCourier,
        _ => Intent::CustomerCancel(rng.random_range(0..400)),
    }
}

fn new_order(intent: Intent) -> NewOrder {
    let (sku, qty) = match intent {
        Intent::OutOfStock => ("SCARCE", SCARCE_STOCK as u32 + 1),
        _ => ("TEA", 1),
    };
    // no courier is anywhere near a pickup 40 km away
    let pickup = match intent {
        Intent::NoCourier => Point::JIANGWAN.offset_km(40.0, 0.0),
        _ => Point::JIANGWAN,
    };
    NewOrder {
        items: vec![LineItem {
            sku: sku.to_owned(),
            qty,
            unit_price_cents: PRICE_CENTS,
        }],
        pickup,
        dropoff: pickup.offset_km(2.0, 0.0),
        payment_token: match intent {
            Intent::Declined => "tok_decline",
            _ => "tok_ok",
        }
        .to_owned(),
    }
}

/// The kinds of fault, as named in the figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Kill,
    BrokerRestart,
    NatsCut,
    DbSilentCut,
    Transient,
    Poison,
}

impl Fault {
    const ALL: [Fault; 6] = [
        Fault::Kill,
        Fault::BrokerRestart,
        Fault::NatsCut,
        Fault::DbSilentCut,
        Fault::Transient,
        Fault::Poison,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill9",
            Fault::BrokerRestart => "nats_restart",
            Fault::NatsCut => "nats_cut",
            Fault::DbSilentCut => "db_silent_cut",
            Fault::Transient => "transient",
            Fault::Poison => "poison",
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={value:?} does not parse")),
        Err(_) => Ok(default),
    }
}

/// Retries `attempt` while it fails (the order service being down or restarting) for up to
/// [`REQUEST_RETRY_FOR`].
async fn retrying<T, F, Fut>(what: &str, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + REQUEST_RETRY_FOR;
    loop {
        match attempt().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) | Err(_) if Instant::now() < deadline => {
                // a pause between attempts at a service that is restarting
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(None) => anyhow::bail!("{what}: still refused after {REQUEST_RETRY_FOR:?}"),
            Err(error) => return Err(error.context(what.to_owned())),
        }
    }
}

/// Places `order` as `customer_id`, retrying with one idempotency key while the order service
/// is unreachable or sheds load, so that a retry never makes a second order.
async fn place(system: &System, customer_id: &str, order: NewOrder) -> anyhow::Result<PlacedOrder> {
    let token = system.tokens().customer(customer_id)?;
    let key = uuid::Uuid::new_v4().to_string();
    let body = serde_json::to_value(&order)?;
    let order_id = retrying("placing an order", || async {
        let call = Call::new(Service::Order, Method::POST, "/v1/orders")
            .token(&token)
            .idempotency_key(&key)
            .json(body.clone());
        let Ok(reply) = system.api().send(call).await else {
            return Ok(None);
        };
        if reply.status.is_server_error() || reply.status == StatusCode::TOO_MANY_REQUESTS {
            return Ok(None);
        }
        let created: Value = reply.expect(StatusCode::CREATED, "placing an order")?;
        let order_id = created["order_id"]
            .as_str()
            .with_context(|| format!("no order_id in {created}"))?;
        Ok(Some(order_id.to_owned()))
    })
    .await?;
    Ok(PlacedOrder {
        order_id,
        customer_id: customer_id.to_owned(),
        order,
    })
}

/// The customer cancels `placed`; `202` and `409` (already terminal or dispatched) both count.
async fn cancel(system: &System, placed: &PlacedOrder) -> anyhow::Result<()> {
    let token = system.tokens().customer(&placed.customer_id)?;
    retrying("cancelling an order", || async {
        let Ok(reply) = system.api().cancel_order(&token, &placed.order_id).await else {
            return Ok(None);
        };
        match reply.status {
            StatusCode::ACCEPTED | StatusCode::CONFLICT => Ok(Some(())),
            status if status.is_server_error() => Ok(None),
            status => anyhow::bail!("cancel answered {status}: {}", reply.body),
        }
    })
    .await
}

/// Places `intents.len()` orders at `rate` per second, each cancelled if so meant.
async fn place_all(
    system: &System,
    intents: &[Intent],
    rate: f64,
) -> anyhow::Result<Vec<PlacedOrder>> {
    let start = tokio::time::Instant::now();
    futures::stream::iter(intents.iter().copied().enumerate())
        .then(|(n, intent)| async move {
            // the steady rate of the load
            tokio::time::sleep_until(start + Duration::from_secs_f64(n as f64 / rate)).await;
            (n, intent)
        })
        .map(|(n, intent)| async move {
            let placed = place(system, &format!("customer-{n}"), new_order(intent)).await?;
            if let Intent::CustomerCancel(after_ms) = intent {
                // the customer changes their mind this long after ordering
                tokio::time::sleep(Duration::from_millis(after_ms)).await;
                cancel(system, &placed).await?;
            }
            anyhow::Ok(placed)
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// A well-formed `order.created` of a new order whose payload is then replaced by bad JSON.
async fn publish_poison(system: &System) -> anyhow::Result<u64> {
    let point = GeoPoint::new(Point::JIANGWAN.lat, Point::JIANGWAN.lon)?;
    let data = OrderCreated {
        order_id: OrderId::new(),
        customer_id: "poisoner".to_owned(),
        items: vec![EventLine {
            sku: "TEA".to_owned(),
            qty: 1,
            unit_price_cents: PRICE_CENTS,
        }],
        amount_cents: PRICE_CENTS,
        pickup: point,
        dropoff: point,
        payment_token: "tok_ok".to_owned(),
        deadline: Utc::now() + chrono::Duration::minutes(5),
    };
    let mut message = jwl_events::encode(
        &Envelope::new(Service::Order, EventData::OrderCreated(data)),
        HeaderStyle::Nats,
    );
    message.payload = b"{\"order_id\": not json".to_vec();
    system
        .broker()
        .nats()?
        .publish_raw(
            &message.subject,
            &message.headers,
            message.payload,
            &format!("soak-poison-{}", uuid::Uuid::new_v4()),
        )
        .await
}

/// Injects one fault of `kind` and returns once the system is whole again.
async fn inject(
    system: &System,
    kind: Fault,
    rng: &Mutex<StdRng>,
    injected: &Mutex<Injected>,
) -> anyhow::Result<()> {
    let (service, consumer) = {
        let mut rng = rng.lock().unwrap_or_else(|p| p.into_inner());
        let service = Service::ALL[rng.random_range(0..Service::ALL.len())];
        (
            service,
            TRANSIENT_CONSUMERS[rng.random_range(0..TRANSIENT_CONSUMERS.len())],
        )
    };
    match kind {
        Fault::Kill => {
            let process = system.service(service);
            process.kill().await?;
            process.restart().await
        }
        Fault::BrokerRestart => system.restart_broker().await,
        Fault::NatsCut => {
            let proxy = system.proxy(service, Link::Nats)?;
            proxy.cut_for(Cut::Closing, CUT_FOR).await;
            Ok(())
        }
        Fault::DbSilentCut => {
            let proxy = system.proxy(service, Link::Postgres)?;
            proxy.cut_for(Cut::Silent, CUT_FOR).await;
            Ok(())
        }
        Fault::Transient => {
            let (service, consumer) = consumer;
            let fault = format!("{consumer}:2");
            system
                .service(service)
                .restart_with(&[("JWL_FAULT_TRANSIENT_FIRST", fault.as_str())])
                .await
        }
        Fault::Poison => {
            let sequence = publish_poison(system).await?;
            injected
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .sequences
                .insert(sequence);
            Ok(())
        }
    }
}

/// Injects a random fault every [`FAULT_EVERY`] until `until`; returns how many of each kind.
async fn inject_faults(
    system: &System,
    until: tokio::time::Instant,
    rng: &Mutex<StdRng>,
    injected: &Mutex<Injected>,
) -> anyhow::Result<BTreeMap<Fault, usize>> {
    let mut counts: BTreeMap<Fault, usize> = Fault::ALL.iter().map(|f| (*f, 0)).collect();
    let mut next = tokio::time::Instant::now() + FAULT_EVERY;
    while next < until {
        // faults come at a steady pace
        tokio::time::sleep_until(next).await;
        let kind = {
            let mut rng = rng.lock().unwrap_or_else(|p| p.into_inner());
            Fault::ALL[rng.random_range(0..Fault::ALL.len())]
        };
        inject(system, kind, rng, injected)
            .await
            .with_context(|| format!("injecting {}", kind.name()))?;
        *counts.entry(kind).or_default() += 1;
        next = tokio::time::Instant::now() + FAULT_EVERY;
    }
    Ok(counts)
}

/// The figures of the run, from the invariant checker's violations.
#[derive(Debug, Default)]
struct Figures {
    terminal: usize,
    lost: usize,
    /// Orders whose money check failed (captured twice, captured and voided, wrong amount…).
    double_charges: usize,
    /// Stock violations: a failed order still holding its reservation, shipped or reserved
    /// counts that do not add up.
    stock_leaks: usize,
    stuck: usize,
    /// Violations of any other invariant.
    other: Vec<String>,
}

impl Figures {
    fn from_verdict(verdict: &Verdict, terminal: usize, unreadable: usize) -> Figures {
        let mut figures = Figures {
            terminal,
            lost: unreadable,
            ..Figures::default()
        };
        let mut charged_wrongly = BTreeSet::new();
        for violation in &verdict.violations {
            if violation.contains(": not terminal") {
                figures.stuck += 1;
            } else if violation.contains("order.created is 0 times") {
                figures.lost += 1;
            } else if violation.contains(": money: ") {
                charged_wrongly.insert(violation.split(':').next().unwrap_or_default().to_owned());
            } else if violation.contains("stock") || violation.contains("reservation") {
                figures.stock_leaks += 1;
            } else {
                figures.other.push(violation.clone());
            }
        }
        figures.double_charges = charged_wrongly.len();
        figures
    }

    fn clean(&self) -> bool {
        self.lost == 0
            && self.double_charges == 0
            && self.stock_leaks == 0
            && self.stuck == 0
            && self.other.is_empty()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_random_faults_loses_nothing() -> anyhow::Result<()> {
    let orders = env_or("JWL_SOAK_ORDERS", DEFAULT_ORDERS)?;
    let rate = env_or("JWL_SOAK_RATE", DEFAULT_RATE)?;
    let seed = env_or("JWL_SOAK_SEED", rand::random::<u64>())?;
    eprintln!("soak: {orders} orders at {rate}/s, JWL_SOAK_SEED={seed}");
    let started = Instant::now();
    let options = SystemOptions {
        ack_wait: Duration::from_secs(3),
        // every dispatched order keeps its courier: room for all of them
        courier_capacity: u32::try_from(orders / COURIERS + 1)?,
        dispatch_deadline: Duration::from_secs(5),
        order_deadline: Duration::from_secs(120),
        db_stall_timeout: DB_STALL_TIMEOUT,
        proxied: Service::ALL
            .iter()
            .flat_map(|s| [(*s, Link::Nats), (*s, Link::Postgres)])
            .collect(),
        ..SystemOptions::default()
    };
    with_system(options, async |system| {
        system.set_stock("TEA", orders as i64 + 10).await?;
        system.set_stock("SCARCE", SCARCE_STOCK).await?;
        system.line_up_couriers(COURIERS, 0.2).await?;
        let rng = Mutex::new(StdRng::seed_from_u64(seed));
        let intents: Vec<Intent> = {
            let mut rng = rng.lock().unwrap_or_else(|p| p.into_inner());
            (0..orders).map(|_| draw_intent(&mut rng)).collect()
        };
        let injected = Mutex::new(Injected::default());
        let placing_ends =
            tokio::time::Instant::now() + Duration::from_secs_f64(orders as f64 / rate);
        let (placed, faults) = tokio::join!(
            place_all(system, &intents, rate),
            inject_faults(system, placing_ends, &rng, &injected)
        );
        let (placed, faults) = (placed?, faults?);
        let placed_in = started.elapsed();

        // every order ends (or the wait gives up and the rest count as stuck)
        let settled = eventually("every order to be terminal", SETTLE_TIMEOUT, || async {
            let open = futures::stream::iter(&placed)
                .map(|p| async move { system.order(&p.order_id).await })
                .buffer_unordered(16)
                .filter(|view| {
                    let open = !view.as_ref().is_ok_and(|v| v.status.is_terminal());
                    async move { open }
                })
                .count()
                .await;
            if open == 0 { Ok(()) } else { Err(format!("{open} orders are not terminal")) }
        })
        .await;
        if let Err(error) = &settled {
            eprintln!("soak: {error:#}");
        }
        if let Err(error) = system.drain().await {
            eprintln!("soak: the system did not drain: {error:#}");
        }
        let mut readable = Vec::with_capacity(placed.len());
        let mut unreadable = 0;
        let mut terminal = 0;
        for placed in &placed {
            match system.order(&placed.order_id).await {
                Ok(view) => {
                    terminal += usize::from(view.status.is_terminal());
                    readable.push(placed.clone());
                }
                Err(error) => {
                    eprintln!("soak: order {} is lost: {error:#}", placed.order_id);
                    unreadable += 1;
                }
            }
        }
        let injected = injected.into_inner().unwrap_or_else(|p| p.into_inner());
        let verdict = system.verdict_with(&readable, &injected).await?;
        let figures = Figures::from_verdict(&verdict, terminal, unreadable);
        let dead_letters = system.broker().dead_letter_count().await?;
        let faults: Vec<String> = faults
            .iter()
            .map(|(kind, n)| format!("{}={n}", kind.name()))
            .collect();
        println!(
            "soak: orders={} faults[{}] terminal={} lost={} double_charges={} stock_leaks={} stuck={} dead_letters={} outcomes[{}] placed_in={:.0}s wall={:.0}s seed={seed}",
            placed.len(),
            faults.join(" "),
            figures.terminal,
            figures.lost,
            figures.double_charges,
            figures.stock_leaks,
            figures.stuck,
            dead_letters,
            verdict.outcomes,
            placed_in.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        anyhow::ensure!(
            figures.clean(),
            "the soak broke invariants ({} violations; logs in {}):\n  {}",
            verdict.violations.len(),
            system.log_dir().display(),
            verdict
                .violations
                .iter()
                .take(60)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        );
        Ok(())
    })
    .await
}
