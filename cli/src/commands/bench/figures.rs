//! The pure parts of `jwl bench`: the arrival schedule, the city (where couriers, pickups and
//! dropoffs are, how couriers move, SKU popularity, the mix of outcomes), percentiles and
//! rates, the cost arithmetic (`/proc/<pid>/stat` parsing, which processes count, CPU deltas,
//! per-saga figures), and the report (its JSON shape and its text rendering). No I/O here; the
//! command's other modules measure and this one computes and formats.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::num::NonZeroU32;
use std::time::Duration;

use jwl_events::{GeoError, GeoPoint};
use serde::Serialize;

/// The centre of the benchmark city: People's Square, Shanghai.
pub const CITY_CENTRE: (f64, f64) = (31.2304, 121.4737);
/// Couriers and shops are spread over the disc of this radius around the centre (a city about
/// 20 km across).
pub const CITY_RADIUS_KM: f64 = 10.0;
/// How far from its courier's home an order that should be dispatched is picked up at most.
pub const PICKUP_NEAR_COURIER_KM: f64 = 0.5;
/// Dropoffs are between these distances from the pickup.
pub const DROPOFF_KM: (f64, f64) = (1.0, 5.0);
/// Orders that must find no courier are picked up this far (plus up to 20 km) west of the
/// centre, beyond any sensible dispatch radius.
pub const NO_COURIER_DISTANCE_KM: f64 = 400.0;
/// Longest move of a courier between two of its location updates.
pub const COURIER_STEP_KM: f64 = 0.05;
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
/// local flat approximation (good to metres at city distances, to a few km at hundreds).
fn offset_point(origin: (f64, f64), distance_km: f64, bearing: f64) -> Result<GeoPoint, GeoError> {
    let (lat, lon) = origin;
    let north_km = distance_km * bearing.cos();
    let east_km = distance_km * bearing.sin();
    let lat_degrees = north_km / KM_PER_DEGREE;
    let lon_degrees = east_km / (KM_PER_DEGREE * lat.to_radians().cos());
    GeoPoint::new(lat + lat_degrees, lon + lon_degrees)
}

fn coordinates(point: &GeoPoint) -> (f64, f64) {
    (point.lat, point.lon)
}

/// The city's centre.
pub fn city_centre() -> Result<GeoPoint, GeoError> {
    GeoPoint::new(CITY_CENTRE.0, CITY_CENTRE.1)
}

/// A point uniformly distributed over the disc of `radius_km` around `origin`, from two
/// uniform numbers in `[0, 1)`.
pub fn point_in_disc(
    origin: &GeoPoint,
    radius_km: f64,
    u: f64,
    v: f64,
) -> Result<GeoPoint, GeoError> {
    offset_point(
        coordinates(origin),
        radius_km * u.sqrt(),
        v * std::f64::consts::TAU,
    )
}

/// Home of courier `index` of `count`: spread evenly over the city (a sunflower spiral).
pub fn courier_home(index: u64, count: u64) -> Result<GeoPoint, GeoError> {
    let share = (index as f64 + 0.5) / count.max(1) as f64;
    offset_point(
        CITY_CENTRE,
        CITY_RADIUS_KM * share.sqrt(),
        index as f64 * GOLDEN_ANGLE,
    )
}

/// A dropoff between [`DROPOFF_KM`] from `pickup`, from two uniform numbers in `[0, 1)`.
pub fn dropoff_from(pickup: &GeoPoint, u: f64, v: f64) -> Result<GeoPoint, GeoError> {
    let (near, far) = DROPOFF_KM;
    offset_point(
        coordinates(pickup),
        near + (far - near) * u,
        v * std::f64::consts::TAU,
    )
}

/// A pickup where no courier of the city is in reach, from two uniform numbers in `[0, 1)`.
pub fn outside_city(u: f64, v: f64) -> Result<GeoPoint, GeoError> {
    // West (inland) of Shanghai, within a 30° sector.
    let bearing = 1.5 * std::f64::consts::PI + (v - 0.5) * std::f64::consts::FRAC_PI_6;
    offset_point(CITY_CENTRE, NO_COURIER_DISTANCE_KM + 20.0 * u, bearing)
}

/// Where a courier at `from` is after moving `distance_km` towards `bearing`; a move that
/// would leave the city goes towards the centre instead.
pub fn courier_step(from: &GeoPoint, distance_km: f64, bearing: f64) -> Result<GeoPoint, GeoError> {
    let centre = city_centre()?;
    let moved = offset_point(coordinates(from), distance_km, bearing)?;
    if centre.distance_km(&moved) <= CITY_RADIUS_KM {
        return Ok(moved);
    }
    let towards_centre = (centre.lon - from.lon).atan2(centre.lat - from.lat);
    offset_point(coordinates(from), distance_km, towards_centre)
}

/// Popularity of `n` ranked items, the item of rank `r` (from 1) in proportion to `1 / r^s`:
/// sampled by inverting the cumulative distribution.
#[derive(Debug, Clone)]
pub struct Zipf {
    /// `cumulative[i]`: probability of ranks 1..=i+1; the last is 1.
    cumulative: Vec<f64>,
}

impl Zipf {
    /// The distribution over `n` items (at least one) with exponent `s` (0 is uniform).
    pub fn new(n: usize, s: f64) -> Self {
        let weights: Vec<f64> = (1..=n.max(1)).map(|rank| (rank as f64).powf(-s)).collect();
        let total: f64 = weights.iter().sum();
        let mut running = 0.0;
        let mut cumulative: Vec<f64> = weights
            .iter()
            .map(|weight| {
                running += weight / total;
                running
            })
            .collect();
        if let Some(last) = cumulative.last_mut() {
            *last = 1.0;
        }
        Zipf { cumulative }
    }

    /// The item (0-based rank) that the uniform number `u` in `[0, 1)` falls on.
    pub fn sample(&self, u: f64) -> usize {
        let index = self.cumulative.partition_point(|&c| c <= u);
        index.min(self.cumulative.len() - 1)
    }

    /// The probability of the item of 0-based rank `index`.
    #[cfg(test)]
    pub fn probability(&self, index: usize) -> f64 {
        match index {
            0 => self.cumulative.first().copied().unwrap_or(0.0),
            i => self
                .cumulative
                .get(i)
                .map_or(0.0, |c| c - self.cumulative[i - 1]),
        }
    }
}

/// The shares of orders meant to fail, by flag.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutcomeMix {
    pub decline: f64,
    pub out_of_stock: f64,
    pub no_courier: f64,
}

/// How many orders of a step are meant to end each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PlannedOutcomes {
    /// Paid, in stock, near a courier: `dispatched`.
    pub dispatched: u64,
    /// Paid with `tok_decline`: `rejected`.
    pub rejected: u64,
    /// A SKU stocked at 0: `cancelled` (out_of_stock).
    pub out_of_stock: u64,
    /// Picked up out of every courier's reach: `cancelled` (no_courier) at the dispatch deadline.
    pub no_courier: u64,
}

impl OutcomeMix {
    /// The split of `planned` orders (each share rounded to the nearest order; the rest is
    /// dispatched); an error when the shares add up to more than 1.
    pub fn split(&self, planned: u64) -> Result<PlannedOutcomes, String> {
        let sum = self.decline + self.out_of_stock + self.no_courier;
        if sum > 1.0 + 1e-9 {
            return Err(format!(
                "--decline-ratio, --out-of-stock-ratio and --no-courier-ratio add up to {sum}, more than 1"
            ));
        }
        let share = |ratio: f64| ((ratio * planned as f64).round() as u64).min(planned);
        let rejected = share(self.decline);
        let out_of_stock = share(self.out_of_stock).min(planned - rejected);
        let no_courier = share(self.no_courier).min(planned - rejected - out_of_stock);
        Ok(PlannedOutcomes {
            dispatched: planned - rejected - out_of_stock - no_courier,
            rejected,
            out_of_stock,
            no_courier,
        })
    }
}

/// Couriers enough for `dispatched` orders (one waybill each by default), with a margin so that
/// the last orders still find one nearby.
pub fn default_couriers(dispatched: u64) -> u64 {
    dispatched + dispatched.div_ceil(10) + 10
}

/// Every courier once per 5 seconds.
pub fn default_courier_updates_per_second(couriers: u64) -> f64 {
    couriers as f64 / 5.0
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
/// Ends (offsets since sending started) in the second half of `sending`, per second.
pub fn completed_under_load(ends: impl Iterator<Item = Duration>, sending: Duration) -> f64 {
    let half = sending / 2;
    let count = ends.filter(|end| *end >= half && *end <= sending).count() as u64;
    per_second(count, sending - half)
}

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

/// Fewest sagas a second of the sending phase must hold to get a p99 of its own in
/// [`SecondsSummary`].
pub const MIN_SAGAS_PER_SECOND: usize = 20;

/// A second whose p99 is over this many times the median second's counts as a bad second in
/// [`SecondsSummary`].
pub const BAD_SECOND_FACTOR: f64 = 1.5;

/// The end-to-end p99 of the sagas sent in each whole second of the sending phase, summed up:
/// whether a run's tail is spread over the whole run or comes from a few bad seconds, the mark
/// of a stall somewhere in the system (docs/performance.md, *The tail is the broker's*).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SecondsSummary {
    /// Seconds with at least [`MIN_SAGAS_PER_SECOND`] sagas, the only ones counted.
    pub seconds: usize,
    /// The median of those seconds' p99s.
    pub median_p99_ms: f64,
    /// The worst second's p99.
    pub worst_p99_ms: f64,
    /// When the worst second began, in whole seconds from the first POST.
    pub worst_second: u64,
    /// Seconds whose p99 is over [`BAD_SECOND_FACTOR`] times the median second's.
    pub bad_seconds: usize,
    /// When each of those began, in whole seconds from the first POST, earliest first: a stall
    /// that recurs with the broker's blocks, or slow first seconds of a cold system.
    pub bad_seconds_at: Vec<u64>,
}

impl SecondsSummary {
    /// The summary of `(sent, latency)` pairs, `sent` counted from the first POST; `None` when
    /// no second holds enough sagas.
    pub fn of(samples: impl IntoIterator<Item = (Duration, Duration)>) -> Option<Self> {
        let mut by_second: BTreeMap<u64, Vec<Duration>> = BTreeMap::new();
        for (sent, latency) in samples {
            by_second.entry(sent.as_secs()).or_default().push(latency);
        }
        let mut p99s: Vec<(u64, f64)> = by_second
            .into_iter()
            .filter(|(_, latencies)| latencies.len() >= MIN_SAGAS_PER_SECOND)
            .filter_map(|(second, mut latencies)| {
                latencies.sort_unstable();
                Some((second, millis(percentile(&latencies, 99.0)?)))
            })
            .collect();
        // slowest last (of equal ones, the latest second)
        p99s.sort_unstable_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        let &(worst_second, worst_p99_ms) = p99s.last()?;
        let median_p99_ms = p99s[(p99s.len() - 1) / 2].1;
        let mut bad_seconds_at: Vec<u64> = p99s
            .iter()
            .filter(|(_, p99)| *p99 > median_p99_ms * BAD_SECOND_FACTOR)
            .map(|&(second, _)| second)
            .collect();
        bad_seconds_at.sort_unstable();
        Some(SecondsSummary {
            seconds: p99s.len(),
            median_p99_ms,
            worst_p99_ms,
            worst_second,
            bad_seconds: bad_seconds_at.len(),
            bad_seconds_at,
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
    /// Accepted orders whose saga was seen to end before the settle timeout.
    pub terminal: u64,
    /// Accepted orders whose saga was not seen to end by the settle timeout.
    pub unsettled: u64,
    /// How every accepted order ended: `dispatched`, `rejected`, `cancelled/<reason>`, or the
    /// last status seen (`pending`, …) when it did not end.
    pub outcomes: BTreeMap<String, u64>,
    /// POST sent → dispatched, for the dispatched orders only.
    pub end_to_end_latency: Option<LatencySummary>,
    /// The same, second by second of the sending phase.
    pub end_to_end_by_second: Option<SecondsSummary>,
    /// `fulfillment.waybill_created` → `dispatch.courier_assigned`, by event times (absent
    /// when the ends were polled).
    pub assignment_hop_latency: Option<LatencySummary>,
    /// Every cause → effect hop of the sagas (an event's time → the time of the event a
    /// consumer emitted in reaction), absent when the ends were polled.
    pub event_hop_latency: Option<LatencySummary>,
    /// The same by the effect's event type: the hop into the service that emits it.
    pub event_hops_by_type: BTreeMap<String, LatencySummary>,
    /// Each event's time → when the bench received it from the broker: the rest of the handler
    /// that emitted it, its commit, the relay and the broker (a hop is this for its cause plus
    /// the consumer's part); absent when the ends were polled. Needs the services' clocks and
    /// the bench's to agree.
    pub event_to_broker_latency: Option<LatencySummary>,
    /// What marks "dispatched" in the latency.
    pub dispatch_time_source: String,
    /// How the ends of the sagas were observed.
    pub observed_by: String,
    /// Ended sagas per second, from the first POST sent to the last saga's end.
    pub completed_per_second: f64,
    /// Sagas that ended during the second half of the sending phase, per second: the
    /// throughput while the load lasts, without the pipeline's fill at the start and its drain
    /// after the last POST.
    pub completed_under_load_per_second: f64,
    /// From the first POST sent to the last saga's end.
    pub window_seconds: f64,
    /// How long the wait for the sagas to end took, after sending.
    pub settle_seconds: f64,
    /// A sample of the orders checked through `GET /v1/orders/{id}`.
    pub confirmation: Confirmation,
}

/// The observed outcomes of a sample of orders next to what the HTTP API says of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Confirmation {
    pub checked: u64,
    pub agreed: u64,
    /// `order id: observed X, API says Y` for the first few that disagree.
    pub disagreements: Vec<String>,
}

/// The courier location updates sent during the measured window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CourierUpdatesReport {
    pub couriers: u64,
    pub target_per_second: f64,
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub seconds: f64,
    /// Successful updates per second.
    pub achieved_per_second: f64,
    pub latency: Option<LatencySummary>,
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

// ---- CPU time from /proc ------------------------------------------------------------------

/// The fields of `/proc/<pid>/stat` the bench reads (times in clock ticks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    /// The executable's name (at most 15 bytes), without the parentheses.
    pub comm: String,
    pub ppid: u32,
    pub utime: u64,
    pub stime: u64,
    /// CPU time of the children it has waited for (exited postgres backends, for the
    /// postmaster).
    pub cutime: u64,
    pub cstime: u64,
}

impl ProcStat {
    /// All the CPU time this process accounts for: its own and its reaped children's.
    pub fn ticks(&self) -> u64 {
        self.utime + self.stime + self.cutime + self.cstime
    }
}

/// Parses one `/proc/<pid>/stat` line. The name may hold spaces and parentheses, so the fields
/// are counted from the last `)`.
pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text.get(..open)?.trim().parse().ok()?;
    let comm = text.get(open + 1..close)?.to_owned();
    // After the name: state(0) ppid(1) pgrp session tty_nr tpgid flags minflt cminflt majflt
    // cmajflt utime(11) stime(12) cutime(13) cstime(14) …
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let number = |index: usize| -> Option<u64> {
        let field = fields.get(index)?;
        // cutime and cstime are signed in the kernel's format.
        field
            .parse::<u64>()
            .ok()
            .or_else(|| field.parse::<i64>().ok().map(|v| v.max(0) as u64))
    };
    Some(ProcStat {
        pid,
        comm,
        ppid: u32::try_from(number(1)?).ok()?,
        utime: number(11)?,
        stime: number(12)?,
        cutime: number(13)?,
        cstime: number(14)?,
    })
}

/// A process as `/proc` shows it: its stat line and command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub stat: ProcStat,
    pub cmdline: Vec<String>,
}

/// The kinds of process the cost is split by.
pub const JWL: &str = "jwl";
pub const POSTGRES: &str = "postgres";
pub const NATS_SERVER: &str = "nats-server";
/// The Kafka-protocol broker `jwl up --broker kafka` runs.
pub const TANSU: &str = "tansu";
pub const OTHER: &str = "other";

/// The kind of a process by its executable's name.
pub fn process_kind(comm: &str) -> &'static str {
    match comm {
        "jwl" => JWL,
        "postgres" | "postmaster" => POSTGRES,
        "nats-server" => NATS_SERVER,
        "tansu" => TANSU,
        _ => OTHER,
    }
}

/// Whether the command line is `jwl up …` or `jwl serve …` (a system process, not a tool such
/// as the bench itself).
pub fn is_system_jwl(cmdline: &[String]) -> bool {
    let Some((program, args)) = cmdline.split_first() else {
        return false;
    };
    let name = program.rsplit('/').next().unwrap_or(program);
    name == "jwl"
        && args
            .iter()
            .find(|arg| !arg.starts_with('-'))
            .is_some_and(|command| command == "up" || command == "serve")
}

/// The `jwl up` / `jwl serve` processes, except `own_pid`.
pub fn auto_roots(processes: &[ProcInfo], own_pid: u32) -> Vec<u32> {
    processes
        .iter()
        .filter(|p| p.stat.pid != own_pid && is_system_jwl(&p.cmdline))
        .map(|p| p.stat.pid)
        .collect()
}

/// The processes counted for `roots`: the roots and all their descendants; with
/// `servers_only` (the automatic selection) only the `postgres`, `nats-server` and `tansu`
/// processes among the roots' children, with everything below those.
pub fn counted_processes<'a>(
    processes: &'a [ProcInfo],
    roots: &[u32],
    servers_only: bool,
) -> Vec<&'a ProcStat> {
    #[derive(Clone, Copy, PartialEq)]
    enum Place {
        Root,
        ChildOfRoot,
        Below,
    }
    let mut children: BTreeMap<u32, Vec<&ProcStat>> = BTreeMap::new();
    for process in processes {
        children
            .entry(process.stat.ppid)
            .or_default()
            .push(&process.stat);
    }
    let mut counted: Vec<&ProcStat> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut stack: Vec<(&ProcStat, Place)> = processes
        .iter()
        .filter(|p| roots.contains(&p.stat.pid))
        .map(|p| (&p.stat, Place::Root))
        .collect();
    while let Some((process, place)) = stack.pop() {
        if place == Place::ChildOfRoot && process_kind(&process.comm) == OTHER {
            continue;
        }
        if !seen.insert(process.pid) {
            continue;
        }
        counted.push(process);
        let child_place = if place == Place::Root && servers_only {
            Place::ChildOfRoot
        } else {
            Place::Below
        };
        for child in children.get(&process.pid).into_iter().flatten() {
            stack.push((child, child_place));
        }
    }
    counted.sort_by_key(|p| p.pid);
    counted
}

/// CPU clock ticks of a set of processes at one moment, by kind, and which pids they were.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuSample {
    pub ticks: BTreeMap<String, u64>,
    pub pids: BTreeMap<String, Vec<u32>>,
}

impl CpuSample {
    pub fn of(processes: &[&ProcStat]) -> Self {
        let mut sample = CpuSample::default();
        for process in processes {
            let kind = process_kind(&process.comm).to_owned();
            *sample.ticks.entry(kind.clone()).or_default() += process.ticks();
            sample.pids.entry(kind).or_default().push(process.pid);
        }
        sample
    }
}

/// CPU time of one kind of process over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindCpu {
    pub seconds: f64,
    pub ms_per_saga: Option<f64>,
}

/// CPU time of the system under test over the measured window.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CpuCost {
    Measured {
        seconds: f64,
        /// CPU milliseconds per ended saga.
        ms_per_saga: Option<f64>,
        by_kind: BTreeMap<String, KindCpu>,
        /// How the processes were chosen.
        selection: String,
        /// The pids counted (at either end of the window), by kind.
        pids: BTreeMap<String, Vec<u32>>,
    },
    Unavailable {
        reason: String,
    },
}

/// `amount / sagas`, when there were sagas.
pub fn per_saga(amount: f64, sagas: u64) -> Option<f64> {
    (sagas > 0).then(|| amount / sagas as f64)
}

/// The CPU time between two samples, in total and by kind, per ended saga. A kind whose ticks
/// went down (a process gone without a counted parent reaping it) counts as 0.
pub fn cpu_cost(
    before: &CpuSample,
    after: &CpuSample,
    ticks_per_second: u64,
    sagas: u64,
    selection: String,
) -> CpuCost {
    if ticks_per_second == 0 {
        return CpuCost::Unavailable {
            reason: "the clock tick rate is unknown".to_owned(),
        };
    }
    let mut by_kind = BTreeMap::new();
    let mut total_ticks = 0;
    for kind in before.ticks.keys().chain(after.ticks.keys()) {
        if by_kind.contains_key(kind) {
            continue;
        }
        let start = before.ticks.get(kind).copied().unwrap_or(0);
        let end = after.ticks.get(kind).copied().unwrap_or(0);
        let ticks = end.saturating_sub(start);
        total_ticks += ticks;
        let seconds = ticks as f64 / ticks_per_second as f64;
        by_kind.insert(
            kind.clone(),
            KindCpu {
                seconds,
                ms_per_saga: per_saga(seconds * 1000.0, sagas),
            },
        );
    }
    let mut pids = before.pids.clone();
    for (kind, list) in &after.pids {
        let merged = pids.entry(kind.clone()).or_default();
        merged.extend(list);
        merged.sort_unstable();
        merged.dedup();
    }
    let seconds = total_ticks as f64 / ticks_per_second as f64;
    CpuCost::Measured {
        seconds,
        ms_per_saga: per_saga(seconds * 1000.0, sagas),
        by_kind,
        selection,
        pids,
    }
}

// ---- PostgreSQL counters -------------------------------------------------------------------

/// The PostgreSQL work of the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum PgCost {
    Measured {
        /// Δ `sum(xact_commit)` of `pg_stat_database` (all databases; read-only transactions
        /// included), less the bench's own sampling queries.
        commits: i64,
        commits_per_saga: Option<f64>,
        /// Transaction ids assigned (to transactions and savepoints that wrote, committed or
        /// not): Δ `pg_snapshot_xmax(pg_current_snapshot())`.
        xids_assigned: i64,
        xids_per_saga: Option<f64>,
        /// Δ `sum(calls)` of `pg_stat_statements`, less the bench's own; `None` when the
        /// extension is not available (see `statements_unavailable`).
        statements: Option<i64>,
        statements_per_saga: Option<f64>,
        statements_unavailable: Option<String>,
        /// The bench's own sampling queries taken off the counts.
        own_queries_subtracted: u64,
        /// The wait before and after the window for the statistics to be flushed.
        stats_wait_seconds: f64,
    },
    Skipped {
        reason: String,
    },
    Failed {
        error: String,
    },
}

impl PgCost {
    pub fn commits_per_saga(&self) -> Option<f64> {
        match self {
            PgCost::Measured {
                commits_per_saga, ..
            } => *commits_per_saga,
            _ => None,
        }
    }

    pub fn statements_per_saga(&self) -> Option<f64> {
        match self {
            PgCost::Measured {
                statements_per_saga,
                ..
            } => *statements_per_saga,
            _ => None,
        }
    }
}

/// What the system spent on the sagas of one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostReport {
    /// Sagas that ended in the window (the divisor).
    pub sagas: u64,
    pub window_seconds: f64,
    pub cpu: CpuCost,
    pub postgres: PgCost,
    /// Courier location updates the system handled in the window: their cost is included.
    pub courier_updates_in_window: u64,
}

impl CpuCost {
    pub fn ms_per_saga(&self) -> Option<f64> {
        match self {
            CpuCost::Measured { ms_per_saga, .. } => *ms_per_saga,
            CpuCost::Unavailable { .. } => None,
        }
    }
}

// ---- The report ------------------------------------------------------------------------------

/// How one step was set up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchSetup {
    pub url: String,
    /// The offered rate, orders per second.
    pub rate_per_second: u32,
    pub planned_orders: u64,
    pub planned_outcomes: PlannedOutcomes,
    pub concurrency: usize,
    pub skus: u32,
    pub sku_skew: f64,
    /// SKUs stocked at 0, for the out-of-stock orders.
    pub out_of_stock_skus: u32,
    pub couriers: u64,
    pub city_diameter_km: f64,
    pub seed: u64,
    /// Prefix of this step's SKU and courier names.
    pub prefix: String,
    /// How long the run warmed the system up before its first step (`--warmup`; 0: not).
    pub warmup_seconds: f64,
}

/// One bench at one offered rate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepReport {
    pub setup: BenchSetup,
    pub ingest: IngestReport,
    pub saga: SagaReport,
    pub courier_updates: CourierUpdatesReport,
    pub cost: CostReport,
    pub ratios: Ratios,
}

/// Everything one `jwl bench` run measured: printed as text, written as JSON with `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    #[serde(flatten)]
    pub step: StepReport,
    pub baselines: Baselines,
}

/// A `--sweep`: every step, the shared baselines, and the plot if one was drawn.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepReport {
    pub steps: Vec<StepReport>,
    pub baselines: Baselines,
    pub plot: Option<String>,
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

fn number_text(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.decimals$}"))
}

/// At most `shown` pids, then how many more.
fn pid_list(pids: &[u32], shown: usize) -> String {
    let mut text: Vec<String> = pids.iter().take(shown).map(u32::to_string).collect();
    if pids.len() > shown {
        text.push(format!("… ({} in all)", pids.len()));
    }
    text.join(", ")
}

impl StepReport {
    fn write_to(&self, out: &mut String) -> fmt::Result {
        let s = &self.setup;
        writeln!(
            out,
            "jwl bench: {} orders at {}/s against {} (at most {} in flight{})",
            s.planned_orders,
            s.rate_per_second,
            s.url,
            s.concurrency,
            if s.warmup_seconds > 0.0 {
                format!("; the run warmed up for {} s first", s.warmup_seconds)
            } else {
                String::new()
            }
        )?;
        let p = &s.planned_outcomes;
        writeln!(
            out,
            "  city {:.0} km across: {} SKUs (skew {}) + {} out of stock, {} couriers; planned: \
             {} dispatched, {} declined, {} out of stock, {} without courier (seed {}, names {}*)",
            s.city_diameter_km,
            s.skus,
            s.sku_skew,
            s.out_of_stock_skus,
            s.couriers,
            p.dispatched,
            p.rejected,
            p.out_of_stock,
            p.no_courier,
            s.seed,
            s.prefix
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
        writeln!(out, "\nSagas (ends observed by {})", g.observed_by)?;
        writeln!(
            out,
            "  ended {}   not ended {}   (waited {:.1} s after sending)",
            g.terminal, g.unsettled, g.settle_seconds
        )?;
        let outcomes: Vec<String> = g
            .outcomes
            .iter()
            .map(|(status, count)| format!("{status} {count}"))
            .collect();
        writeln!(out, "  outcomes               {}", outcomes.join(", "))?;
        latency_line(
            out,
            "end to end (dispatched)",
            g.end_to_end_latency.as_ref(),
        )?;
        writeln!(out, "    POST sent → {}", g.dispatch_time_source)?;
        if let Some(by_second) = &g.end_to_end_by_second {
            writeln!(
                out,
                "    by second sent: p99 of the median second {:.1} ms, of the worst {:.1} ms \
                 (+{} s); {} of {} seconds over {BAD_SECOND_FACTOR}× the median",
                by_second.median_p99_ms,
                by_second.worst_p99_ms,
                by_second.worst_second,
                by_second.bad_seconds,
                by_second.seconds
            )?;
            if !by_second.bad_seconds_at.is_empty() {
                let at: Vec<String> = by_second
                    .bad_seconds_at
                    .iter()
                    .map(|second| format!("+{second}"))
                    .collect();
                writeln!(out, "    the seconds over it began at {} s", at.join(", "))?;
            }
        }
        latency_line(
            out,
            "courier assignment hop",
            g.assignment_hop_latency.as_ref(),
        )?;
        writeln!(
            out,
            "    waybill_created → courier_assigned, by the events' times"
        )?;
        latency_line(out, "event hop", g.event_hop_latency.as_ref())?;
        writeln!(
            out,
            "    an event's time → its effect's (causationid): commit, relay, broker, consumer, handler"
        )?;
        for (effect, hops) in &g.event_hops_by_type {
            latency_line(out, &format!("  → {effect}"), Some(hops))?;
        }
        latency_line(out, "event → broker", g.event_to_broker_latency.as_ref())?;
        writeln!(
            out,
            "    an event's time → seen on the broker: the rest of its handler, commit, relay, broker"
        )?;
        writeln!(
            out,
            "  completed              {:.1} sagas/s over {:.1} s (first POST → last saga's end)",
            g.completed_per_second, g.window_seconds
        )?;
        writeln!(
            out,
            "  completed under load   {:.1} sagas/s (ends in the second half of the sending)",
            g.completed_under_load_per_second
        )?;
        let c = &g.confirmation;
        writeln!(
            out,
            "  checked via the API    {} of {} sampled orders agree",
            c.agreed, c.checked
        )?;
        for disagreement in &c.disagreements {
            writeln!(out, "    {disagreement}")?;
        }

        let u = &self.courier_updates;
        writeln!(
            out,
            "\nCourier location updates (PUT /v1/couriers/{{id}}/location)"
        )?;
        writeln!(
            out,
            "  {} couriers, target {:.1}/s: sent {}, ok {}, failed {}; achieved {:.1}/s over {:.1} s",
            u.couriers,
            u.target_per_second,
            u.sent,
            u.ok,
            u.failed,
            u.achieved_per_second,
            u.seconds
        )?;
        latency_line(out, "update latency", u.latency.as_ref())?;

        let cost = &self.cost;
        writeln!(
            out,
            "\nCost per saga ({} sagas in {:.1} s; includes the {} courier updates of the window)",
            cost.sagas, cost.window_seconds, cost.courier_updates_in_window
        )?;
        match &cost.cpu {
            CpuCost::Measured {
                seconds,
                ms_per_saga,
                by_kind,
                selection,
                pids,
            } => {
                writeln!(
                    out,
                    "  CPU                    {} ms/saga   ({seconds:.2} s in all)",
                    number_text(*ms_per_saga, 2)
                )?;
                for (kind, cpu) in by_kind {
                    writeln!(
                        out,
                        "    {kind:<20} {} ms/saga   ({:.2} s)",
                        number_text(cpu.ms_per_saga, 2),
                        cpu.seconds
                    )?;
                }
                writeln!(out, "    processes: {selection}")?;
                for (kind, list) in pids {
                    writeln!(out, "      {kind}: {}", pid_list(list, 6))?;
                }
            }
            CpuCost::Unavailable { reason } => {
                writeln!(out, "  CPU                    n/a: {reason}")?
            }
        }
        match &cost.postgres {
            PgCost::Measured {
                commits,
                commits_per_saga,
                xids_assigned,
                xids_per_saga,
                statements,
                statements_per_saga,
                statements_unavailable,
                own_queries_subtracted,
                stats_wait_seconds,
            } => {
                writeln!(
                    out,
                    "  Postgres commits       {} /saga   ({commits} in all, pg_stat_database)",
                    number_text(*commits_per_saga, 1)
                )?;
                writeln!(
                    out,
                    "  transaction ids        {} /saga   ({xids_assigned} assigned: writing transactions and savepoints)",
                    number_text(*xids_per_saga, 1)
                )?;
                match (statements, statements_unavailable) {
                    (Some(total), _) => writeln!(
                        out,
                        "  statements             {} /saga   ({total} in all, pg_stat_statements)",
                        number_text(*statements_per_saga, 1)
                    )?,
                    (None, reason) => writeln!(
                        out,
                        "  statements             n/a: {}",
                        reason
                            .as_deref()
                            .unwrap_or("pg_stat_statements unavailable")
                    )?,
                }
                writeln!(
                    out,
                    "    ({own_queries_subtracted} sampling queries of the bench subtracted; \
                     statistics flushed for {stats_wait_seconds:.0} s before and after)"
                )?;
            }
            PgCost::Skipped { reason } => {
                writeln!(out, "  Postgres               skipped: {reason}")?
            }
            PgCost::Failed { error } => writeln!(out, "  Postgres               failed: {error}")?,
        }
        Ok(())
    }

    fn write_ratios(&self, out: &mut String) -> fmt::Result {
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

    /// The step's text, without baselines.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_to(&mut out);
        out
    }
}

fn write_baselines(out: &mut String, b: &Baselines) -> fmt::Result {
    writeln!(out, "\nBaselines (measured directly in this run)")?;
    baseline_line(out, "Postgres commits", &b.postgres_commits)?;
    baseline_line(out, "JetStream acked pubs", &b.jetstream_acked_publishes)
}

impl BenchReport {
    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self
            .step
            .write_to(&mut out)
            .and_then(|()| write_baselines(&mut out, &self.baselines))
            .and_then(|()| self.step.write_ratios(&mut out));
        out
    }
}

impl SweepReport {
    /// The baselines and the table of steps (each step's own text is printed as it ends).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_to(&mut out);
        out
    }

    fn write_to(&self, out: &mut String) -> fmt::Result {
        write_baselines(out, &self.baselines)?;
        writeln!(out, "\nSweep")?;
        writeln!(
            out,
            "  {:>9} {:>11} {:>8} {:>11} {:>9} {:>9} {:>11} {:>12} {:>13} {:>16} {:>12}",
            "offered/s",
            "accepted/s",
            "sagas/s",
            "under load",
            "p50 ms",
            "p99 ms",
            "hop p50 ms",
            "CPU ms/saga",
            "commits/saga",
            "statements/saga",
            "sagas÷PG c/s"
        )?;
        for step in &self.steps {
            let latency = step.saga.end_to_end_latency.as_ref();
            writeln!(
                out,
                "  {:>9} {:>11.1} {:>8.1} {:>11.1} {:>9} {:>9} {:>11} {:>12} {:>13} {:>16} {:>12}",
                step.setup.rate_per_second,
                step.ingest.accepted_per_second,
                step.saga.completed_per_second,
                step.saga.completed_under_load_per_second,
                number_text(latency.map(|l| l.p50_ms), 1),
                number_text(latency.map(|l| l.p99_ms), 1),
                number_text(step.saga.event_hop_latency.as_ref().map(|l| l.p50_ms), 1),
                number_text(step.cost.cpu.ms_per_saga(), 2),
                number_text(step.cost.postgres.commits_per_saga(), 1),
                number_text(step.cost.postgres.statements_per_saga(), 1),
                ratio_text(step.ratios.sagas_per_postgres_commit),
            )?;
        }
        if let Some(plot) = &self.plot {
            writeln!(out, "\nPlot: {plot}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn completed_under_load_counts_the_ends_in_the_second_half_of_the_sending() {
        let ends = [
            ms(100),
            ms(4_900),
            ms(5_000),
            ms(7_000),
            ms(10_000),
            ms(12_000),
        ];
        // 5 000, 7 000 and 10 000 ms are in [5 s, 10 s]: 3 in 5 s
        assert_eq!(
            completed_under_load(ends.into_iter(), Duration::from_secs(10)),
            0.6
        );
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
        assert_eq!(per_saga(30.0, 10), Some(3.0));
        assert_eq!(per_saga(30.0, 0), None);
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

    /// A deterministic stand-in for a random number source: evenly spread, scrambled.
    fn uniform(i: u64) -> f64 {
        ((i as f64 + 0.5) * GOLDEN_ANGLE / std::f64::consts::TAU).fract()
    }

    #[test]
    fn the_city_has_couriers_everywhere_and_the_unreachable_pickups_far_away() {
        let centre = city_centre().unwrap();
        let count = 1000;
        let homes: Vec<GeoPoint> = (0..count)
            .map(|i| courier_home(i, count).unwrap())
            .collect();
        for home in &homes {
            assert!(centre.distance_km(home) <= CITY_RADIUS_KM + 0.01);
        }
        let farthest = homes
            .iter()
            .map(|p| centre.distance_km(p))
            .fold(0.0, f64::max);
        assert!(farthest > 0.95 * CITY_RADIUS_KM, "{farthest}");
        // About a quarter of them within half the radius (uniform over the area).
        let inner = homes
            .iter()
            .filter(|p| centre.distance_km(p) <= CITY_RADIUS_KM / 2.0)
            .count();
        assert!((200..=300).contains(&inner), "{inner}");

        for i in 0..200 {
            let near = point_in_disc(
                &homes[i as usize],
                PICKUP_NEAR_COURIER_KM,
                uniform(i),
                uniform(i + 7),
            )
            .unwrap();
            assert!(homes[i as usize].distance_km(&near) <= PICKUP_NEAR_COURIER_KM + 0.01);
            let dropoff = dropoff_from(&near, uniform(i + 3), uniform(i + 11)).unwrap();
            let distance = near.distance_km(&dropoff);
            assert!(
                (DROPOFF_KM.0 - 0.05..=DROPOFF_KM.1 + 0.05).contains(&distance),
                "{distance}"
            );
            let far = outside_city(uniform(i), uniform(i + 5)).unwrap();
            let distance = centre.distance_km(&far);
            assert!(
                (NO_COURIER_DISTANCE_KM - 10.0..NO_COURIER_DISTANCE_KM + 30.0).contains(&distance),
                "{distance}"
            );
        }
    }

    #[test]
    fn couriers_move_a_step_and_never_leave_the_city() {
        let centre = city_centre().unwrap();
        let mut position = courier_home(999, 1000).unwrap();
        for i in 0..2000 {
            let next = courier_step(
                &position,
                COURIER_STEP_KM,
                uniform(i) * std::f64::consts::TAU,
            )
            .unwrap();
            let moved = position.distance_km(&next);
            assert!(moved <= COURIER_STEP_KM * 1.01, "{moved}");
            assert!(centre.distance_km(&next) <= CITY_RADIUS_KM + COURIER_STEP_KM);
            position = next;
        }
    }

    #[test]
    fn zipf_favours_the_first_ranks_as_the_exponent_says() {
        let n = 1000;
        let zipf = Zipf::new(n, 1.0);
        let harmonic: f64 = (1..=n).map(|r| 1.0 / r as f64).sum();
        assert!((zipf.probability(0) - 1.0 / harmonic).abs() < 1e-9);
        assert!((zipf.probability(1) - 0.5 / harmonic).abs() < 1e-9);
        let total: f64 = (0..n).map(|i| zipf.probability(i)).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");

        // Sampled frequencies follow the probabilities.
        let draws = 200_000;
        let mut counts = vec![0u64; n];
        for i in 0..draws {
            counts[zipf.sample(uniform(i))] += 1;
        }
        for rank in [0, 1, 9, 99] {
            let expected = zipf.probability(rank) * draws as f64;
            let got = counts[rank] as f64;
            assert!(
                (got - expected).abs() <= 0.05 * expected + 20.0,
                "rank {rank}: {got} vs {expected}"
            );
        }
        assert!(counts[0] > counts[9] && counts[9] > counts[99]);
        // The top 10% of SKUs take most orders, not all of them.
        let top: u64 = counts[..n / 10].iter().sum();
        let share = top as f64 / draws as f64;
        assert!((0.6..0.8).contains(&share), "{share}");

        // Exponent 0 is uniform; the extremes of u stay in range.
        let flat = Zipf::new(4, 0.0);
        assert_eq!(flat.sample(0.0), 0);
        assert_eq!(flat.sample(0.3), 1);
        assert_eq!(flat.sample(0.99999), 3);
        assert_eq!(flat.sample(1.0), 3);
        assert_eq!(Zipf::new(1, 2.0).sample(0.5), 0);
    }

    #[test]
    fn the_outcome_mix_splits_exactly_and_refuses_more_than_everything() {
        let mix = OutcomeMix {
            decline: 0.2,
            out_of_stock: 0.2,
            no_courier: 0.0,
        };
        assert_eq!(
            mix.split(20),
            Ok(PlannedOutcomes {
                dispatched: 12,
                rejected: 4,
                out_of_stock: 4,
                no_courier: 0,
            })
        );
        let all = OutcomeMix {
            decline: 0.5,
            out_of_stock: 0.5,
            no_courier: 0.0,
        };
        assert_eq!(all.split(3).unwrap().dispatched, 0);
        assert!(
            OutcomeMix {
                decline: 0.6,
                out_of_stock: 0.6,
                no_courier: 0.0,
            }
            .split(10)
            .is_err()
        );
        assert_eq!(default_couriers(100), 120);
        assert_eq!(default_couriers(0), 10);
        assert_eq!(default_courier_updates_per_second(1000), 200.0);
    }

    const POSTMASTER_STAT: &str = "4242 (postgres) S 4100 4242 4242 0 -1 4194560 12000 \
        480000 3 210 1500 700 22000 9100 20 0 1 0 3400 230000000 5000 18446744073709551615 1 1 \
        0 0 0 0 0 4096 536887815 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn proc_stat_lines_parse_even_with_odd_names() {
        let stat = parse_proc_stat(POSTMASTER_STAT).unwrap();
        assert_eq!(
            stat,
            ProcStat {
                pid: 4242,
                comm: "postgres".to_owned(),
                ppid: 4100,
                utime: 1500,
                stime: 700,
                cutime: 22000,
                cstime: 9100,
            }
        );
        assert_eq!(stat.ticks(), 33300);
        let odd = parse_proc_stat("77 (a) b (c) R 1 77 77 0 -1 0 0 0 0 0 5 6 -1 7 20 0").unwrap();
        assert_eq!(odd.comm, "a) b (c");
        assert_eq!(
            (odd.ppid, odd.utime, odd.stime, odd.cutime, odd.cstime),
            (1, 5, 6, 0, 7)
        );
        assert_eq!(parse_proc_stat(""), None);
        assert_eq!(parse_proc_stat("12 (x) S 1 2 3"), None);
    }

    fn process(pid: u32, ppid: u32, comm: &str, cmdline: &[&str], ticks: u64) -> ProcInfo {
        ProcInfo {
            stat: ProcStat {
                pid,
                comm: comm.to_owned(),
                ppid,
                utime: ticks,
                stime: 0,
                cutime: 0,
                cstime: 0,
            },
            cmdline: cmdline.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn table() -> Vec<ProcInfo> {
        vec![
            process(1, 0, "init", &["/sbin/init"], 1),
            process(10, 1, "bash", &["bash"], 1),
            process(100, 10, "jwl", &["/usr/bin/jwl", "up"], 500),
            process(
                101,
                100,
                "postgres",
                &["/usr/lib/postgresql/15/bin/postgres", "-D", "x"],
                50,
            ),
            process(102, 101, "postgres", &["postgres: jwl idle"], 70),
            process(103, 100, "nats-server", &["nats-server", "-js"], 30),
            process(104, 100, "initdb", &["initdb"], 9),
            process(106, 100, "tansu", &["tansu", "broker"], 20),
            process(
                200,
                10,
                "jwl",
                &["target/debug/jwl", "bench", "--rate", "5"],
                40,
            ),
            process(300, 1, "jwl", &["jwl", "serve", "payment"], 80),
            process(400, 1, "postgres", &["postgres", "-D", "/srv/pg"], 5),
            process(401, 400, "postgres", &["postgres: checkpointer"], 6),
        ]
    }

    #[test]
    fn the_automatic_selection_takes_jwl_servers_and_their_servers_only() {
        let table = table();
        assert!(is_system_jwl(&["jwl".to_owned(), "serve".to_owned()]));
        assert!(!is_system_jwl(&["jwl".to_owned(), "bench".to_owned()]));
        assert!(!is_system_jwl(&["jwlx".to_owned(), "up".to_owned()]));
        assert!(!is_system_jwl(&[]));
        let roots = auto_roots(&table, 200);
        assert_eq!(roots, [100, 300]);
        let counted: Vec<u32> = counted_processes(&table, &roots, true)
            .iter()
            .map(|p| p.pid)
            .collect();
        assert_eq!(
            counted,
            [100, 101, 102, 103, 106, 300],
            "initdb and unrelated postgres left out"
        );

        // Named pids count with every descendant.
        let counted: Vec<u32> = counted_processes(&table, &[100, 400], false)
            .iter()
            .map(|p| p.pid)
            .collect();
        assert_eq!(counted, [100, 101, 102, 103, 104, 106, 400, 401]);
    }

    #[test]
    fn cpu_deltas_split_by_kind_and_divide_by_the_sagas() {
        let before_table = table();
        let mut after_table = table();
        for process in &mut after_table {
            match process.stat.pid {
                // jwl spent 2 s (100 ticks/s)…
                100 => {
                    process.stat.utime += 150;
                    process.stat.stime += 50;
                }
                // …postgres 0.1 s net: the postmaster 0.2 s of its own, and backend 102 (70
                // ticks before) exited and was reaped: the postmaster's cutime shows its 60…
                101 => {
                    process.stat.stime += 20;
                    process.stat.cutime += 60;
                }
                // …nats 0.5 s, tansu 0.3 s.
                103 => process.stat.stime += 50,
                106 => process.stat.utime += 30,
                _ => {}
            }
        }
        after_table.retain(|p| p.stat.pid != 102);
        // A backend started during the window.
        after_table.push(process(105, 101, "postgres", &["postgres: jwl"], 0));
        let before = CpuSample::of(&counted_processes(&before_table, &[100], true));
        let after = CpuSample::of(&counted_processes(&after_table, &[100], true));
        let cost = cpu_cost(&before, &after, 100, 10, "test".to_owned());
        let CpuCost::Measured {
            seconds,
            ms_per_saga,
            by_kind,
            pids,
            ..
        } = cost
        else {
            panic!("not measured: {cost:?}");
        };
        // postgres: 20 + 60 - 70 (backend 102 no longer counted) + 0 = 10 ticks.
        assert_eq!(by_kind[JWL].seconds, 2.0);
        assert_eq!(by_kind[NATS_SERVER].seconds, 0.5);
        assert!((by_kind[TANSU].seconds - 0.3).abs() < 1e-9);
        assert!((by_kind[POSTGRES].seconds - 0.1).abs() < 1e-9);
        assert!((seconds - 2.9).abs() < 1e-9);
        assert!((ms_per_saga.unwrap() - 290.0).abs() < 1e-9);
        assert_eq!(by_kind[JWL].ms_per_saga, Some(200.0));
        assert_eq!(pids[POSTGRES], [101, 102, 105]);
        assert_eq!(pids[JWL], [100]);

        // A kind that lost ticks counts 0, never negative; no sagas gives no per-saga figure.
        let CpuCost::Measured {
            by_kind,
            ms_per_saga,
            ..
        } = cpu_cost(&after, &CpuSample::default(), 100, 0, String::new())
        else {
            panic!("not measured");
        };
        assert_eq!(by_kind[JWL].seconds, 0.0);
        assert_eq!(ms_per_saga, None);
        assert!(matches!(
            cpu_cost(&before, &after, 0, 10, String::new()),
            CpuCost::Unavailable { .. }
        ));
    }

    #[test]
    fn seconds_summary_finds_the_bad_seconds_of_a_run() {
        // ten seconds of 50 sagas each at 60–109 ms; the 7th also has a stall: its slowest
        // two sagas took 400 ms, enough to be its p99
        let mut samples = Vec::new();
        for second in 0..10u64 {
            for i in 0..50u64 {
                let stalled = second == 7 && i >= 48;
                let latency = if stalled { ms(400) } else { ms(60 + i) };
                samples.push((Duration::from_millis(second * 1000 + i * 20), latency));
            }
        }
        // a second with too few sagas (the end of the sending) is not counted, however slow
        samples.push((Duration::from_millis(10_500), ms(900)));
        let summary = SecondsSummary::of(samples).unwrap();
        assert_eq!(summary.seconds, 10);
        assert_eq!(summary.median_p99_ms, 109.0);
        assert_eq!((summary.worst_second, summary.worst_p99_ms), (7, 400.0));
        assert_eq!(summary.bad_seconds, 1);
        assert_eq!(summary.bad_seconds_at, [7]);
        assert_eq!(SecondsSummary::of([(ms(1), ms(1))]), None);
    }

    fn sample_step() -> StepReport {
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
            outcomes: BTreeMap::from([("dispatched".to_owned(), 15), ("rejected".to_owned(), 4)]),
            end_to_end_latency: LatencySummary::of(vec![ms(100)]),
            end_to_end_by_second: SecondsSummary::of(
                (0..40).map(|i| (Duration::from_millis(i * 25), ms(100))),
            ),
            assignment_hop_latency: LatencySummary::of(vec![ms(7)]),
            event_hop_latency: LatencySummary::of(vec![ms(2), ms(3)]),
            event_hops_by_type: BTreeMap::new(),
            event_to_broker_latency: LatencySummary::of(vec![ms(1)]),
            dispatch_time_source: "timeline".to_owned(),
            observed_by: "nats".to_owned(),
            completed_per_second: 10.0,
            completed_under_load_per_second: 9.0,
            window_seconds: 1.9,
            settle_seconds: 0.5,
            confirmation: Confirmation {
                checked: 5,
                agreed: 5,
                disagreements: Vec::new(),
            },
        };
        let baselines = sample_baselines();
        let ratios = Ratios::of(&ingest, &saga, &baselines);
        StepReport {
            setup: BenchSetup {
                url: "http://127.0.0.1:8080".to_owned(),
                rate_per_second: 20,
                planned_orders: 20,
                planned_outcomes: PlannedOutcomes {
                    dispatched: 16,
                    rejected: 4,
                    out_of_stock: 0,
                    no_courier: 0,
                },
                concurrency: 256,
                skus: 1000,
                sku_skew: 1.0,
                out_of_stock_skus: 50,
                couriers: 28,
                city_diameter_km: 20.0,
                seed: 1,
                prefix: "b1234-1-".to_owned(),
                warmup_seconds: 5.0,
            },
            ingest,
            saga,
            courier_updates: CourierUpdatesReport {
                couriers: 28,
                target_per_second: 5.6,
                sent: 11,
                ok: 11,
                failed: 0,
                seconds: 1.9,
                achieved_per_second: 5.8,
                latency: LatencySummary::of(vec![ms(3)]),
            },
            cost: CostReport {
                sagas: 19,
                window_seconds: 1.9,
                cpu: CpuCost::Measured {
                    seconds: 0.95,
                    ms_per_saga: Some(50.0),
                    by_kind: BTreeMap::from([(
                        JWL.to_owned(),
                        KindCpu {
                            seconds: 0.95,
                            ms_per_saga: Some(50.0),
                        },
                    )]),
                    selection: "--system-pid 100".to_owned(),
                    pids: BTreeMap::from([(JWL.to_owned(), vec![100])]),
                },
                postgres: PgCost::Measured {
                    commits: 570,
                    commits_per_saga: Some(30.0),
                    xids_assigned: 380,
                    xids_per_saga: Some(20.0),
                    statements: None,
                    statements_per_saga: None,
                    statements_unavailable: Some("no pg_stat_statements".to_owned()),
                    own_queries_subtracted: 2,
                    stats_wait_seconds: 11.0,
                },
                courier_updates_in_window: 11,
            },
            ratios,
        }
    }

    fn sample_baselines() -> Baselines {
        Baselines {
            postgres_commits: Baseline::Measured {
                operations: 1000,
                seconds: 1.0,
                per_second: 1000.0,
            },
            jetstream_acked_publishes: Baseline::Skipped {
                reason: "no NATS URL".to_owned(),
            },
        }
    }

    #[test]
    fn ratios_divide_by_the_measured_baselines_only() {
        let step = sample_step();
        assert_eq!(step.ratios.sagas_per_postgres_commit, Some(0.01));
        assert_eq!(step.ratios.ingest_per_postgres_commit, Some(0.019));
        assert_eq!(step.ratios.sagas_per_jetstream_publish, None);
    }

    #[test]
    fn the_report_renders_every_figure_and_serialises_the_same() {
        let report = BenchReport {
            step: sample_step(),
            baselines: sample_baselines(),
        };
        let text = report.render();
        for expected in [
            "accepted 19",
            "errors 1",
            "429: 1",
            "19.0 accepted/s",
            "p50 5.0 ms",
            "dispatched 15, rejected 4",
            "10.0 sagas/s",
            "1000/s",
            "skipped: no NATS URL",
            "0.010",
            "n/a",
            "50.00 ms/saga",
            "30.0 /saga",
            "statements             n/a: no pg_stat_statements",
            "jwl: 100",
            "achieved 5.8/s",
            "5 of 5 sampled orders agree",
            "event → broker",
            "p99 of the median second 100.0 ms, of the worst 100.0 ms (+0 s); 0 of 1 seconds",
            "the run warmed up for 5 s first",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from\n{text}");
        }
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["ingest"]["accepted"], 19);
        assert_eq!(json["saga"]["end_to_end_latency"]["p50_ms"], 100.0);
        assert_eq!(json["saga"]["event_to_broker_latency"]["p50_ms"], 1.0);
        assert_eq!(json["saga"]["end_to_end_by_second"]["worst_p99_ms"], 100.0);
        assert_eq!(
            json["saga"]["end_to_end_by_second"]["bad_seconds_at"],
            serde_json::json!([])
        );
        assert_eq!(json["setup"]["warmup_seconds"], 5.0);
        assert_eq!(json["baselines"]["postgres_commits"]["status"], "measured");
        assert_eq!(json["baselines"]["postgres_commits"]["per_second"], 1000.0);
        assert_eq!(
            json["baselines"]["jetstream_acked_publishes"]["status"],
            "skipped"
        );
        assert!(json["ratios"]["sagas_per_jetstream_publish"].is_null());
        assert_eq!(json["cost"]["cpu"]["ms_per_saga"], 50.0);
        assert_eq!(json["cost"]["postgres"]["commits_per_saga"], 30.0);
        assert!(json["cost"]["postgres"]["statements_per_saga"].is_null());
    }

    #[test]
    fn the_sweep_table_has_a_row_per_step() {
        let mut second = sample_step();
        second.setup.rate_per_second = 40;
        second.cost.cpu = CpuCost::Unavailable {
            reason: "no /proc".to_owned(),
        };
        let sweep = SweepReport {
            steps: vec![sample_step(), second],
            baselines: sample_baselines(),
            plot: Some("sweep.png".to_owned()),
        };
        let text = sweep.render();
        let rows: Vec<&str> = text
            .lines()
            .filter(|line| {
                line.trim_start().starts_with("20 ") || line.trim_start().starts_with("40 ")
            })
            .collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert!(
            rows[0].contains("50.00") && rows[0].contains("30.0"),
            "{}",
            rows[0]
        );
        assert!(rows[1].contains("n/a"), "{}", rows[1]);
        assert!(text.contains("Plot: sweep.png"));
        let json = serde_json::to_value(&sweep).unwrap();
        assert_eq!(json["steps"].as_array().map(Vec::len), Some(2));
        assert_eq!(json["steps"][1]["cost"]["cpu"]["status"], "unavailable");
    }
}
