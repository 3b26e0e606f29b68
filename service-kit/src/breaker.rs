//! A circuit breaker with dynamic thresholds, for a dependency called over the network (the card
//! processor of the payment service).
//!
//! **Closed**, every call goes through and its outcome (success or failure, and its latency) is
//! recorded in a sliding window of the last [`BreakerSettings::window`]. The breaker opens when
//! the window holds at least [`BreakerSettings::min_calls`] calls and either its error rate or its
//! p99 latency exceeds the threshold in force. The thresholds are learned from the dependency's
//! own healthy baseline: once per window span, a window that holds enough calls and trips
//! nothing is folded into the baseline (an exponentially weighted average of the windows' error
//! rates and p99 latencies), and
//!
//! - error-rate threshold = max([`BreakerSettings::min_error_rate`], [`ERROR_RATE_FACTOR`] × baseline error rate), at most 1;
//! - p99 threshold = max([`BreakerSettings::min_p99`], [`P99_FACTOR`] × baseline p99).
//!
//! The minimums are floors: a baseline of no errors and sub-millisecond answers does not make
//! the breaker open on one error or a 2 ms blip. Until a baseline is learned, the floors are the
//! thresholds. The p99 is the nearest rank, so in a window of fewer than 100 calls it is the
//! slowest call: there, one call slower than the threshold opens the breaker.
//!
//! **Open**, calls are refused ([`Breaker::try_call`] returns `None`) for
//! [`BreakerSettings::open_for`]; [`Breaker::ready`] resolves when that time is over, so a
//! caller can stop working (e.g. stop pulling messages) instead of failing one call after another.
//!
//! **Half-open**, one call (the probe) goes through; the others are refused. A probe that
//! succeeds within the p99 threshold closes the breaker (with an empty window); one that fails
//! or is slower opens it again for another `open_for`.
//!
//! The breaker publishes its state, transitions, window and thresholds as metrics (labelled
//! `breaker`), logs every transition, and keeps its last transitions for an admin view. Time is
//! `tokio::time`, so tests drive it with a paused clock.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The error-rate threshold is this many times the baseline error rate (or the floor).
pub const ERROR_RATE_FACTOR: f64 = 3.0;
/// The p99 threshold is this many times the baseline p99 latency (or the floor).
pub const P99_FACTOR: f64 = 4.0;
/// Weight of the newest healthy window in the baseline.
const BASELINE_WEIGHT: f64 = 0.3;
/// Most calls kept in the window (the oldest are dropped first).
const MAX_WINDOW_CALLS: usize = 2_000;
/// The window's gauges (error rate, p99) are refreshed on a call at most this often (and on
/// every transition): computing the p99 sorts the window.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);
/// Transitions kept for [`Breaker::snapshot`].
const KEPT_TRANSITIONS: usize = 64;

/// Gauge: 0 closed, 1 half-open, 2 open.
pub const STATE_METRIC: &str = "jwl_breaker_state";
/// Counter of transitions, labelled `to`.
pub const TRANSITIONS_METRIC: &str = "jwl_breaker_transitions_total";
/// Counter of calls refused while open or half-open.
pub const REJECTED_METRIC: &str = "jwl_breaker_rejected_total";
/// Gauge: the error-rate threshold in force.
pub const ERROR_RATE_THRESHOLD_METRIC: &str = "jwl_breaker_error_rate_threshold";
/// Gauge: the p99 threshold in force, in seconds.
pub const P99_THRESHOLD_METRIC: &str = "jwl_breaker_p99_threshold_seconds";
/// Gauge: the error rate of the current window.
pub const ERROR_RATE_METRIC: &str = "jwl_breaker_window_error_rate";
/// Gauge: the p99 latency of the current window, in seconds.
pub const P99_METRIC: &str = "jwl_breaker_window_p99_seconds";

/// How the breaker decides (see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSettings {
    /// Span of the sliding window (and how often the baseline learns).
    pub window: Duration,
    /// Fewest calls in the window for the breaker to open.
    pub min_calls: u32,
    /// How long the breaker stays open before it lets a probe through.
    pub open_for: Duration,
    /// Floor of the error-rate threshold (0..=1).
    pub min_error_rate: f64,
    /// Floor of the p99 threshold.
    pub min_p99: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            min_calls: 10,
            open_for: Duration::from_secs(5),
            min_error_rate: 0.2,
            min_p99: Duration::from_millis(500),
        }
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

impl BreakerState {
    pub const fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }

    /// The value of [`STATE_METRIC`].
    pub const fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

/// The thresholds in force.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Thresholds {
    pub error_rate: f64,
    /// In milliseconds.
    #[serde(serialize_with = "millis")]
    #[schema(value_type = f64)]
    pub p99: Duration,
}

/// One state change, for the admin view and the logs.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Transition {
    pub to: BreakerState,
    /// When, as wall-clock time (RFC 3339).
    #[schema(value_type = String, format = DateTime)]
    pub at: chrono::DateTime<chrono::Utc>,
    /// Why, for people.
    pub reason: String,
    pub thresholds: Thresholds,
}

/// What [`Breaker::snapshot`] shows.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BreakerSnapshot {
    pub name: String,
    pub state: BreakerState,
    pub thresholds: Thresholds,
    /// Calls in the current window, its error rate and p99.
    pub window_calls: usize,
    pub window_error_rate: f64,
    /// In milliseconds.
    #[serde(serialize_with = "millis")]
    #[schema(value_type = f64)]
    pub window_p99: Duration,
    /// Whether a healthy baseline has been learned (else the thresholds are the floors).
    pub baseline_learned: bool,
    /// Calls refused so far.
    pub rejected: u64,
    /// The last transitions, oldest first.
    pub transitions: Vec<Transition>,
}

fn millis<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64() * 1000.0)
}

/// A circuit breaker (see the module documentation). Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Breaker {
    name: String,
    settings: BreakerSettings,
    inner: Mutex<Inner>,
    /// Woken on every transition (for [`Breaker::ready`]).
    changed: Notify,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    /// While open: when the probe may go.
    open_until: Instant,
    /// While half-open: whether the probe is out.
    probing: bool,
    window: Window,
    baseline: Option<Baseline>,
    /// When the baseline last learned (or the window started).
    learned_at: Instant,
    /// When the window's gauges were last published.
    published_at: Instant,
    rejected: u64,
    transitions: VecDeque<Transition>,
}

#[derive(Debug, Clone, Copy)]
struct Call {
    at: Instant,
    ok: bool,
    latency: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Baseline {
    error_rate: f64,
    p99: Duration,
}

/// What one window shows.
#[derive(Debug, Clone, Copy)]
struct WindowStats {
    calls: usize,
    error_rate: f64,
    p99: Duration,
}

/// Leave to make one call, from [`Breaker::try_call`]. Report its outcome with
/// [`Permit::record`]; a permit dropped without a report (the call was abandoned) counts for
/// nothing, and a probe's leave goes back to the next caller.
#[must_use = "report the call's outcome with Permit::record"]
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    started: Instant,
    recorded: bool,
}

impl Permit {
    /// Whether this call is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Reports the call's outcome (its latency is measured from [`Breaker::try_call`]) and
    /// returns the breaker's state afterwards.
    pub fn record(mut self, ok: bool) -> BreakerState {
        self.recorded = true;
        let latency = self.started.elapsed();
        self.breaker.record(self.probe, ok, latency)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.recorded && self.probe {
            self.breaker.release_probe();
        }
    }
}

impl Breaker {
    /// A closed breaker named `name` (the `breaker` label of its metrics).
    pub fn new(name: impl Into<String>, settings: BreakerSettings) -> Arc<Self> {
        let now = Instant::now();
        let breaker = Arc::new(Self {
            name: name.into(),
            settings,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                open_until: now,
                probing: false,
                window: Window::default(),
                baseline: None,
                learned_at: now,
                published_at: now,
                rejected: 0,
                transitions: VecDeque::new(),
            }),
            changed: Notify::new(),
        });
        let mut inner = breaker.lock();
        breaker.publish(&mut inner, now);
        metrics::counter!(REJECTED_METRIC, "breaker" => breaker.name.clone()).absolute(0);
        for to in [
            BreakerState::Closed,
            BreakerState::HalfOpen,
            BreakerState::Open,
        ] {
            metrics::counter!(TRANSITIONS_METRIC, "breaker" => breaker.name.clone(),
                "to" => to.as_str())
            .absolute(0);
        }
        drop(inner);
        breaker
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    /// The state now (an open breaker whose time is over reads as half-open).
    pub fn state(&self) -> BreakerState {
        let inner = self.lock();
        match inner.state {
            BreakerState::Open if Instant::now() >= inner.open_until => BreakerState::HalfOpen,
            state => state,
        }
    }

    /// Leave to call, or `None` while the breaker refuses calls (open, or half-open with the
    /// probe out).
    pub fn try_call(self: &Arc<Self>) -> Option<Permit> {
        let mut inner = self.lock();
        let now = Instant::now();
        let probe = match inner.state {
            BreakerState::Closed => false,
            BreakerState::Open if now >= inner.open_until => {
                self.transition(
                    &mut inner,
                    now,
                    BreakerState::HalfOpen,
                    "open time over; letting one probe through".to_owned(),
                );
                inner.probing = true;
                true
            }
            BreakerState::HalfOpen if !inner.probing => {
                inner.probing = true;
                true
            }
            BreakerState::Open | BreakerState::HalfOpen => {
                inner.rejected += 1;
                metrics::counter!(REJECTED_METRIC, "breaker" => self.name.clone()).increment(1);
                return None;
            }
        };
        Some(Permit {
            breaker: Arc::clone(self),
            probe,
            started: now,
            recorded: false,
        })
    }

    /// Resolves once [`Self::try_call`] may give leave: at once when closed, when the open time
    /// is over, or when the probe's outcome is known. Completes on its first poll when calls go
    /// through, so it can serve as a non-blocking readiness check (`now_or_never`).
    pub async fn ready(&self) {
        loop {
            // registered before looking, so a transition in between is not missed
            let changed = self.changed.notified();
            let wait_until = {
                let inner = self.lock();
                match inner.state {
                    BreakerState::Closed => return,
                    BreakerState::HalfOpen if !inner.probing => return,
                    BreakerState::Open if Instant::now() >= inner.open_until => return,
                    BreakerState::Open => Some(inner.open_until),
                    BreakerState::HalfOpen => None,
                }
            };
            match wait_until {
                Some(until) => {
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep_until(until) => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// The state, thresholds, window and last transitions.
    pub fn snapshot(&self) -> BreakerSnapshot {
        let mut inner = self.lock();
        let now = Instant::now();
        self.expire(&mut inner, now);
        let stats = inner.window.stats();
        BreakerSnapshot {
            name: self.name.clone(),
            state: inner.state,
            thresholds: self.thresholds(inner.baseline),
            window_calls: stats.calls,
            window_error_rate: stats.error_rate,
            window_p99: stats.p99,
            baseline_learned: inner.baseline.is_some(),
            rejected: inner.rejected,
            transitions: inner.transitions.iter().cloned().collect(),
        }
    }

    /// The thresholds in force for `baseline`.
    fn thresholds(&self, baseline: Option<Baseline>) -> Thresholds {
        let floor = Thresholds {
            error_rate: self.settings.min_error_rate.clamp(0.0, 1.0),
            p99: self.settings.min_p99,
        };
        match baseline {
            None => floor,
            Some(baseline) => Thresholds {
                error_rate: (baseline.error_rate * ERROR_RATE_FACTOR).clamp(floor.error_rate, 1.0),
                p99: baseline.p99.mul_f64(P99_FACTOR).max(floor.p99),
            },
        }
    }

    fn record(&self, probe: bool, ok: bool, latency: Duration) -> BreakerState {
        let mut inner = self.lock();
        let now = Instant::now();
        let thresholds = self.thresholds(inner.baseline);
        if probe {
            inner.probing = false;
            if inner.state == BreakerState::HalfOpen {
                if ok && latency <= thresholds.p99 {
                    inner.window.clear();
                    inner.learned_at = now;
                    self.transition(
                        &mut inner,
                        now,
                        BreakerState::Closed,
                        format!("probe succeeded in {} ms", latency.as_millis()),
                    );
                } else {
                    let why = if ok {
                        format!(
                            "probe took {} ms, over the p99 threshold",
                            latency.as_millis()
                        )
                    } else {
                        "probe failed".to_owned()
                    };
                    self.open(&mut inner, now, why);
                }
            }
            return inner.state;
        }
        if inner.state != BreakerState::Closed {
            // a call let through before the breaker opened: its outcome is already told
            return inner.state;
        }
        inner.window.push(Call {
            at: now,
            ok,
            latency,
        });
        self.expire(&mut inner, now);
        // every call is checked against the thresholds, without sorting the window (see
        // `Window::check`)
        let check = inner.window.check(thresholds.p99);
        let enough = check.calls >= self.settings.min_calls as usize;
        let trip = if !enough {
            None
        } else if check.error_rate > thresholds.error_rate {
            Some(format!(
                "error rate {:.2} over the threshold {:.2} ({} calls)",
                check.error_rate, thresholds.error_rate, check.calls
            ))
        } else if check.p99_over {
            Some(format!(
                "p99 latency {} ms over the threshold {} ms ({} calls)",
                inner.window.stats().p99.as_millis(),
                thresholds.p99.as_millis(),
                check.calls
            ))
        } else {
            None
        };
        match trip {
            Some(reason) => self.open(&mut inner, now, reason),
            None => {
                if enough && now.duration_since(inner.learned_at) >= self.settings.window {
                    let window = inner.window.stats();
                    inner.learned_at = now;
                    inner.baseline = Some(match inner.baseline {
                        None => Baseline {
                            error_rate: window.error_rate,
                            p99: window.p99,
                        },
                        Some(old) => Baseline {
                            error_rate: old.error_rate * (1.0 - BASELINE_WEIGHT)
                                + window.error_rate * BASELINE_WEIGHT,
                            p99: old
                                .p99
                                .mul_f64(1.0 - BASELINE_WEIGHT)
                                .saturating_add(window.p99.mul_f64(BASELINE_WEIGHT)),
                        },
                    });
                }
                if now.duration_since(inner.published_at) >= PUBLISH_INTERVAL {
                    self.publish(&mut inner, now);
                }
            }
        }
        inner.state
    }

    /// A probe abandoned without an outcome: the next caller probes instead.
    fn release_probe(&self) {
        let mut inner = self.lock();
        inner.probing = false;
        drop(inner);
        self.changed.notify_waiters();
    }

    fn open(&self, inner: &mut Inner, now: Instant, reason: String) {
        inner.open_until = now + self.settings.open_for;
        inner.window.clear();
        inner.probing = false;
        self.transition(inner, now, BreakerState::Open, reason);
    }

    fn transition(&self, inner: &mut Inner, now: Instant, to: BreakerState, reason: String) {
        let thresholds = self.thresholds(inner.baseline);
        let from = inner.state;
        inner.state = to;
        if from != to {
            metrics::counter!(TRANSITIONS_METRIC, "breaker" => self.name.clone(), "to" => to.as_str())
                .increment(1);
        }
        match to {
            BreakerState::Open => tracing::warn!(breaker = %self.name, from = from.as_str(),
                to = to.as_str(), %reason, error_rate_threshold = thresholds.error_rate,
                p99_threshold_ms = thresholds.p99.as_millis() as u64, "circuit breaker opened"),
            _ => tracing::info!(breaker = %self.name, from = from.as_str(), to = to.as_str(),
                %reason, "circuit breaker state changed"),
        }
        if inner.transitions.len() >= KEPT_TRANSITIONS {
            inner.transitions.pop_front();
        }
        inner.transitions.push_back(Transition {
            to,
            at: chrono::Utc::now(),
            reason,
            thresholds,
        });
        self.publish(inner, now);
        self.changed.notify_waiters();
    }

    /// Drops the calls older than the window.
    fn expire(&self, inner: &mut Inner, now: Instant) {
        while inner
            .window
            .oldest()
            .is_some_and(|call| now.duration_since(call.at) > self.settings.window)
        {
            inner.window.pop_oldest();
        }
    }

    fn publish(&self, inner: &mut Inner, now: Instant) {
        inner.published_at = now;
        let name = self.name.clone();
        let thresholds = self.thresholds(inner.baseline);
        metrics::gauge!(STATE_METRIC, "breaker" => name.clone()).set(inner.state.gauge());
        metrics::gauge!(ERROR_RATE_THRESHOLD_METRIC, "breaker" => name.clone())
            .set(thresholds.error_rate);
        metrics::gauge!(P99_THRESHOLD_METRIC, "breaker" => name.clone())
            .set(thresholds.p99.as_secs_f64());
        let window = inner.window.stats();
        metrics::gauge!(ERROR_RATE_METRIC, "breaker" => name.clone()).set(window.error_rate);
        metrics::gauge!(P99_METRIC, "breaker" => name).set(window.p99.as_secs_f64());
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // every update leaves the state consistent, so a panic elsewhere cannot corrupt it
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What [`Breaker::record`] checks after every call: the calls in the window, their error rate,
/// and whether their p99 (nearest rank) is over the p99 threshold.
struct Check {
    calls: usize,
    error_rate: f64,
    p99_over: bool,
}

/// The calls of the sliding window, oldest first (at most [`MAX_WINDOW_CALLS`]), with the counts
/// each call's check needs kept up to date as calls come and go: the failed ones, and the ones
/// slower than the p99 threshold last checked against. So a check costs O(1), not a pass over
/// up to [`MAX_WINDOW_CALLS`] calls; only a new threshold (the baseline learns once per window
/// span) recounts the slower ones.
#[derive(Debug, Default)]
struct Window {
    calls: VecDeque<Call>,
    errors: usize,
    /// Calls slower than `slower_than`.
    slower: usize,
    slower_than: Duration,
}

impl Window {
    /// Adds the newest call, dropping the oldest past [`MAX_WINDOW_CALLS`].
    fn push(&mut self, call: Call) {
        self.errors += usize::from(!call.ok);
        self.slower += usize::from(call.latency > self.slower_than);
        self.calls.push_back(call);
        if self.calls.len() > MAX_WINDOW_CALLS {
            self.pop_oldest();
        }
    }

    fn oldest(&self) -> Option<&Call> {
        self.calls.front()
    }

    fn pop_oldest(&mut self) {
        if let Some(call) = self.calls.pop_front() {
            self.errors -= usize::from(!call.ok);
            self.slower -= usize::from(call.latency > self.slower_than);
        }
    }

    fn clear(&mut self) {
        self.calls.clear();
        self.errors = 0;
        self.slower = 0;
    }

    /// The window's [`Check`] against `p99_threshold`, without sorting: the p99 is the call at
    /// `rank` in latency order, so it is over the threshold exactly when that call and every
    /// one after it (`calls - rank` of them) are.
    fn check(&mut self, p99_threshold: Duration) -> Check {
        if p99_threshold != self.slower_than {
            self.slower_than = p99_threshold;
            self.slower = self
                .calls
                .iter()
                .filter(|call| call.latency > p99_threshold)
                .count();
        }
        let calls = self.calls.len();
        Check {
            calls,
            error_rate: self.error_rate(),
            p99_over: calls > 0 && self.slower >= calls - p99_rank(calls),
        }
    }

    fn error_rate(&self) -> f64 {
        if self.calls.is_empty() {
            0.0
        } else {
            self.errors as f64 / self.calls.len() as f64
        }
    }

    /// Error rate and p99 (nearest rank): a pass over the window, sorting its latencies.
    fn stats(&self) -> WindowStats {
        let calls = self.calls.len();
        if calls == 0 {
            return WindowStats {
                calls,
                error_rate: 0.0,
                p99: Duration::ZERO,
            };
        }
        // counted afresh, like the latencies: the reference the kept counts are tested against
        let errors = self.calls.iter().filter(|call| !call.ok).count();
        let mut latencies: Vec<Duration> = self.calls.iter().map(|call| call.latency).collect();
        latencies.sort_unstable();
        WindowStats {
            calls,
            error_rate: errors as f64 / calls as f64,
            p99: latencies[p99_rank(calls)],
        }
    }
}

/// The index of the p99 (nearest rank) among `calls` sorted latencies (`calls` > 0).
fn p99_rank(calls: usize) -> usize {
    (calls * 99).div_ceil(100).max(1) - 1
}

#[cfg(test)]
mod tests;
