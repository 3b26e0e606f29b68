//! The card processor's outages end to end (issue 15): payment calls its processor through a
//! circuit breaker with dynamic thresholds; an outage staged with the admin route
//! `PUT /v1/payment-processor` opens it, payment holds its messages (no delivery attempt spent)
//! until a probe succeeds, and every saga still ends well. Each test prints the breaker's
//! timeline.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use jwl_e2e::{Call, NewOrder, PlacedOrder, Service, System, SystemOptions, with_system};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const PRICE_CENTS: i64 = 1250;
const COURIERS: usize = 5;
/// How long the orders of a test may take to end once the processor is back.
const SAGA_TIMEOUT: Duration = Duration::from_secs(120);
/// Steady load: one order every this long.
const ORDER_EVERY: Duration = Duration::from_millis(250);
/// Payment's durable consumer of the events stream.
const PAYMENT_EVENTS: &str = "payment__events";
/// Healthy load before an outage, so the breaker learns its baseline (its window is shorter).
const WARM_UP: Duration = Duration::from_secs(5);

/// A short breaker window and open time, so a test learns a baseline and probes quickly; a
/// simulated processor taking 20 ms a call (so that 10× slower is measurable).
fn options() -> SystemOptions {
    SystemOptions {
        courier_capacity: 100,
        env: [
            ("JWL_PROCESSOR_LATENCY", "20ms"),
            ("JWL_PROCESSOR_BREAKER_WINDOW", "4s"),
            ("JWL_PROCESSOR_BREAKER_MIN_CALLS", "5"),
            ("JWL_PROCESSOR_BREAKER_OPEN_FOR", "1s"),
            ("JWL_PROCESSOR_BREAKER_MIN_P99", "50ms"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        ..SystemOptions::default()
    }
}

async fn prepare(system: &System) -> anyhow::Result<()> {
    system.set_stock("TEA", 10_000).await?;
    system.line_up_couriers(COURIERS, 0.2).await
}

/// `PUT /v1/payment-processor` with `faults`; the processor's view.
async fn stage(system: &System, faults: Value) -> anyhow::Result<Value> {
    system
        .api()
        .send(
            Call::new(Service::Payment, Method::PUT, "/v1/payment-processor")
                .token(system.admin_token())
                .json(faults),
        )
        .await?
        .expect(StatusCode::OK, "staging card processor faults")
}

/// `GET /v1/payment-processor`.
async fn processor(system: &System) -> anyhow::Result<Value> {
    system
        .api()
        .send(
            Call::new(Service::Payment, Method::GET, "/v1/payment-processor")
                .token(system.admin_token()),
        )
        .await?
        .expect(StatusCode::OK, "reading the card processor")
}

/// Places an order every [`ORDER_EVERY`] for `span`.
async fn steady_load(system: &System, span: Duration) -> anyhow::Result<Vec<PlacedOrder>> {
    let until = Instant::now() + span;
    let mut tick = tokio::time::interval(ORDER_EVERY);
    let mut placed = Vec::new();
    while Instant::now() < until {
        tick.tick().await;
        placed.push(
            system
                .place_order("alice", NewOrder::one_tea(PRICE_CENTS))
                .await?,
        );
    }
    Ok(placed)
}

/// One sample of the timeline: breaker state and payment's consumer backlog.
struct Sample {
    at: Duration,
    state: String,
    /// Delivered to payment and not acked: what it holds.
    held: usize,
    /// Not yet delivered.
    pending: u64,
}

async fn sample(system: &System, since: Instant) -> anyhow::Result<Sample> {
    let view = processor(system).await?;
    let backlog = system
        .broker()
        .consumer_backlogs()
        .await?
        .into_iter()
        .find(|backlog| backlog.name == PAYMENT_EVENTS);
    Ok(Sample {
        at: since.elapsed(),
        state: view["breaker"]["state"].as_str().unwrap_or("?").to_owned(),
        held: backlog.as_ref().map_or(0, |b| {
            usize::try_from(b.backlog.ack_pending).unwrap_or(usize::MAX)
        }),
        pending: backlog.map_or(0, |b| b.backlog.pending),
    })
}

/// The breaker's transitions: (when, to, reason, error-rate threshold, p99 threshold ms).
fn transitions(view: &Value) -> Vec<(DateTime<Utc>, String, String, f64, f64)> {
    view["breaker"]["transitions"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|t| {
                    Some((
                        t["at"].as_str()?.parse().ok()?,
                        t["to"].as_str()?.to_owned(),
                        t["reason"].as_str()?.to_owned(),
                        t["thresholds"]["error_rate"].as_f64()?,
                        t["thresholds"]["p99"].as_f64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Prints the transitions since `since`; a run of probes that failed (half-open, then open
/// again) is one line.
fn print_transitions(view: &Value, since: DateTime<Utc>) {
    let all = transitions(view);
    let mut failed_probes: Vec<DateTime<Utc>> = Vec::new();
    let flush = |failed: &mut Vec<DateTime<Utc>>| {
        if let (Some(first), Some(last)) = (failed.first(), failed.last()) {
            println!(
                "  t={:>6.1}s … t={:.1}s: {} probes failed (half-open, open again)",
                (*first - since).as_seconds_f64(),
                (*last - since).as_seconds_f64(),
                failed.len()
            );
        }
        failed.clear();
    };
    let mut i = 0;
    while i < all.len() {
        let (at, to, reason, error_rate, p99) = &all[i];
        let probe_failed = to == "half_open"
            && all
                .get(i + 1)
                .is_some_and(|(_, next, why, ..)| next == "open" && why.starts_with("probe"));
        if probe_failed {
            failed_probes.push(*at);
            i += 2;
            continue;
        }
        flush(&mut failed_probes);
        println!(
            "  t={:>6.1}s breaker -> {to:<9} thresholds: error rate {error_rate:.2}, p99 {p99:.0} ms; {reason}",
            (*at - since).as_seconds_f64()
        );
        i += 1;
    }
    flush(&mut failed_probes);
}

/// The processor is down (every call fails) for 30 s under steady load: the breaker opens, no
/// saga fails, nothing is dead-lettered, every order ends once it is back, and the breaker was
/// open about as long as the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_outage_is_ridden_out_without_failed_sagas() -> anyhow::Result<()> {
    const OUTAGE: Duration = Duration::from_secs(30);
    const AFTER: Duration = Duration::from_secs(3);
    let wall = Instant::now();
    with_system(options(), async |system| {
        prepare(system).await?;
        let started = Instant::now();
        let started_at = Utc::now();
        let control = async {
            let mut samples = Vec::new();
            tokio::time::sleep(WARM_UP).await;
            let outage_at = Utc::now();
            stage(system, json!({"error_rate": 1.0, "latency_ms": 20})).await?;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let outage_ends = Instant::now() + OUTAGE;
            while Instant::now() < outage_ends {
                tick.tick().await;
                samples.push(sample(system, started).await?);
            }
            let back_at = Utc::now();
            stage(system, json!({"latency_ms": 20})).await?;
            for _ in 0..3 {
                tick.tick().await;
                samples.push(sample(system, started).await?);
            }
            anyhow::Ok((samples, outage_at, back_at))
        };
        let (placed, (samples, outage_at, back_at)) =
            tokio::try_join!(steady_load(system, WARM_UP + OUTAGE + AFTER), control)?;

        let views = system.wait_all_terminal(&placed, SAGA_TIMEOUT).await?;
        let outcomes = system.check_invariants(&placed).await?;
        let view = processor(system).await?;
        let all = transitions(&view);
        // the breaker's open time: from its first opening after the outage began to its last
        // closing
        let opened = all
            .iter()
            .find(|(at, to, ..)| to == "open" && *at >= outage_at)
            .map(|t| t.0);
        let closed = all.iter().rev().find(|(_, to, ..)| to == "closed").map(|t| t.0);
        let (Some(opened), Some(closed)) = (opened, closed) else {
            anyhow::bail!("the breaker did not open and close: {view}");
        };
        let open_for = (closed - opened).as_seconds_f64();
        let deliveries = system.broker().nats()?.deliveries(PAYMENT_EVENTS).await?;

        println!(
            "e2e processor outage: {} orders, outcomes [{outcomes}], outage {:.1}s, breaker open {:.1}s \
             (opened {:.1}s after the outage began, closed {:.1}s after it ended), {} payment deliveries, \
             dead letters {}, wall {:.1}s",
            placed.len(),
            (back_at - outage_at).as_seconds_f64(),
            open_for,
            (opened - outage_at).as_seconds_f64(),
            (closed - back_at).as_seconds_f64(),
            deliveries,
            system.broker().dead_letter_count().await?,
            wall.elapsed().as_secs_f64()
        );
        println!(
            "  t=   0.0s load starts; t={:.1}s processor down; t={:.1}s processor back",
            (outage_at - started_at).as_seconds_f64(),
            (back_at - started_at).as_seconds_f64()
        );
        print_transitions(&view, started_at);
        // every 3 s
        for s in samples.iter().step_by(3) {
            println!(
                "  t={:>6.1}s sample: breaker {:<9} payment holds {:>3} message(s) (delivered, kept in progress), {:>3} left in the stream",
                s.at.as_secs_f64(),
                s.state,
                s.held,
                s.pending
            );
        }

        assert!(
            views.iter().all(|v| v.status.succeeded()),
            "every order succeeds: {outcomes}"
        );
        assert_eq!(outcomes.succeeded(), placed.len(), "{outcomes}");
        assert!(
            samples.iter().any(|s| s.state != "closed" && s.held > 0),
            "payment held messages while the breaker was open"
        );
        // close to the outage: opened by the first calls of the outage, closed by the first
        // probe after it (generous bounds for a busy 2-core machine)
        let outage = (back_at - outage_at).as_seconds_f64();
        assert!(
            (opened - outage_at).as_seconds_f64() < 10.0,
            "opened {opened} for an outage from {outage_at}"
        );
        assert!(
            open_for > outage - 10.0 && open_for < outage + 15.0,
            "open {open_for:.1}s for an outage of {outage:.1}s"
        );
        Ok(())
    })
    .await
}

/// The processor gets ten times slower: the breaker opens on its p99 latency (over the threshold
/// learned from the healthy baseline), and closes once it is fast again; every order ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_times_slower_processor_opens_the_breaker_on_latency() -> anyhow::Result<()> {
    let wall = Instant::now();
    with_system(options(), async |system| {
        prepare(system).await?;
        let started_at = Utc::now();
        let fast_again = std::sync::atomic::AtomicBool::new(false);
        let control = async {
            tokio::time::sleep(WARM_UP).await;
            let learned = processor(system).await?;
            let slow_at = Utc::now();
            stage(system, json!({"latency_ms": 20, "slowdown": 10.0})).await?;
            jwl_e2e::eventually(
                "the breaker opens on latency",
                Duration::from_secs(30),
                || async {
                    let view = processor(system).await.ok()?;
                    transitions(&view)
                        .iter()
                        .any(|(at, to, reason, ..)| {
                            *at >= slow_at && to == "open" && reason.contains("p99 latency")
                        })
                        .then_some(())
                },
            )
            .await?;
            let fast_at = Utc::now();
            stage(system, json!({"latency_ms": 20})).await?;
            fast_again.store(true, std::sync::atomic::Ordering::SeqCst);
            anyhow::Ok((learned, slow_at, fast_at))
        };
        let load = async {
            // orders until the processor is fast again, then a few more
            let mut placed = steady_load(system, WARM_UP).await?;
            while !fast_again.load(std::sync::atomic::Ordering::SeqCst) {
                placed.extend(steady_load(system, Duration::from_secs(1)).await?);
            }
            placed.extend(steady_load(system, Duration::from_secs(2)).await?);
            anyhow::Ok(placed)
        };
        let (placed, (learned, slow_at, fast_at)) = tokio::try_join!(load, control)?;

        system.wait_all_terminal(&placed, SAGA_TIMEOUT).await?;
        let outcomes = system.check_invariants(&placed).await?;
        let view = processor(system).await?;
        println!(
            "e2e processor 10x slower: {} orders, outcomes [{outcomes}], baseline learned {} \
             (window p99 {} ms, thresholds {}), slow for {:.1}s, wall {:.1}s",
            placed.len(),
            learned["breaker"]["baseline_learned"],
            learned["breaker"]["window_p99"],
            learned["breaker"]["thresholds"],
            (fast_at - slow_at).as_seconds_f64(),
            wall.elapsed().as_secs_f64()
        );
        print_transitions(&view, started_at);
        assert_eq!(outcomes.succeeded(), placed.len(), "{outcomes}");
        let opened = transitions(&view)
            .into_iter()
            .find(|(at, to, ..)| *at >= slow_at && to == "open")
            .map(|(_, _, reason, ..)| reason)
            .unwrap_or_default();
        assert!(opened.contains("p99 latency"), "opened because {opened}");
        assert!(
            learned["breaker"]["baseline_learned"] == true,
            "a baseline was learned in the warm-up: {learned}"
        );
        jwl_e2e::eventually(
            "the breaker closes once the processor is fast",
            Duration::from_secs(30),
            || async {
                let view = processor(system).await.ok()?;
                (view["breaker"]["state"] == "closed").then_some(())
            },
        )
        .await?;
        Ok(())
    })
    .await
}
