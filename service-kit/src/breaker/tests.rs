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

/// A window holding `calls`, pushed in order.
fn window_of(calls: impl IntoIterator<Item = Call>) -> Window {
    let mut window = Window::default();
    for call in calls {
        window.push(call);
    }
    window
}

#[test]
fn p99_is_the_nearest_rank() {
    let at = Instant::now();
    let calls = (1..=200).map(|ms| Call {
        at,
        ok: true,
        latency: Duration::from_millis(ms),
    });
    let window = window_of(calls.clone());
    assert_eq!(window.stats().p99, Duration::from_millis(198));
    assert_eq!(
        window_of(calls.take(1)).stats().p99,
        Duration::from_millis(1)
    );
}

#[test]
fn the_per_call_check_agrees_with_the_sorted_window() {
    let at = Instant::now();
    // a window that grows, loses its oldest calls and is cleared, in a scrambled latency order,
    // some calls failed: after each change it is checked against a threshold that changes only
    // now and then (the kept count of slower calls is carried through the pushes and pops), and
    // every few steps against thresholds below, at and above each latency (each one a recount)
    let mut seed = 7u64;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    let mut window = Window::default();
    let (mut over, mut checks) = (0, 0);
    let mut steady = Duration::from_millis(60);
    for step in 0..2_000 {
        match next() % 10 {
            0 if step % 97 == 0 => window.clear(),
            0..=2 => window.pop_oldest(),
            _ => window.push(Call {
                at,
                ok: next() % 5 != 0,
                latency: Duration::from_millis(next() % 120),
            }),
        }
        if step % 150 == 0 {
            steady = Duration::from_millis(next() % 125);
        }
        let sorted = window.stats();
        let sweep = if step % 25 == 0 { 0..125 } else { 0..0 };
        let thresholds = std::iter::once(steady).chain(sweep.map(Duration::from_millis));
        for threshold in thresholds {
            let checked = window.check(threshold);
            assert_eq!(checked.calls, sorted.calls);
            assert_eq!(checked.error_rate, sorted.error_rate);
            assert_eq!(
                checked.p99_over,
                sorted.calls > 0 && sorted.p99 > threshold,
                "step {step}: {} calls, threshold {threshold:?}, p99 {:?}",
                sorted.calls,
                sorted.p99
            );
            over += usize::from(checked.p99_over);
            checks += 1;
        }
    }
    // both answers occurred
    assert!(over > 0 && over < checks);
    let empty = Window::default().check(Duration::ZERO);
    assert!(!empty.p99_over);
    assert_eq!(empty.calls, 0);
}

#[test]
fn the_window_keeps_at_most_max_window_calls() {
    let at = Instant::now();
    let window = window_of((0..MAX_WINDOW_CALLS + 10).map(|i| Call {
        at,
        // the ten oldest failed and were slow: dropped, they count for nothing
        ok: i >= 10,
        latency: Duration::from_millis(if i < 10 { 500 } else { 1 }),
    }));
    assert_eq!(window.calls.len(), MAX_WINDOW_CALLS);
    assert_eq!(window.stats().error_rate, 0.0);
    let mut window = window;
    assert!(!window.check(Duration::from_millis(100)).p99_over);
}
