//! The replay channel and sequenced dead letters against a real PostgreSQL and a real
//! nats-server: replay in `inbox` and `rerun` modes, per-service routing, parking behind a dead
//! letter, release by redriving the head and by a `release` control message.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use async_trait::async_trait;
use jwl_events::{
    CancelReason, Envelope, EventData, EventType, HeaderStyle, OrderCancelRequested, OrderId,
    PaymentCaptured, PaymentVoided, Service,
};
use jwl_outbox::transport::{
    Broker, ConsumerBacklog, ConsumerSpec, DeadLetterQuery, Deliveries, EventQuery, FollowedEvents,
    History, Keep, NamedBacklog, OutboundMessage, PublishReceipt, Publisher, StoredMessage,
    Subscriber,
};
use jwl_outbox::{JetStreamBroker, Messaging, MessagingSettings, TransportError};
use jwl_testkit::eventually;
use support::*;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A `payment.captured` of `order`.
fn captured_for(order: OrderId, amount_cents: i64) -> Envelope {
    Envelope::new(
        Service::Payment,
        EventData::PaymentCaptured(PaymentCaptured {
            order_id: order,
            amount_cents,
        }),
    )
}

/// Publishes `event` to `service`'s replay channel, as the replay tools do.
async fn replay(
    h: &Harness,
    service: Service,
    event: &Envelope,
    mode: &str,
    origin: &str,
    run_id: &str,
) -> anyhow::Result<()> {
    let wire = jwl_events::encode(event, HeaderStyle::Nats);
    let mut headers = wire.headers.clone();
    headers.push(("jwl-replay-mode".to_owned(), mode.to_owned()));
    headers.push(("jwl-replay-origin".to_owned(), origin.to_owned()));
    let subject = format!(
        "jwl.replay.{}.{}.{}",
        service.as_str(),
        event.order_id(),
        event.event_type().subject_token()
    );
    h.publish_raw(
        &subject,
        &headers,
        wire.payload,
        &format!("replay:{run_id}:{origin}"),
    )
    .await
}

/// Redrives a dead letter as `jwl dlq redrive` does: its original headers and payload, to the
/// consumer's service, with origin `dlq:<dlq seq>`.
async fn redrive(h: &Harness, letter: &StreamMessage, run_id: &str) -> anyhow::Result<()> {
    let headers: Vec<(String, String)> = letter
        .headers
        .iter()
        .flat_map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(move |value| (name.to_owned(), value.as_str().to_owned()))
        })
        .filter(|(name, _)| {
            let lower = name.to_ascii_lowercase();
            !lower.starts_with("jwl-dlq-") && !lower.starts_with("nats-")
        })
        .collect();
    let original = header(letter, "jwl-dlq-subject").unwrap_or_default();
    let (order, ty) = jwl_events::parse_subject(original)
        .ok_or_else(|| anyhow::anyhow!("not an events subject: {original}"))?;
    let origin = format!("dlq:{}", letter.sequence);
    let mut headers = headers;
    headers.push(("jwl-replay-mode".to_owned(), "inbox".to_owned()));
    headers.push(("jwl-replay-origin".to_owned(), origin.clone()));
    let subject = format!(
        "jwl.replay.{}.{order}.{}",
        h.service.as_str(),
        ty.subject_token()
    );
    h.publish_raw(
        &subject,
        &headers,
        letter.payload.to_vec(),
        &format!("replay:{run_id}:{origin}"),
    )
    .await
}

/// Whether `service`'s replay consumer has nothing pending or unacknowledged, and how many
/// messages it was delivered.
async fn replay_consumer(h: &Harness, service: Service) -> anyhow::Result<(bool, u64)> {
    let stream = h
        .broker
        .jetstream()
        .get_stream(&h.settings.replay_stream)
        .await?;
    let info = stream
        .consumer_info(format!("{}__replay", service.as_str()))
        .await?;
    Ok((
        info.num_pending == 0 && info.num_ack_pending == 0,
        info.delivered.consumer_sequence,
    ))
}

async fn inbox_consumers(h: &Harness, event: &Envelope) -> anyhow::Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT consumer FROM inbox WHERE event_id = $1 ORDER BY consumer")
            .bind(event.id.0)
            .fetch_all(&h.pool)
            .await?,
    )
}

async fn count(h: &Harness, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(&h.pool)
        .await?)
}

/// The events the handler saw (successfully or not), in the order it saw them.
async fn attempt_order(h: &Harness) -> anyhow::Result<Vec<Uuid>> {
    Ok(
        sqlx::query_scalar("SELECT event_id FROM attempts ORDER BY at")
            .fetch_all(&h.pool)
            .await?,
    )
}

#[tokio::test]
async fn replay_in_inbox_mode_skips_a_handled_event_and_handles_a_new_one() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let running = h.run();
    let handled = captured(1);
    h.publish_event(&handled, "live-1").await?;
    eventually("the live event is handled", SOON, || async {
        h.effects_of(&handled).await.ok() == Some(1)
    })
    .await?;

    let new = captured(2);
    replay(&h, SERVICE, &handled, "inbox", "events:1", "run-a").await?;
    replay(&h, SERVICE, &new, "inbox", "events:2", "run-a").await?;
    eventually(
        "the new event is handled through the replay",
        SOON,
        || async { h.effects_of(&new).await.ok() == Some(1) },
    )
    .await?;
    eventually("the replay consumer is settled", SOON, || async {
        replay_consumer(&h, SERVICE).await.ok() == Some((true, 2))
    })
    .await?;
    assert_eq!(h.effects_of(&handled).await?, 1, "inbox mode is a no-op");
    assert_eq!(h.attempts_of(&handled).await?.len(), 1);
    // handled under the live consumer's inbox name
    assert_eq!(inbox_consumers(&h, &new).await?, [h.consumer()]);
    assert!(h.dead_letters().await?.is_empty());
    running.stop().await
}

#[tokio::test]
async fn rerun_mode_repeats_the_effect_once_per_replay() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let running = h.run();
    let event = captured(1);
    h.publish_event(&event, "live-1").await?;
    eventually("the live event is handled", SOON, || async {
        h.effects_of(&event).await.ok() == Some(1)
    })
    .await?;

    replay(&h, SERVICE, &event, "rerun", "events:1", "run-a").await?;
    // the same replay message again (a resumed run): absorbed by the broker
    replay(&h, SERVICE, &event, "rerun", "events:1", "run-a").await?;
    replay(&h, SERVICE, &event, "rerun", "events:1", "run-b").await?;
    eventually("each replay ran the handler once", SOON, || async {
        h.effects_of(&event).await.ok() == Some(3)
    })
    .await?;
    eventually("the replay consumer is settled", SOON, || async {
        replay_consumer(&h, SERVICE).await.ok() == Some((true, 2))
    })
    .await?;
    assert_eq!(h.effects_of(&event).await?, 3);
    assert_eq!(inbox_consumers(&h, &event).await?, [h.consumer()]);
    running.stop().await
}

#[tokio::test]
async fn a_replayed_message_reaches_only_its_service() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let payment = h.run();
    // another service with the same handler, in the same schema (its inbox names differ)
    let other_service = Service::Inventory;
    let other_shutdown = CancellationToken::new();
    let other = tokio::spawn(
        Messaging::new(
            other_service,
            h.pool.clone(),
            h.broker.clone(),
            h.settings.clone(),
        )
        .run(h.handler(), other_shutdown.clone()),
    );
    eventually("both replay consumers exist", SOON, || async {
        replay_consumer(&h, SERVICE).await.is_ok()
            && replay_consumer(&h, other_service).await.is_ok()
    })
    .await?;

    let for_payment = captured(1);
    let for_other = captured(2);
    replay(&h, SERVICE, &for_payment, "inbox", "events:1", "run-a").await?;
    replay(&h, other_service, &for_other, "inbox", "events:2", "run-a").await?;
    eventually("both replays are handled", SOON, || async {
        h.effects_of(&for_payment).await.ok() == Some(1)
            && h.effects_of(&for_other).await.ok() == Some(1)
    })
    .await?;
    eventually("both replay consumers are settled", SOON, || async {
        replay_consumer(&h, SERVICE)
            .await
            .ok()
            .map(|(settled, _)| settled)
            == Some(true)
            && replay_consumer(&h, other_service)
                .await
                .ok()
                .map(|(settled, _)| settled)
                == Some(true)
    })
    .await?;

    assert_eq!(
        inbox_consumers(&h, &for_payment).await?,
        [h.consumer()],
        "only payment handled its replay"
    );
    assert_eq!(
        inbox_consumers(&h, &for_other).await?,
        [jwl_outbox::durable_name(other_service, SUBSCRIBED)],
        "only inventory handled its replay"
    );
    // each replay consumer was delivered exactly one message: its own
    assert_eq!(replay_consumer(&h, SERVICE).await?, (true, 1));
    assert_eq!(replay_consumer(&h, other_service).await?, (true, 1));

    other_shutdown.cancel();
    other.await??;
    payment.stop().await
}

#[tokio::test]
async fn a_replayed_type_the_handler_does_not_consume_is_dead_lettered() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let running = h.run();
    let cancel = Envelope::new(
        Service::Order,
        EventData::OrderCancelRequested(OrderCancelRequested {
            order_id: OrderId(Uuid::now_v7()),
            reason: CancelReason::Customer,
        }),
    );
    replay(&h, SERVICE, &cancel, "inbox", "events:9", "run-a").await?;
    let dead = eventually("the replay is dead-lettered", SOON, || async {
        h.dead_letters().await.ok().filter(|dead| !dead.is_empty())
    })
    .await?;
    let letter = &dead[0];
    assert_eq!(header(letter, "jwl-dlq-reason"), Some("permanent"));
    assert_eq!(header(letter, "jwl-dlq-consumer"), Some("payment__replay"));
    assert!(
        header(letter, "jwl-dlq-error")
            .unwrap_or_default()
            .contains("jwl.order.cancel_requested is not handled by service payment"),
        "{:?}",
        header(letter, "jwl-dlq-error")
    );
    assert_eq!(
        count(&h, "SELECT count(*) FROM dead_letter_holds").await?,
        0
    );
    assert_eq!(h.effects_total().await?, 0);
    running.stop().await
}

/// A `payment.voided` of `order` (the service's second consumer).
fn voided_for(order: OrderId, amount_cents: i64) -> Envelope {
    Envelope::new(
        Service::Payment,
        EventData::PaymentVoided(PaymentVoided {
            order_id: order,
            amount_cents,
        }),
    )
}

/// Order X: a poison event, then two good ones — the first for the service's other consumer,
/// which the hold covers too; order Y: two good ones, interleaved. Returns (x events, y events)
/// once Y is handled, X's head dead-lettered and the rest of X parked.
async fn poison_x_and_park(h: &Harness) -> anyhow::Result<(Vec<Envelope>, Vec<Envelope>)> {
    let (x, y) = (OrderId(Uuid::now_v7()), OrderId(Uuid::now_v7()));
    let xs = vec![
        captured_for(x, REFUSED_UNTIL_FIXED),
        voided_for(x, 2),
        captured_for(x, 3),
    ];
    let ys = vec![captured_for(y, 4), captured_for(y, 5)];
    for event in [&xs[0], &ys[0]] {
        h.publish_event(event, &event.id.0.to_string()).await?;
    }
    // consumers of different types run concurrently: X is held from its dead letter on
    eventually("X is held", SOON, || async {
        count(h, "SELECT count(*) FROM dead_letter_holds")
            .await
            .ok()
            == Some(1)
    })
    .await?;
    for event in [&xs[1], &ys[1], &xs[2]] {
        h.publish_event(event, &event.id.0.to_string()).await?;
    }
    eventually("order Y is handled", SOON, || async {
        h.effects_of(&ys[1]).await.ok() == Some(1) && h.effects_of(&ys[0]).await.ok() == Some(1)
    })
    .await?;
    eventually("X's later events are parked", SOON, || async {
        count(h, "SELECT count(*) FROM parked_messages").await.ok() == Some(2)
    })
    .await?;
    eventually("the consumer is settled", SOON, || async {
        h.consumer_settled().await.ok() == Some(true)
    })
    .await?;
    Ok((xs, ys))
}

#[tokio::test]
async fn a_poison_event_parks_its_orders_later_events_while_other_orders_go_on()
-> anyhow::Result<()> {
    let h = Harness::start().await?;
    let running = h.run();
    let (xs, _ys) = poison_x_and_park(&h).await?;
    let consumer = h.consumer();

    let dead = h.dead_letters().await?;
    assert_eq!(dead.len(), 1, "only the head is dead-lettered");
    assert_eq!(
        header(&dead[0], "ce-id"),
        Some(xs[0].id.0.to_string().as_str())
    );
    // the dead letter's dedup id: a redelivery after a crash does not duplicate it
    assert_eq!(
        header(&dead[0], "Nats-Msg-Id"),
        Some(format!("dlq:{consumer}:{}", xs[0].id.0).as_str())
    );
    let hold: (String, Uuid, Uuid) =
        sqlx::query_as("SELECT consumer, order_id, head_event_id FROM dead_letter_holds")
            .fetch_one(&h.pool)
            .await?;
    assert_eq!(hold, (consumer.clone(), xs[0].order_id().0, xs[0].id.0));
    let parked: Vec<(String, Uuid, Uuid)> = sqlx::query_as(
        "SELECT consumer, order_id, event_id FROM parked_messages ORDER BY stream_seq",
    )
    .fetch_all(&h.pool)
    .await?;
    let other_consumer = jwl_outbox::durable_name(SERVICE, ALSO_SUBSCRIBED);
    assert_eq!(
        parked,
        [
            (other_consumer, xs[0].order_id().0, xs[1].id.0),
            (consumer.clone(), xs[0].order_id().0, xs[2].id.0),
        ]
    );
    for event in &xs {
        assert_eq!(h.effects_of(event).await?, 0);
    }
    assert_eq!(
        h.attempts_of(&xs[1]).await?.len(),
        0,
        "parked events are not handled"
    );
    running.stop().await
}

#[tokio::test]
async fn redriving_the_head_releases_the_parked_events_in_order() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let running = h.run();
    let (xs, _ys) = poison_x_and_park(&h).await?;
    let dead = h.dead_letters().await?;
    assert_eq!(dead.len(), 1);

    sqlx::query("INSERT INTO fixed (event_id) VALUES ($1)")
        .bind(xs[0].id.0)
        .execute(&h.pool)
        .await?;
    redrive(&h, &dead[0], "run-a").await?;
    eventually("order X is handled", SOON, || async {
        let mut all = true;
        for event in &xs {
            all &= h.effects_of(event).await.ok() == Some(1);
        }
        all
    })
    .await?;
    assert_eq!(
        count(&h, "SELECT count(*) FROM dead_letter_holds").await?,
        0
    );
    assert_eq!(count(&h, "SELECT count(*) FROM parked_messages").await?, 0);
    let order = attempt_order(&h).await?;
    let x_order: Vec<Uuid> = order
        .into_iter()
        .filter(|id| xs.iter().any(|event| event.id.0 == *id))
        .collect();
    // the first refusal, the redrive, then the parked events in stream order
    assert_eq!(x_order, [xs[0].id.0, xs[0].id.0, xs[1].id.0, xs[2].id.0]);
    assert_eq!(h.dead_letters().await?.len(), 1, "no new dead letter");
    running.stop().await
}

#[tokio::test]
async fn a_release_control_message_releases_the_parked_events_in_order() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let running = h.run();
    let (xs, _ys) = poison_x_and_park(&h).await?;
    let consumer = h.consumer();

    let headers = vec![
        ("jwl-replay-mode".to_owned(), "release".to_owned()),
        ("jwl-release-consumer".to_owned(), consumer.clone()),
        (
            "jwl-release-reason".to_owned(),
            "discarded by test".to_owned(),
        ),
    ];
    h.publish_raw(
        &format!(
            "jwl.replay.{}.{}.control.release",
            SERVICE.as_str(),
            xs[0].order_id()
        ),
        &headers,
        Vec::new(),
        "release-1",
    )
    .await?;
    eventually("X's parked events are handled", SOON, || async {
        h.effects_of(&xs[1]).await.ok() == Some(1) && h.effects_of(&xs[2]).await.ok() == Some(1)
    })
    .await?;
    eventually("the replay consumer is settled", SOON, || async {
        replay_consumer(&h, SERVICE).await.ok() == Some((true, 1))
    })
    .await?;
    assert_eq!(
        h.effects_of(&xs[0]).await?,
        0,
        "the discarded head stays unhandled"
    );
    assert_eq!(
        count(&h, "SELECT count(*) FROM dead_letter_holds").await?,
        0
    );
    assert_eq!(count(&h, "SELECT count(*) FROM parked_messages").await?, 0);
    let x_order: Vec<Uuid> = attempt_order(&h)
        .await?
        .into_iter()
        .filter(|id| *id == xs[1].id.0 || *id == xs[2].id.0)
        .collect();
    assert_eq!(x_order, [xs[1].id.0, xs[2].id.0]);
    // a later event of X is handled at once
    let later = captured_for(xs[0].order_id(), 6);
    h.publish_event(&later, "later").await?;
    eventually("a later event of X is handled", SOON, || async {
        h.effects_of(&later).await.ok() == Some(1)
    })
    .await?;
    running.stop().await
}

/// Publishes a `release` control message for (the test consumer, `order`).
async fn release(h: &Harness, order: OrderId, msg_id: &str) -> anyhow::Result<()> {
    let headers = vec![
        ("jwl-replay-mode".to_owned(), "release".to_owned()),
        ("jwl-release-consumer".to_owned(), h.consumer()),
        (
            "jwl-release-reason".to_owned(),
            "released by test".to_owned(),
        ),
    ];
    let subject = format!("jwl.replay.{}.{order}.control.release", SERVICE.as_str());
    h.publish_raw(&subject, &headers, Vec::new(), msg_id).await
}

/// The race of parking with a release: the release's transaction deletes the hold and handles
/// the parked (slow) message for half a second; an event of the order arriving meanwhile must
/// not be parked behind the hold being deleted (the release listed the parked messages before
/// it was parked, so nothing would ever handle it): it waits for the release, then is handled.
#[tokio::test]
async fn an_event_arriving_while_its_order_is_released_is_not_orphaned() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let running = h.run();
    let x = OrderId(Uuid::now_v7());
    let head = captured_for(x, REFUSED_UNTIL_FIXED);
    let slow = captured_for(x, SLOW);
    let late = captured_for(x, 7);
    h.publish_event(&head, &head.id.0.to_string()).await?;
    eventually("X is held", SOON, || async {
        count(&h, "SELECT count(*) FROM dead_letter_holds")
            .await
            .ok()
            == Some(1)
    })
    .await?;
    h.publish_event(&slow, &slow.id.0.to_string()).await?;
    eventually("the slow event is parked", SOON, || async {
        count(&h, "SELECT count(*) FROM parked_messages").await.ok() == Some(1)
    })
    .await?;

    release(&h, x, "release-1").await?;
    eventually(
        "the release is handling the parked slow event",
        SOON,
        || async { h.attempts_of(&slow).await.ok().filter(|a| !a.is_empty()) },
    )
    .await?;
    // the release's transaction is open (the slow handler takes 500 ms): the hold is deleted
    // but not committed, and the parked messages are listed already
    h.publish_event(&late, &late.id.0.to_string()).await?;

    let orphans = "SELECT count(*) FROM parked_messages p
                   WHERE NOT EXISTS (SELECT 1 FROM dead_letter_holds d WHERE d.order_id = p.order_id)";
    eventually("the late event is handled", SOON, || async {
        h.effects_of(&late).await.ok() == Some(1)
    })
    .await
    .map_err(|error| {
        error.context("the late event was parked behind the released hold and orphaned")
    })?;
    assert_eq!(h.effects_of(&slow).await?, 1);
    assert_eq!(
        count(&h, orphans).await?,
        0,
        "no parked message without a hold"
    );
    assert_eq!(count(&h, "SELECT count(*) FROM parked_messages").await?, 0);
    assert_eq!(
        count(&h, "SELECT count(*) FROM dead_letter_holds").await?,
        0
    );
    let x_order: Vec<Uuid> = attempt_order(&h)
        .await?
        .into_iter()
        .filter(|id| *id == slow.id.0 || *id == late.id.0)
        .collect();
    assert_eq!(x_order, [slow.id.0, late.id.0], "handled in stream order");
    running.stop().await
}

#[tokio::test]
async fn a_released_event_that_fails_becomes_the_new_head() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let running = h.run();
    let x = OrderId(Uuid::now_v7());
    let xs = [
        captured_for(x, REFUSED_UNTIL_FIXED),
        captured_for(x, PERMANENT),
        captured_for(x, 3),
    ];
    for event in &xs {
        h.publish_event(event, &event.id.0.to_string()).await?;
    }
    eventually("X's later events are parked", SOON, || async {
        count(&h, "SELECT count(*) FROM parked_messages").await.ok() == Some(2)
    })
    .await?;
    let consumer = h.consumer();
    let headers = vec![
        ("jwl-replay-mode".to_owned(), "release".to_owned()),
        ("jwl-release-consumer".to_owned(), consumer.clone()),
        (
            "jwl-release-reason".to_owned(),
            "discarded by test".to_owned(),
        ),
    ];
    let subject = format!("jwl.replay.{}.{x}.control.release", SERVICE.as_str());
    h.publish_raw(&subject, &headers, Vec::new(), "release-1")
        .await?;
    let dead = eventually(
        "the failing released event is dead-lettered",
        SOON,
        || async { h.dead_letters().await.ok().filter(|dead| dead.len() == 2) },
    )
    .await?;
    assert_eq!(
        header(&dead[1], "ce-id"),
        Some(xs[1].id.0.to_string().as_str())
    );
    assert_eq!(header(&dead[1], "jwl-dlq-reason"), Some("permanent"));
    assert_eq!(
        header(&dead[1], "jwl-dlq-subject"),
        Some(jwl_events::subject(&x, xs[1].event_type()).as_str())
    );
    eventually("the new head's dead letter is unparked", SOON, || async {
        count(&h, "SELECT count(*) FROM parked_messages").await.ok() == Some(1)
    })
    .await?;
    let head: Uuid = sqlx::query_scalar("SELECT head_event_id FROM dead_letter_holds")
        .fetch_one(&h.pool)
        .await?;
    assert_eq!(head, xs[1].id.0, "the hold is re-created with the new head");
    let still_parked: Uuid = sqlx::query_scalar("SELECT event_id FROM parked_messages")
        .fetch_one(&h.pool)
        .await?;
    assert_eq!(still_parked, xs[2].id.0);
    assert_eq!(h.effects_total().await?, 0);
    running.stop().await
}

/// The test's broker, refusing to publish dead letters while `refusing` is set.
#[derive(Clone)]
struct DeadLettersRefused {
    inner: JetStreamBroker,
    refusing: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
}

#[async_trait]
impl Publisher for DeadLettersRefused {
    async fn publish_batch(
        &self,
        batch: &[OutboundMessage],
    ) -> Vec<Result<PublishReceipt, TransportError>> {
        let dead_letters = batch.iter().any(|m| m.subject.starts_with("jwl.dlq."));
        if dead_letters && self.refusing.load(Ordering::SeqCst) {
            self.refused.fetch_add(batch.len(), Ordering::SeqCst);
            return batch
                .iter()
                .map(|_| Err(TransportError::Publish("refused by the test".into())))
                .collect();
        }
        self.inner.publish_batch(batch).await
    }
}

#[async_trait]
impl Subscriber for DeadLettersRefused {
    async fn subscribe(&self, spec: &ConsumerSpec) -> Result<Deliveries, TransportError> {
        self.inner.subscribe(spec).await
    }

    async fn backlog(&self, spec: &ConsumerSpec) -> Result<ConsumerBacklog, TransportError> {
        self.inner.backlog(spec).await
    }
}

#[async_trait]
impl Broker for DeadLettersRefused {
    async fn ensure_streams(&self, settings: &MessagingSettings) -> Result<(), TransportError> {
        self.inner.ensure_streams(settings).await
    }

    fn is_healthy(&self) -> bool {
        self.inner.is_healthy()
    }

    async fn stream_available(
        &self,
        stream: &str,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        self.inner.stream_available(stream, timeout).await
    }
}

#[async_trait]
impl History for DeadLettersRefused {
    async fn follow_events(
        &self,
        settings: &MessagingSettings,
        types: &[EventType],
    ) -> Result<FollowedEvents, TransportError> {
        self.inner.follow_events(settings, types).await
    }

    async fn read_events(
        &self,
        settings: &MessagingSettings,
        query: &EventQuery,
        keep: Keep<'_>,
    ) -> Result<Vec<StoredMessage>, TransportError> {
        self.inner.read_events(settings, query, keep).await
    }

    async fn read_dead_letters(
        &self,
        settings: &MessagingSettings,
        query: &DeadLetterQuery,
        keep: Keep<'_>,
    ) -> Result<Vec<StoredMessage>, TransportError> {
        self.inner.read_dead_letters(settings, query, keep).await
    }

    async fn dead_letter(
        &self,
        settings: &MessagingSettings,
        dlq_seq: u64,
    ) -> Result<Option<StoredMessage>, TransportError> {
        self.inner.dead_letter(settings, dlq_seq).await
    }

    async fn delete_dead_letter(
        &self,
        settings: &MessagingSettings,
        dlq_seq: u64,
    ) -> Result<(), TransportError> {
        self.inner.delete_dead_letter(settings, dlq_seq).await
    }

    async fn read_dead_letter_log(
        &self,
        settings: &MessagingSettings,
    ) -> Result<Vec<StoredMessage>, TransportError> {
        self.inner.read_dead_letter_log(settings).await
    }

    async fn dead_letter_logged(
        &self,
        settings: &MessagingSettings,
        dlq_seq: u64,
    ) -> Result<bool, TransportError> {
        self.inner.dead_letter_logged(settings, dlq_seq).await
    }

    async fn consumer_backlogs(
        &self,
        settings: &MessagingSettings,
    ) -> Result<Vec<NamedBacklog>, TransportError> {
        self.inner.consumer_backlogs(settings).await
    }
}

#[tokio::test]
async fn the_dead_letter_of_a_new_head_is_published_even_if_the_first_try_fails()
-> anyhow::Result<()> {
    let h = Harness::start().await?;
    let broker = DeadLettersRefused {
        inner: h.broker.clone(),
        refusing: Arc::new(AtomicBool::new(false)),
        refused: Arc::new(AtomicUsize::new(0)),
    };
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(
        Messaging::new(SERVICE, h.pool.clone(), broker.clone(), h.settings.clone())
            .run(h.handler(), shutdown.clone()),
    );
    let x = OrderId(Uuid::now_v7());
    let xs = [
        captured_for(x, REFUSED_UNTIL_FIXED),
        captured_for(x, PERMANENT),
        captured_for(x, 3),
    ];
    for event in &xs {
        h.publish_event(event, &event.id.0.to_string()).await?;
    }
    eventually("X's later events are parked", SOON, || async {
        count(&h, "SELECT count(*) FROM parked_messages").await.ok() == Some(2)
    })
    .await?;
    assert_eq!(h.dead_letters().await?.len(), 1, "the head's dead letter");

    // the release handles the first parked event, which fails and becomes the new head; the
    // broker refuses its dead letter
    broker.refusing.store(true, Ordering::SeqCst);
    release(&h, x, "release-1").await?;
    eventually("the new head's dead letter was refused", SOON, || async {
        broker.refused.load(Ordering::SeqCst) > 0
    })
    .await?;
    let head: Uuid = sqlx::query_scalar("SELECT head_event_id FROM dead_letter_holds")
        .fetch_one(&h.pool)
        .await?;
    assert_eq!(head, xs[1].id.0, "X is held behind the new head");
    assert_eq!(
        h.dead_letters().await?.len(),
        1,
        "no dead letter for it yet"
    );

    // the broker accepts again: the owed dead letter is published without any new message
    broker.refusing.store(false, Ordering::SeqCst);
    let dead = eventually(
        "the new head's dead letter is published",
        Duration::from_secs(30),
        || async { h.dead_letters().await.ok().filter(|dead| dead.len() == 2) },
    )
    .await?;
    assert_eq!(
        header(&dead[1], "ce-id"),
        Some(xs[1].id.0.to_string().as_str())
    );
    assert_eq!(header(&dead[1], "jwl-dlq-reason"), Some("permanent"));
    assert_eq!(
        header(&dead[1], "jwl-dlq-error"),
        Some("amount refused by the test handler")
    );
    eventually("the published head is unparked", SOON, || async {
        count(&h, "SELECT count(*) FROM parked_messages").await.ok() == Some(1)
    })
    .await?;
    // and it can be released like any dead letter: the rest of X goes on
    release(&h, x, "release-2").await?;
    eventually("X's last event is handled", SOON, || async {
        h.effects_of(&xs[2]).await.ok() == Some(1)
    })
    .await?;
    assert_eq!(h.dead_letters().await?.len(), 2, "published once");

    shutdown.cancel();
    running.await??;
    Ok(())
}

#[tokio::test]
async fn a_dead_letter_never_expires() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let dlq = &h.settings.dlq_stream;
    let mut stream = h.broker.jetstream().get_stream(dlq).await?;
    assert_eq!(stream.info().await?.config.max_age, Duration::ZERO);
    // a stream created by an earlier version, with a 30-day limit, loses it
    let mut config = stream.info().await?.config.clone();
    config.max_age = Duration::from_secs(30 * 24 * 3600);
    h.broker.jetstream().update_stream(&config).await?;
    h.broker.ensure_streams(&h.settings).await?;
    let config = stream.info().await?.config.clone();
    assert_eq!(config.max_age, Duration::ZERO, "no age limit");
    assert_eq!(config.duplicate_window, h.settings.duplicate_window);
    Ok(())
}

#[tokio::test]
async fn the_replay_and_dead_letter_log_streams_are_provisioned_idempotently() -> anyhow::Result<()>
{
    let h = Harness::start().await?;
    // Harness::start provisioned once; again is a no-op
    h.broker.ensure_streams(&h.settings).await?;
    let day = std::time::Duration::from_secs(24 * 3600);
    for (name, subjects, max_age) in [
        (&h.settings.replay_stream, "jwl.replay.>", day),
        (&h.settings.dlq_log_stream, "jwl.dlqlog.>", 90 * day),
    ] {
        let mut stream = h.broker.jetstream().get_stream(name).await?;
        let config = stream.info().await?.config.clone();
        assert_eq!(config.subjects, [subjects]);
        assert_eq!(config.max_age, max_age);
        assert_eq!(config.duplicate_window, h.settings.duplicate_window);
        assert_eq!(
            config.storage,
            async_nats::jetstream::stream::StorageType::File
        );
    }
    assert_eq!(h.settings.replay_stream, "JWL_REPLAY");
    assert_eq!(h.settings.dlq_log_stream, "JWL_DLQ_LOG");
    Ok(())
}
