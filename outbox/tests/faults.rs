//! Fault points of the consumer loop against a real PostgreSQL and nats-server: the injected
//! transient failure is retried with backoff and then handled once, and it touches only its
//! own consumer. (The crash points abort the process; the e2e suite exercises them.)

mod support;

use jwl_outbox::{FaultPoints, TransientFault};
use jwl_testkit::eventually;
use support::*;

fn failing_first(consumer: String, deliveries: u32) -> Option<FaultPoints> {
    FaultPoints {
        transient_first: Some(TransientFault {
            consumer,
            deliveries,
        }),
        ..FaultPoints::default()
    }
    .switched_on()
}

#[tokio::test]
async fn injected_transient_failures_are_retried_then_handled_once() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    // test_settings: max_attempts 3, so deliveries 1 and 2 fail and 3 is the last chance
    h.settings.faults = failing_first(h.consumer(), 2);
    let events = h.enqueue(&[1, 2, 3]).await?;
    let running = h.run();
    eventually("every event is handled", SOON, || async {
        h.effects_total().await.ok() == Some(3)
    })
    .await?;
    eventually("the consumer is settled", SOON, || async {
        h.consumer_settled().await.ok() == Some(true)
    })
    .await?;
    for event in &events {
        assert_eq!(h.effects_of(event).await?, 1);
        let attempts: Vec<i32> = h
            .attempts_of(event)
            .await?
            .into_iter()
            .map(|(attempt, _)| attempt)
            .collect();
        assert_eq!(
            attempts,
            vec![3],
            "the handler ran only on the third delivery"
        );
    }
    assert!(h.dead_letters().await?.is_empty());
    running.stop().await
}

#[tokio::test]
async fn a_fault_of_another_consumer_changes_nothing() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    h.settings.faults = failing_first("inventory__payment_authorized".to_owned(), 5);
    let events = h.enqueue(&[7, 8]).await?;
    let running = h.run();
    eventually("every event is handled", SOON, || async {
        h.effects_total().await.ok() == Some(2)
    })
    .await?;
    for event in &events {
        let attempts: Vec<i32> = h
            .attempts_of(event)
            .await?
            .into_iter()
            .map(|(attempt, _)| attempt)
            .collect();
        assert_eq!(attempts, vec![1], "handled on the first delivery");
    }
    running.stop().await
}
