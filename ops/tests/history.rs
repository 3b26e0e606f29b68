//! `OrderHistory::read` against a real nats-server: one order's complete history among many
//! orders, undecodable messages, and the order's dead letters as the real outbox consumer
//! writes them (with a real PostgreSQL for its inbox).

mod support;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jwl_events::{Envelope, EventType, HeaderStyle, OrderId, Service, encode, subject};
use jwl_ops::{DeadLetterFilter, EntryEvent, OrderHistory, dead_letters, render};
use jwl_outbox::{Handler, HandlerContext, HandlerError, Messaging};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::*;
use tokio_util::sync::CancellationToken;

fn decoded(history: &OrderHistory) -> Vec<&jwl_ops::DecodedEvent> {
    history
        .events
        .iter()
        .filter_map(|entry| match &entry.event {
            EntryEvent::Decoded(event) => Some(event),
            EntryEvent::Undecodable(_) => None,
        })
        .collect()
}

#[tokio::test]
async fn history_of_one_order_among_many_is_complete_and_in_order() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let orders: Vec<OrderId> = (0..25).map(|_| OrderId::new()).collect();
    let sagas: Vec<Vec<Envelope>> = orders.iter().map(|&order| saga(order)).collect();
    let target = 7;
    let mut target_seqs = Vec::new();
    // interleaved, as a busy system writes them: step 1 of every order, then step 2, …
    for step in 0..sagas[0].len() {
        for (index, saga) in sagas.iter().enumerate() {
            let seqs = publish(&b.broker, &saga[step..=step]).await?;
            if index == target {
                target_seqs.extend(seqs);
            }
        }
    }

    let history = OrderHistory::read(&b.broker, &b.settings, &orders[target]).await?;
    assert_eq!(history.order_id, orders[target]);
    let seqs: Vec<u64> = history.events.iter().map(|e| e.stream_seq).collect();
    assert_eq!(
        seqs, target_seqs,
        "every event of the order, in stream order"
    );
    let events = decoded(&history);
    let expected = &sagas[target];
    assert_eq!(events.len(), expected.len());
    for (event, envelope) in events.iter().zip(expected) {
        assert_eq!(event.event_id, envelope.id);
        assert_eq!(event.event_type, envelope.event_type());
        assert_eq!(event.source, envelope.source);
        assert_eq!(event.time, envelope.time);
        assert_eq!(event.causation_id, envelope.causation_id);
        assert_eq!(
            event.trace_id.as_deref(),
            Some(orders[target].0.simple().to_string().as_str())
        );
        assert_eq!(event.data, envelope.data);
    }
    let summaries: Vec<&str> = events.iter().map(|e| e.summary.as_str()).collect();
    assert_eq!(summaries[1], "authorized 2598 cents");
    assert_eq!(summaries[2], "reserved 2 lines");
    assert_eq!(summaries[4], "courier courier-7 at 0.42 km");
    assert!(history.dead_letters.is_empty());
    for entry in &history.events {
        assert!(entry.subject.contains(&orders[target].to_string()));
    }

    let json = serde_json::to_value(&history)?;
    assert_eq!(json["order_id"], orders[target].to_string());
    assert_eq!(json["events"][0]["status"], "decoded");
    assert_eq!(json["events"][0]["event_type"], "jwl.order.created");
    assert_eq!(json["events"][0]["stream_seq"], target_seqs[0]);
    assert_eq!(json["events"][1]["summary"], "authorized 2598 cents");
    assert_eq!(
        json["events"][1]["causation_id"],
        expected[0].id.to_string()
    );
    assert_eq!(json["events"][1]["data"]["amount_cents"], 2598);
    assert_eq!(json["dead_letters"], serde_json::json!([]));

    let table = render::history_table(&history);
    assert_eq!(table.lines().count(), 2 + expected.len(), "{table}");
    assert!(table.contains("courier courier-7 at 0.42 km"));

    let nobody = OrderHistory::read(&b.broker, &b.settings, &OrderId::new()).await?;
    assert!(nobody.events.is_empty() && nobody.dead_letters.is_empty());
    Ok(())
}

#[tokio::test]
async fn undecodable_messages_are_listed_with_the_decode_error() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let order = OrderId::new();
    let events = saga(order);
    publish(&b.broker, &events[..2]).await?;
    // a reserved event whose payload is not JSON, then a message without CloudEvents headers
    let mut broken = encode(&events[2], HeaderStyle::Nats);
    broken.payload = b"{not json".to_vec();
    let bad_json = publish_raw(b.js(), &broken.subject, &broken.headers, &broken.payload).await?;
    let headerless = publish_raw(
        b.js(),
        &subject(&order, EventType::InventoryReserved),
        &[],
        b"{}",
    )
    .await?;
    publish(&b.broker, &events[2..]).await?;

    let history = OrderHistory::read(&b.broker, &b.settings, &order).await?;
    assert_eq!(history.events.len(), events.len() + 2);
    assert_eq!(decoded(&history).len(), events.len());
    let undecodable: Vec<(u64, &jwl_ops::UndecodableMessage)> = history
        .events
        .iter()
        .filter_map(|entry| match &entry.event {
            EntryEvent::Undecodable(bad) => Some((entry.stream_seq, bad)),
            EntryEvent::Decoded(_) => None,
        })
        .collect();
    assert_eq!(undecodable[0].0, bad_json);
    assert_eq!(undecodable[0].1.error_kind, "invalid_data");
    assert_eq!(
        undecodable[0].1.type_header.as_deref(),
        Some("jwl.inventory.reserved")
    );
    assert_eq!(
        undecodable[0].1.id_header.as_deref(),
        Some(events[2].id.to_string().as_str())
    );
    assert_eq!(undecodable[1].0, headerless);
    assert_eq!(undecodable[1].1.error_kind, "missing_attribute");
    assert_eq!(undecodable[1].1.type_header, None);

    let json = serde_json::to_value(&history)?;
    assert_eq!(json["events"][2]["status"], "undecodable");
    assert_eq!(json["events"][2]["error_kind"], "invalid_data");
    let table = render::history_table(&history);
    assert!(table.contains("UNDECODABLE (invalid_data)"), "{table}");
    assert!(table.contains(&format!(
        "order {order}: 8 events, 2 undecodable, 0 dead letters"
    )));
    Ok(())
}

/// Refuses every order: each `order.created` it consumes is dead-lettered as `permanent`.
struct RefusingHandler;

#[async_trait]
impl Handler for RefusingHandler {
    fn subscriptions(&self) -> &'static [EventType] {
        &[EventType::OrderCreated, EventType::OrderCancelRequested]
    }

    async fn handle(
        &self,
        _ctx: &mut HandlerContext<'_>,
        _event: &Envelope,
    ) -> Result<(), HandlerError> {
        Err(HandlerError::permanent("customer cust-42 is blocked"))
    }
}

#[tokio::test]
async fn dead_letters_of_the_order_are_listed_after_their_event() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let order = OrderId::new();
    let other = OrderId::new();
    let events = saga(order);
    let created_seq = publish(&b.broker, &events[..1]).await?[0];
    publish(&b.broker, &saga(other)[..1]).await?;
    // an order.cancel_requested of a schema version this build cannot read: dead-lettered as
    // `decode`. Another consumer than order.created's, whose dead letter holds the order's later
    // order.created events (sequenced dead letters) but not this one.
    let mut future_version = encode(&events[0], HeaderStyle::Nats);
    future_version.subject = subject(&order, EventType::OrderCancelRequested);
    for (name, value) in &mut future_version.headers {
        if name == "ce-dataschema" {
            *value = "urn:jwl:schema:jwl.order.cancel_requested:v2".to_owned();
        }
        if name == "ce-type" {
            *value = EventType::OrderCancelRequested.as_str().to_owned();
        }
    }
    let undecodable_seq = publish_raw(
        b.js(),
        &future_version.subject,
        &future_version.headers,
        &future_version.payload,
    )
    .await?;
    publish(&b.broker, &events[1..]).await?;

    // the real consumer loop of a service refusing every order
    let db = jwl_testkit::database().await?;
    let admin = db.pool().await?;
    sqlx::query("CREATE SCHEMA jwl_ops_test")
        .execute(&admin)
        .await?;
    let pool = PgPoolOptions::new()
        .connect_with(
            PgConnectOptions::from_str(db.url())?.options([("search_path", "jwl_ops_test")]),
        )
        .await?;
    jwl_outbox::migrate(&pool).await?;
    let shutdown = CancellationToken::new();
    let messaging = Messaging::new(Service::Payment, pool, b.broker.clone(), b.settings.clone());
    let running = tokio::spawn(messaging.run(Arc::new(RefusingHandler), shutdown.clone()));
    let all = eventually_dead_letters(&b, 3).await?;
    shutdown.cancel();
    running.await??;
    assert_eq!(all.iter().filter(|d| d.order_id == Some(other)).count(), 1);

    let history = OrderHistory::read(&b.broker, &b.settings, &order).await?;
    assert_eq!(history.events.len(), events.len() + 1);
    let letters = &history.dead_letters;
    assert_eq!(letters.len(), 2, "{letters:?}");
    let by_seq = |seq: u64| {
        letters
            .iter()
            .find(|letter| letter.original_stream_seq == Some(seq))
            .unwrap_or_else(|| panic!("no dead letter of event {seq}: {letters:?}"))
    };
    let refused = by_seq(created_seq);
    assert_eq!(refused.consumer, "payment__order_created");
    assert_eq!(refused.reason, "permanent");
    assert!(
        refused.error.contains("customer cust-42 is blocked"),
        "{}",
        refused.error
    );
    assert_eq!(refused.original_type.as_deref(), Some("jwl.order.created"));
    assert_eq!(refused.order_id, Some(order));
    assert_eq!(
        refused.original_subject.as_deref(),
        Some(subject(&order, EventType::OrderCreated).as_str())
    );
    let unreadable = by_seq(undecodable_seq);
    assert_eq!(unreadable.reason, "decode");
    assert!(unreadable.error.contains("v2"), "{}", unreadable.error);

    let table = render::history_table(&history);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[2].starts_with(&format!("{created_seq} ")), "{table}");
    assert!(
        lines[3].starts_with("dlq ") && lines[3].contains("payment__order_created (permanent)"),
        "{table}"
    );
    assert!(
        lines[5].starts_with("dlq ") && lines[5].contains("(decode)"),
        "{table}"
    );
    let json = serde_json::to_value(&history)?;
    assert_eq!(json["dead_letters"].as_array().map(Vec::len), Some(2));
    Ok(())
}

async fn eventually_dead_letters(
    b: &Broker,
    count: usize,
) -> anyhow::Result<Vec<jwl_ops::DeadLetterEntry>> {
    jwl_testkit::eventually(
        "the consumer dead-letters",
        Duration::from_secs(30),
        || async {
            dead_letters::list(&b.broker, &b.settings, &DeadLetterFilter::default())
                .await
                .ok()
                .filter(|letters| letters.len() >= count)
        },
    )
    .await
}
