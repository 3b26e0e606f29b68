//! `dead_letters::list` and `show` against a real nats-server, over dead letters in the
//! outbox consumer's format.

mod support;

use std::time::Duration;

use chrono::Utc;
use jwl_events::{EventType, OrderId};
use jwl_ops::{
    DeadLetterEntry, DeadLetterFilter, DeadLetterReason, EntryEvent, OpsError, dead_letters, render,
};
use support::*;

fn dlq_seqs(entries: &[DeadLetterEntry]) -> Vec<u64> {
    entries.iter().map(|entry| entry.dlq_seq).collect()
}

#[tokio::test]
async fn list_filters_by_consumer_type_reason_order_and_age() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    assert!(
        dead_letters::list(&b.broker, &b.settings, &DeadLetterFilter::default())
            .await?
            .is_empty()
    );
    let (a, c) = (OrderId::new(), OrderId::new());
    let (saga_a, saga_c) = (saga(a), saga(c));
    let seqs_a = publish(&b.broker, &saga_a).await?;
    let seqs_c = publish(&b.broker, &saga_c).await?;

    // dead letters: 1–3 early, 4 later
    let d1 = publish_dead_letter(
        &b.broker,
        "payment__order_created",
        "permanent",
        "permanent failure",
        &saga_a[0],
        seqs_a[0],
    )
    .await?;
    let d2 = publish_dead_letter(
        &b.broker,
        "inventory__payment_authorized",
        "max_attempts",
        "max_attempts failure",
        &saga_a[1],
        seqs_a[1],
    )
    .await?;
    let d3 = publish_dead_letter(
        &b.broker,
        "payment__order_created",
        "decode",
        "decode failure",
        &saga_c[0],
        seqs_c[0],
    )
    .await?;
    let d3_at = stored_at(b.js(), &b.settings.dlq_stream, d3).await?;
    clock_passes(d3_at, Duration::from_millis(400)).await?;
    let d4 = publish_dead_letter(
        &b.broker,
        "dispatch__waybill_created",
        "permanent",
        "permanent failure",
        &saga_c[3],
        seqs_c[3],
    )
    .await?;

    let list = |filter: DeadLetterFilter| {
        let b = &b;
        async move { dead_letters::list(&b.broker, &b.settings, &filter).await }
    };
    let all = list(DeadLetterFilter::default()).await?;
    assert_eq!(dlq_seqs(&all), [d1, d2, d3, d4]);
    assert_eq!(all[1].consumer, "inventory__payment_authorized");
    assert_eq!(all[1].reason, "max_attempts");
    assert_eq!(
        all[1].original_type.as_deref(),
        Some("jwl.payment.authorized")
    );
    assert_eq!(all[1].original_stream_seq, Some(seqs_a[1]));
    assert_eq!(all[1].order_id, Some(a));
    assert_eq!(all[1].error, "max_attempts failure");

    let by_consumer = DeadLetterFilter {
        consumer: Some("payment__order_created".to_owned()),
        ..Default::default()
    };
    assert_eq!(dlq_seqs(&list(by_consumer.clone()).await?), [d1, d3]);
    let by_type = DeadLetterFilter {
        event_type: Some(EventType::WaybillCreated),
        ..Default::default()
    };
    assert_eq!(dlq_seqs(&list(by_type).await?), [d4]);
    let by_reason = DeadLetterFilter {
        reason: Some(DeadLetterReason::Permanent),
        ..Default::default()
    };
    assert_eq!(dlq_seqs(&list(by_reason).await?), [d1, d4]);
    let by_order = DeadLetterFilter {
        order: Some(a),
        ..Default::default()
    };
    assert_eq!(dlq_seqs(&list(by_order).await?), [d1, d2]);
    let consumer_and_order = DeadLetterFilter {
        order: Some(c),
        ..by_consumer.clone()
    };
    assert_eq!(dlq_seqs(&list(consumer_and_order).await?), [d3]);
    // older than the gap before d4: the age is measured from now
    let age = (Utc::now() - (d3_at + chrono::Duration::milliseconds(200))).to_std()?;
    let older = DeadLetterFilter {
        older_than: Some(age),
        ..Default::default()
    };
    assert_eq!(dlq_seqs(&list(older).await?), [d1, d2, d3]);
    let ancient = DeadLetterFilter {
        older_than: Some(Duration::from_secs(3600)),
        ..Default::default()
    };
    assert!(list(ancient).await?.is_empty());
    let limited = DeadLetterFilter {
        limit: Some(1),
        ..by_consumer
    };
    assert_eq!(dlq_seqs(&list(limited).await?), [d1]);

    let invalid = DeadLetterFilter {
        consumer: Some("payment.order".to_owned()),
        ..Default::default()
    };
    assert!(matches!(
        list(invalid).await,
        Err(OpsError::InvalidFilter(_))
    ));

    let table = render::dead_letters_table(&all);
    assert_eq!(table.lines().count(), 5);
    assert!(table.contains("dispatch__waybill_created"));
    Ok(())
}

#[tokio::test]
async fn show_returns_headers_payload_and_metadata() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let order = OrderId::new();
    let events = saga(order);
    let seqs = publish(&b.broker, &events).await?;
    let dlq_seq = publish_dead_letter(
        &b.broker,
        "payment__order_created",
        "permanent",
        "permanent failure",
        &events[0],
        seqs[0],
    )
    .await?;

    let detail = dead_letters::show(&b.broker, &b.settings, dlq_seq).await?;
    assert_eq!(detail.entry.dlq_seq, dlq_seq);
    assert_eq!(detail.entry.consumer, "payment__order_created");
    assert_eq!(detail.entry.reason, "permanent");
    assert_eq!(detail.entry.original_stream_seq, Some(seqs[0]));
    assert_eq!(detail.entry.order_id, Some(order));
    assert_eq!(
        detail.subject,
        format!("jwl.dlq.payment__order_created.{order}")
    );
    let header = |name: &str| jwl_events::header_value(&detail.headers, name);
    assert_eq!(header("jwl-dlq-reason"), Some("permanent"));
    assert_eq!(header("ce-id"), Some(events[0].id.to_string().as_str()));
    let payload: serde_json::Value = serde_json::from_str(&detail.payload)?;
    assert_eq!(payload["customer_id"], "cust-42");
    assert_eq!(detail.payload_bytes, detail.payload.len());
    let EntryEvent::Decoded(original) = &detail.original else {
        panic!("original not decoded: {:?}", detail.original);
    };
    assert_eq!(original.event_id, events[0].id);
    assert!(
        original
            .summary
            .starts_with("created for cust-42: 2 lines, 2598 cents")
    );

    let text = render::dead_letter_text(&detail);
    assert!(
        text.contains("  consumer:     payment__order_created\n"),
        "{text}"
    );
    let json = serde_json::to_value(&detail)?;
    assert_eq!(json["consumer"], "payment__order_created");
    assert_eq!(json["original"]["status"], "decoded");

    assert!(matches!(
        dead_letters::show(&b.broker, &b.settings, dlq_seq + 100).await,
        Err(OpsError::DeadLetterNotFound { seq, .. }) if seq == dlq_seq + 100
    ));
    Ok(())
}
