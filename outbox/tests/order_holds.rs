//! [`jwl_outbox::order_holds::read`] against a real PostgreSQL and nats-server: after a poison
//! event of order X is dead-lettered (holding X), X's later events parked behind the hold and an
//! outbox row of X the broker refused for good, the reading lists the hold, the parked
//! messages and the parked row of X, and nothing for an order the service handled.

mod support;

use jwl_events::{Envelope, EventData, OrderId, PaymentCaptured, PaymentVoided, Service};
use jwl_outbox::order_holds;
use jwl_testkit::eventually;
use support::*;
use uuid::Uuid;

fn captured_for(order: OrderId, amount_cents: i64) -> Envelope {
    Envelope::new(
        Service::Payment,
        EventData::PaymentCaptured(PaymentCaptured {
            order_id: order,
            amount_cents,
        }),
    )
}

fn voided_for(order: OrderId, amount_cents: i64) -> Envelope {
    Envelope::new(
        Service::Payment,
        EventData::PaymentVoided(PaymentVoided {
            order_id: order,
            amount_cents,
        }),
    )
}

async fn count(h: &Harness, sql: &'static str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(&h.pool).await?)
}

#[tokio::test]
async fn an_orders_holds_held_messages_and_parked_rows_are_read_back() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let (x, y) = (OrderId(Uuid::now_v7()), OrderId(Uuid::now_v7()));

    // an event of X this service emits, with a header the broker cannot carry: the relay
    // parks it for good
    let unsendable = captured_for(x, 7);
    h.enqueue_events(std::slice::from_ref(&unsendable)).await?;
    sqlx::query(
        "UPDATE outbox SET headers = headers || '[[\"bad header\", \"x\"]]'::jsonb
         WHERE event_id = $1",
    )
    .bind(unsendable.id.0)
    .execute(&h.pool)
    .await?;
    let running = h.run();

    // X's head fails for good: X is held; its later events (either consumer) are parked
    let head = captured_for(x, PERMANENT);
    h.publish_event(&head, &head.id.0.to_string()).await?;
    eventually("X is held", SOON, || async {
        count(&h, "SELECT count(*) FROM dead_letter_holds")
            .await
            .ok()
            == Some(1)
    })
    .await?;
    let later = [voided_for(x, 2), captured_for(x, 3)];
    let handled = captured_for(y, 4);
    for event in later.iter().chain([&handled]) {
        h.publish_event(event, &event.id.0.to_string()).await?;
    }
    eventually("X's later events are parked, Y's handled", SOON, || async {
        count(&h, "SELECT count(*) FROM parked_messages").await.ok() == Some(2)
            && h.effects_of(&handled).await.ok() == Some(1)
    })
    .await?;
    eventually("the row is parked", SOON, || async {
        count(
            &h,
            "SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL AND published_at IS NULL",
        )
        .await
        .ok()
            == Some(1)
    })
    .await?;

    let mut conn = h.pool.acquire().await?;
    let read = order_holds::read(&mut conn, x.0).await?;
    assert!(!read.is_empty());
    let holds: Vec<(&str, Uuid)> = read
        .holds
        .iter()
        .map(|hold| (hold.consumer.as_str(), hold.head_event_id))
        .collect();
    assert_eq!(holds, [(h.consumer().as_str(), head.id.0)]);
    let held: Vec<(&str, Uuid, Option<&str>)> = read
        .parked_messages
        .iter()
        .map(|message| {
            (
                message.consumer.as_str(),
                message.event_id,
                message.event_type,
            )
        })
        .collect();
    let other_consumer = jwl_outbox::durable_name(SERVICE, ALSO_SUBSCRIBED);
    assert_eq!(
        held,
        [
            (
                other_consumer.as_str(),
                later[0].id.0,
                Some("jwl.payment.voided")
            ),
            (
                h.consumer().as_str(),
                later[1].id.0,
                Some("jwl.payment.captured")
            ),
        ],
        "in stream order"
    );
    assert!(
        read.parked_messages
            .iter()
            .all(|message| message.dead_letter_reason.is_none()
                && jwl_events::subject_order(&message.subject) == Some(x.to_string().as_str()))
    );
    assert!(read.holds[0].held_since <= read.parked_messages[0].parked_at);
    assert_eq!(read.parked_rows.len(), 1, "{:?}", read.parked_rows);
    let row = &read.parked_rows[0];
    assert_eq!(row.event_id, unsendable.id.0);
    assert_eq!(row.event_type(), Some("jwl.payment.captured"));
    assert!(
        row.last_error
            .as_deref()
            .is_some_and(|error| error.contains("invalid header name")),
        "{row:?}"
    );

    // Y was handled: nothing held back; nor of an order the service never saw
    assert!(order_holds::read(&mut conn, y.0).await?.is_empty());
    assert!(
        order_holds::read(&mut conn, Uuid::now_v7())
            .await?
            .is_empty()
    );
    drop(conn);
    running.stop().await
}
