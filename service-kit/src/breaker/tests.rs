//! The breaker's state machine on a paused tokio clock: calls take the time the test advances
//! between `try_call` and `record`.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::time::{Instant, advance};

use super::*;

fn settings() -> BreakerSettings {
    BreakerSettings {
        window: Duration::from_secs(10),
        min_calls: 5,
        open_for: Duration::from_secs(3),
        min_error_rate: 0.2,
        min_p99: Duration::from_millis(50),
    }
}

/// One call that takes `latency` and succeeds or not; the state afterwards.
async fn call(breaker: &Arc<Breaker>, ok: bool, latency: Duration) -> Option<BreakerState> {
    let permit = breaker.try_call()?;
    advance(latency).await;
    Some(permit.record(ok))
}

const FAST: Duration = Duration::from_millis(10);

#[tokio::test(start_paused = true)]
async fn fewer_calls_than_the_floor_never_open_it() {
    let breaker = Breaker::new("test", settings());
    for _ in 0..4 {
        assert_eq!(
            call(&breaker, false, FAST).await,
            Some(BreakerState::Closed)
        );
    }
    // the fifth failure makes the window big enough: 100 % errors
    assert_eq!(call(&breaker, false, FAST).await, Some(BreakerState::Open));
}

#[tokio::test(start_paused = true)]
async fn errors_within_the_threshold_keep_it_closed() {
    let breaker = Breaker::new("test", settings());
    // 1 error in 10 calls: 0.1 < 0.2
    for i in 0..10 {
        assert_eq!(
            call(&breaker, i != 3, FAST).await,
            Some(BreakerState::Closed)
        );
    }
    assert_eq!(breaker.snapshot().window_calls, 10);
}

#[tokio::test(start_paused = true)]
async fn open_refuses_then_lets_one_probe_through_after_open_for() {
    let breaker = Breaker::new("test", settings());
    for _ in 0..5 {
        let _ = call(&breaker, false, FAST).await;
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    assert!(breaker.try_call().is_none(), "open refuses");
    assert!(
        breaker.ready().now_or_never().is_none(),
        "not ready while open"
    );

    let opened = Instant::now();
    breaker.ready().await;
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    assert_eq!(breaker.state(), BreakerState::HalfOpen);

    let probe = breaker.try_call().expect("the probe goes through");
    assert!(probe.is_probe());
    assert!(breaker.try_call().is_none(), "one probe at a time");
    assert!(
        breaker.ready().now_or_never().is_none(),
        "not ready while probing"
    );
    advance(FAST).await;
    assert_eq!(probe.record(true), BreakerState::Closed);
    assert!(breaker.ready().now_or_never().is_some());
    // closed with an empty window: the failures before do not count any more
    assert_eq!(breaker.snapshot().window_calls, 0);
    assert_eq!(
        call(&breaker, false, FAST).await,
        Some(BreakerState::Closed)
    );

    let transitions: Vec<BreakerState> = breaker
        .snapshot()
        .transitions
        .iter()
        .map(|t| t.to)
        .collect();
    assert_eq!(
        transitions,
        [
            BreakerState::Open,
            BreakerState::HalfOpen,
            BreakerState::Closed
        ]
    );
    assert!(breaker.snapshot().rejected >= 2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_or_slow_probe_opens_it_again() {
    let breaker = Breaker::new("test", settings());
    for _ in 0..5 {
        let _ = call(&breaker, false, FAST).await;
    }
    breaker.ready().await;
    assert_eq!(call(&breaker, false, FAST).await, Some(BreakerState::Open));
    assert!(breaker.try_call().is_none());
    breaker.ready().await;
    // slower than the p99 threshold (the 50 ms floor: no baseline yet)
    assert_eq!(
        call(&breaker, true, Duration::from_millis(80)).await,
        Some(BreakerState::Open)
    );
    breaker.ready().await;
    assert_eq!(call(&breaker, true, FAST).await, Some(BreakerState::Closed));
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_probe_lets_the_next_caller_probe() {
    let breaker = Breaker::new("test", settings());
    for _ in 0..5 {
        let _ = call(&breaker, false, FAST).await;
    }
    breaker.ready().await;
    let probe = breaker.try_call().expect("probe");
    drop(probe);
    assert!(breaker.ready().now_or_never().is_some());
    let probe = breaker.try_call().expect("another probe");
    assert!(probe.is_probe());
    assert_eq!(probe.record(true), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn ready_wakes_when_the_probe_succeeds() {
    let breaker = Breaker::new("test", settings());
    for _ in 0..5 {
        let _ = call(&breaker, false, FAST).await;
    }
    breaker.ready().await;
    let probe = breaker.try_call().expect("probe");
    let waiter = tokio::spawn({
        let breaker = Arc::clone(&breaker);
        async move { breaker.ready().await }
    });
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    let _ = probe.record(true);
    waiter.await.expect("ready resolved");
}

#[tokio::test(start_paused = true)]
async fn the_latency_threshold_is_learned_from_the_healthy_baseline() {
    let breaker = Breaker::new("test", settings());
    assert_eq!(breaker.snapshot().thresholds.p99, Duration::from_millis(50));
    // 20 ms calls, 1 s apart, for over a window: the baseline p99 is 20 ms, so the threshold
    // is 4 × 20 = 80 ms, above the 50 ms floor
    for _ in 0..12 {
        assert_eq!(
            call(&breaker, true, Duration::from_millis(20)).await,
            Some(BreakerState::Closed)
        );
        advance(Duration::from_secs(1)).await;
    }
    let snapshot = breaker.snapshot();
    assert!(snapshot.baseline_learned);
    let p99 = snapshot.thresholds.p99.as_secs_f64();
    assert!((p99 - 0.080).abs() < 0.001, "{p99}");
    assert_eq!(snapshot.thresholds.error_rate, 0.2, "no errors: the floor");
    // 60 ms calls would have opened it on the floor; now they do not
    for _ in 0..3 {
        assert_eq!(
            call(&breaker, true, Duration::from_millis(60)).await,
            Some(BreakerState::Closed)
        );
    }
    // ten times slower: the p99 of the window passes 80 ms
    let mut state = BreakerState::Closed;
    for _ in 0..3 {
        state = call(&breaker, true, Duration::from_millis(200))
            .await
            .unwrap_or(state);
    }
    assert_eq!(state, BreakerState::Open);
    let opened = breaker
        .snapshot()
        .transitions
        .last()
        .cloned()
        .expect("a transition");
    assert!(opened.reason.contains("p99 latency"), "{}", opened.reason);
}

#[tokio::test(start_paused = true)]
async fn a_noisy_baseline_raises_the_error_threshold_and_an_outage_does_not_teach_it() {
    let breaker = Breaker::new("test", settings());
    // 1 error in 10 calls, for two windows: the baseline error rate is 0.1, so the threshold
    // is 3 × 0.1 = 0.3
    for i in 0..22 {
        let _ = call(&breaker, i % 10 != 0, FAST).await;
        advance(Duration::from_secs(1)).await;
    }
    let threshold = breaker.snapshot().thresholds.error_rate;
    assert!((threshold - 0.3).abs() < 0.05, "{threshold}");
    // an outage: every call fails; it opens, and the baseline did not learn from it
    let mut state = BreakerState::Closed;
    for _ in 0..10 {
        if let Some(after) = call(&breaker, false, FAST).await {
            state = after;
        }
    }
    assert_eq!(state, BreakerState::Open);
    assert_eq!(breaker.snapshot().thresholds.error_rate, threshold);
}

#[tokio::test(start_paused = true)]
async fn calls_older_than_the_window_are_forgotten() {
    let breaker = Breaker::new("test", settings());
    for _ in 0..4 {
        let _ = call(&breaker, false, FAST).await;
    }
    advance(Duration::from_secs(11)).await;
    // four old failures are gone: one new failure in a window of one call does not open it
    assert_eq!(
        call(&breaker, false, FAST).await,
        Some(BreakerState::Closed)
    );
    assert_eq!(breaker.snapshot().window_calls, 1);
}

#[test]
fn p99_is_the_nearest_rank() {
    let at = Instant::now();
    let window: VecDeque<Call> = (1..=200)
        .map(|ms| Call {
            at,
            ok: true,
            latency: Duration::from_millis(ms),
        })
        .collect();
    assert_eq!(stats(&window).p99, Duration::from_millis(198));
    let one: VecDeque<Call> = window.iter().take(1).copied().collect();
    assert_eq!(stats(&one).p99, Duration::from_millis(1));
}

#[test]
fn the_per_call_check_agrees_with_the_sorted_window() {
    let at = Instant::now();
    // windows of every size up to 250 in a scrambled latency order, some calls failed,
    // against thresholds below, at and above each latency
    let mut seed = 7u64;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    let mut window = VecDeque::new();
    let mut over = 0;
    for _ in 0..250 {
        window.push_back(Call {
            at,
            ok: next() % 5 != 0,
            latency: Duration::from_millis(next() % 120),
        });
        let sorted = stats(&window);
        for threshold_ms in 0..125 {
            let threshold = Duration::from_millis(threshold_ms);
            let checked = check(&window, threshold);
            assert_eq!(checked.calls, sorted.calls);
            assert_eq!(checked.error_rate, sorted.error_rate);
            assert_eq!(
                checked.p99_over,
                sorted.p99 > threshold,
                "{} calls, threshold {threshold_ms} ms, p99 {:?}",
                window.len(),
                sorted.p99
            );
            over += usize::from(checked.p99_over);
        }
    }
    // both answers occurred
    assert!(over > 0 && over < 250 * 125);
    let empty = check(&VecDeque::new(), Duration::ZERO);
    assert!(!empty.p99_over);
    assert_eq!(empty.calls, 0);
}
