//! Outbox rows the broker rejects for good, against a real PostgreSQL and nats-server: the relay
//! parks them (and goes on with the others), `jwl_outbox_parked_rows` counts them, they are
//! listed, and once un-parked the relay publishes them.

mod support;

use std::time::Duration;

use jwl_events::Service;
use jwl_outbox::parked_rows::{self, Unpark};
use jwl_testkit::eventually;
use serde_json::Value;
use support::*;

/// `(seq, published, parked)` of the row of `event_id`.
async fn row_state(h: &Harness, event_id: uuid::Uuid) -> anyhow::Result<(i64, bool, bool)> {
    Ok(sqlx::query_as(
        "SELECT seq, published_at IS NOT NULL, parked_at IS NOT NULL FROM outbox WHERE event_id = $1",
    )
    .bind(event_id)
    .fetch_one(&h.pool)
    .await?)
}

#[tokio::test]
async fn a_rejected_row_is_parked_counted_listed_and_published_once_unparked() -> anyhow::Result<()>
{
    // a service of its own: the test reads its relay's gauge
    let mut h = Harness::start_as(Service::Order).await?;
    h.settings.housekeeping_interval = Duration::from_millis(300);
    let events = [captured(1), captured(2), captured(3)];
    h.enqueue_events(&events).await?;
    // the second row has a header the broker cannot carry: rejected for good
    let good_headers: Value = sqlx::query_scalar("SELECT headers FROM outbox WHERE event_id = $1")
        .bind(events[1].id.0)
        .fetch_one(&h.pool)
        .await?;
    sqlx::query(
        "UPDATE outbox SET headers = headers || '[[\"bad header\", \"x\"]]'::jsonb
         WHERE event_id = $1",
    )
    .bind(events[1].id.0)
    .execute(&h.pool)
    .await?;

    let running = h.run_relay_only();
    let service = Service::Order.as_str();
    eventually(
        "the others are published, the bad one parked",
        SOON,
        || async {
            let states =
                futures::future::join_all(events.iter().map(|e| row_state(&h, e.id.0))).await;
            matches!(
                states.as_slice(),
                [
                    Ok((_, true, false)),
                    Ok((_, false, true)),
                    Ok((_, true, false))
                ]
            )
        },
    )
    .await?;
    eventually("the gauge counts the parked row", SOON, || async {
        gauge(
            "jwl_outbox_parked_rows",
            &[("service", service), ("partition", "0")],
        ) == Some(1.0)
    })
    .await?;
    assert_eq!(
        gauge(
            "jwl_outbox_pending",
            &[("service", service), ("partition", "0")]
        ),
        Some(0.0),
        "a parked row is not pending"
    );

    let mut conn = h.pool.acquire().await?;
    let listed = parked_rows::list(&mut conn).await?;
    assert_eq!(listed.len(), 1);
    let parked = &listed[0];
    let (seq, _, _) = row_state(&h, events[1].id.0).await?;
    assert_eq!((parked.seq, parked.event_id), (seq, events[1].id.0));
    assert_eq!(parked.event_type(), Some("jwl.payment.captured"));
    assert_eq!(parked.attempts, 1);
    assert!(
        parked
            .last_error
            .as_deref()
            .is_some_and(|error| error.contains("invalid header name")),
        "{parked:?}"
    );
    assert_eq!(parked_rows::count(&mut conn).await?, 1);

    // a row that is not parked is not touched
    let (published_seq, _, _) = row_state(&h, events[0].id.0).await?;
    assert!(
        parked_rows::unpark(&mut conn, &Unpark::Seqs(vec![published_seq]))
            .await?
            .is_empty()
    );

    // the cause is fixed, the row un-parked: the relay publishes it
    sqlx::query("UPDATE outbox SET headers = $2 WHERE event_id = $1")
        .bind(events[1].id.0)
        .bind(&good_headers)
        .execute(&mut *conn)
        .await?;
    assert_eq!(parked_rows::unpark(&mut conn, &Unpark::All).await?, [seq]);
    eventually("the un-parked row is published", SOON, || async {
        matches!(row_state(&h, events[1].id.0).await, Ok((_, true, false)))
    })
    .await?;
    eventually("the gauge is back to 0", SOON, || async {
        gauge(
            "jwl_outbox_parked_rows",
            &[("service", service), ("partition", "0")],
        ) == Some(0.0)
    })
    .await?;
    assert!(parked_rows::list(&mut conn).await?.is_empty());
    let published: Vec<String> = h
        .events_in_stream()
        .await?
        .iter()
        .filter_map(|message| header(message, "ce-id").map(str::to_owned))
        .collect();
    assert_eq!(published.len(), 3);
    assert!(published.contains(&events[1].id.0.to_string()));
    running.stop().await
}
