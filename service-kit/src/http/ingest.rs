//! Backpressure at ingest. The caller is authenticated first, so anonymous and badly signed
//! requests are refused (`401`) before they cost anyone a token. Then a circuit breaker
//! ([`failsafe`]) sheds requests while the database is failing: after [`BREAKER_FAILURES`]
//! requests in a row answered [`ApiError::DatabaseUnavailable`] it refuses requests for
//! [`BREAKER_OPEN_FOR`], then lets them through again (one more failure re-opens it); only
//! answers that reached the database move it. A token bucket per caller (keyed by the token's
//! subject) keeps one caller from taking the whole rate; with a backlog probe
//! ([`IngestLimiter::with_backlog`]) requests are refused while the work already accepted cannot
//! be finished in time ([`super::admission`]); a global token bucket ([`governor`]) bounds the
//! rate of accepted requests and a semaphore the number in flight. A refused request gets, at
//! once and before any work, a problem detail with `Retry-After`: `429` over a rate, `503`
//! otherwise. The rate and in-flight limits are per process (N replicas accept N times the
//! rate), the backlog limit is shared through the probe. Apply [`limit_ingest`] to the ingest
//! routes only, with `axum::middleware::from_fn_with_state`; the handler's [`Caller`] extractor
//! reuses the authentication done here.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use failsafe::failure_policy::{self, ConsecutiveFailures};
use failsafe::{StateMachine, backoff};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;

use super::admission::{Admission, BacklogLimits, BacklogProbe, Verdict};
use crate::ApiError;
use crate::auth::Caller;
use crate::problem::DatabaseFailure;

/// Counter of requests refused at ingest, labelled `reason` (`caller_rate`, `rate`,
/// `in_flight`, `database`, `backlog`).
pub const INGEST_SHED_METRIC: &str = "jwl_ingest_shed_total";
/// Every `reason` of [`INGEST_SHED_METRIC`].
const SHED_REASONS: [&str; 5] = ["caller_rate", "rate", "in_flight", "database", "backlog"];
/// Callers whose buckets are kept before the full ones are pruned.
const TRACKED_CALLERS: usize = 10_000;

/// `Retry-After` when too many requests are in flight: they finish in well under a second.
const IN_FLIGHT_RETRY_AFTER_SECS: u64 = 1;
/// Requests in a row failing for want of the database that open the breaker.
pub const BREAKER_FAILURES: u32 = 5;
/// How long an open breaker refuses requests before letting them try again.
pub const BREAKER_OPEN_FOR: Duration = Duration::from_secs(2);

type DatabaseBreaker = StateMachine<ConsecutiveFailures<backoff::Constant>, ()>;

/// How much ingest one process accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestLimits {
    /// Sustained requests per second (`JWL_INGEST_RATE`).
    pub rate_per_second: NonZeroU32,
    /// Requests accepted at once above the sustained rate (`JWL_INGEST_BURST`).
    pub burst: NonZeroU32,
    /// Requests handled at the same time (`JWL_INGEST_IN_FLIGHT`).
    pub max_in_flight: NonZeroUsize,
    /// Sustained requests per second of one caller (`JWL_INGEST_CALLER_RATE`).
    pub caller_rate_per_second: NonZeroU32,
    /// Requests one caller may send at once above that rate (`JWL_INGEST_CALLER_BURST`).
    pub caller_burst: NonZeroU32,
    /// The limit from the backlog, for routes given a probe.
    pub backlog: BacklogLimits,
}

impl Default for IngestLimits {
    /// 500 per second, bursts of 1,000, 256 in flight; 20 per second and bursts of 50 per
    /// caller; the default [`BacklogLimits`].
    fn default() -> Self {
        Self {
            rate_per_second: NonZeroU32::new(500).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::new(1_000).unwrap_or(NonZeroU32::MIN),
            max_in_flight: NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN),
            caller_rate_per_second: NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN),
            caller_burst: NonZeroU32::new(50).unwrap_or(NonZeroU32::MIN),
            backlog: BacklogLimits::default(),
        }
    }
}

/// The state of [`limit_ingest`]: cheap to clone, shared by every request of the routes.
#[derive(Clone)]
pub struct IngestLimiter {
    bucket: Arc<DefaultDirectRateLimiter>,
    per_caller: Arc<DefaultKeyedRateLimiter<String>>,
    in_flight: Arc<Semaphore>,
    database: DatabaseBreaker,
    backlog_limits: BacklogLimits,
    backlog: Option<Admission>,
}

impl IngestLimiter {
    pub fn new(limits: &IngestLimits) -> Self {
        let quota = Quota::per_second(limits.rate_per_second).allow_burst(limits.burst);
        for reason in SHED_REASONS {
            metrics::counter!(INGEST_SHED_METRIC, "reason" => reason).increment(0);
        }
        let per_caller =
            Quota::per_second(limits.caller_rate_per_second).allow_burst(limits.caller_burst);
        Self {
            per_caller: Arc::new(RateLimiter::keyed(per_caller)),
            backlog_limits: limits.backlog,
            backlog: None,
            bucket: Arc::new(RateLimiter::direct(quota)),
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight.get())),
            database: failsafe::Config::new()
                .failure_policy(failure_policy::consecutive_failures(
                    BREAKER_FAILURES,
                    backoff::constant(BREAKER_OPEN_FOR),
                ))
                .build(),
        }
    }

    /// Also limits by the backlog `probe` reports (unless the limits switch that off).
    pub fn with_backlog(mut self, probe: impl BacklogProbe) -> Self {
        self.backlog = Admission::new(self.backlog_limits, probe);
        self
    }
}

/// Authenticates the caller (`401` refuses at once), then refuses a request while the database
/// breaker is open (`503`), over the caller's rate (`429`), over the backlog limit (`503`), over
/// the global rate (`429`) or over the requests in flight (`503`); else runs it and tells the
/// breaker how it went.
pub async fn limit_ingest(
    State(limiter): State<IngestLimiter>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let caller = match Caller::from_request_parts(&mut parts, &()).await {
        Ok(caller) => caller,
        Err(refused) => return refused.into_response(),
    };
    if !limiter.database.is_call_permitted() {
        metrics::counter!(INGEST_SHED_METRIC, "reason" => "database").increment(1);
        return ApiError::unavailable(
            whole_seconds_at_least_one(BREAKER_OPEN_FOR),
            "the database is failing; not taking orders for a moment",
        )
        .into_response();
    }
    if let Err(not_until) = limiter.per_caller.check_key(&caller.subject) {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        metrics::counter!(INGEST_SHED_METRIC, "reason" => "caller_rate").increment(1);
        return ApiError::TooManyRequests {
            retry_after_secs: whole_seconds_at_least_one(wait),
            detail: "more requests from this caller than the service accepts from one caller; \
                     retry after the given delay"
                .into(),
        }
        .into_response();
    }
    if limiter.per_caller.len() > TRACKED_CALLERS {
        limiter.per_caller.retain_recent();
    }
    if let Some(backlog) = &limiter.backlog
        && let Verdict::Shed { retry_after } = backlog.check().await
    {
        metrics::counter!(INGEST_SHED_METRIC, "reason" => "backlog").increment(1);
        return ApiError::unavailable(
            whole_seconds_at_least_one(retry_after),
            "more orders are open than the system finishes in time; retry after the given delay",
        )
        .into_response();
    }
    if let Err(not_until) = limiter.bucket.check() {
        limiter.not_accepted();
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        metrics::counter!(INGEST_SHED_METRIC, "reason" => "rate").increment(1);
        return ApiError::TooManyRequests {
            retry_after_secs: whole_seconds_at_least_one(wait),
            detail: "more requests than the service accepts; retry after the given delay".into(),
        }
        .into_response();
    }
    let Ok(_permit) = limiter.in_flight.clone().try_acquire_owned() else {
        limiter.not_accepted();
        metrics::counter!(INGEST_SHED_METRIC, "reason" => "in_flight").increment(1);
        return ApiError::unavailable(
            IN_FLIGHT_RETRY_AFTER_SECS,
            "too many requests in flight; retry shortly",
        )
        .into_response();
    };
    // the handler's `Caller` extractor takes it from here instead of verifying the token again
    parts.extensions.insert(caller);
    let response = next.run(Request::from_parts(parts, body)).await;
    if !response.status().is_success() {
        limiter.not_accepted();
    }
    // Only answers that reached the database move the breaker: a refusal for a bad request or
    // a bad token says nothing about it (and must not close the breaker during an outage).
    if response.extensions().get::<DatabaseFailure>().is_some() {
        limiter.database.on_error();
    } else if response.status().is_success() {
        limiter.database.on_success();
    }
    response
}

impl IngestLimiter {
    /// Gives back the backlog admission of a request that did not open anything.
    fn not_accepted(&self) {
        if let Some(backlog) = &self.backlog {
            backlog.not_accepted();
        }
    }
}

/// `wait` in whole seconds, rounded up, and never 0 (`Retry-After: 0` invites a hot loop).
fn whole_seconds_at_least_one(wait: std::time::Duration) -> u64 {
    let rounded_up = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    rounded_up.max(1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::whole_seconds_at_least_one;

    #[test]
    fn retry_after_is_rounded_up_and_never_zero() {
        assert_eq!(whole_seconds_at_least_one(Duration::ZERO), 1);
        assert_eq!(whole_seconds_at_least_one(Duration::from_millis(2)), 1);
        assert_eq!(whole_seconds_at_least_one(Duration::from_secs(2)), 2);
        assert_eq!(whole_seconds_at_least_one(Duration::from_millis(2001)), 3);
    }
}
