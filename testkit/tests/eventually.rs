//! `eventually`: polling until a condition holds, with a deadline.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use jwl_testkit::eventually;

#[tokio::test]
async fn returns_the_value_once_the_condition_holds() {
    let calls = AtomicU32::new(0);
    let value = eventually("third call", Duration::from_secs(5), || async {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        (n == 3).then_some(n * 10)
    })
    .await
    .unwrap();
    assert_eq!(value, 30);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn accepts_results_and_booleans() {
    let calls = AtomicU32::new(0);
    let value = eventually("ok on the second call", Duration::from_secs(5), || async {
        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            Err("not yet")
        } else {
            Ok("done")
        }
    })
    .await
    .unwrap();
    assert_eq!(value, "done");
    eventually("true", Duration::from_secs(1), || async { true })
        .await
        .unwrap();
}

#[tokio::test]
async fn times_out_naming_what_and_the_last_error() {
    let started = Instant::now();
    let error = eventually("the impossible", Duration::from_millis(300), || async {
        Err::<(), _>("still broken")
    })
    .await
    .unwrap_err()
    .to_string();
    let elapsed = started.elapsed();
    assert!(error.contains("the impossible"), "{error}");
    assert!(error.contains("still broken"), "{error}");
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn abandons_an_attempt_that_hangs_past_the_deadline() {
    let started = Instant::now();
    let result = eventually("a hanging probe", Duration::from_millis(200), || async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Some(())
    })
    .await;
    assert!(result.is_err());
    assert!(started.elapsed() < Duration::from_secs(2));
}
