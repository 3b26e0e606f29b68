//! Reliability of the outbox, relay, inbox and consumer loop against a real PostgreSQL and a
//! real nats-server (both private to the test, from jwl-testkit).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use jwl_events::{Envelope, EventData, HeaderStyle, PaymentVoided, Service};
use jwl_outbox::relay::{self, Relay, Unmarked};
use jwl_outbox::transport::{OutboundMessage, PublishReceipt, Publisher};
use jwl_outbox::{OutboxError, Processed, RelaySignal, TransportError};
use jwl_testkit::eventually;
use support::*;
use tokio_util::sync::CancellationToken;

fn ids(events: &[Envelope]) -> Vec<String> {
    events.iter().map(|event| event.id.0.to_string()).collect()
}

#[tokio::test]
async fn migrate_is_idempotent_and_ignores_service_migrations() -> anyhow::Result<()> {
    let db = jwl_testkit::database().await?;
    let pool = service_pool(&db, "jwl_migrate_svc").await?;
    jwl_outbox::migrate(&pool).await?;
    // a service migrator with 14-digit versions in the same schema
    let dir = tempfile_dir()?;
    std::fs::write(
        dir.join("20260101000000_service.sql"),
        "CREATE TABLE service_things (id int);",
    )?;
    let mut service = sqlx::migrate::Migrator::new(dir.as_path()).await?;
    service.set_ignore_missing(true);
    service.run(&pool).await?;
    jwl_outbox::migrate(&pool).await?;

    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'jwl_migrate_svc' ORDER BY table_name",
    )
    .fetch_all(&pool)
    .await?;
    assert_eq!(
        tables,
        [
            "_sqlx_migrations",
            "dead_letter_holds",
            "inbox",
            "outbox",
            "outbox_relay_members",
            "outbox_relay_partitions",
            "parked_messages",
            "service_things"
        ]
    );
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "jwl-outbox-migrations-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[tokio::test]
async fn relay_publishes_in_outbox_order() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let mut events = Vec::new();
    for _ in 0..4 {
        events.extend(h.enqueue(&[1; 50]).await?);
    }
    let running = h.run_relay_only();
    eventually("the outbox is drained", SOON, || async {
        h.pending_in_outbox().await.ok() == Some(0)
    })
    .await?;

    let stream = h.events_in_stream().await?;
    let published: Vec<String> = stream
        .iter()
        .map(|m| header(m, "Nats-Msg-Id").unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        published,
        ids(&events),
        "the stream holds every event once, in outbox order"
    );
    let ce_ids: Vec<&str> = stream
        .iter()
        .map(|m| header(m, "ce-id").unwrap_or_default())
        .collect();
    assert_eq!(ce_ids, ids(&events));
    running.stop().await
}

#[tokio::test]
async fn a_relay_with_nothing_more_to_do_marks_what_it_published() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    // no poll (and so no claim) would come before the deadline: the mark is the quiet moment's
    h.settings.relay_poll_interval = Duration::from_secs(60);
    h.settings.db_stall_timeout = Duration::from_secs(120);
    h.enqueue(&[1; 5]).await?;
    let running = h.run_relay_only();
    eventually("the rows are marked published", SOON, || async {
        h.pending_in_outbox().await.ok() == Some(0)
    })
    .await?;
    assert_eq!(h.events_in_stream().await?.len(), 5);
    running.stop().await
}

#[tokio::test]
async fn crash_between_publish_and_mark_only_duplicates_the_publish() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let events = h.enqueue(&[1; 10]).await?;

    // the relay's first half, then "crash": nothing is marked
    let mut conn = h.pool.acquire().await?;
    let batch = relay::claim_pending(&mut conn, 100).await?;
    let outcome = relay::publish(&h.broker, &batch).await;
    assert_eq!(outcome.published.len(), 10);
    drop(conn);
    assert_eq!(h.pending_in_outbox().await?, 10, "nothing was marked");

    let running = h.run();
    eventually("the outbox is drained", SOON, || async {
        h.pending_in_outbox().await.ok() == Some(0)
    })
    .await?;
    eventually("every event is handled", SOON, || async {
        h.effects_total().await.ok() == Some(10)
    })
    .await?;
    eventually("the consumer is settled", SOON, || async {
        h.consumer_settled().await.ok() == Some(true)
    })
    .await?;

    let stream = h.events_in_stream().await?;
    assert_eq!(
        stream.len(),
        10,
        "Nats-Msg-Id deduplicated the second publish"
    );
    for event in &events {
        assert_eq!(h.effects_of(event).await?, 1);
    }
    running.stop().await
}

#[tokio::test]
async fn a_claim_marks_the_last_rounds_rows_published_and_skips_them() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.enqueue(&[1; 5]).await?;
    let mut conn = h.pool.acquire().await?;

    let first = relay::claim_pending_in(&mut conn, (1, 0), 3, Unmarked::Keep(&[])).await?;
    assert_eq!(first.len(), 3);
    assert_eq!(h.pending_in_outbox().await?, 5, "claiming marks nothing");
    // a claim that keeps them unmarked skips them too, and writes nothing
    let kept = relay::claim_pending_in(&mut conn, (1, 0), 100, Unmarked::Keep(&first.seqs)).await?;
    assert_eq!(kept.len(), 2);
    assert!(kept.seqs.iter().all(|seq| !first.seqs.contains(seq)));
    assert_eq!(h.pending_in_outbox().await?, 5, "keeping marks nothing");
    // the next claim marks the first round's rows and does not hand them out again, although
    // its snapshot still sees them pending
    let second =
        relay::claim_pending_in(&mut conn, (1, 0), 100, Unmarked::Mark(&first.seqs)).await?;
    assert_eq!(second.len(), 2);
    assert!(second.seqs.iter().all(|seq| !first.seqs.contains(seq)));
    assert!(
        second
            .seqs
            .iter()
            .all(|seq| seq > first.seqs.last().unwrap_or(&0))
    );
    assert_eq!(h.pending_in_outbox().await?, 2);
    let third =
        relay::claim_pending_in(&mut conn, (1, 0), 100, Unmarked::Mark(&second.seqs)).await?;
    assert!(third.is_empty());
    assert_eq!(h.pending_in_outbox().await?, 0);
    Ok(())
}

#[tokio::test]
async fn inbox_absorbs_a_redelivered_event() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let handler = h.handler();
    let consumer = h.consumer();

    // without a broker: process_one twice
    let event = captured(EMITS);
    let first = jwl_outbox::process_one(&h.pool, SERVICE, &*handler, &consumer, &event).await?;
    let Processed::Handled { emitted } = first else {
        panic!("first processing: {first:?}")
    };
    assert_eq!(emitted.len(), 1);
    assert_eq!(
        emitted[0].causation_id,
        Some(event.id),
        "emitted events are caused by the incoming one"
    );
    let in_outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_id = $1")
        .bind(emitted[0].id.0)
        .fetch_one(&h.pool)
        .await?;
    assert_eq!(in_outbox, 1, "the emitted event was enqueued");
    let second = jwl_outbox::process_one(&h.pool, SERVICE, &*handler, &consumer, &event).await?;
    assert!(
        matches!(second, Processed::Duplicate),
        "second processing: {second:?}"
    );
    assert_eq!(h.effects_of(&event).await?, 1);

    // through the broker: the same event published twice with different broker dedup ids (as
    // if the second came after the duplicate window)
    let redelivered = captured(1);
    h.publish_event(&redelivered, "first").await?;
    h.publish_event(&redelivered, "second").await?;
    let running = h.run();
    eventually("both copies are consumed", SOON, || async {
        h.consumer_settled().await.ok() == Some(true)
            && h.effects_of(&redelivered).await.ok() >= Some(1)
    })
    .await?;
    let copies = h
        .events_in_stream()
        .await?
        .iter()
        .filter(|m| header(m, "ce-id") == Some(&*redelivered.id.0.to_string()))
        .count();
    assert_eq!(copies, 2);
    assert_eq!(
        h.effects_of(&redelivered).await?,
        1,
        "the inbox skipped the second copy"
    );
    assert!(h.dead_letters().await?.is_empty());
    running.stop().await
}

#[tokio::test]
async fn a_handler_reporting_success_over_an_aborted_transaction_loses_nothing()
-> anyhow::Result<()> {
    let h = Harness::start().await?;
    let events: Vec<Envelope> = [1, SWALLOWS_SQL_ERROR, 2]
        .into_iter()
        .map(captured)
        .collect();
    for event in &events {
        h.publish_event(event, &event.id.0.to_string()).await?;
    }
    let running = h.run();
    // the others of its batch are committed, not acked over a transaction that rolled back
    eventually("the others are handled", SOON, || async {
        h.effects_total().await.ok() == Some(2)
    })
    .await?;
    let dead = eventually("the culprit is dead-lettered", SOON, || async {
        h.dead_letters().await.ok().filter(|dead| !dead.is_empty())
    })
    .await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header(&dead[0], "ce-id"),
        Some(&*events[1].id.0.to_string())
    );
    let error = header(&dead[0], "jwl-dlq-error").unwrap_or_default();
    assert!(error.contains("transaction was aborted"), "{error}");
    running.stop().await
}

#[tokio::test]
async fn a_permanently_failing_message_does_not_undo_its_batch() -> anyhow::Result<()> {
    let mut h = Harness::start_as(Service::Fulfillment).await?;
    // the five orders in one batch, not split between workers
    h.settings.consumer_workers = 1;
    let events: Vec<Envelope> = [1, 2, PERMANENT, 4, 5].into_iter().map(captured).collect();
    for event in &events {
        h.publish_event(event, &event.id.0.to_string()).await?;
    }
    let running = h.run();
    eventually("the good events are handled", SOON, || async {
        h.effects_total().await.ok() == Some(4)
    })
    .await?;
    let dead = eventually("the bad event is dead-lettered", SOON, || async {
        h.dead_letters().await.ok().filter(|dead| !dead.is_empty())
    })
    .await?;

    // the good ones of the bad one's batch committed in one transaction: the failure was
    // isolated (the fast path gave up, and the savepoint path handled the batch), not split
    // into batches of one. A worker batches what has reached it, so the broker may deliver the
    // five in two batches (say 4 + 1); the good ones handled before the bad one in its batch
    // are those first run in the bad one's (rolled back) fast-path transaction
    let bad_tx: i64 = sqlx::query_scalar("SELECT txid FROM attempts WHERE event_id = $1")
        .bind(events[2].id.0)
        .fetch_one(&h.pool)
        .await?;
    let before_bad: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT event_id FROM attempts WHERE txid = $1 AND event_id <> $2",
    )
    .bind(bad_tx)
    .bind(events[2].id.0)
    .fetch_all(&h.pool)
    .await?;
    let their_txids: Vec<i64> =
        sqlx::query_scalar("SELECT DISTINCT txid FROM effects WHERE event_id = ANY($1)")
            .bind(&before_bad)
            .fetch_all(&h.pool)
            .await?;
    assert!(
        their_txids.len() <= 1 && !their_txids.contains(&bad_tx),
        "the bad one's batch committed in one transaction, got {their_txids:?}"
    );
    let txids: Vec<i64> = sqlx::query_scalar("SELECT DISTINCT txid FROM effects")
        .fetch_all(&h.pool)
        .await?;
    // delivered together (the usual case), the five were one batch and one transaction
    assert!(
        txids.len() > 1 || (before_bad.len() == 2 && their_txids == txids),
        "one committed batch transaction, got {txids:?} ({} before the bad one)",
        before_bad.len()
    );
    // and the failing handler ran once for its one delivery
    let bad_attempts: Vec<i32> = h
        .attempts_of(&events[2])
        .await?
        .iter()
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(bad_attempts, [1]);
    let bad = &events[2];
    assert_eq!(h.effects_of(bad).await?, 0);
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    let consumer = h.consumer();
    assert_eq!(
        letter.subject.as_str(),
        format!("jwl.dlq.{consumer}.{}", bad.order_id())
    );
    assert_eq!(header(letter, "jwl-dlq-reason"), Some("permanent"));
    assert_eq!(header(letter, "jwl-dlq-consumer"), Some(consumer.as_str()));
    assert_eq!(
        header(letter, "jwl-dlq-error"),
        Some("amount refused by the test handler")
    );
    assert_eq!(
        header(letter, "jwl-dlq-order-id"),
        Some(bad.order_id().to_string().as_str())
    );
    assert_eq!(header(letter, "jwl-dlq-stream-seq"), Some("3"));
    let original = jwl_events::encode(bad, HeaderStyle::Nats);
    assert_eq!(
        header(letter, "jwl-dlq-subject"),
        Some(original.subject.as_str())
    );
    assert_eq!(header(letter, "ce-id"), Some(bad.id.0.to_string().as_str()));
    assert_eq!(letter.payload.as_ref(), original.payload.as_slice());
    eventually("the consumer is settled", SOON, || async {
        h.consumer_settled().await.ok() == Some(true)
    })
    .await?;
    let handled = |outcome| {
        counter(
            "jwl_events_handled_total",
            &[
                ("consumer", &consumer),
                ("type", SUBSCRIBED.as_str()),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(
        (handled("ok"), handled("dead_lettered"), handled("retried")),
        (4, 1, 0)
    );
    running.stop().await
}

#[tokio::test]
async fn transient_failures_are_retried_after_the_backoff() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let event = captured(TRANSIENT_TWICE);
    h.enqueue_events(std::slice::from_ref(&event)).await?;
    let running = h.run();
    eventually("the event is handled", SOON, || async {
        h.effects_of(&event).await.ok() == Some(1)
    })
    .await?;

    let attempts = h.attempts_of(&event).await?;
    let numbers: Vec<i32> = attempts.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, [1, 2, 3]);
    let gaps: Vec<Duration> = attempts
        .windows(2)
        .map(|w| (w[1].1 - w[0].1).to_std().unwrap_or_default())
        .collect();
    // redelivery never comes before the configured delay (300 ms, then 600 ms)
    assert!(
        gaps[0] >= Duration::from_millis(280),
        "first retry after {:?}",
        gaps[0]
    );
    assert!(
        gaps[1] >= Duration::from_millis(570),
        "second retry after {:?}",
        gaps[1]
    );
    assert!(gaps[1] > gaps[0], "backoff grows: {gaps:?}");
    assert!(h.dead_letters().await?.is_empty());
    running.stop().await
}

#[tokio::test]
async fn undecodable_messages_are_dead_lettered_and_consumption_continues() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let order = uuid::Uuid::now_v7();
    let subject = format!("jwl.evt.{order}.payment.captured");
    h.publish_raw(&subject, &[], b"\x00garbage".to_vec(), "garbage")
        .await?;
    let good = captured(1);
    // of another order: an undecodable event of a known order holds that order's later events
    let unknown_type = captured(2);
    let mut wire = jwl_events::encode(&unknown_type, HeaderStyle::Nats);
    for (name, value) in wire.headers.iter_mut() {
        match name.as_str() {
            "ce-type" => *value = "jwl.payment.unknown".to_owned(),
            "ce-id" => *value = uuid::Uuid::now_v7().to_string(),
            _ => {}
        }
    }
    h.publish_raw(
        &wire.subject,
        &wire.headers,
        wire.payload.clone(),
        "unknown-type",
    )
    .await?;
    let running = h.run();
    let dead = eventually("both are dead-lettered", SOON, || async {
        h.dead_letters().await.ok().filter(|dead| dead.len() == 2)
    })
    .await?;
    h.publish_event(&good, "good").await?;
    eventually("a later good event is handled", SOON, || async {
        h.effects_of(&good).await.ok() == Some(1)
    })
    .await?;

    let consumer = h.consumer();
    for letter in &dead {
        assert_eq!(header(letter, "jwl-dlq-reason"), Some("decode"));
        assert!(
            !header(letter, "jwl-dlq-error")
                .unwrap_or_default()
                .is_empty()
        );
    }
    assert_eq!(
        dead[0].subject.as_str(),
        format!("jwl.dlq.{consumer}.unknown")
    );
    assert_eq!(dead[0].payload.as_ref(), b"\x00garbage");
    // the unknown type still names its order (ce-subject)
    assert_eq!(
        dead[1].subject.as_str(),
        format!("jwl.dlq.{consumer}.{}", unknown_type.order_id())
    );
    assert_eq!(
        h.attempts_of(&good).await?.len(),
        1,
        "the handler never saw the bad messages"
    );
    running.stop().await
}

#[tokio::test]
async fn a_message_failing_max_attempts_times_is_dead_lettered() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let event = captured(ALWAYS_TRANSIENT);
    h.enqueue_events(std::slice::from_ref(&event)).await?;
    let running = h.run();
    let dead = eventually("the event is dead-lettered", SOON, || async {
        h.dead_letters().await.ok().filter(|dead| !dead.is_empty())
    })
    .await?;
    assert_eq!(header(&dead[0], "jwl-dlq-reason"), Some("max_attempts"));
    assert_eq!(header(&dead[0], "jwl-dlq-error"), Some("always failing"));
    let numbers: Vec<i32> = h
        .attempts_of(&event)
        .await?
        .iter()
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(numbers, [1, 2, 3], "max_attempts = 3");
    eventually("the original is terminated", SOON, || async {
        h.consumer_settled().await.ok() == Some(true)
    })
    .await?;
    assert_eq!(h.effects_of(&event).await?, 0);
    running.stop().await
}

#[tokio::test]
async fn a_batch_failing_at_commit_is_retried_one_by_one_and_the_culprit_dead_lettered()
-> anyhow::Result<()> {
    let h = Harness::start().await?;
    let events: Vec<Envelope> = [1, FAILS_AT_COMMIT, 2, 3]
        .into_iter()
        .map(captured)
        .collect();
    for event in &events {
        h.publish_event(event, &event.id.0.to_string()).await?;
    }
    let running = h.run();
    let dead = eventually("the culprit is dead-lettered", SOON, || async {
        h.dead_letters().await.ok().filter(|dead| !dead.is_empty())
    })
    .await?;
    eventually("the others are handled", SOON, || async {
        h.effects_total().await.ok() == Some(3)
    })
    .await?;
    eventually("the consumer is settled", SOON, || async {
        h.consumer_settled().await.ok() == Some(true)
    })
    .await?;

    let culprit = &events[1];
    assert_eq!(dead.len(), 1, "only the culprit is dead-lettered");
    assert_eq!(header(&dead[0], "ce-id"), Some(&*culprit.id.0.to_string()));
    assert_eq!(header(&dead[0], "jwl-dlq-reason"), Some("max_attempts"));
    assert_eq!(h.effects_of(culprit).await?, 0);
    for event in events.iter().filter(|event| event.id != culprit.id) {
        assert_eq!(h.effects_of(event).await?, 1);
    }
    // every handling of the culprit was rolled back at commit; it never ran past max_attempts
    let attempts: Vec<i32> = h
        .attempts_of(culprit)
        .await?
        .iter()
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
    running.stop().await
}

#[tokio::test]
async fn database_flaps_are_not_delivery_attempts() -> anyhow::Result<()> {
    // a service of its own: the test reads its consumer's metrics
    let h = Harness::start_as(Service::Dispatch).await?;
    assert!(FLAPS > i64::from(h.settings.max_attempts));
    let flapping = captured(DB_FLAPS);
    let healthy = captured(1);
    h.enqueue_events(&[flapping.clone(), healthy.clone()])
        .await?;
    let running = h.run();
    eventually(
        "both are handled after the database came back each time",
        Duration::from_secs(30),
        || async { h.effects_total().await.ok() == Some(2) },
    )
    .await?;
    eventually("the consumer is settled", SOON, || async {
        h.consumer_settled().await.ok() == Some(true)
    })
    .await?;
    assert!(h.dead_letters().await?.is_empty(), "nothing dead-lettered");
    assert_eq!(h.effects_of(&flapping).await?, 1);
    assert_eq!(h.effects_of(&healthy).await?, 1);
    // every run lost its connection but the last, and none of them was a new delivery: the
    // batch was held while the database was away, not nak'ed
    let attempts: Vec<i32> = h
        .attempts_of(&flapping)
        .await?
        .iter()
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(attempts, vec![1; FLAPS as usize + 1]);
    assert!(
        counter(
            "jwl_consumer_batch_failures_total",
            &[("consumer", &jwl_outbox::events_durable(h.service))],
        ) >= FLAPS as u64
    );
    running.stop().await
}

#[tokio::test]
async fn a_message_arriving_past_max_attempts_is_dead_lettered_unhandled() -> anyhow::Result<()> {
    use futures::StreamExt;
    use jwl_outbox::transport::{ConsumerSpec, Subscriber};

    let h = Harness::start().await?;
    let event = captured(1);
    h.publish_event(&event, "crash-looped").await?;
    // deliver it max_attempts times without handling it, as crash-looping replicas would
    let spec = ConsumerSpec {
        prefetch: 1,
        ..h.events_consumer_spec()
    };
    let mut deliveries = h.broker.subscribe(&spec).await?;
    for expected_attempt in 1..=h.settings.max_attempts {
        let delivery = tokio::time::timeout(SOON, deliveries.next())
            .await?
            .expect("a delivery")?;
        assert_eq!(delivery.attempt(), expected_attempt);
        assert_eq!(delivery.stream_sequence(), 1);
        delivery.nak(Duration::ZERO).await?;
    }
    drop(deliveries);

    let running = h.run();
    let dead = eventually("it is dead-lettered", Duration::from_secs(20), || async {
        h.dead_letters().await.ok().filter(|dead| !dead.is_empty())
    })
    .await?;
    assert_eq!(header(&dead[0], "jwl-dlq-reason"), Some("max_attempts"));
    assert!(
        h.attempts_of(&event).await?.is_empty(),
        "dead-lettered without being handled"
    );
    running.stop().await
}

/// Counts what goes through a real publisher.
struct CountingPublisher {
    inner: Arc<dyn Publisher>,
    published: AtomicUsize,
}

#[async_trait]
impl Publisher for CountingPublisher {
    async fn publish_batch(
        &self,
        batch: &[OutboundMessage],
    ) -> Vec<Result<PublishReceipt, TransportError>> {
        self.published.fetch_add(batch.len(), Ordering::SeqCst);
        self.inner.publish_batch(batch).await
    }
}

#[tokio::test]
async fn only_one_relay_per_schema_publishes() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let settings = Arc::new(h.settings.clone());
    let publishers: Vec<Arc<CountingPublisher>> = (0..2)
        .map(|_| {
            Arc::new(CountingPublisher {
                inner: Arc::new(h.broker.clone()),
                published: AtomicUsize::new(0),
            })
        })
        .collect();
    let shutdowns: Vec<CancellationToken> = (0..2).map(|_| CancellationToken::new()).collect();
    let tasks: Vec<_> = publishers
        .iter()
        .zip(&shutdowns)
        .map(|(publisher, shutdown)| {
            let signal = RelaySignal::new(settings.db_stall_timeout);
            let relay = Relay::new(
                SERVICE,
                h.pool.clone(),
                publisher.clone(),
                settings.clone(),
                signal,
            );
            tokio::spawn(relay.run(shutdown.clone()))
        })
        .collect();

    h.enqueue(&[1; 30]).await?;
    eventually("the outbox is drained", SOON, || async {
        h.pending_in_outbox().await.ok() == Some(0)
    })
    .await?;
    let counts: Vec<usize> = publishers
        .iter()
        .map(|p| p.published.load(Ordering::SeqCst))
        .collect();
    assert!(
        counts.contains(&0) && counts.contains(&30),
        "exactly one relay published: {counts:?}"
    );

    // the active relay stops: the standby takes over
    let active = counts
        .iter()
        .position(|&count| count == 30)
        .expect("an active relay");
    shutdowns[active].cancel();
    h.enqueue(&[1; 5]).await?;
    eventually("the standby drains the outbox", SOON, || async {
        h.pending_in_outbox().await.ok() == Some(0)
    })
    .await?;
    assert_eq!(publishers[1 - active].published.load(Ordering::SeqCst), 5);
    assert_eq!(h.events_in_stream().await?.len(), 35);

    shutdowns[1 - active].cancel();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(10), task).await??;
    }
    Ok(())
}

/// Fails the first publication of one message transiently, without passing it on (as when the
/// broker refuses it or the connection drops it), and passes everything else to the broker.
struct FailsOncePublisher {
    inner: Arc<dyn Publisher>,
    dedup_id: String,
    failed: AtomicUsize,
}

#[async_trait]
impl Publisher for FailsOncePublisher {
    async fn publish_batch(
        &self,
        batch: &[OutboundMessage],
    ) -> Vec<Result<PublishReceipt, TransportError>> {
        let target = batch.iter().position(|m| m.dedup_id == self.dedup_id);
        let Some(target) = target.filter(|_| self.failed.fetch_add(1, Ordering::SeqCst) == 0)
        else {
            return self.inner.publish_batch(batch).await;
        };
        let mut passed: Vec<OutboundMessage> = batch.to_vec();
        passed.remove(target);
        let mut results = self.inner.publish_batch(&passed).await;
        results.insert(
            target,
            Err(TransportError::Publish("injected transient failure".into())),
        );
        results
    }
}

/// `captured` events of one order.
fn captured_of(order_id: jwl_events::OrderId, count: usize) -> Vec<Envelope> {
    (0..count)
        .map(|i| {
            Envelope::new(
                Service::Payment,
                jwl_events::EventData::PaymentCaptured(jwl_events::PaymentCaptured {
                    order_id,
                    amount_cents: i as i64 + 1,
                }),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_transient_publish_failure_does_not_reorder_an_orders_events() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let order_a = jwl_events::OrderId(uuid::Uuid::now_v7());
    let order_b = jwl_events::OrderId(uuid::Uuid::now_v7());
    let a = captured_of(order_a, 3);
    let b = captured_of(order_b, 3);
    // one transaction, interleaved: a0 b0 a1 b1 a2 b2; a0 fails on its first publication
    let interleaved: Vec<Envelope> = a
        .iter()
        .zip(&b)
        .flat_map(|(a, b)| [a.clone(), b.clone()])
        .collect();
    h.enqueue_events(&interleaved).await?;
    let publisher = Arc::new(FailsOncePublisher {
        inner: Arc::new(h.broker.clone()),
        dedup_id: a[0].id.0.to_string(),
        failed: AtomicUsize::new(0),
    });
    let settings = Arc::new(h.settings.clone());
    let relay = Relay::new(
        SERVICE,
        h.pool.clone(),
        publisher.clone(),
        settings.clone(),
        RelaySignal::new(settings.db_stall_timeout),
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    eventually("the outbox is drained", SOON, || async {
        h.pending_in_outbox().await.ok() == Some(0)
    })
    .await?;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await??;
    assert!(
        publisher.failed.load(Ordering::SeqCst) >= 2,
        "the injected failure happened and a0 was published again"
    );

    let stream: Vec<String> = h
        .events_in_stream()
        .await?
        .iter()
        .map(|m| header(m, "Nats-Msg-Id").unwrap_or_default().to_owned())
        .collect();
    let of = |events: &[Envelope]| -> Vec<String> {
        let ids = ids(events);
        stream
            .iter()
            .filter(|id| ids.contains(id))
            .cloned()
            .collect()
    };
    assert_eq!(
        of(&a),
        ids(&a),
        "order A's events in the stream in outbox order"
    );
    assert_eq!(
        of(&b),
        ids(&b),
        "order B's events in the stream in outbox order"
    );
    assert_eq!(stream.len(), 6, "each event once: {stream:?}");
    Ok(())
}

#[tokio::test]
async fn nothing_is_lost_across_a_nats_server_restart() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let running = h.run();
    let mut events = h.enqueue(&[1; 20]).await?;
    eventually("the first events are handled", SOON, || async {
        h.effects_total().await.ok() == Some(20)
    })
    .await?;

    h.nats.kill().await?;
    events.extend(h.enqueue(&[1; 20]).await?);
    eventually("the relay records a failed publish", SOON, || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM outbox WHERE attempts > 0 AND last_error IS NOT NULL",
        )
        .fetch_one(&h.pool)
        .await
        .ok()
            > Some(0)
    })
    .await?;
    assert!(!h.broker.is_healthy());
    h.nats.start_again().await?;
    events.extend(h.enqueue(&[1; 10]).await?);
    h.nats.restart().await?;
    events.extend(h.enqueue(&[1; 10]).await?);

    eventually(
        "every event is handled",
        Duration::from_secs(40),
        || async { h.effects_total().await.ok() == Some(60) },
    )
    .await?;
    for event in &events {
        assert_eq!(h.effects_of(event).await?, 1);
    }
    assert_eq!(h.events_in_stream().await?.len(), 60);
    assert!(h.broker.is_healthy());
    running.stop().await
}

#[tokio::test]
async fn invalid_settings_are_refused() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let mut settings = test_settings();
    settings.nak_backoff.clear();
    let messaging = jwl_outbox::Messaging::new(SERVICE, h.pool.clone(), h.broker.clone(), settings);
    let result = messaging.relay_only(CancellationToken::new()).await;
    assert!(
        matches!(result, Err(OutboxError::InvalidSettings(_))),
        "{result:?}"
    );
    Ok(())
}

#[tokio::test]
async fn existing_streams_and_consumers_are_brought_to_the_settings() -> anyhow::Result<()> {
    use jwl_outbox::transport::{ConsumerSpec, Subscriber};

    let h = Harness::start().await?;
    let mut settings = h.settings.clone();
    settings.events_max_age = Duration::from_secs(24 * 3600);
    settings.duplicate_window = Duration::from_secs(60);
    h.broker.ensure_streams(&settings).await?;
    h.broker.ensure_streams(&settings).await?;
    let mut stream = h
        .broker
        .jetstream()
        .get_stream(&settings.events_stream)
        .await?;
    let config = stream.info().await?.config.clone();
    assert_eq!(
        (config.max_age, config.duplicate_window),
        (settings.events_max_age, settings.duplicate_window)
    );
    assert_eq!(config.subjects, [jwl_events::EVENTS_SUBJECTS]);

    let mut spec = ConsumerSpec {
        stream: settings.events_stream.clone(),
        durable_name: "test__reconciled".to_owned(),
        filter_subjects: vec![
            jwl_events::type_filter(SUBSCRIBED),
            jwl_events::type_filter(ALSO_SUBSCRIBED),
        ],
        replaces: Vec::new(),
        ack_wait: Duration::from_secs(2),
        max_ack_pending: 10,
        prefetch: 1,
    };
    drop(h.broker.subscribe(&spec).await?);
    spec.ack_wait = Duration::from_secs(5);
    spec.max_ack_pending = 20;
    drop(h.broker.subscribe(&spec).await?);
    let info = stream.consumer_info(&spec.durable_name).await?;
    assert_eq!(
        (info.config.ack_wait, info.config.max_ack_pending),
        (spec.ack_wait, 20)
    );
    assert_eq!(
        info.config.max_deliver, -1,
        "the server never drops a message by itself"
    );
    assert_eq!(info.config.filter_subjects, spec.filter_subjects);
    Ok(())
}

#[tokio::test]
async fn the_service_consumer_takes_over_from_the_per_type_consumers_of_earlier_versions()
-> anyhow::Result<()> {
    use futures::StreamExt;
    use jwl_outbox::transport::{ConsumerSpec, Subscriber};

    let h = Harness::start().await?;
    let events: Vec<Envelope> = [1, 2, 3].into_iter().map(captured).collect();
    for event in &events {
        h.publish_event(event, &event.id.0.to_string()).await?;
    }
    // an earlier version's per-type durable consumer handled (acked) the first two
    let legacy = ConsumerSpec {
        durable_name: h.consumer(),
        filter_subjects: vec![jwl_events::type_filter(SUBSCRIBED)],
        replaces: Vec::new(),
        prefetch: 1,
        ..h.events_consumer_spec()
    };
    let mut deliveries = h.broker.subscribe(&legacy).await?;
    for _ in 0..2 {
        let delivery = tokio::time::timeout(SOON, deliveries.next())
            .await?
            .expect("a delivery")?;
        delivery.ack().await?;
    }
    drop(deliveries);
    let stream = h.jetstream().get_stream(&h.settings.events_stream).await?;
    eventually("the acks are recorded", SOON, || async {
        let info = stream.consumer_info(&legacy.durable_name).await.ok()?;
        (info.ack_floor.stream_sequence == 2).then_some(())
    })
    .await?;

    let running = h.run();
    eventually("the third is handled", SOON, || async {
        h.effects_of(&events[2]).await.ok() == Some(1)
    })
    .await?;
    // the first two were not delivered again, and the old consumer is gone
    assert!(h.attempts_of(&events[0]).await?.is_empty());
    assert!(h.attempts_of(&events[1]).await?.is_empty());
    assert!(stream.consumer_info(&legacy.durable_name).await.is_err());
    running.stop().await
}

#[tokio::test]
async fn events_of_the_earlier_subject_layout_are_still_handled_after_an_upgrade()
-> anyhow::Result<()> {
    use jwl_outbox::transport::{ConsumerSpec, Subscriber};

    let h = Harness::start().await?;
    // the service's consumer as an earlier version left it: filtered on `jwl.evt.*.<type>`
    let earlier = ConsumerSpec {
        filter_subjects: [SUBSCRIBED, ALSO_SUBSCRIBED]
            .map(|ty| format!("jwl.evt.*.{}", ty.subject_token()))
            .to_vec(),
        ..h.events_consumer_spec()
    };
    drop(h.broker.subscribe(&earlier).await?);
    // an event on the earlier layout (an earlier relay's, or an outbox row written before the
    // upgrade), then one of the same order on the current layout
    let old = captured(1);
    let new = Envelope::new(
        Service::Payment,
        EventData::PaymentVoided(PaymentVoided {
            order_id: old.order_id(),
            amount_cents: 1,
        }),
    );
    let wire = jwl_events::encode(&old, HeaderStyle::Nats);
    let [current_subject, earlier_subject] = jwl_events::subjects_of(&old.order_id(), SUBSCRIBED);
    assert_eq!(wire.subject, current_subject);
    h.publish_raw(&earlier_subject, &wire.headers, wire.payload, "old")
        .await?;
    h.publish_event(&new, "new").await?;

    let running = h.run();
    eventually("both are handled", SOON, || async {
        (h.effects_of(&old).await.ok() == Some(1) && h.effects_of(&new).await.ok() == Some(1))
            .then_some(())
    })
    .await?;
    assert!(h.dead_letters().await?.is_empty());
    let stream = h.jetstream().get_stream(&h.settings.events_stream).await?;
    let info = stream.consumer_info(&earlier.durable_name).await?;
    assert_eq!(
        info.config.filter_subjects,
        h.events_consumer_spec().filter_subjects,
        "the consumer now filters on both layouts"
    );
    running.stop().await
}

#[tokio::test]
async fn the_active_relay_deletes_rows_past_retention() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    h.settings.outbox_retention = Duration::ZERO;
    h.settings.inbox_retention = Duration::ZERO;
    h.settings.housekeeping_interval = Duration::from_millis(100);
    let events = h.enqueue(&[1; 5]).await?;
    let running = h.run();
    eventually(
        "handled, then published and handled rows are deleted",
        SOON,
        || async {
            let rows: Option<(i64, i64)> = sqlx::query_as(
                "SELECT (SELECT count(*) FROM outbox), (SELECT count(*) FROM inbox)",
            )
            .fetch_one(&h.pool)
            .await
            .ok();
            h.effects_total().await.ok() == Some(5) && rows == Some((0, 0))
        },
    )
    .await?;
    assert_eq!(h.events_in_stream().await?.len(), events.len());
    running.stop().await
}

#[tokio::test]
async fn nothing_is_lost_across_a_postgres_restart() -> anyhow::Result<()> {
    let cluster = jwl_testkit::TestCluster::start().await?;
    let mut h = Harness::start_in(cluster.database().await?, Service::Inventory).await?;
    // production default: enough attempts to ride out a short database outage
    h.settings.max_attempts = 8;
    let running = h.run();
    h.enqueue(&[1; 10]).await?;
    eventually("the first events are handled", SOON, || async {
        h.effects_total().await.ok() == Some(10)
    })
    .await?;

    cluster.stop(jwl_testkit::StopMode::Immediate).await?;
    // events arriving while the database is down are redelivered, not lost or dead-lettered
    let during_outage: Vec<Envelope> = (0..10).map(|_| captured(1)).collect();
    for event in &during_outage {
        h.publish_event(event, &event.id.0.to_string()).await?;
    }
    let stream = h
        .broker
        .jetstream()
        .get_stream(&h.settings.events_stream)
        .await?;
    let consumer = jwl_outbox::events_durable(h.service);
    eventually(
        "the consumer received them while the database is down",
        SOON,
        || async {
            stream
                .consumer_info(&consumer)
                .await
                .ok()
                .map(|info| info.delivered.stream_sequence)
                >= Some(20)
        },
    )
    .await?;
    eventually("their batch failed", SOON, || async {
        counter(
            "jwl_consumer_batch_failures_total",
            &[("consumer", &consumer)],
        ) > 0
    })
    .await?;
    cluster.start_again().await?;
    h.enqueue(&[1; 10]).await?;

    eventually(
        "every event is handled",
        Duration::from_secs(30),
        || async {
            h.effects_total().await.ok() == Some(30) && h.pending_in_outbox().await.ok() == Some(0)
        },
    )
    .await?;
    for event in &during_outage {
        assert_eq!(h.effects_of(event).await?, 1);
        // held through the outage, not nak'ed: the outage cost no delivery attempt
        let attempts = h.attempts_of(event).await?;
        assert!(
            attempts.iter().all(|(n, _)| *n == 1),
            "handled on its first delivery: {attempts:?}"
        );
    }
    assert!(h.dead_letters().await?.is_empty());
    let ty = SUBSCRIBED.as_str();
    let handled = |outcome| {
        counter(
            "jwl_events_handled_total",
            &[
                ("consumer", &h.consumer()),
                ("type", ty),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!((handled("ok"), handled("dead_lettered")), (30, 0));
    running.stop().await
}

#[tokio::test]
async fn shutdown_finishes_the_batch_in_progress() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let event = captured(SLOW);
    h.publish_event(&event, "slow").await?;
    let running = h.run();
    eventually("the handler is working on it", SOON, || async {
        h.attempts_of(&event)
            .await
            .map(|attempts| !attempts.is_empty())
            .unwrap_or(false)
    })
    .await?;
    running.stop().await?;
    assert_eq!(
        h.effects_of(&event).await?,
        1,
        "the batch in progress was committed"
    );
    eventually("and acknowledged", SOON, || async {
        h.consumer_settled().await.ok() == Some(true)
    })
    .await?;
    assert_eq!(h.attempts_of(&event).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_handler_with_a_batch_way_gets_the_fresh_events_of_a_batch_together() -> anyhow::Result<()>
{
    // not a service whose counters another test of this file reads
    let mut h = Harness::start_as(Service::Dispatch).await?;
    // the five orders in one batch, not split between workers
    h.settings.consumer_workers = 1;
    let events: Vec<Envelope> = [1, 2, EMITS, 4, 5].into_iter().map(captured).collect();
    for event in &events {
        h.publish_event(event, &event.id.0.to_string()).await?;
    }
    let running = h.run_with(h.batching_handler());
    eventually("the events are handled", SOON, || async {
        h.effects_total().await.ok() == Some(5)
    })
    .await?;
    // what a handler emits in reaction to an event is published once, whichever way took it
    // (this one, a payment event from the dispatch service, its consumer then dead-letters)
    let emitter = events[2].id.0.to_string();
    eventually("the emitted event is published", SOON, || async {
        h.events_in_stream().await.is_ok_and(|stream| {
            stream
                .iter()
                .any(|m| header(m, "ce-causationid") == Some(emitter.as_str()))
        })
    })
    .await?;
    eventually("the consumer is settled", SOON, || async {
        h.consumer_settled().await.ok() == Some(true)
    })
    .await?;
    // the batch way took every batch of two or more, and only those: a worker batches what
    // has reached it, so the broker's deliveries may split the five (say 4 + 1), and an event
    // alone in its batch is handled one by one
    let batches = h.batches().await?;
    assert!(!batches.is_empty(), "the batch way was never used");
    assert!(
        batches.iter().all(|(n, refused)| *n >= 2 && !refused),
        "{batches:?}"
    );
    let one_by_one: i64 = sqlx::query_scalar("SELECT count(*) FROM attempts")
        .fetch_one(&h.pool)
        .await?;
    assert_eq!(
        i64::from(batches.iter().map(|(n, _)| n).sum::<i32>()) + one_by_one,
        5,
        "each event handled once: {batches:?}, {one_by_one} one by one"
    );
    let reactions = h
        .events_in_stream()
        .await?
        .iter()
        .filter(|m| header(m, "ce-causationid") == Some(emitter.as_str()))
        .count();
    assert_eq!(reactions, 1, "one event emitted in reaction");
    // a redelivery is absorbed by the inbox, not handled again
    h.publish_event(&events[0], "redelivered").await?;
    eventually("the redelivery is settled", SOON, || async {
        h.consumer_settled().await.ok() == Some(true)
    })
    .await?;
    assert_eq!(h.effects_total().await?, 5);
    running.stop().await
}

#[tokio::test]
async fn a_lingering_handler_gets_what_arrives_during_its_linger_in_one_batch() -> anyhow::Result<()>
{
    let mut h = Harness::start_as(Service::Dispatch).await?;
    h.settings.consumer_workers = 1;
    h.settings.consumer_batch_size = 4;
    // far longer than the test takes: the batch ends when it is full
    let running = h.run_with(h.lingering_batching_handler(Duration::from_secs(60)));
    let events: Vec<Envelope> = [1, 2, 3, 4].into_iter().map(captured).collect();
    h.publish_event(&events[0], &events[0].id.0.to_string())
        .await?;
    eventually("the first event is delivered", SOON, || async {
        h.consumer_counts().await.ok() == Some((0, 1))
    })
    .await?;
    for event in &events[1..] {
        h.publish_event(event, &event.id.0.to_string()).await?;
    }
    eventually("the events are handled", SOON, || async {
        h.effects_total().await.ok() == Some(4)
    })
    .await?;
    // the first waited for the other three (without the linger it is handled at once, alone,
    // one by one), and the batch, full, did not wait out the minute
    assert_eq!(h.batches().await?, vec![(4, false)]);
    let one_by_one: i64 = sqlx::query_scalar("SELECT count(*) FROM attempts")
        .fetch_one(&h.pool)
        .await?;
    assert_eq!(one_by_one, 0);
    running.stop().await
}

#[tokio::test]
async fn a_batch_the_batch_way_refuses_is_handled_one_by_one() -> anyhow::Result<()> {
    // not a service whose counters another test of this file reads
    let mut h = Harness::start_as(Service::Dispatch).await?;
    h.settings.consumer_workers = 1;
    let events: Vec<Envelope> = [1, 2, PERMANENT, 4, 5].into_iter().map(captured).collect();
    for event in &events {
        h.publish_event(event, &event.id.0.to_string()).await?;
    }
    let running = h.run_with(h.batching_handler());
    eventually("the good events are handled", SOON, || async {
        h.effects_total().await.ok() == Some(4)
    })
    .await?;
    let dead = eventually("the bad event is dead-lettered", SOON, || async {
        h.dead_letters().await.ok().filter(|dead| !dead.is_empty())
    })
    .await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header(&dead[0], "jwl-dlq-error"),
        Some("amount refused by the test handler")
    );
    assert_eq!(h.effects_of(&events[2]).await?, 0);
    // a batch way given the bad event refused it, and the one-by-one way then judged each (the
    // broker's deliveries may also leave it alone in its batch, handled one by one at once)
    let holding = h.batches_holding(&events[2]).await?;
    assert!(holding.iter().all(|refused| *refused), "{holding:?}");
    let batches = h.batches().await?;
    assert!(!batches.is_empty(), "the batch way was never used");
    running.stop().await
}

/// A handler whose dependency can be switched off: while it is off, the handler reports it
/// unavailable, and it is not ready from the first time it did (as a circuit breaker learns of
/// an outage from a failed call) until the dependency is back.
struct DependentHandler {
    inner: Arc<RecordingHandler>,
    down: std::sync::atomic::AtomicBool,
    /// Whether the handler learned of the outage.
    tripped: std::sync::atomic::AtomicBool,
    back: tokio::sync::Notify,
    unavailable: AtomicUsize,
}

impl DependentHandler {
    fn up(&self) {
        self.down.store(false, Ordering::SeqCst);
        self.tripped.store(false, Ordering::SeqCst);
        self.back.notify_waiters();
    }
}

#[async_trait]
impl jwl_outbox::Handler for DependentHandler {
    fn subscriptions(&self) -> &'static [jwl_events::EventType] {
        self.inner.subscriptions()
    }

    async fn handle(
        &self,
        ctx: &mut jwl_outbox::HandlerContext<'_>,
        event: &Envelope,
    ) -> Result<(), jwl_outbox::HandlerError> {
        if self.down.load(Ordering::SeqCst) {
            self.tripped.store(true, Ordering::SeqCst);
            self.unavailable.fetch_add(1, Ordering::SeqCst);
            return Err(jwl_outbox::HandlerError::unavailable(
                "the dependency is down",
            ));
        }
        self.inner.handle(ctx, event).await
    }

    async fn ready(&self) {
        loop {
            let back = self.back.notified();
            if !self.tripped.load(Ordering::SeqCst) {
                return;
            }
            back.await;
        }
    }
}

#[tokio::test]
async fn an_unavailable_dependency_holds_messages_without_spending_attempts() -> anyhow::Result<()>
{
    // a service of its own: the test reads its consumer's metrics
    let h = Harness::start_as(Service::Order).await?;
    let handler = Arc::new(DependentHandler {
        inner: h.handler(),
        down: true.into(),
        tripped: false.into(),
        back: tokio::sync::Notify::new(),
        unavailable: AtomicUsize::new(0),
    });
    let events: Vec<Envelope> = (0..5).map(|_| captured(1)).collect();
    h.enqueue_events(&events).await?;
    let running = h.run_with(handler.clone());
    let consumer = jwl_outbox::events_durable(h.service);
    eventually("the loop pauses for the dependency", SOON, || async {
        gauge(
            "jwl_consumer_paused",
            &[("consumer", &consumer), ("cause", "dependency")],
        ) == Some(1.0)
    })
    .await?;
    // the outage lasts longer than max_attempts deliveries would (ack_wait each)
    let outage = h.settings.ack_wait * (h.settings.max_attempts + 1);
    tokio::time::sleep(outage).await;
    assert_eq!(
        h.effects_total().await?,
        0,
        "nothing handled while it is down"
    );
    handler.up();
    eventually("all are handled once it is back", SOON, || async {
        h.effects_total().await.ok() == Some(5)
    })
    .await?;
    assert!(h.dead_letters().await?.is_empty(), "nothing dead-lettered");
    for event in &events {
        let attempts: Vec<i32> = h
            .attempts_of(event)
            .await?
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(attempts, [1], "handled at its first delivery");
    }
    // the handler was told of the outage by the first batch, then not called until it was ready
    let unavailable = handler.unavailable.load(Ordering::SeqCst);
    assert!((1..=5).contains(&unavailable), "{unavailable}");
    eventually("the loop resumed", SOON, || async {
        gauge(
            "jwl_consumer_paused",
            &[("consumer", &consumer), ("cause", "dependency")],
        ) == Some(0.0)
    })
    .await?;
    running.stop().await
}

/// A relay of `h`'s schema publishing with `publisher` that never polls within a test (rows
/// reach the broker by a wake-up or a hand-over only), once it leads: it published a first row,
/// woken in-process by its signal.
struct SleepyRelay {
    signal: RelaySignal,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl SleepyRelay {
    async fn leading(h: &mut Harness, publisher: Arc<dyn Publisher>) -> anyhow::Result<Self> {
        h.settings.relay_poll_interval = Duration::from_secs(60);
        h.settings.db_stall_timeout = Duration::from_secs(120);
        let signal = RelaySignal::new(h.settings.db_stall_timeout);
        let relay = Relay::new(
            SERVICE,
            h.pool.clone(),
            publisher,
            Arc::new(h.settings.clone()),
            signal.clone(),
        );
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(relay.run(shutdown.clone()));
        let first = captured_of(jwl_events::OrderId(uuid::Uuid::now_v7()), 1);
        commit_events(h, &first).await?;
        signal.committed(&h.pool).await;
        eventually("the relay publishes a first row", SOON, || async {
            h.pending_in_outbox().await.ok() == Some(0)
        })
        .await?;
        Ok(Self {
            signal,
            shutdown,
            task,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task).await??;
        Ok(())
    }
}

/// Writes `events` in one transaction and commits it, returning its rows (nobody is told).
async fn commit_events(h: &Harness, events: &[Envelope]) -> anyhow::Result<jwl_outbox::Enqueued> {
    let mut tx = h.pool.begin().await?;
    let refs: Vec<&Envelope> = events.iter().collect();
    let rows = jwl_outbox::enqueue_all(&mut tx, &refs).await?;
    tx.commit().await?;
    Ok(rows)
}

/// Waits until all of `events` are in the events stream, then checks that each is there once,
/// in order.
async fn published_in_order(h: &Harness, events: &[Envelope]) -> anyhow::Result<()> {
    let in_stream = || async {
        let wanted = ids(events);
        let ids: Vec<String> = h
            .events_in_stream()
            .await?
            .iter()
            .filter_map(|m| header(m, "Nats-Msg-Id"))
            .filter(|id| wanted.iter().any(|w| w == id))
            .map(str::to_owned)
            .collect();
        anyhow::Ok(ids)
    };
    eventually("the rows are in the stream", SOON, || async {
        in_stream().await.is_ok_and(|ids| ids.len() >= events.len())
    })
    .await?;
    assert_eq!(
        in_stream().await?,
        ids(events),
        "each once, in outbox order"
    );
    Ok(())
}

async fn marked_published(h: &Harness) -> anyhow::Result<()> {
    eventually("the relay marks the rows published", SOON, || async {
        h.pending_in_outbox().await.ok() == Some(0)
    })
    .await
}

#[tokio::test]
async fn committed_rows_are_handed_over_without_waking_the_relay_and_marked_by_it()
-> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let broker = Arc::new(h.broker.clone());
    let relay = SleepyRelay::leading(&mut h, broker).await?;

    let events = captured_of(jwl_events::OrderId(uuid::Uuid::now_v7()), 3);
    let rows = commit_events(&h, &events).await?;
    let wakeups = relay.signal.wakeups();
    relay.signal.committed_rows(&h.pool, rows).await;
    published_in_order(&h, &events).await?;
    marked_published(&h).await?;
    assert_eq!(
        relay.signal.wakeups(),
        wakeups,
        "handed over: the relay was not woken to claim them"
    );
    relay.stop().await
}

#[tokio::test]
async fn rows_behind_an_unpublished_row_of_their_order_are_left_to_the_relay_and_kept_in_order()
-> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let broker = Arc::new(h.broker.clone());
    let relay = SleepyRelay::leading(&mut h, broker).await?;

    let events = captured_of(jwl_events::OrderId(uuid::Uuid::now_v7()), 2);
    // the first, as another process would write it, its NOTIFY not there yet
    commit_events(&h, &events[..1]).await?;
    let rows = commit_events(&h, &events[1..]).await?;
    let wakeups = relay.signal.wakeups();
    relay.signal.committed_rows(&h.pool, rows).await;
    assert_ne!(
        relay.signal.wakeups(),
        wakeups,
        "the relay is woken instead"
    );
    published_in_order(&h, &events).await?;
    relay.stop().await
}

#[tokio::test]
async fn a_failed_hand_over_is_the_relays_to_retry() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let events = captured_of(jwl_events::OrderId(uuid::Uuid::now_v7()), 2);
    let publisher = Arc::new(FailsOncePublisher {
        inner: Arc::new(h.broker.clone()),
        dedup_id: events[0].id.0.to_string(),
        failed: AtomicUsize::new(0),
    });
    let relay = SleepyRelay::leading(&mut h, publisher.clone()).await?;

    let rows = commit_events(&h, &events).await?;
    relay.signal.committed_rows(&h.pool, rows).await;
    published_in_order(&h, &events).await?;
    assert!(
        publisher.failed.load(Ordering::SeqCst) >= 2,
        "the hand-over failed and the relay published the row again"
    );
    marked_published(&h).await?;
    relay.stop().await
}
