//! The pure parts of `jwl bench`: the arrival schedule, where couriers and dropoffs are placed,
//! percentiles and rates, and the report (its JSON shape and its text rendering). No I/O here;
//! the command module measures and this module computes and formats.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::num::NonZeroU32;
use std::time::Duration;

use jwl_events::{GeoError, GeoPoint};
use serde::Serialize;

/// Where every benchmark order is picked up: People's Square, Shanghai.
pub const PICKUP: (f64, f64) = (31.2304, 121.4737);
/// Couriers are spread within this distance of the pickup.
pub const COURIER_SPREAD_KM: f64 = 2.0;
/// Dropoffs are this far from the pickup.
pub const DROPOFF_DISTANCE_KM: f64 = 3.0;
/// Kilometres per degree of latitude (and of longitude at the equator).
const KM_PER_DEGREE: f64 = 111.32;
/// The golden angle in radians: successive points never line up.
const GOLDEN_ANGLE: f64 = 2.399_963_229_728_653;

/// When the benchmark stops sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendLimit {
    /// Exactly this many orders.
    Orders(u64),
    /// Every order whose arrival time falls before this.
    Duration(Duration),
}

/// A constant arrival rate: order `i` is due `i / rate` seconds after the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArrivalSchedule {
    pub rate_per_second: NonZeroU32,
    pub limit: SendLimit,
}

impl ArrivalSchedule {
    /// When order `index` is due, counted from the start; `None` once past the limit.
    pub fn due(&self, index: u64) -> Option<Duration> {
        let offset = Duration::from_secs_f64(index as f64 / f64::from(self.rate_per_second.get()));
        match self.limit {
            SendLimit::Orders(count) => (index < count).then_some(offset),
            SendLimit::Duration(length) => (offset < length).then_some(offset),
        }
    }

    /// How many orders the schedule sends in all.
    pub fn planned_orders(&self) -> u64 {
        match self.limit {
            SendLimit::Orders(count) => count,
            SendLimit::Duration(length) => {
                (length.as_secs_f64() * f64::from(self.rate_per_second.get())).ceil() as u64
            }
        }
    }
}

/// The point `distance_km` from `origin` in the direction `bearing` (radians from north), on a
/// local flat approximation (good to metres at these distances).
fn offset_point(origin: (f64, f64), distance_km: f64, bearing: f64) -> Result<GeoPoint, GeoError> {
    let (lat, lon) = origin;
    let north_km = distance_km * bearing.cos();
    let east_km = distance_km * bearing.sin();
    let lat_degrees = north_km / KM_PER_DEGREE;
    let lon_degrees = east_km / (KM_PER_DEGREE * lat.to_radians().cos());
    GeoPoint::new(lat + lat_degrees, lon + lon_degrees)
}

/// The pickup point of every order.
pub fn pickup() -> Result<GeoPoint, GeoError> {
    GeoPoint::new(PICKUP.0, PICKUP.1)
}

/// Courier `index` of `count`: spread evenly over the disc of [`COURIER_SPREAD_KM`] around the
/// pickup (a sunflower spiral).
pub fn courier_position(index: u64, count: u64) -> Result<GeoPoint, GeoError> {
    let share = (index as f64 + 0.5) / count.max(1) as f64;
    let distance = COURIER_SPREAD_KM * share.sqrt();
    offset_point(PICKUP, distance, index as f64 * GOLDEN_ANGLE)
}

/// The dropoff of order `index`: [`DROPOFF_DISTANCE_KM`] from the pickup, direction varying.
pub fn dropoff(index: u64) -> Result<GeoPoint, GeoError> {
    offset_point(PICKUP, DROPOFF_DISTANCE_KM, index as f64 * GOLDEN_ANGLE)
}

/// The `p`th percentile (0–100, nearest rank) of `sorted` ascending samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// `count` per second of `elapsed` (0 when nothing elapsed).
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// `system / baseline`, when the baseline was measured and is positive.
pub fn ratio(system: f64, baseline: Option<f64>) -> Option<f64> {
    baseline
        .filter(|rate| *rate > 0.0)
        .map(|rate| system / rate)
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// p50 / p99 / max of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    /// The summary of `samples`; `None` when there are none.
    pub fn of(mut samples: Vec<Duration>) -> Option<Self> {
        samples.sort_unstable();
        Some(LatencySummary {
            samples: samples.len(),
            p50_ms: millis(percentile(&samples, 50.0)?),
            p99_ms: millis(percentile(&samples, 99.0)?),
            max_ms: millis(*samples.last()?),
        })
    }
}

/// The sending phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IngestReport {
    pub sent: u64,
    pub accepted: u64,
    pub errors: u64,
    /// Errors by HTTP status (`"429"`, `"201 without X-Request-ID"`) or transport failure.
    pub errors_by_status: BTreeMap<String, u64>,
    pub sending_seconds: f64,
    /// Accepted orders per second of the sending phase.
    pub accepted_per_second: f64,
    pub post_latency: Option<LatencySummary>,
}

/// The sagas of the accepted orders.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SagaReport {
    /// Accepted orders seen in a terminal status before the settle timeout.
    pub terminal: u64,
    /// Accepted orders still not terminal at the settle timeout.
    pub unsettled: u64,
    /// The last status seen of every accepted order.
    pub outcomes: BTreeMap<String, u64>,
    /// POST sent → dispatched, for the orders that were dispatched.
    pub end_to_end_latency: Option<LatencySummary>,
    /// What marks "dispatched" in the latency.
    pub dispatch_time_source: String,
    /// Terminal sagas per second, from the first POST sent to the last saga's end.
    pub completed_per_second: f64,
    /// How long the wait for terminal statuses took.
    pub settle_seconds: f64,
}

/// A baseline: measured, skipped (no URL) or failed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Baseline {
    Measured {
        operations: u64,
        seconds: f64,
        per_second: f64,
    },
    Skipped {
        reason: String,
    },
    Failed {
        error: String,
    },
}

impl Baseline {
    /// The measured rate, if any.
    pub fn per_second(&self) -> Option<f64> {
        match self {
            Baseline::Measured { per_second, .. } => Some(*per_second),
            Baseline::Skipped { .. } | Baseline::Failed { .. } => None,
        }
    }
}

/// The raw capacity of the two stores the system is built on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Baselines {
    /// One-row insert transactions committed per second, sequentially, on one connection.
    pub postgres_commits: Baseline,
    /// JetStream publishes acknowledged per second, each awaited before the next.
    pub jetstream_acked_publishes: Baseline,
}

/// The system's rates over the baselines (`None` where a baseline is missing).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ratios {
    pub sagas_per_postgres_commit: Option<f64>,
    pub ingest_per_postgres_commit: Option<f64>,
    pub sagas_per_jetstream_publish: Option<f64>,
    pub ingest_per_jetstream_publish: Option<f64>,
}

impl Ratios {
    pub fn of(ingest: &IngestReport, saga: &SagaReport, baselines: &Baselines) -> Self {
        let postgres = baselines.postgres_commits.per_second();
        let jetstream = baselines.jetstream_acked_publishes.per_second();
        Ratios {
            sagas_per_postgres_commit: ratio(saga.completed_per_second, postgres),
            ingest_per_postgres_commit: ratio(ingest.accepted_per_second, postgres),
            sagas_per_jetstream_publish: ratio(saga.completed_per_second, jetstream),
            ingest_per_jetstream_publish: ratio(ingest.accepted_per_second, jetstream),
        }
    }
}

/// How the run was set up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchSetup {
    pub url: String,
    pub rate_per_second: u32,
    pub planned_orders: u64,
    pub concurrency: usize,
    pub couriers: u64,
    pub sku: String,
}

/// Everything `jwl bench` measured: printed as text, written as JSON with `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    pub setup: BenchSetup,
    pub ingest: IngestReport,
    pub saga: SagaReport,
    pub baselines: Baselines,
    pub ratios: Ratios,
}

fn latency_line(out: &mut String, label: &str, latency: Option<&LatencySummary>) -> fmt::Result {
    match latency {
        Some(l) => writeln!(
            out,
            "  {label:<22} p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms   ({} samples)",
            l.p50_ms, l.p99_ms, l.max_ms, l.samples
        ),
        None => writeln!(out, "  {label:<22} no samples"),
    }
}

fn baseline_line(out: &mut String, label: &str, baseline: &Baseline) -> fmt::Result {
    match baseline {
        Baseline::Measured {
            operations,
            seconds,
            per_second,
        } => writeln!(
            out,
            "  {label:<22} {per_second:.0}/s   ({operations} in {seconds:.1} s)"
        ),
        Baseline::Skipped { reason } => writeln!(out, "  {label:<22} skipped: {reason}"),
        Baseline::Failed { error } => writeln!(out, "  {label:<22} failed: {error}"),
    }
}

fn ratio_text(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.3}"))
}

impl BenchReport {
    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_to(&mut out);
        out
    }

    fn write_to(&self, out: &mut String) -> fmt::Result {
        let s = &self.setup;
        writeln!(
            out,
            "jwl bench: {} orders at {}/s against {} (at most {} in flight; {} couriers, sku {})",
            s.planned_orders, s.rate_per_second, s.url, s.concurrency, s.couriers, s.sku
        )?;
        let i = &self.ingest;
        writeln!(out, "\nIngest (POST /v1/orders)")?;
        writeln!(
            out,
            "  sent {}   accepted {}   errors {}",
            i.sent, i.accepted, i.errors
        )?;
        for (status, count) in &i.errors_by_status {
            writeln!(out, "    {status}: {count}")?;
        }
        writeln!(
            out,
            "  throughput             {:.1} accepted/s over {:.1} s",
            i.accepted_per_second, i.sending_seconds
        )?;
        latency_line(out, "POST latency", i.post_latency.as_ref())?;

        let g = &self.saga;
        writeln!(out, "\nSagas")?;
        writeln!(
            out,
            "  terminal {}   still not terminal {}   (waited {:.1} s after sending)",
            g.terminal, g.unsettled, g.settle_seconds
        )?;
        let outcomes: Vec<String> = g
            .outcomes
            .iter()
            .map(|(status, count)| format!("{status} {count}"))
            .collect();
        writeln!(out, "  outcomes               {}", outcomes.join(", "))?;
        latency_line(out, "end to end", g.end_to_end_latency.as_ref())?;
        writeln!(out, "    POST sent → {}", g.dispatch_time_source)?;
        writeln!(
            out,
            "  completed              {:.1} sagas/s",
            g.completed_per_second
        )?;

        let b = &self.baselines;
        writeln!(out, "\nBaselines (measured directly in this run)")?;
        baseline_line(out, "Postgres commits", &b.postgres_commits)?;
        baseline_line(out, "JetStream acked pubs", &b.jetstream_acked_publishes)?;

        let r = &self.ratios;
        writeln!(out, "\nRatios (system rate / baseline rate)")?;
        writeln!(
            out,
            "  sagas/s  ÷ Postgres commits/s     {}",
            ratio_text(r.sagas_per_postgres_commit)
        )?;
        writeln!(
            out,
            "  ingest/s ÷ Postgres commits/s     {}",
            ratio_text(r.ingest_per_postgres_commit)
        )?;
        writeln!(
            out,
            "  sagas/s  ÷ JetStream publishes/s  {}",
            ratio_text(r.sagas_per_jetstream_publish)
        )?;
        writeln!(
            out,
            "  ingest/s ÷ JetStream publishes/s  {}",
            ratio_text(r.ingest_per_jetstream_publish)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&samples, 50.0), Some(ms(50)));
        assert_eq!(percentile(&samples, 99.0), Some(ms(99)));
        assert_eq!(percentile(&samples, 100.0), Some(ms(100)));
        assert_eq!(percentile(&samples, 0.0), Some(ms(1)));
        assert_eq!(percentile(&[ms(7)], 99.0), Some(ms(7)));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn latency_summary_sorts_its_samples() {
        let summary = LatencySummary::of(vec![ms(30), ms(10), ms(20)]).unwrap();
        assert_eq!(summary.samples, 3);
        assert_eq!(summary.p50_ms, 20.0);
        assert_eq!(summary.p99_ms, 30.0);
        assert_eq!(summary.max_ms, 30.0);
        assert_eq!(LatencySummary::of(Vec::new()), None);
    }

    #[test]
    fn rates_and_ratios() {
        assert_eq!(per_second(50, Duration::from_secs(2)), 25.0);
        assert_eq!(per_second(5, Duration::ZERO), 0.0);
        assert_eq!(ratio(25.0, Some(100.0)), Some(0.25));
        assert_eq!(ratio(25.0, Some(0.0)), None);
        assert_eq!(ratio(25.0, None), None);
    }

    #[test]
    fn the_schedule_spaces_arrivals_evenly_and_stops_at_its_limit() {
        let rate = NonZeroU32::new(20).unwrap();
        let by_count = ArrivalSchedule {
            rate_per_second: rate,
            limit: SendLimit::Orders(3),
        };
        assert_eq!(by_count.due(0), Some(Duration::ZERO));
        assert_eq!(by_count.due(1), Some(ms(50)));
        assert_eq!(by_count.due(2), Some(ms(100)));
        assert_eq!(by_count.due(3), None);
        assert_eq!(by_count.planned_orders(), 3);

        let by_time = ArrivalSchedule {
            rate_per_second: rate,
            limit: SendLimit::Duration(Duration::from_secs(1)),
        };
        assert_eq!(by_time.planned_orders(), 20);
        assert!(by_time.due(19).is_some());
        assert_eq!(by_time.due(20), None);
        let sent = (0..).take_while(|&i| by_time.due(i).is_some()).count() as u64;
        assert_eq!(sent, by_time.planned_orders());
    }

    #[test]
    fn couriers_are_within_the_spread_and_dropoffs_a_few_km_away() {
        let pickup = pickup().unwrap();
        let count = 500;
        let positions: Vec<GeoPoint> = (0..count)
            .map(|i| courier_position(i, count).unwrap())
            .collect();
        for position in &positions {
            assert!(pickup.distance_km(position) <= COURIER_SPREAD_KM + 0.01);
        }
        // Spread out, not piled on the pickup.
        let farthest = positions
            .iter()
            .map(|p| pickup.distance_km(p))
            .fold(0.0, f64::max);
        assert!(farthest > 1.8, "{farthest}");
        for i in 0..50 {
            let distance = pickup.distance_km(&dropoff(i).unwrap());
            assert!((distance - DROPOFF_DISTANCE_KM).abs() < 0.05, "{distance}");
        }
    }

    fn sample_report() -> BenchReport {
        let ingest = IngestReport {
            sent: 20,
            accepted: 19,
            errors: 1,
            errors_by_status: BTreeMap::from([("429".to_owned(), 1)]),
            sending_seconds: 1.0,
            accepted_per_second: 19.0,
            post_latency: LatencySummary::of(vec![ms(5), ms(9)]),
        };
        let saga = SagaReport {
            terminal: 19,
            unsettled: 0,
            outcomes: BTreeMap::from([("dispatched".to_owned(), 19)]),
            end_to_end_latency: LatencySummary::of(vec![ms(100)]),
            dispatch_time_source: "timeline".to_owned(),
            completed_per_second: 10.0,
            settle_seconds: 0.5,
        };
        let baselines = Baselines {
            postgres_commits: Baseline::Measured {
                operations: 1000,
                seconds: 1.0,
                per_second: 1000.0,
            },
            jetstream_acked_publishes: Baseline::Skipped {
                reason: "no NATS URL".to_owned(),
            },
        };
        let ratios = Ratios::of(&ingest, &saga, &baselines);
        BenchReport {
            setup: BenchSetup {
                url: "http://127.0.0.1:8080".to_owned(),
                rate_per_second: 20,
                planned_orders: 20,
                concurrency: 256,
                couriers: 20,
                sku: "bench-x".to_owned(),
            },
            ingest,
            saga,
            baselines,
            ratios,
        }
    }

    #[test]
    fn ratios_divide_by_the_measured_baselines_only() {
        let report = sample_report();
        assert_eq!(report.ratios.sagas_per_postgres_commit, Some(0.01));
        assert_eq!(report.ratios.ingest_per_postgres_commit, Some(0.019));
        assert_eq!(report.ratios.sagas_per_jetstream_publish, None);
    }

    #[test]
    fn the_report_renders_every_figure_and_serialises_the_same() {
        let report = sample_report();
        let text = report.render();
        for expected in [
            "accepted 19",
            "errors 1",
            "429: 1",
            "19.0 accepted/s",
            "p50 5.0 ms",
            "dispatched 19",
            "10.0 sagas/s",
            "1000/s",
            "skipped: no NATS URL",
            "0.010",
            "n/a",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from\n{text}");
        }
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["ingest"]["accepted"], 19);
        assert_eq!(json["saga"]["end_to_end_latency"]["p50_ms"], 100.0);
        assert_eq!(json["baselines"]["postgres_commits"]["status"], "measured");
        assert_eq!(json["baselines"]["postgres_commits"]["per_second"], 1000.0);
        assert_eq!(
            json["baselines"]["jetstream_acked_publishes"]["status"],
            "skipped"
        );
        assert!(json["ratios"]["sagas_per_jetstream_publish"].is_null());
    }
}
