//! Benchmark (ignored by default): `OrderHistory::read` of one order must take about as long
//! in a stream of 1,000,000 events as in one of 10,000, because it reads by subject instead of
//! scanning. Run it with:
//!
//! ```text
//! cargo test -p jwl-ops --release --test benchmark -- --ignored --nocapture
//! ```
//!
//! It fills `JWL_EVENTS` on a private nats-server with small `payment.captured` events over
//! 10,000 orders (async publish, bounded in-flight acks), plus two six-event sagas: order A
//! inside the first 10,000 events, order B spread over the whole million. A's history is timed
//! at 10,000 and at 1,000,000 events, B's at 1,000,000.

mod support;

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use jwl_events::{Envelope, HeaderStyle, OrderId, encode};
use jwl_ops::{EntryEvent, OrderHistory};
use support::*;

const TOTAL: u64 = 1_000_000;
const SMALL: u64 = 10_000;
const FILLER_ORDERS: usize = 10_000;
/// Unacknowledged publishes allowed at once.
const IN_FLIGHT: usize = 4_096;
/// Timed reads per measurement (after one warm-up read); the median is reported.
const RUNS: usize = 7;

/// Publishes through the JetStream context, keeping at most `IN_FLIGHT` acks outstanding.
struct Publisher<'a> {
    broker: &'a Broker,
    acks: FuturesUnordered<<PublishAckFuture as IntoFuture>::IntoFuture>,
    published: u64,
}

impl Publisher<'_> {
    async fn send(&mut self, event: &Envelope) -> anyhow::Result<()> {
        let wire = encode(event, HeaderStyle::Nats);
        let message = PublishMessage::build()
            .payload(wire.payload.into())
            .headers(header_map(&wire.headers));
        let ack = self.broker.js().send_publish(wire.subject, message).await?;
        self.acks.push(ack.into_future());
        self.published += 1;
        while self.acks.len() >= IN_FLIGHT {
            if let Some(ack) = self.acks.next().await {
                ack?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        while let Some(ack) = self.acks.next().await {
            ack?;
        }
        Ok(())
    }

    /// Publishes filler events until `total` have been published, slotting in `saga` events
    /// at the positions given.
    async fn fill_to(
        &mut self,
        total: u64,
        fillers: &[OrderId],
        saga: &mut Vec<(u64, Envelope)>,
    ) -> anyhow::Result<()> {
        while self.published < total {
            if saga.first().is_some_and(|(at, _)| *at <= self.published) {
                let (_, event) = saga.remove(0);
                self.send(&event).await?;
                continue;
            }
            let n = self.published as usize;
            let order = fillers[n % fillers.len()];
            self.send(&captured(order, (n % 10_000) as i64)).await?;
        }
        self.flush().await
    }
}

/// The saga's events at evenly spread positions in `[start, end)`.
fn spread(order: OrderId, start: u64, end: u64) -> Vec<(u64, Envelope)> {
    let events = saga(order);
    let step = (end - start) / events.len() as u64;
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| (start + i as u64 * step, event))
        .collect()
}

/// Median time of `RUNS` reads after a warm-up; checks the history each time.
async fn time_history(b: &Broker, order: OrderId) -> anyhow::Result<Duration> {
    let mut times = Vec::with_capacity(RUNS);
    for run in 0..=RUNS {
        let started = Instant::now();
        let history = OrderHistory::read(&b.broker, &b.settings, &order).await?;
        let elapsed = started.elapsed();
        assert_eq!(history.events.len(), 6, "order {order}");
        assert!(
            history
                .events
                .iter()
                .all(|entry| matches!(entry.event, EntryEvent::Decoded(_)))
        );
        assert!(
            history
                .events
                .windows(2)
                .all(|w| w[0].stream_seq < w[1].stream_seq)
        );
        if run > 0 {
            times.push(elapsed);
        }
    }
    times.sort();
    Ok(times[times.len() / 2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: publishes 1,000,000 events; run it explicitly (see the file's docs)"]
async fn order_history_time_does_not_depend_on_stream_size() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let fillers: Vec<OrderId> = (0..FILLER_ORDERS).map(|_| OrderId::new()).collect();
    let (order_a, order_b) = (OrderId::new(), OrderId::new());
    let mut saga_a = spread(order_a, 100, SMALL - 100);
    let mut saga_b = spread(order_b, SMALL + 1_000, TOTAL - 1_000);
    let mut publisher = Publisher {
        broker: &b,
        acks: FuturesUnordered::new(),
        published: 0,
    };

    let started = Instant::now();
    publisher.fill_to(SMALL, &fillers, &mut saga_a).await?;
    let a_small = time_history(&b, order_a).await?;
    println!("history of A at {SMALL} events: {a_small:?} (median of {RUNS})");

    publisher.fill_to(TOTAL, &fillers, &mut saga_b).await?;
    let fill_time = started.elapsed();
    let stream = b.js().get_stream(&b.settings.events_stream).await?;
    let messages = stream.cached_info().state.messages;
    assert_eq!(messages, TOTAL);
    println!("published {messages} events in {fill_time:?}");

    let a_large = time_history(&b, order_a).await?;
    let b_large = time_history(&b, order_b).await?;
    let ratio = a_large.as_secs_f64() / a_small.as_secs_f64();
    println!("history of A at {TOTAL} events: {a_large:?} (median of {RUNS})");
    println!("history of B at {TOTAL} events: {b_large:?} (median of {RUNS})");
    println!("ratio A at {TOTAL} / A at {SMALL}: {ratio:.2} (the stream grew 100x)");
    assert!(
        ratio < 10.0,
        "reading one order's history grew {ratio:.1}x with a 100x larger stream"
    );
    Ok(())
}
