//! `jwl bench`: a load generator for a running system that looks like a city. It first warms
//! the system up (`--warmup`: orders at the first step's rate, counted nowhere). Per step (one,
//! or one per `--sweep` rate) it plans the orders ([`city`]), stocks the SKUs and registers the
//! couriers through the APIs, then sends `POST /v1/orders` at a constant arrival rate while the
//! couriers move, watches the sagas end on the broker ([`observe`]; polling each order only when
//! the broker cannot be reached), confirms a sample through the HTTP API, and measures what the system spent
//! ([`cost`]: CPU time from /proc, PostgreSQL commits and statements). After the steps it
//! measures raw Postgres-commit and JetStream-publish baselines, prints the report (and writes
//! it as JSON with `--json`, and a latency/throughput chart with `--plot`, [`plot`]). The
//! arithmetic and the report's shape live in [`figures`].

mod city;
mod cost;
mod figures;
mod observe;
mod plot;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use jwl_events::{EventType, OrderId};
use jwl_service_kit::auth::{JwtKeys, Scope};
use reqwest::StatusCode;
use serde::Deserialize;
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::city::{CityOptions, Plan};
use self::cost::{PgCounters, PgWindow, SystemProcesses};
use self::figures::{
    ArrivalSchedule, Baseline, Baselines, BenchReport, BenchSetup, CITY_RADIUS_KM, Confirmation,
    CostReport, CourierUpdatesReport, CpuCost, IngestReport, LatencySummary, OutcomeMix, PgCost,
    Ratios, SagaReport, SecondsSummary, SendLimit, StepReport, SweepReport, completed_under_load,
    cpu_cost, per_second,
};
use self::observe::Watcher;
use super::redact_userinfo;
use crate::args::{BenchArgs, BrokerKind};
use jwl_outbox::transport::nats::NatsSecurity;

/// Pause between two polling rounds of the orders not yet terminal (without the broker).
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// `GET /v1/orders/{id}` requests in flight while polling.
const POLL_CONCURRENCY: usize = 16;
/// Least time between two scans of the orders for ended sagas (following the events).
const SCAN_INTERVAL: Duration = Duration::from_millis(25);
/// Bound on one HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Customers the orders of a run come from (each with its own token), round robin.
const CUSTOMERS: usize = 1_000;
/// Bound on connecting to Postgres or NATS for a baseline.
const BASELINE_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Orders whose outcome is checked through the HTTP API at the end of a step.
const CONFIRM_SAMPLE: usize = 20;
/// How long the check waits for the read model to catch up with the events.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(15);
/// The timeline entry whose time marks the order as dispatched (the order service moves the
/// order to `dispatched` when it handles this event).
const DISPATCH_EVENT: &str = "jwl.payment.captured";
/// Statuses after which an order no longer changes through the saga.
const TERMINAL_STATUSES: [&str; 4] = ["dispatched", "delivered", "rejected", "cancelled"];
/// Below this settle timeout, orders without a courier (ended by the 60 s dispatch deadline)
/// may not be seen to end.
const NO_COURIER_SETTLE: Duration = Duration::from_secs(75);
/// The outcome of an order whose end was not seen.
const NOT_ENDED: &str = "not ended";

/// The system under test: its base URL, a client, and the run's tokens.
struct Api {
    client: reqwest::Client,
    /// Where the order routes are served (one or several replicas), each without a trailing `/`.
    orders: Vec<String>,
    /// Where the stock routes are served (inventory).
    inventory: String,
    /// Where the courier routes are served (dispatch).
    dispatch: String,
    admin_token: String,
    /// One token per customer of the run: orders are spread over them round robin, as a
    /// city's orders come from many customers (intake limits each caller's rate).
    customer_tokens: Vec<String>,
}

/// An order the system accepted.
struct Accepted {
    order_id: String,
    /// The id as the events carry it.
    key: Option<OrderId>,
    /// When the POST was sent, since the start of the sending phase.
    sent_offset: Duration,
    /// Wall-clock time the POST was sent (compared with event times).
    sent_at: DateTime<Utc>,
    /// How the saga ended (`dispatched`, `rejected`, `cancelled/<reason>`), or the last status
    /// seen while polling.
    outcome: String,
    /// When the saga ended, since the start of the sending phase (once ended).
    ended_offset: Option<Duration>,
    /// POST sent → dispatched (dispatched orders only).
    end_to_end: Option<Duration>,
    /// Each cause → effect hop of the saga with the effect's type, by event times (seen on the
    /// broker only).
    hops: Vec<(EventType, Duration)>,
    /// Each of the saga's events: its time → seen on the broker (broker only).
    to_broker: Vec<Duration>,
}

/// The sending phase: each POST's latency and outcome, when it started and how long it took.
struct Sent {
    outcomes: Vec<(Duration, PostOutcome)>,
    started: Instant,
    length: Duration,
}

/// The answer to one POST.
enum PostOutcome {
    Accepted(Accepted),
    Refused(String),
}

/// The parts of `GET /v1/orders/{id}` the benchmark reads.
#[derive(Deserialize)]
struct OrderView {
    status: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    timeline: Vec<TimelineEntry>,
}

impl OrderView {
    /// The outcome as the bench names it: `dispatched` (also once delivered), `rejected`,
    /// `cancelled/<reason>`, or the status.
    fn outcome(&self) -> String {
        match self.status.as_str() {
            "delivered" => "dispatched".to_owned(),
            "cancelled" => format!("cancelled/{}", self.reason.as_deref().unwrap_or("unknown")),
            status => status.to_owned(),
        }
    }
}

#[derive(Deserialize)]
struct TimelineEntry {
    #[serde(rename = "type")]
    event_type: String,
    time: DateTime<Utc>,
}

#[derive(Deserialize)]
struct CreatedBody {
    order_id: String,
}

/// The Postgres counters of the run, or why there are none.
enum PgState {
    Ready(PgCounters),
    Skipped(String),
    Failed(String),
}

/// What every step shares.
struct Run {
    api: Api,
    keys: JwtKeys,
    run_id: String,
    token_ttl: Duration,
    city: CityOptions,
    processes: Result<SystemProcesses, String>,
    postgres: PgState,
    watcher: Option<Watcher>,
    /// Why the ends are polled, when they are.
    polling_reason: Option<String>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let keys = args.jwt.load_keys(&args.data_dir.data_dir)?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let rates = if args.sweep.is_empty() {
        vec![args.rate]
    } else {
        args.sweep.clone()
    };
    let city = CityOptions {
        skus: args.skus.get(),
        sku_skew: args.sku_skew,
        couriers: args.couriers.map(|c| c.get()),
        courier_updates_per_second: args.courier_updates_per_second,
        mix: OutcomeMix {
            decline: args.decline_ratio,
            out_of_stock: args.out_of_stock_ratio,
            no_courier: args.no_courier_ratio,
        },
        seed: args.seed,
    };
    // Refuse impossible mixes before touching the system.
    city.mix
        .split(1)
        .map_err(|message| anyhow::anyhow!(message))?;
    if args.no_courier_ratio > 0.0 && args.settle_timeout < NO_COURIER_SETTLE {
        eprintln!(
            "warning: orders without a courier end at the dispatch deadline (60 s by default); \
             --settle-timeout {} may be too short to see them end",
            humantime::format_duration(args.settle_timeout)
        );
    }
    let per_step = args.duration + args.settle_timeout + 2 * args.pg_stats_wait;
    let token_ttl = per_step * rates.len() as u32
        + args.warmup
        + args.settle_timeout
        + Duration::from_secs(3600);
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(args.concurrency.get())
        .build()
        .context("building the HTTP client")?;
    let orders: Vec<String> = args
        .url
        .iter()
        .map(|url| url.trim().trim_end_matches('/').to_owned())
        .filter(|url| !url.is_empty())
        .collect();
    anyhow::ensure!(!orders.is_empty(), "--url is empty");
    let api = Api {
        client,
        orders: orders.clone(),
        inventory: base_url(args.inventory_url.as_deref(), &orders),
        dispatch: base_url(args.dispatch_url.as_deref(), &orders),
        admin_token: keys
            .issue(&format!("bench-{run_id}-admin"), &[Scope::Admin], token_ttl)
            .context("issuing the admin token")?,
        customer_tokens: (0..CUSTOMERS)
            .map(|n| {
                keys.issue(
                    &format!("bench-{run_id}-customer-{n}"),
                    &[Scope::OrdersWrite, Scope::OrdersRead],
                    token_ttl,
                )
            })
            .collect::<Result<_, _>>()
            .context("issuing the customer tokens")?,
    };

    let processes = SystemProcesses::resolve(&args.system_pids);
    match &processes {
        Ok(found) => eprintln!("CPU time counted for: {}", found.selection),
        Err(reason) => eprintln!("CPU time will not be reported: {reason}"),
    }
    let postgres = match non_empty(args.database_url.as_deref()) {
        None => PgState::Skipped("no database URL (--database-url / JWL_DATABASE_URL)".to_owned()),
        Some(url) => match PgCounters::connect(url).await {
            Ok(counters) => PgState::Ready(counters),
            Err(error) => {
                PgState::Failed(format!("Postgres at {}: {error:#}", redact_userinfo(url)))
            }
        },
    };
    let (watcher, polling_reason) = match Watcher::start(&args.broker).await {
        Ok(watcher) => (Some(watcher), None),
        Err(error) => {
            eprintln!("warning: cannot follow the events ({error:#}); polling every order");
            (None, Some(format!("{error:#}")))
        }
    };
    let mut run = Run {
        api,
        keys,
        run_id,
        token_ttl,
        city,
        processes,
        postgres,
        watcher,
        polling_reason,
    };

    if !args.warmup.is_zero() {
        warm_up(&mut run, &args, rates[0]).await?;
    }
    let mut steps = Vec::with_capacity(rates.len());
    for (index, rate) in rates.iter().enumerate() {
        let step = run_step(&mut run, &args, index, *rate).await?;
        if rates.len() > 1 {
            println!(
                "=== step {} of {}: {}/s offered ===\n{}",
                index + 1,
                rates.len(),
                rate,
                step.render()
            );
        }
        steps.push(step);
    }
    if let Some(watcher) = run.watcher.take() {
        watcher.stop().await;
    }
    if let PgState::Ready(counters) = run.postgres {
        counters.close().await;
    }

    eprintln!("measuring the baselines…");
    let baselines = Baselines {
        postgres_commits: postgres_baseline(
            args.database_url.as_deref(),
            &run.run_id,
            args.baseline_duration,
        )
        .await,
        jetstream_acked_publishes: match args.broker.kind {
            BrokerKind::Kafka => Baseline::Skipped {
                reason:
                    "the broker is Kafka (JWL_BROKER=kafka): this baseline needs the NATS broker"
                        .to_owned(),
            },
            BrokerKind::Nats => {
                jetstream_baseline(
                    args.broker.nats_url(),
                    &args.broker.nats_security.to_security()?,
                    &run.run_id,
                    args.baseline_duration,
                )
                .await
            }
        },
    };
    for step in &mut steps {
        step.ratios = Ratios::of(&step.ingest, &step.saga, &baselines);
    }
    if let Some(path) = &args.plot {
        plot::draw(&steps, path).with_context(|| format!("plotting to {}", path.display()))?;
    }
    let json = if args.sweep.is_empty() {
        let step = steps.pop().context("no step ran")?;
        let report = BenchReport { step, baselines };
        print!("{}", report.render());
        if let Some(path) = &args.plot {
            println!("\nPlot: {}", path.display());
        }
        serde_json::to_string_pretty(&report)
    } else {
        let report = SweepReport {
            steps,
            baselines,
            plot: args.plot.as_ref().map(|p| p.display().to_string()),
        };
        print!("{}", report.render());
        serde_json::to_string_pretty(&report)
    };
    if let Some(path) = &args.json {
        let text = json.context("encoding the report")?;
        std::fs::write(path, text)
            .with_context(|| format!("writing the report to {}", path.display()))?;
    }
    Ok(())
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

/// Sends orders at `rate` for `--warmup` on a city of their own (SKUs and couriers named
/// `b<run>-w-…`, so that no step inherits its stock or busy couriers) and waits for their sagas
/// to end, within `--settle-timeout`. Nothing of it is counted.
async fn warm_up(
    run: &mut Run,
    args: &BenchArgs,
    rate: std::num::NonZeroU32,
) -> anyhow::Result<()> {
    let schedule = ArrivalSchedule {
        rate_per_second: rate,
        limit: SendLimit::Duration(args.warmup),
    };
    let planned = schedule.planned_orders();
    let prefix = format!("b{}-w-", run.run_id);
    let plan = city::plan(&run.city, &prefix, u64::MAX, planned)?;
    eprintln!(
        "warming up: {planned} orders at {rate}/s over {} (not counted), SKUs and couriers \
         named {prefix}*…",
        humantime::format_duration(args.warmup)
    );
    city::prepare(&run.api, &run.keys, &plan, run.token_ttl).await?;
    if let Some(watcher) = &run.watcher {
        watcher.clear();
    }
    let sent = send_orders(&run.api, &plan, schedule, args.concurrency.get()).await;
    let mut accepted: Vec<Accepted> = sent
        .outcomes
        .into_iter()
        .filter_map(|(_, outcome)| match outcome {
            PostOutcome::Accepted(order) => Some(order),
            PostOutcome::Refused(_) => None,
        })
        .collect();
    match &run.watcher {
        Some(watcher) => {
            settle_by_events(watcher, &mut accepted, sent.started, args.settle_timeout).await
        }
        None => settle_by_polling(&run.api, &mut accepted, sent.started, args.settle_timeout).await,
    }
    let open = accepted
        .iter()
        .filter(|order| order.ended_offset.is_none())
        .count();
    if open > 0 {
        eprintln!(
            "warning: {open} of the warm-up's {} accepted orders had not ended after {}; \
             the first step starts anyway",
            accepted.len(),
            humantime::format_duration(args.settle_timeout)
        );
    }
    Ok(())
}

/// One bench at `rate` with fresh SKUs and couriers: plan, prepare, send while the couriers
/// move, wait for the sagas to end, confirm a sample, and measure the cost of the window.
async fn run_step(
    run: &mut Run,
    args: &BenchArgs,
    index: usize,
    rate: std::num::NonZeroU32,
) -> anyhow::Result<StepReport> {
    let schedule = ArrivalSchedule {
        rate_per_second: rate,
        limit: match args.orders {
            Some(count) => SendLimit::Orders(count.get()),
            None => SendLimit::Duration(args.duration),
        },
    };
    let planned = schedule.planned_orders();
    let prefix = format!("b{}-{index}-", run.run_id);
    let plan = city::plan(&run.city, &prefix, index as u64, planned)?;
    eprintln!(
        "preparing: {} SKUs ({} out of stock) and {} couriers named {prefix}*…",
        plan.stock.len(),
        run.city.out_of_stock_skus(),
        plan.couriers.len()
    );
    let fleet = city::prepare(&run.api, &run.keys, &plan, run.token_ttl).await?;
    if let Some(watcher) = &run.watcher {
        watcher.clear();
    }

    // The window opens: Postgres counters (once the preparation's statistics are flushed),
    // then CPU time, then the first POST.
    let pg_start = match &mut run.postgres {
        PgState::Ready(counters) => {
            wait_for_stats(args.pg_stats_wait, "before the window").await;
            Some(counters.sample().await.map(|s| (s, counters.queries())))
        }
        _ => None,
    };
    let cpu_before = run
        .processes
        .as_ref()
        .map_err(Clone::clone)
        .and_then(SystemProcesses::sample);
    let stop_moving = CancellationToken::new();
    let movement = city::start_moving(
        run.api.client.clone(),
        run.api.dispatch.clone(),
        fleet,
        plan.updates_per_second,
        run.city.seed.wrapping_add(index as u64),
        stop_moving.clone(),
    );
    eprintln!(
        "sending {planned} orders at {rate}/s to {}, {:.1} courier updates/s…",
        run.api.orders.join(", "),
        plan.updates_per_second
    );
    let sent = send_orders(&run.api, &plan, schedule, args.concurrency.get()).await;
    let mut post_latencies = Vec::new();
    let mut accepted = Vec::new();
    let mut errors_by_status: BTreeMap<String, u64> = BTreeMap::new();
    for (latency, outcome) in sent.outcomes {
        post_latencies.push(latency);
        match outcome {
            PostOutcome::Accepted(order) => accepted.push(order),
            PostOutcome::Refused(reason) => *errors_by_status.entry(reason).or_default() += 1,
        }
    }
    let accepted_count = accepted.len() as u64;
    let ingest = IngestReport {
        sent: post_latencies.len() as u64,
        accepted: accepted_count,
        errors: errors_by_status.values().sum(),
        errors_by_status,
        sending_seconds: sent.length.as_secs_f64(),
        accepted_per_second: per_second(accepted_count, sent.length),
        post_latency: LatencySummary::of(post_latencies),
    };

    eprintln!("waiting for {accepted_count} sagas to end…");
    let settle_started = Instant::now();
    let observed_by = match &run.watcher {
        Some(watcher) => {
            settle_by_events(watcher, &mut accepted, sent.started, args.settle_timeout).await;
            watcher.source().to_owned()
        }
        None => {
            settle_by_polling(&run.api, &mut accepted, sent.started, args.settle_timeout).await;
            format!(
                "polling GET /v1/orders/{{id}} every {} ms ({})",
                POLL_INTERVAL.as_millis(),
                run.polling_reason.as_deref().unwrap_or("no broker")
            )
        }
    };
    let settle_time = settle_started.elapsed();
    // The window closes.
    let cpu_after = run
        .processes
        .as_ref()
        .map_err(Clone::clone)
        .and_then(SystemProcesses::sample);
    let pg_end = match &mut run.postgres {
        PgState::Ready(counters) => Some(counters.sample().await),
        _ => None,
    };
    stop_moving.cancel();
    let movement = movement.await.unwrap_or_default();

    eprintln!("checking a sample of outcomes through the API…");
    let confirmation = confirm(&run.api, &accepted).await;
    let saga = saga_report(
        &accepted,
        sent.length,
        settle_time,
        observed_by,
        confirmation,
    );
    let sagas = saga.terminal;

    let cpu = match (&run.processes, cpu_before, cpu_after) {
        (Ok(processes), Ok(before), Ok(after)) => cpu_cost(
            &before,
            &after,
            processes.ticks_per_second,
            sagas,
            processes.selection.clone(),
        ),
        (_, Err(reason), _) | (_, _, Err(reason)) => CpuCost::Unavailable { reason },
        (Err(reason), _, _) => CpuCost::Unavailable {
            reason: reason.clone(),
        },
    };
    let postgres = match &mut run.postgres {
        PgState::Skipped(reason) => PgCost::Skipped {
            reason: reason.clone(),
        },
        PgState::Failed(error) => PgCost::Failed {
            error: error.clone(),
        },
        PgState::Ready(counters) => {
            wait_for_stats(args.pg_stats_wait, "after the window").await;
            let flushed = counters.sample().await;
            let queries_before_flushed = counters.queries() - 1;
            match (pg_start, pg_end, flushed) {
                (Some(Ok((start, queries_at_start))), Some(Ok(end)), Ok(flushed)) => PgWindow {
                    start,
                    queries_at_start,
                    end,
                    flushed,
                    queries_before_flushed,
                    stats_wait: args.pg_stats_wait,
                }
                .cost(sagas, counters.statements_unavailable()),
                (Some(Err(error)), _, _) | (_, Some(Err(error)), _) | (_, _, Err(error)) => {
                    PgCost::Failed {
                        error: format!("{error:#}"),
                    }
                }
                _ => PgCost::Failed {
                    error: "a sample of the counters is missing".to_owned(),
                },
            }
        }
    };
    let courier_updates = CourierUpdatesReport {
        couriers: plan.couriers.len() as u64,
        target_per_second: plan.updates_per_second,
        sent: movement.sent,
        ok: movement.ok,
        failed: movement.failed,
        seconds: movement.length.as_secs_f64(),
        achieved_per_second: per_second(movement.ok, movement.length),
        latency: LatencySummary::of(movement.latencies),
    };
    Ok(StepReport {
        setup: setup_of(run, args, rate, &plan),
        ingest,
        cost: CostReport {
            sagas,
            window_seconds: saga.window_seconds,
            cpu,
            postgres,
            courier_updates_in_window: movement.sent,
        },
        saga,
        courier_updates,
        ratios: Ratios {
            sagas_per_postgres_commit: None,
            ingest_per_postgres_commit: None,
            sagas_per_jetstream_publish: None,
            ingest_per_jetstream_publish: None,
        },
    })
}

fn setup_of(run: &Run, args: &BenchArgs, rate: std::num::NonZeroU32, plan: &Plan) -> BenchSetup {
    BenchSetup {
        url: run.api.orders.join(","),
        rate_per_second: rate.get(),
        planned_orders: plan.orders.len() as u64,
        planned_outcomes: plan.outcomes,
        concurrency: args.concurrency.get(),
        skus: run.city.skus,
        sku_skew: run.city.sku_skew,
        out_of_stock_skus: run.city.out_of_stock_skus(),
        couriers: plan.couriers.len() as u64,
        city_diameter_km: 2.0 * CITY_RADIUS_KM,
        seed: run.city.seed,
        prefix: plan.prefix.clone(),
        warmup_seconds: args.warmup.as_secs_f64(),
    }
}

async fn wait_for_stats(wait: Duration, when: &str) {
    if !wait.is_zero() {
        eprintln!(
            "waiting {} {when} for PostgreSQL's statistics to be flushed…",
            humantime::format_duration(wait)
        );
        tokio::time::sleep(wait).await;
    }
}

/// An error with the status and body unless `response` is a success.
async fn expect_success(response: reqwest::Response, what: &str) -> anyhow::Result<()> {
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    bail!("{what}: {status} {body}")
}

/// Sends the plan's orders on the schedule (at most `concurrency` in flight) and returns each
/// POST's latency and outcome, with when and for how long (first send → last answer) it sent.
async fn send_orders(
    api: &Api,
    plan: &Plan,
    schedule: ArrivalSchedule,
    concurrency: usize,
) -> Sent {
    let in_flight = Arc::new(Semaphore::new(concurrency));
    let urls: Vec<String> = api
        .orders
        .iter()
        .map(|base| format!("{base}/v1/orders"))
        .collect();
    let mut requests = JoinSet::new();
    let mut outcomes = Vec::new();
    let started = Instant::now();
    let mut index = 0;
    while let Some(due) = schedule.due(index) {
        let Some(body) = plan.orders.get(index as usize) else {
            break;
        };
        tokio::time::sleep_until(started + due).await;
        // Collect what already finished, so memory stays flat on long runs.
        while let Some(joined) = requests.try_join_next() {
            outcomes.push(joined_outcome(joined));
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let request = api
            .client
            .post(&urls[index as usize % urls.len()])
            .bearer_auth(&api.customer_tokens[index as usize % api.customer_tokens.len()])
            .json(body);
        requests.spawn(async move {
            let sent_offset = started.elapsed();
            let sent_at = Utc::now();
            let response = request.send().await;
            let latency = started.elapsed().saturating_sub(sent_offset);
            drop(permit);
            let outcome = match response {
                Ok(response) => classify(response, sent_offset, sent_at).await,
                Err(error) => PostOutcome::Refused(transport_error(&error)),
            };
            (latency, outcome)
        });
        index += 1;
    }
    while let Some(joined) = requests.join_next().await {
        outcomes.push(joined_outcome(joined));
    }
    Sent {
        outcomes,
        started,
        length: started.elapsed(),
    }
}

/// A request task's outcome; a task that died counts as an error.
fn joined_outcome(
    joined: Result<(Duration, PostOutcome), tokio::task::JoinError>,
) -> (Duration, PostOutcome) {
    joined.unwrap_or_else(|error| {
        (
            Duration::ZERO,
            PostOutcome::Refused(format!("request task failed: {error}")),
        )
    })
}

/// `201` with `X-Request-ID` and an order id is accepted; anything else is an error named by
/// its status.
async fn classify(
    response: reqwest::Response,
    sent_offset: Duration,
    sent_at: DateTime<Utc>,
) -> PostOutcome {
    let status = response.status();
    if status != StatusCode::CREATED {
        return PostOutcome::Refused(status.as_u16().to_string());
    }
    if !response.headers().contains_key("x-request-id") {
        return PostOutcome::Refused("201 without X-Request-ID".to_owned());
    }
    match response.json::<CreatedBody>().await {
        Ok(body) => PostOutcome::Accepted(Accepted {
            key: OrderId::parse(&body.order_id).ok(),
            order_id: body.order_id,
            sent_offset,
            sent_at,
            outcome: "pending".to_owned(),
            ended_offset: None,
            end_to_end: None,
            hops: Vec::new(),
            to_broker: Vec::new(),
        }),
        Err(_) => PostOutcome::Refused("201 with an unreadable body".to_owned()),
    }
}

/// A short name for a failed request.
fn transport_error(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout".to_owned()
    } else if error.is_connect() {
        "connection refused or failed".to_owned()
    } else {
        "transport error".to_owned()
    }
}

/// The hops of `orders` by the effect's event type (its CloudEvents `type`).
fn hops_by_type(orders: &[Accepted]) -> BTreeMap<String, LatencySummary> {
    let mut by_type: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    for (effect, hop) in orders.iter().flat_map(|order| order.hops.iter()) {
        by_type
            .entry(effect.as_str().to_owned())
            .or_default()
            .push(*hop);
    }
    by_type
        .into_iter()
        .filter_map(|(effect, hops)| Some((effect, LatencySummary::of(hops)?)))
        .collect()
}

/// Waits until the watcher has seen every order's saga end, or `timeout` passes.
async fn settle_by_events(
    watcher: &Watcher,
    orders: &mut [Accepted],
    sending_started: Instant,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let scanned = Instant::now();
        let mut pending = 0;
        for order in orders.iter_mut().filter(|o| o.ended_offset.is_none()) {
            let Some(seen) = order.key.as_ref().and_then(|key| watcher.ended(key)) else {
                pending += 1;
                continue;
            };
            let ended = seen.ended;
            order.hops = seen.hops;
            order.to_broker = seen.to_broker;
            order.ended_offset = Some(
                ended
                    .last
                    .arrived
                    .saturating_duration_since(sending_started),
            );
            if let Some(captured) = ended.captured {
                // The capture event's time, when the server's clock puts it after the send;
                // otherwise when it arrived here.
                let latency = (captured.time - order.sent_at)
                    .to_std()
                    .unwrap_or_else(|_| {
                        captured
                            .arrived
                            .saturating_duration_since(sending_started + order.sent_offset)
                    });
                order.end_to_end = Some(latency);
            }
            order.outcome = ended.outcome;
        }
        if pending == 0 || Instant::now() >= deadline {
            return;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        watcher
            .changed(remaining.min(Duration::from_millis(100)))
            .await;
        tokio::time::sleep_until((scanned + SCAN_INTERVAL).min(deadline)).await;
    }
}

/// Polls the orders not yet terminal until all are, or `timeout` passes.
async fn settle_by_polling(
    api: &Api,
    orders: &mut [Accepted],
    sending_started: Instant,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let pending: Vec<&mut Accepted> = orders
            .iter_mut()
            .filter(|order| order.ended_offset.is_none())
            .collect();
        if pending.is_empty() || Instant::now() >= deadline {
            return;
        }
        futures::stream::iter(pending)
            .for_each_concurrent(POLL_CONCURRENCY, |order| async move {
                poll_once(api, order, sending_started).await;
            })
            .await;
        if orders.iter().any(|order| order.ended_offset.is_none()) {
            tokio::time::sleep(
                POLL_INTERVAL.min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
        }
    }
}

/// `url` without a trailing `/`, or else the first of `orders`.
fn base_url(url: Option<&str>, orders: &[String]) -> String {
    match url.map(str::trim).filter(|url| !url.is_empty()) {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => orders[0].clone(),
    }
}

/// `GET /v1/orders/{id}`, if it answers.
async fn get_order(api: &Api, order_id: &str) -> Option<OrderView> {
    let response = api
        .client
        .get(format!("{}/v1/orders/{order_id}", api.orders[0]))
        .bearer_auth(&api.admin_token)
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json::<OrderView>().await.ok()
}

/// One poll; records the outcome and, once terminal, when the saga ended. A failed poll leaves
/// the order pending (it is tried again next round).
async fn poll_once(api: &Api, order: &mut Accepted, sending_started: Instant) {
    let Some(view) = get_order(api, &order.order_id).await else {
        return;
    };
    let seen_offset = sending_started.elapsed();
    order.outcome = view.outcome();
    if !TERMINAL_STATUSES.contains(&view.status.as_str()) {
        return;
    }
    order.ended_offset = Some(seen_offset);
    if order.outcome != "dispatched" {
        return;
    }
    // The dispatch event's time, when the server's clock puts it after the send; otherwise
    // when this poll saw the status.
    let dispatched_after_send = view
        .timeline
        .iter()
        .find(|entry| entry.event_type == DISPATCH_EVENT)
        .and_then(|entry| (entry.time - order.sent_at).to_std().ok());
    let latency =
        dispatched_after_send.unwrap_or_else(|| seen_offset.saturating_sub(order.sent_offset));
    order.end_to_end = Some(latency);
    order.ended_offset = Some(order.sent_offset + latency);
}

/// Checks the outcome of up to [`CONFIRM_SAMPLE`] orders (spread over the step) through
/// `GET /v1/orders/{id}`, giving the read model [`CONFIRM_TIMEOUT`] to catch up.
async fn confirm(api: &Api, orders: &[Accepted]) -> Confirmation {
    let stride = orders.len().div_ceil(CONFIRM_SAMPLE).max(1);
    let sample: Vec<&Accepted> = orders.iter().step_by(stride).collect();
    let deadline = Instant::now() + CONFIRM_TIMEOUT;
    let mut answers: Vec<Option<String>> = vec![None; sample.len()];
    loop {
        for (order, answer) in sample.iter().zip(answers.iter_mut()) {
            if answer.as_deref() == Some(expected_outcome(order)) {
                continue;
            }
            if let Some(view) = get_order(api, &order.order_id).await {
                *answer = Some(view.outcome());
            }
        }
        let all_agree = sample
            .iter()
            .zip(&answers)
            .all(|(order, answer)| answer.as_deref() == Some(expected_outcome(order)));
        if all_agree || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut confirmation = Confirmation {
        checked: sample.len() as u64,
        ..Confirmation::default()
    };
    for (order, answer) in sample.iter().zip(&answers) {
        let expected = expected_outcome(order);
        if answer.as_deref() == Some(expected) {
            confirmation.agreed += 1;
        } else if confirmation.disagreements.len() < 10 {
            confirmation.disagreements.push(format!(
                "{}: observed {expected}, the API says {}",
                order.order_id,
                answer.as_deref().unwrap_or("nothing (no answer)")
            ));
        }
    }
    confirmation
}

/// What the API should say of an order: its observed outcome, `not ended` if none was seen.
fn expected_outcome(order: &Accepted) -> &str {
    if order.ended_offset.is_some() {
        &order.outcome
    } else {
        NOT_ENDED
    }
}

fn saga_report(
    orders: &[Accepted],
    sending: Duration,
    settle_time: Duration,
    observed_by: String,
    confirmation: Confirmation,
) -> SagaReport {
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for order in orders {
        let outcome = if order.ended_offset.is_some() {
            order.outcome.clone()
        } else {
            format!("{NOT_ENDED} ({})", order.outcome)
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    let terminal = orders
        .iter()
        .filter(|order| order.ended_offset.is_some())
        .count() as u64;
    let first_sent = orders.iter().map(|order| order.sent_offset).min();
    let last_ended = orders.iter().filter_map(|order| order.ended_offset).max();
    let window = match (first_sent, last_ended) {
        (Some(first), Some(last)) => last.saturating_sub(first),
        _ => Duration::ZERO,
    };
    SagaReport {
        terminal,
        unsettled: orders.len() as u64 - terminal,
        outcomes,
        end_to_end_latency: LatencySummary::of(
            orders.iter().filter_map(|order| order.end_to_end).collect(),
        ),
        end_to_end_by_second: first_sent.and_then(|first| {
            SecondsSummary::of(orders.iter().filter_map(|order| {
                Some((order.sent_offset.saturating_sub(first), order.end_to_end?))
            }))
        }),
        assignment_hop_latency: LatencySummary::of(
            orders
                .iter()
                .flat_map(|order| order.hops.iter())
                .filter(|(effect, _)| *effect == EventType::CourierAssigned)
                .map(|(_, hop)| *hop)
                .collect(),
        ),
        event_hop_latency: LatencySummary::of(
            orders
                .iter()
                .flat_map(|order| order.hops.iter().map(|(_, hop)| *hop))
                .collect(),
        ),
        event_hops_by_type: hops_by_type(orders),
        event_to_broker_latency: LatencySummary::of(
            orders
                .iter()
                .flat_map(|order| order.to_broker.iter().copied())
                .collect(),
        ),
        dispatch_time_source: format!(
            "the CloudEvents time of the order's `{DISPATCH_EVENT}` event, which makes it \
             dispatched (else when it was seen)"
        ),
        observed_by,
        completed_per_second: per_second(terminal, window),
        completed_under_load_per_second: completed_under_load(
            orders.iter().filter_map(|order| order.ended_offset),
            sending,
        ),
        window_seconds: window.as_secs_f64(),
        settle_seconds: settle_time.as_secs_f64(),
        confirmation,
    }
}

/// One-row insert transactions committed per second, one after the other on one connection,
/// into a scratch table in schema `jwl_bench` (dropped afterwards).
async fn postgres_baseline(url: Option<&str>, run_id: &str, length: Duration) -> Baseline {
    let Some(url) = url.map(str::trim).filter(|url| !url.is_empty()) else {
        return Baseline::Skipped {
            reason: "no database URL (--database-url / JWL_DATABASE_URL)".to_owned(),
        };
    };
    let outcome = async {
        let mut conn = tokio::time::timeout(BASELINE_CONNECT_TIMEOUT, PgConnection::connect(url))
            .await
            .context("timed out connecting")?
            .context("connecting")?;
        let table = format!("jwl_bench.commit_probe_{run_id}");
        sqlx::query("CREATE SCHEMA IF NOT EXISTS jwl_bench")
            .execute(&mut conn)
            .await
            .context("creating schema jwl_bench")?;
        // `table` is built from a fixed schema and the run's hex id: nothing from input.
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE {table} (id bigserial PRIMARY KEY, payload bigint NOT NULL, \
             created_at timestamptz NOT NULL DEFAULT now())"
        )))
        .execute(&mut conn)
        .await
        .with_context(|| format!("creating {table}"))?;
        let measured = commit_loop(&mut conn, &table, length).await;
        let dropped = sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
            .execute(&mut conn)
            .await
            .with_context(|| format!("dropping {table}"));
        let _ = conn.close().await;
        let measured = measured?;
        dropped?;
        anyhow::Ok(measured)
    }
    .await;
    match outcome {
        Ok(baseline) => baseline,
        Err(error) => Baseline::Failed {
            error: format!("Postgres at {}: {error:#}", redact_userinfo(url)),
        },
    }
}

/// One-row insert transactions, back to back for `length`.
async fn commit_loop(
    conn: &mut PgConnection,
    table: &str,
    length: Duration,
) -> anyhow::Result<Baseline> {
    let insert = format!("INSERT INTO {table} (payload) VALUES ($1)");
    rate_of(length, async |n| {
        let mut tx = conn.begin().await.context("BEGIN")?;
        sqlx::query(AssertSqlSafe(insert.as_str()))
            .bind(n as i64)
            .execute(&mut *tx)
            .await
            .context("INSERT")?;
        tx.commit().await.context("COMMIT")
    })
    .await
}

/// Runs `operation` (given how many ran before it) back to back for `length`, and how many
/// completed per second.
async fn rate_of(
    length: Duration,
    mut operation: impl AsyncFnMut(u64) -> anyhow::Result<()>,
) -> anyhow::Result<Baseline> {
    let started = Instant::now();
    let mut operations: u64 = 0;
    while started.elapsed() < length {
        operation(operations).await?;
        operations += 1;
    }
    let elapsed = started.elapsed();
    Ok(Baseline::Measured {
        operations,
        seconds: elapsed.as_secs_f64(),
        per_second: per_second(operations, elapsed),
    })
}

/// JetStream publishes acknowledged per second, each ack awaited before the next publish, to a
/// scratch stream `JWL_BENCH_<run>` on `jwl.bench.<run>.>` (deleted afterwards).
async fn jetstream_baseline(
    url: Option<&str>,
    security: &NatsSecurity,
    run_id: &str,
    length: Duration,
) -> Baseline {
    let Some(url) = url.map(str::trim).filter(|url| !url.is_empty()) else {
        return Baseline::Skipped {
            reason: "no NATS URL (--nats-url / JWL_NATS_URL)".to_owned(),
        };
    };
    let outcome = async {
        let (options, servers) =
            security.client_options(url, async_nats::ConnectOptions::new().name("jwl-bench"))?;
        let client = tokio::time::timeout(BASELINE_CONNECT_TIMEOUT, options.connect(servers))
            .await
            .context("timed out connecting")?
            .context("connecting")?;
        let jetstream = jetstream::new(client.clone());
        let stream_name = format!("JWL_BENCH_{}", run_id.to_ascii_uppercase());
        let subject_prefix = format!("jwl.bench.{run_id}");
        jetstream
            .create_stream(jetstream::stream::Config {
                name: stream_name.clone(),
                subjects: vec![format!("{subject_prefix}.>")],
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating stream {stream_name}"))?;
        let measured = publish_loop(&jetstream, &subject_prefix, length).await;
        let deleted = jetstream
            .delete_stream(&stream_name)
            .await
            .with_context(|| format!("deleting stream {stream_name}"));
        let _ = client.flush().await;
        let measured = measured?;
        deleted?;
        anyhow::Ok(measured)
    }
    .await;
    match outcome {
        Ok(baseline) => baseline,
        Err(error) => Baseline::Failed {
            error: format!("NATS at {}: {error:#}", redact_userinfo(url)),
        },
    }
}

async fn publish_loop(
    jetstream: &jetstream::Context,
    subject_prefix: &str,
    length: Duration,
) -> anyhow::Result<Baseline> {
    let subject = format!("{subject_prefix}.probe");
    // About the size of an event envelope.
    let payload = vec![b'x'; 512];
    rate_of(length, async |_| {
        jetstream
            .publish(subject.clone(), payload.clone().into())
            .await
            .context("publishing")?
            .await
            .context("awaiting the ack")?;
        Ok(())
    })
    .await
}
