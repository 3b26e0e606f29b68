//! The relay and the consumer loop ([`Messaging`]) over Kafka: a private tansu broker and a
//! private database; events go from the outbox through Kafka to the handler, a transient failure
//! is retried through the retry topic with counted attempts, and a permanent one is
//! dead-lettered. Passes without doing anything when tansu is not installed (it is optional).

mod support;

use std::sync::Arc;

use futures::StreamExt;
use jwl_outbox::transport::{Broker, ConsumerSpec, Subscriber};
use jwl_outbox::{KafkaBroker, KafkaSettings, Messaging};
use support::{PERMANENT, RecordingHandler, Running, SERVICE, SOON, TRANSIENT_TWICE};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messaging_relays_handles_retries_and_dead_letters_over_kafka() -> anyhow::Result<()> {
    let Some(tansu) = jwl_testkit::tansu().await? else {
        return Ok(());
    };
    let db = jwl_testkit::database().await?;
    let pool = support::test_pool(&db).await?;
    let settings = support::test_settings();
    let kafka = KafkaSettings {
        partitions: 4,
        ..KafkaSettings::new(tansu.bootstrap_servers())
    };
    let broker = KafkaBroker::connect(kafka, &settings).await?;
    let shutdown = CancellationToken::new();
    let running = Running {
        shutdown: shutdown.clone(),
        task: tokio::spawn(
            Messaging::new(SERVICE, pool.clone(), broker.clone(), settings.clone())
                .run(Arc::new(RecordingHandler::new(pool.clone())), shutdown),
        ),
    };

    let ok = [1, 2, 3, 4, 5].map(support::captured);
    let transient = support::captured(TRANSIENT_TWICE);
    let permanent = support::captured(PERMANENT);
    let mut tx = pool.begin().await?;
    for event in ok.iter().chain([&transient, &permanent]) {
        jwl_outbox::enqueue(&mut tx, event).await?;
    }
    tx.commit().await?;

    jwl_testkit::eventually("every event to be handled once", SOON * 2, || async {
        let handled: i64 = sqlx::query_scalar("SELECT count(DISTINCT event_id) FROM effects")
            .fetch_one(&pool)
            .await
            .ok()?;
        (handled == ok.len() as i64 + 1).then_some(())
    })
    .await?;
    let attempts: Vec<i32> =
        sqlx::query_scalar("SELECT attempt FROM attempts WHERE event_id = $1 ORDER BY at")
            .bind(transient.id.0)
            .fetch_all(&pool)
            .await?;
    assert_eq!(attempts, [1, 2, 3], "the transient failure's attempts");
    let effects: i64 = sqlx::query_scalar("SELECT count(*) FROM effects")
        .fetch_one(&pool)
        .await?;
    assert_eq!(effects, ok.len() as i64 + 1, "each event has one effect");

    // the permanent failure is in the dead-letter topic, with its reason
    let dlq = ConsumerSpec {
        stream: settings.dlq_stream.clone(),
        durable_name: "test_dlq_reader".to_owned(),
        filter_subjects: vec!["jwl.dlq.>".to_owned()],
        replaces: Vec::new(),
        ack_wait: settings.ack_wait,
        max_ack_pending: 100,
        prefetch: 10,
    };
    let mut letters = broker.subscribe(&dlq).await?;
    let letter = tokio::time::timeout(SOON, letters.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the dead-letter subscription ended"))??;
    let headers = letter.headers();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| *value)
    };
    assert_eq!(header("jwl-dlq-reason"), Some("permanent"));
    let permanent_id = permanent.id.0.to_string();
    assert_eq!(header("ce-id"), Some(permanent_id.as_str()));
    letter.ack().await?;

    jwl_testkit::eventually("the outbox to be published", SOON, || async {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&pool)
                .await
                .ok()?;
        (pending == 0).then_some(())
    })
    .await?;
    assert!(broker.is_healthy());
    running.stop().await?;
    Ok(())
}
