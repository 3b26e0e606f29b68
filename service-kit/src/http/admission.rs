//! Admission tied to the backlog: intake refuses new work once the work already accepted cannot
//! be finished in time.
//!
//! The signal is Little's law over the whole pipeline behind intake. A [`BacklogProbe`] reports
//! how many accepted units are still open (for orders: not yet in a terminal status, in any
//! service) and how many finished in a recent window; from those, every sample computes
//!
//! ```text
//! limit = max(min_open, held_rate × target)
//! held_rate = max(finish_rate, recent peak finish rate decaying with a PEAK_HALF_LIFE half-life)
//!             — or finish_rate alone once the oldest open unit is older than 2 × target
//! ```
//!
//! and a request is admitted while `open + admitted since the sample < limit`. Under overload the
//! open work settles at what the system finishes in `target` (so an accepted order waits about
//! `target`, not an ever-growing queue), and the pipeline stays full (so completions stay at
//! their peak); when the system finishes faster, the limit rises with it. `min_open` keeps a cold
//! or idle system admitting (its finish rate is 0 until orders finish) and bounds what is
//! accepted while something downstream is down. This is an adaptive concurrency limit on
//! completions, measured end to end: one consumer's lag or one outbox's age would see only one
//! hop, and the open-order count is exactly the work a new order queues behind.
//!
//! Why the limit holds the recent peak instead of following the finish rate down: this system
//! finishes more per second with a deeper queue (its batches grow), so a limit that follows a
//! dip down makes the queue shallower, which lowers the finish rate further — under overload
//! the limit then spirals down well below what the system can do (measured: 70–119 sagas/s
//! under load at 500/s offered, where the peak was ~115). Holding the peak keeps the queue at
//! the depth that gave it. The guard keeps the promise the target makes: once the oldest open
//! unit has waited more than twice the target, the system really finishes less (a slow or
//! failed service, fewer cores), and the limit follows the measured rate again (the held peak
//! is dropped).
//!
//! Sampling is driven by requests, so an idle service costs nothing: a request finding the sample
//! older than [`SAMPLE_EVERY`] starts a refresh in the background and decides on the current one;
//! one finding it older than [`STALE_AFTER`] (after an idle spell) waits for a fresh one. If the
//! probe fails or stalls, requests are admitted (the database breaker of
//! [`super::limit_ingest`] handles a failing database) and the failure is logged.
//!
//! Limits are shared by replicas through the probe (it reads the shared tables); what one replica
//! admits between two samples is added locally, so N replicas may overshoot by what they admit in
//! one [`SAMPLE_EVERY`].

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

/// A refresh starts (in the background) when the sample is older than this.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// A request waits for a fresh sample when the last one is older than this.
pub const STALE_AFTER: Duration = Duration::from_secs(1);
/// Longest a sample may take before the request goes ahead without it.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest `Retry-After` a shed request is told.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// The held peak finish rate halves in this long without a sample reaching it again.
pub const PEAK_HALF_LIFE: Duration = Duration::from_secs(60);
/// The held peak is dropped once the oldest open unit is older than this many targets.
const PEAK_GUARD_TARGETS: u32 = 2;

/// Gauge: the current limit on open work.
pub const ADMISSION_LIMIT_METRIC: &str = "jwl_admission_limit";
/// Gauge: open work at the last sample.
pub const ADMISSION_OPEN_METRIC: &str = "jwl_admission_open";
/// Gauge: work finished per second over the probe's window, at the last sample.
pub const ADMISSION_FINISH_RATE_METRIC: &str = "jwl_admission_finish_rate";
/// Gauge: age in seconds of the oldest open unit at the last sample (0 when none is open).
pub const ADMISSION_OLDEST_OPEN_METRIC: &str = "jwl_admission_oldest_open_seconds";

/// How the backlog limits intake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogLimits {
    /// The time accepted work may queue behind the backlog (`JWL_ADMISSION_TARGET`); `None`
    /// switches the backlog limit off (the fixed limits still apply).
    pub target: Option<Duration>,
    /// Open work always admitted, whatever the finish rate (`JWL_ADMISSION_MIN_OPEN`).
    pub min_open: NonZeroU32,
}

impl Default for BacklogLimits {
    /// A 10 s target and 200 open orders at least.
    fn default() -> Self {
        Self {
            target: Some(Duration::from_secs(10)),
            min_open: NonZeroU32::new(200).unwrap_or(NonZeroU32::MIN),
        }
    }
}

/// What a [`BacklogProbe`] saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BacklogSample {
    /// Units accepted and not yet finished.
    pub open: u64,
    /// Units finished during the last `window`.
    pub finished: u64,
    /// The window `finished` counts over.
    pub window: Duration,
    /// Age of the oldest open unit, if any.
    pub oldest_open_age: Option<Duration>,
}

impl BacklogSample {
    /// Units finished per second.
    pub fn finish_rate(&self) -> f64 {
        let seconds = self.window.as_secs_f64();
        if seconds > 0.0 {
            self.finished as f64 / seconds
        } else {
            0.0
        }
    }
}

/// Reads the backlog behind intake (the service's own tables).
#[async_trait]
pub trait BacklogProbe: Send + Sync + 'static {
    async fn sample(&self) -> Result<BacklogSample, sqlx::Error>;
}

/// The verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Go ahead; call [`Admission::not_accepted`] if the request then does not open a unit.
    Admit,
    /// Refuse, and suggest retrying after this long.
    Shed { retry_after: Duration },
}

/// The limit computed from one sample, and what was admitted since.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Window {
    open: u64,
    limit: u64,
    finish_rate: f64,
    admitted_since: u64,
}

/// The highest recent finish rate, decaying with [`PEAK_HALF_LIFE`].
#[derive(Debug, Clone, Copy, PartialEq)]
struct Peak {
    rate: f64,
    at: Instant,
}

impl Peak {
    /// What the peak is worth at `now`.
    fn decayed(&self, now: Instant) -> f64 {
        let halves = now.duration_since(self.at).as_secs_f64() / PEAK_HALF_LIFE.as_secs_f64();
        self.rate * 0.5f64.powf(halves)
    }

    /// The rate the limit is computed from, given the last peak (if any) and a new sample
    /// taken at `now`; returns it and the peak to keep.
    fn hold(
        last: Option<Peak>,
        sample: &BacklogSample,
        target: Duration,
        now: Instant,
    ) -> (f64, Option<Peak>) {
        let rate = sample.finish_rate();
        let overdue = sample
            .oldest_open_age
            .is_some_and(|age| age > target * PEAK_GUARD_TARGETS);
        if overdue {
            return (rate, None);
        }
        match last {
            Some(peak) if peak.decayed(now) > rate => (peak.decayed(now), Some(peak)),
            _ => (rate, Some(Peak { rate, at: now })),
        }
    }
}

impl Window {
    /// The window of one sample: `held_rate` is the finish rate the limit is computed from
    /// (the sample's, or the held peak), `finish_rate` the sample's own.
    fn new(
        sample: &BacklogSample,
        limits: &BacklogLimits,
        target: Duration,
        held_rate: f64,
    ) -> Self {
        let from_rate = (held_rate * target.as_secs_f64()).ceil() as u64;
        Self {
            open: sample.open,
            limit: from_rate.max(u64::from(limits.min_open.get())),
            finish_rate: sample.finish_rate(),
            admitted_since: 0,
        }
    }

    #[cfg(test)]
    fn from_sample(sample: &BacklogSample, limits: &BacklogLimits, target: Duration) -> Self {
        Self::new(sample, limits, target, sample.finish_rate())
    }

    /// Admits (and counts) one more, or says how long the excess takes to drain.
    fn admit(&mut self, target: Duration) -> Verdict {
        let open = self.open + self.admitted_since;
        if open < self.limit {
            self.admitted_since += 1;
            return Verdict::Admit;
        }
        let excess = (open - self.limit + 1) as f64;
        let drain = if self.finish_rate > 0.0 {
            Duration::from_secs_f64((excess / self.finish_rate).min(MAX_RETRY_AFTER.as_secs_f64()))
        } else {
            target
        };
        Verdict::Shed {
            retry_after: drain.clamp(Duration::from_secs(1), MAX_RETRY_AFTER),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    window: Option<Window>,
    peak: Option<Peak>,
    /// When the last sample was started (successful or not).
    attempted_at: Option<Instant>,
    refreshing: bool,
}

struct Inner {
    probe: Box<dyn BacklogProbe>,
    limits: BacklogLimits,
    target: Duration,
    state: Mutex<State>,
    /// Serialises the waiting refreshes after an idle spell.
    refresh: tokio::sync::Mutex<()>,
}

/// The backlog limit of one intake route: cheap to clone.
#[derive(Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

impl Admission {
    /// The backlog limit from `limits` over `probe`, or `None` when `limits` switch it off.
    pub fn new(limits: BacklogLimits, probe: impl BacklogProbe) -> Option<Self> {
        let target = limits.target?;
        metrics::gauge!(ADMISSION_LIMIT_METRIC).set(f64::from(limits.min_open.get()));
        Some(Self {
            inner: Arc::new(Inner {
                probe: Box::new(probe),
                limits,
                target,
                state: Mutex::new(State::default()),
                refresh: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Whether one more unit may be accepted now.
    pub async fn check(&self) -> Verdict {
        let now = Instant::now();
        let age = self.lock().attempted_at.map(|at| now.duration_since(at));
        match age {
            Some(age) if age < SAMPLE_EVERY => {}
            Some(age) if age < STALE_AFTER => self.refresh_in_background(),
            _ => self.refresh_now(now).await,
        }
        let target = self.inner.target;
        match self.lock().window.as_mut() {
            Some(window) => window.admit(target),
            // no sample yet (the probe failed): admit
            None => Verdict::Admit,
        }
    }

    /// Takes back an admission whose request did not open a unit (it was refused, or failed).
    pub fn not_accepted(&self) {
        if let Some(window) = self.lock().window.as_mut() {
            window.admitted_since = window.admitted_since.saturating_sub(1);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn refresh_in_background(&self) {
        {
            let mut state = self.lock();
            if state.refreshing {
                return;
            }
            state.refreshing = true;
        }
        let this = self.clone();
        tokio::spawn(async move { this.sample().await });
    }

    /// Waits for a sample newer than `requested_at` (taking one unless another request is).
    async fn refresh_now(&self, requested_at: Instant) {
        let _turn = self.inner.refresh.lock().await;
        let fresh = self
            .lock()
            .attempted_at
            .is_some_and(|at| at >= requested_at);
        if !fresh {
            self.lock().refreshing = true;
            self.sample().await;
        }
    }

    async fn sample(&self) {
        let started = Instant::now();
        let result = tokio::time::timeout(SAMPLE_TIMEOUT, self.inner.probe.sample()).await;
        let mut state = self.lock();
        state.refreshing = false;
        state.attempted_at = Some(started);
        match result {
            Ok(Ok(sample)) => {
                let target = self.inner.target;
                let (held_rate, peak) = Peak::hold(state.peak, &sample, target, Instant::now());
                state.peak = peak;
                let window = Window::new(&sample, &self.inner.limits, target, held_rate);
                metrics::gauge!(ADMISSION_LIMIT_METRIC).set(window.limit as f64);
                metrics::gauge!(ADMISSION_OPEN_METRIC).set(sample.open as f64);
                metrics::gauge!(ADMISSION_FINISH_RATE_METRIC).set(window.finish_rate);
                metrics::gauge!(ADMISSION_OLDEST_OPEN_METRIC)
                    .set(sample.oldest_open_age.map_or(0.0, |age| age.as_secs_f64()));
                state.window = Some(window);
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "backlog sample failed; admitting on the last one");
            }
            Err(_) => {
                tracing::warn!(
                    timeout = ?SAMPLE_TIMEOUT,
                    "backlog sample stalled; admitting on the last one"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    fn limits(target_secs: u64, min_open: u32) -> BacklogLimits {
        BacklogLimits {
            target: Some(Duration::from_secs(target_secs)),
            min_open: NonZeroU32::new(min_open).unwrap_or(NonZeroU32::MIN),
        }
    }

    fn sample(open: u64, finished: u64, window_secs: u64) -> BacklogSample {
        BacklogSample {
            open,
            finished,
            window: Duration::from_secs(window_secs),
            oldest_open_age: None,
        }
    }

    #[test]
    fn the_limit_is_what_finishes_in_the_target_time_and_never_below_the_floor() {
        let target = Duration::from_secs(2);
        // 300 finished in 2 s: 150/s, so 300 may be open
        let busy = Window::from_sample(&sample(0, 300, 2), &limits(2, 50), target);
        assert_eq!(busy.limit, 300);
        assert_eq!(busy.finish_rate, 150.0);
        // nothing finished yet: the floor
        let cold = Window::from_sample(&sample(0, 0, 2), &limits(2, 50), target);
        assert_eq!(cold.limit, 50);
    }

    #[test]
    fn admits_up_to_the_limit_counting_what_it_admitted_since_the_sample() {
        let target = Duration::from_secs(2);
        let mut window = Window::from_sample(&sample(97, 0, 2), &limits(2, 100), target);
        assert_eq!(window.admit(target), Verdict::Admit);
        assert_eq!(window.admit(target), Verdict::Admit);
        assert_eq!(window.admit(target), Verdict::Admit);
        assert!(matches!(window.admit(target), Verdict::Shed { .. }));
        assert_eq!(window.admitted_since, 3);
    }

    #[test]
    fn a_shed_request_is_told_how_long_the_excess_takes_to_drain() {
        let target = Duration::from_secs(2);
        // 50/s finishing, limit 100, 400 open: 301 over, ~6 s
        let mut window = Window::from_sample(&sample(400, 100, 2), &limits(2, 10), target);
        assert_eq!(
            window.admit(target),
            Verdict::Shed {
                retry_after: Duration::from_secs_f64(301.0 / 50.0)
            }
        );
        // nothing finishing: the target, at least a second
        let mut stuck = Window::from_sample(&sample(400, 0, 2), &limits(2, 10), target);
        assert_eq!(
            stuck.admit(target),
            Verdict::Shed {
                retry_after: Duration::from_secs(2)
            }
        );
        // a huge backlog: at most a minute
        let mut huge = Window::from_sample(&sample(1_000_000, 2, 2), &limits(2, 10), target);
        assert_eq!(
            huge.admit(target),
            Verdict::Shed {
                retry_after: MAX_RETRY_AFTER
            }
        );
    }

    fn aged(open: u64, finished: u64, oldest_secs: u64) -> BacklogSample {
        BacklogSample {
            oldest_open_age: Some(Duration::from_secs(oldest_secs)),
            ..sample(open, finished, 2)
        }
    }

    #[test]
    fn a_dip_in_the_finish_rate_keeps_the_recent_peak_while_orders_finish_in_time() {
        let target = Duration::from_secs(10);
        let start = Instant::now();
        // 120/s at the peak
        let (rate, peak) = Peak::hold(None, &aged(1200, 240, 9), target, start);
        assert_eq!(rate, 120.0);
        // a dip to 80/s a second later: the limit still comes from ~120/s
        let later = start + Duration::from_secs(1);
        let (held, kept) = Peak::hold(peak, &aged(1200, 160, 10), target, later);
        assert!(held > 118.0 && held <= 120.0, "held {held}");
        assert_eq!(kept, peak);
        let window = Window::new(&aged(1200, 160, 10), &limits(10, 200), target, held);
        assert!(window.limit >= 1_180, "limit {}", window.limit);
        // a higher rate becomes the new peak
        let (rate, newer) = Peak::hold(kept, &aged(1200, 300, 10), target, later);
        assert_eq!(rate, 150.0);
        assert_eq!(newer.map(|p| p.rate), Some(150.0));
    }

    #[test]
    fn the_held_peak_halves_every_half_life() {
        let start = Instant::now();
        let peak = Peak {
            rate: 100.0,
            at: start,
        };
        let after = peak.decayed(start + PEAK_HALF_LIFE);
        assert!((after - 50.0).abs() < 1e-9, "{after}");
        let (held, _) = Peak::hold(
            Some(peak),
            &aged(10, 20, 1),
            Duration::from_secs(10),
            start + PEAK_HALF_LIFE * 2,
        );
        assert!((held - 25.0).abs() < 1e-9, "{held}");
    }

    #[test]
    fn orders_waiting_over_twice_the_target_drop_the_peak_and_the_limit_follows_the_rate() {
        let target = Duration::from_secs(10);
        let start = Instant::now();
        let (_, peak) = Peak::hold(None, &aged(1200, 240, 9), target, start);
        // payment slowed down: 10/s, and the oldest open order has waited 21 s
        let (rate, dropped) = Peak::hold(peak, &aged(1200, 20, 21), target, start);
        assert_eq!(rate, 10.0);
        assert_eq!(dropped, None);
        let window = Window::new(&aged(1200, 20, 21), &limits(10, 50), target, rate);
        assert_eq!(window.limit, 100);
    }

    /// A probe whose open count the test sets, counting its samples.
    struct Fixed {
        open: Arc<AtomicU64>,
        samples: Arc<AtomicU64>,
    }

    #[async_trait]
    impl BacklogProbe for Fixed {
        async fn sample(&self) -> Result<BacklogSample, sqlx::Error> {
            self.samples.fetch_add(1, Ordering::SeqCst);
            Ok(sample(self.open.load(Ordering::SeqCst), 0, 2))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sheds_at_the_limit_and_admits_again_once_a_later_sample_sees_the_backlog_drained() {
        let open = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(AtomicU64::new(0));
        let probe = Fixed {
            open: open.clone(),
            samples: samples.clone(),
        };
        let admission = Admission::new(limits(2, 3), probe).expect("switched on");
        for _ in 0..3 {
            assert_eq!(admission.check().await, Verdict::Admit);
        }
        assert!(matches!(admission.check().await, Verdict::Shed { .. }));
        // a request that did not create an order gives its place back
        admission.not_accepted();
        assert_eq!(admission.check().await, Verdict::Admit);
        assert_eq!(samples.load(Ordering::SeqCst), 1, "one sample while fresh");

        // the three orders are still open at the next sample
        open.store(3, Ordering::SeqCst);
        tokio::time::advance(STALE_AFTER).await;
        assert!(matches!(admission.check().await, Verdict::Shed { .. }));
        assert_eq!(samples.load(Ordering::SeqCst), 2);

        // they finished: after the idle spell the request waits for a fresh sample and is admitted
        open.store(0, Ordering::SeqCst);
        tokio::time::advance(STALE_AFTER).await;
        assert_eq!(admission.check().await, Verdict::Admit);
        assert_eq!(samples.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn switched_off_without_a_target() {
        let probe = Fixed {
            open: Arc::default(),
            samples: Arc::default(),
        };
        let off = BacklogLimits {
            target: None,
            ..BacklogLimits::default()
        };
        assert!(Admission::new(off, probe).is_none());
    }
}
