//! `jwl bench`: a load generator for a running system. Prepares stock and couriers through the
//! admin API, sends `POST /v1/orders` at a constant arrival rate, waits for every accepted order
//! to reach a terminal status, measures raw Postgres-commit and JetStream-publish baselines
//! directly, and prints the report (and writes it as JSON with `--json`). The arithmetic and the
//! report's shape live in [`figures`]; this module does the I/O.

mod figures;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use jwl_events::GeoPoint;
use jwl_service_kit::auth::{JwtKeys, Scope};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use self::figures::{
    ArrivalSchedule, Baseline, Baselines, BenchReport, BenchSetup, IngestReport, LatencySummary,
    Ratios, SagaReport, SendLimit, courier_position, dropoff, per_second, pickup,
};
use super::redact_userinfo;
use crate::args::BenchArgs;

/// Quantity of the one SKU in every order.
const QTY_PER_ORDER: u32 = 1;
/// Price of that SKU.
const UNIT_PRICE_CENTS: u32 = 1000;
/// Courier registrations in flight during the preparation.
const SETUP_CONCURRENCY: usize = 32;
/// Pause between two polling rounds of the orders not yet terminal.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// `GET /v1/orders/{id}` requests in flight while polling.
const POLL_CONCURRENCY: usize = 16;
/// Bound on one HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on connecting to Postgres or NATS for a baseline.
const BASELINE_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// The timeline entry whose time marks the order as dispatched (the order service moves the
/// order to `dispatched` when it handles this event).
const DISPATCH_EVENT: &str = "jwl.payment.captured";
/// Distinct dropoff points the orders cycle through.
const DROPOFF_POINTS: u64 = 64;
/// Statuses after which an order no longer changes through the saga.
const TERMINAL_STATUSES: [&str; 4] = ["dispatched", "delivered", "rejected", "cancelled"];

/// The system under test: its base URL, a client, and the run's tokens.
struct Api {
    client: reqwest::Client,
    /// Without a trailing `/`.
    base: String,
    admin_token: String,
    customer_token: String,
}

/// Where the orders go from and to.
struct Route {
    pickup: GeoPoint,
    /// Order `i` goes to `dropoffs[i % len]`.
    dropoffs: Vec<GeoPoint>,
}

impl Route {
    /// The body of order `index`: one unit of `sku`, from the pickup to a dropoff a few km away.
    fn order_body(&self, sku: &str, index: u64) -> serde_json::Value {
        let dropoff = self.dropoffs[(index % self.dropoffs.len() as u64) as usize];
        json!({
            "items": [{ "sku": sku, "qty": QTY_PER_ORDER, "unit_price_cents": UNIT_PRICE_CENTS }],
            "pickup": self.pickup,
            "dropoff": dropoff,
            "payment_token": "tok_ok",
        })
    }
}

/// An order the system accepted.
struct Accepted {
    order_id: String,
    /// When the POST was sent, since the start of the sending phase.
    sent_offset: Duration,
    /// Wall-clock time the POST was sent (compared with the timeline's times).
    sent_at: DateTime<Utc>,
    last_status: String,
    /// When the saga ended, since the start of the sending phase (once terminal).
    ended_offset: Option<Duration>,
    /// POST sent → dispatched (dispatched or delivered orders only).
    end_to_end: Option<Duration>,
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
    timeline: Vec<TimelineEntry>,
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

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let keys = args.jwt.load_keys(&args.data_dir.data_dir)?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let schedule = ArrivalSchedule {
        rate_per_second: args.rate,
        limit: match args.orders {
            Some(count) => SendLimit::Orders(count.get()),
            None => SendLimit::Duration(args.duration),
        },
    };
    let planned = schedule.planned_orders();
    let token_ttl = args.duration + args.settle_timeout + Duration::from_secs(3600);
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(args.concurrency.get())
        .build()
        .context("building the HTTP client")?;
    let api = Api {
        client,
        base: args.url.trim_end_matches('/').to_owned(),
        admin_token: keys
            .issue(&format!("bench-{run_id}-admin"), &[Scope::Admin], token_ttl)
            .context("issuing the admin token")?,
        customer_token: keys
            .issue(
                &format!("bench-{run_id}-customer"),
                &[Scope::OrdersWrite, Scope::OrdersRead],
                token_ttl,
            )
            .context("issuing the customer token")?,
    };

    let sku = format!("bench-{run_id}");
    eprintln!("preparing: stock for {planned} orders of {sku}, {planned} couriers…");
    prepare(&api, &keys, &sku, &run_id, planned, token_ttl).await?;

    eprintln!(
        "sending {planned} orders at {}/s to {}…",
        args.rate.get(),
        api.base
    );
    let route = Route {
        pickup: pickup()?,
        dropoffs: (0..DROPOFF_POINTS).map(dropoff).collect::<Result<_, _>>()?,
    };
    let sent = send_orders(&api, &sku, &route, schedule, args.concurrency.get()).await;
    let mut post_latencies = Vec::new();
    let mut accepted = Vec::new();
    let mut errors_by_status: BTreeMap<String, u64> = BTreeMap::new();
    let sending = sent.length;
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
        sending_seconds: sending.as_secs_f64(),
        accepted_per_second: per_second(accepted_count, sending),
        post_latency: LatencySummary::of(post_latencies),
    };

    eprintln!("waiting for {accepted_count} sagas to end…");
    let settle_started = Instant::now();
    settle(&api, &mut accepted, sent.started, args.settle_timeout).await;
    let saga = saga_report(&accepted, settle_started.elapsed());

    eprintln!("measuring the baselines…");
    let baselines = Baselines {
        postgres_commits: postgres_baseline(
            args.database_url.as_deref(),
            &run_id,
            args.baseline_duration,
        )
        .await,
        jetstream_acked_publishes: jetstream_baseline(
            args.nats_url.as_deref(),
            &run_id,
            args.baseline_duration,
        )
        .await,
    };
    let ratios = Ratios::of(&ingest, &saga, &baselines);
    let report = BenchReport {
        setup: BenchSetup {
            url: api.base,
            rate_per_second: args.rate.get(),
            planned_orders: planned,
            concurrency: args.concurrency.get(),
            couriers: planned,
            sku,
        },
        ingest,
        saga,
        baselines,
        ratios,
    };
    print!("{}", report.render());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).context("encoding the report")?;
        std::fs::write(path, text)
            .with_context(|| format!("writing the report to {}", path.display()))?;
    }
    Ok(())
}

/// Stock for every order, and one courier per order (each has capacity for one waybill by
/// default) spread around the pickup.
async fn prepare(
    api: &Api,
    keys: &JwtKeys,
    sku: &str,
    run_id: &str,
    planned: u64,
    token_ttl: Duration,
) -> anyhow::Result<()> {
    let on_hand = planned * u64::from(QTY_PER_ORDER);
    let base = &api.base;
    let response = api
        .client
        .put(format!("{base}/v1/stock/{sku}"))
        .bearer_auth(&api.admin_token)
        .json(&json!({ "on_hand": on_hand }))
        .send()
        .await
        .with_context(|| format!("PUT {base}/v1/stock/{sku} (is the system running?)"))?;
    expect_success(response, "setting the stock").await?;

    let mut registrations = futures::stream::iter(0..planned)
        .map(|index| async move {
            let courier_id = format!("bench-{run_id}-c{index}");
            let token = keys
                .issue(&courier_id, &[Scope::CouriersWrite], token_ttl)
                .context("issuing a courier token")?;
            let position = courier_position(index, planned)?;
            let response = api
                .client
                .put(format!("{base}/v1/couriers/{courier_id}/location"))
                .bearer_auth(token)
                .json(&position)
                .send()
                .await
                .with_context(|| format!("PUT /v1/couriers/{courier_id}/location"))?;
            expect_success(response, "registering a courier").await
        })
        .buffer_unordered(SETUP_CONCURRENCY);
    while let Some(registered) = registrations.next().await {
        registered?;
    }
    Ok(())
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

/// Sends the scheduled orders (at most `concurrency` in flight) and returns each POST's latency
/// and outcome, with when and for how long (first send → last answer) it sent.
async fn send_orders(
    api: &Api,
    sku: &str,
    route: &Route,
    schedule: ArrivalSchedule,
    concurrency: usize,
) -> Sent {
    let in_flight = Arc::new(Semaphore::new(concurrency));
    let url = format!("{}/v1/orders", api.base);
    let mut requests = JoinSet::new();
    let mut outcomes = Vec::new();
    let started = Instant::now();
    let mut index = 0;
    while let Some(due) = schedule.due(index) {
        tokio::time::sleep_until(started + due).await;
        // Collect what already finished, so memory stays flat on long runs.
        while let Some(joined) = requests.try_join_next() {
            outcomes.push(joined_outcome(joined));
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let body = route.order_body(sku, index);
        let request = api
            .client
            .post(&url)
            .bearer_auth(&api.customer_token)
            .json(&body);
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
            order_id: body.order_id,
            sent_offset,
            sent_at,
            last_status: "pending".to_owned(),
            ended_offset: None,
            end_to_end: None,
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

/// Polls the orders not yet terminal until all are, or `timeout` passes.
async fn settle(api: &Api, orders: &mut [Accepted], sending_started: Instant, timeout: Duration) {
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

/// One `GET /v1/orders/{id}`; records the status and, once terminal, when the saga ended. A
/// failed poll leaves the order pending (it is tried again next round).
async fn poll_once(api: &Api, order: &mut Accepted, sending_started: Instant) {
    let response = api
        .client
        .get(format!("{}/v1/orders/{}", api.base, order.order_id))
        .bearer_auth(&api.customer_token)
        .send()
        .await;
    let Ok(response) = response else { return };
    if !response.status().is_success() {
        return;
    }
    let Ok(view) = response.json::<OrderView>().await else {
        return;
    };
    let seen_offset = sending_started.elapsed();
    order.last_status = view.status;
    if !TERMINAL_STATUSES.contains(&order.last_status.as_str()) {
        return;
    }
    order.ended_offset = Some(seen_offset);
    if !matches!(order.last_status.as_str(), "dispatched" | "delivered") {
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

fn saga_report(orders: &[Accepted], settle_time: Duration) -> SagaReport {
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for order in orders {
        *outcomes.entry(order.last_status.clone()).or_default() += 1;
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
        dispatch_time_source: format!(
            "the time of the order's `{DISPATCH_EVENT}` timeline entry, the event that makes it \
             dispatched (else when a poll first saw it dispatched)"
        ),
        completed_per_second: per_second(terminal, window),
        settle_seconds: settle_time.as_secs_f64(),
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
async fn jetstream_baseline(url: Option<&str>, run_id: &str, length: Duration) -> Baseline {
    let Some(url) = url.map(str::trim).filter(|url| !url.is_empty()) else {
        return Baseline::Skipped {
            reason: "no NATS URL (--nats-url / JWL_NATS_URL)".to_owned(),
        };
    };
    let outcome = async {
        let client = tokio::time::timeout(
            BASELINE_CONNECT_TIMEOUT,
            async_nats::ConnectOptions::new()
                .name("jwl-bench")
                .connect(url),
        )
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
