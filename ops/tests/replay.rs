//! `replay::read` against a real nats-server: selection by order, type, stored time and
//! stream sequence, with limits.

mod support;

use std::time::Duration;

use jwl_events::{Envelope, EventType, OrderId};
use jwl_ops::{EntryEvent, EventEntry, Selection, render, replay};
use support::*;

fn seqs(entries: &[EventEntry]) -> Vec<u64> {
    entries.iter().map(|entry| entry.stream_seq).collect()
}

fn types(entries: &[EventEntry]) -> Vec<EventType> {
    entries
        .iter()
        .map(|entry| match &entry.event {
            EntryEvent::Decoded(event) => event.event_type,
            EntryEvent::Undecodable(bad) => panic!("undecodable: {bad:?}"),
        })
        .collect()
}

/// Publishes the sagas interleaved step by step; returns (event, stream seq) in stream order.
async fn publish_interleaved(
    b: &Broker,
    sagas: &[Vec<Envelope>],
) -> anyhow::Result<Vec<(Envelope, u64)>> {
    let mut published = Vec::new();
    for step in 0..sagas[0].len() {
        for saga in sagas {
            let seq = publish(&b.broker, &saga[step..=step]).await?[0];
            published.push((saga[step].clone(), seq));
        }
    }
    Ok(published)
}

#[tokio::test]
async fn replay_selects_by_order_and_type() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let orders: Vec<OrderId> = (0..10).map(|_| OrderId::new()).collect();
    let sagas: Vec<Vec<Envelope>> = orders.iter().map(|&order| saga(order)).collect();
    let published = publish_interleaved(&b, &sagas).await?;
    let expect = |keep: &dyn Fn(&Envelope) -> bool| -> Vec<u64> {
        published
            .iter()
            .filter(|(event, _)| keep(event))
            .map(|(_, seq)| *seq)
            .collect()
    };

    let everything = replay::read(&b.broker, &b.settings, &Selection::default()).await?;
    assert_eq!(seqs(&everything), expect(&|_| true));

    let authorized = Selection {
        types: vec![EventType::PaymentAuthorized],
        ..Default::default()
    };
    let entries = replay::read(&b.broker, &b.settings, &authorized).await?;
    assert_eq!(
        seqs(&entries),
        expect(&|e| e.event_type() == EventType::PaymentAuthorized)
    );
    assert_eq!(entries.len(), orders.len());

    let one_order = Selection {
        order: Some(orders[3]),
        ..Default::default()
    };
    let entries = replay::read(&b.broker, &b.settings, &one_order).await?;
    assert_eq!(seqs(&entries), expect(&|e| e.order_id() == orders[3]));

    let order_and_types = Selection {
        order: Some(orders[3]),
        types: vec![EventType::PaymentCaptured, EventType::OrderCreated],
        ..Default::default()
    };
    let entries = replay::read(&b.broker, &b.settings, &order_and_types).await?;
    assert_eq!(
        types(&entries),
        [EventType::OrderCreated, EventType::PaymentCaptured]
    );
    assert_eq!(
        seqs(&entries),
        expect(&|e| e.order_id() == orders[3]
            && matches!(
                e.event_type(),
                EventType::OrderCreated | EventType::PaymentCaptured
            ))
    );

    let two_types_limited = Selection {
        types: vec![EventType::PaymentCaptured, EventType::CourierAssigned],
        limit: Some(13),
        ..Default::default()
    };
    let entries = replay::read(&b.broker, &b.settings, &two_types_limited).await?;
    let wanted = expect(&|e| {
        matches!(
            e.event_type(),
            EventType::PaymentCaptured | EventType::CourierAssigned
        )
    });
    assert_eq!(seqs(&entries), wanted[..13], "the first 13 in stream order");

    let none = Selection {
        types: vec![EventType::DispatchFailed],
        ..Default::default()
    };
    assert!(
        replay::read(&b.broker, &b.settings, &none)
            .await?
            .is_empty()
    );

    let table = render::events_table(&entries);
    assert_eq!(table.lines().count(), 14);
    Ok(())
}

#[tokio::test]
async fn replay_selects_by_time_and_sequence() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let first: Vec<Vec<Envelope>> = (0..3).map(|_| saga(OrderId::new())).collect();
    let second: Vec<Vec<Envelope>> = (0..3).map(|_| saga(OrderId::new())).collect();
    let early = publish_interleaved(&b, &first).await?;
    let last_early = early.last().map(|(_, seq)| *seq).unwrap_or_default();
    let last_early_at = stored_at(b.js(), &b.settings.events_stream, last_early).await?;
    clock_passes(last_early_at, Duration::from_millis(300)).await?;
    let late = publish_interleaved(&b, &second).await?;
    let early_seqs: Vec<u64> = early.iter().map(|(_, seq)| *seq).collect();
    let late_seqs: Vec<u64> = late.iter().map(|(_, seq)| *seq).collect();
    let mark = last_early_at + chrono::Duration::milliseconds(150);

    let since = Selection {
        since: Some(mark),
        ..Default::default()
    };
    assert_eq!(
        seqs(&replay::read(&b.broker, &b.settings, &since).await?),
        late_seqs
    );

    let until = Selection {
        until: Some(mark),
        ..Default::default()
    };
    assert_eq!(
        seqs(&replay::read(&b.broker, &b.settings, &until).await?),
        early_seqs
    );

    let range = Selection {
        from_seq: Some(5),
        to_seq: Some(9),
        ..Default::default()
    };
    assert_eq!(
        seqs(&replay::read(&b.broker, &b.settings, &range).await?),
        [5, 6, 7, 8, 9]
    );

    // a start sequence in the early part and a start time in the late part: both apply
    let seq_and_time = Selection {
        from_seq: Some(2),
        since: Some(mark),
        types: vec![EventType::OrderCreated],
        ..Default::default()
    };
    let entries = replay::read(&b.broker, &b.settings, &seq_and_time).await?;
    assert_eq!(
        seqs(&entries),
        late.iter()
            .filter(|(event, _)| event.event_type() == EventType::OrderCreated)
            .map(|(_, seq)| *seq)
            .collect::<Vec<_>>()
    );

    let limited = Selection {
        since: Some(mark),
        limit: Some(4),
        ..Default::default()
    };
    assert_eq!(
        seqs(&replay::read(&b.broker, &b.settings, &limited).await?),
        late_seqs[..4]
    );

    let past_the_end = Selection {
        from_seq: Some(10_000),
        ..Default::default()
    };
    assert!(
        replay::read(&b.broker, &b.settings, &past_the_end)
            .await?
            .is_empty()
    );
    Ok(())
}
