//! The operator commands as a user runs them (`jwl saga show|stuck`, `jwl replay`,
//! `jwl dlq redrive|discard`), against a real nats-server and PostgreSQL.

use std::process::{Command, Output};

use async_nats::HeaderMap;
use async_nats::jetstream;
use jwl_events::{
    CourierAssigned, CourierId, Envelope, EventData, GeoPoint, HeaderStyle, LineItem, OrderCreated,
    OrderId, PaymentAuthorized, Service, WaybillCreated, WaybillId, encode,
};
use jwl_outbox::{JetStreamBroker, MessagingSettings};
use jwl_testkit::service::publish_events;
use serde_json::Value;

const JWL: &str = env!("CARGO_BIN_EXE_jwl");

/// `jwl` with a clean `JWL_*` environment and the test's NATS.
fn jwl(nats_url: &str) -> Command {
    let mut command = Command::new(JWL);
    for (key, _) in std::env::vars() {
        if key.starts_with("JWL_") {
            command.env_remove(key);
        }
    }
    command.env("JWL_NATS_URL", nats_url);
    command
}

fn run_ok(command: &mut Command) -> String {
    let output: Output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

async fn broker(nats_url: &str) -> JetStreamBroker {
    let broker = JetStreamBroker::connect(nats_url).await.unwrap();
    broker
        .ensure_streams(&MessagingSettings::default())
        .await
        .unwrap();
    broker
}

fn geo(lat: f64) -> GeoPoint {
    GeoPoint::new(lat, 121.47).unwrap()
}

/// created → authorized → waybill created → courier assigned, each caused by the one before.
fn saga(order_id: OrderId) -> Vec<Envelope> {
    let items = vec![LineItem {
        sku: "TEA-250G".to_owned(),
        qty: 2,
        unit_price_cents: 1000,
    }];
    let (pickup, dropoff) = (geo(31.23), geo(31.22));
    let waybill_id = WaybillId::new();
    let data: Vec<(Service, EventData)> = vec![
        (
            Service::Order,
            OrderCreated {
                order_id,
                customer_id: "cust-42".to_owned(),
                items: items.clone(),
                amount_cents: 2000,
                pickup,
                dropoff,
                payment_token: "tok_ok".to_owned(),
                deadline: chrono::Utc::now() + chrono::Duration::minutes(5),
            }
            .into(),
        ),
        (
            Service::Payment,
            PaymentAuthorized {
                order_id,
                amount_cents: 2000,
                items,
                pickup,
                dropoff,
            }
            .into(),
        ),
        (
            Service::Fulfillment,
            WaybillCreated {
                order_id,
                waybill_id,
                pickup,
                dropoff,
            }
            .into(),
        ),
        (
            Service::Dispatch,
            CourierAssigned {
                order_id,
                waybill_id,
                courier_id: CourierId::parse("courier-7").unwrap(),
                distance_km: 0.42,
            }
            .into(),
        ),
    ];
    let mut events: Vec<Envelope> = Vec::new();
    for (source, data) in data {
        let event = match events.last() {
            None => Envelope::new(source, data),
            Some(cause) => Envelope::new(source, data).caused_by(cause),
        };
        events.push(event);
    }
    events
}

/// Publishes events as the relay does; returns their stream sequences.
async fn publish(broker: &JetStreamBroker, events: &[Envelope]) -> Vec<u64> {
    publish_events(broker, events).await.unwrap()
}

/// Publishes a dead letter of `original` as the consumer loop does; returns its dead-letter
/// sequence.
async fn publish_dead_letter(
    broker: &JetStreamBroker,
    consumer: &str,
    original: &Envelope,
    original_seq: u64,
) -> u64 {
    jwl_testkit::service::publish_dead_letter(
        broker,
        consumer,
        "permanent",
        "card processor said no",
        original,
        original_seq,
    )
    .await
    .unwrap()
}

async fn count(js: &jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages
}

/// Every message of `stream` (sequences 1..=last, gaps skipped): subject, headers, payload.
async fn messages(js: &jetstream::Context, stream: &str) -> Vec<(String, HeaderMap, Vec<u8>)> {
    let mut stream = js.get_stream(stream).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut found = Vec::new();
    for seq in 1..=last {
        if let Ok(message) = stream.get_raw_message(seq).await {
            found.push((
                message.subject.to_string(),
                message.headers,
                message.payload.to_vec(),
            ));
        }
    }
    found
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|value| value.as_str())
}

#[tokio::test(flavor = "multi_thread")]
async fn saga_show_and_stuck_read_the_broker_and_the_order_database() {
    let nats = jwl_testkit::nats().await.unwrap();
    let database = jwl_testkit::database().await.unwrap();
    let broker = broker(nats.url()).await;
    let order_id = OrderId::new();
    let events = saga(order_id);
    let sequences = publish(&broker, &events[..2]).await;
    publish_dead_letter(
        &broker,
        "inventory__payment_authorized",
        &events[1],
        sequences[1],
    )
    .await;

    let pool = jwl_service_kit::db::connect(database.url(), jwl_order::SCHEMA)
        .await
        .unwrap();
    jwl_order::migrate(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO orders (order_id, customer_id, status, amount_cents, items, pickup_lat, \
         pickup_lon, dropoff_lat, dropoff_lon, deadline, created_at, updated_at) \
         VALUES ($1, 'cust-42', 'paid', 2000, '[]', 31.23, 121.47, 31.22, 121.47, \
         now() + interval '5 minutes', now() - interval '10 minutes', now() - interval '9 minutes')",
    )
    .bind(order_id.0)
    .execute(&pool)
    .await
    .unwrap();
    for (offset, event) in events[..2].iter().enumerate() {
        sqlx::query(
            "INSERT INTO order_timeline (event_id, order_id, event_type, event_time, source) \
             VALUES ($1, $2, $3, now() - make_interval(mins => 10 - $4), $5)",
        )
        .bind(event.id.0)
        .bind(order_id.0)
        .bind(event.event_type().as_str())
        .bind(offset as i32)
        .bind(event.source.as_str())
        .execute(&pool)
        .await
        .unwrap();
    }
    let delivered = OrderId::new();
    sqlx::query(
        "INSERT INTO orders (order_id, customer_id, status, amount_cents, items, pickup_lat, \
         pickup_lon, dropoff_lat, dropoff_lon, deadline, created_at, updated_at, finished_at) \
         VALUES ($1, 'cust-43', 'delivered', 2000, '[]', 31.23, 121.47, 31.22, 121.47, \
         now(), now() - interval '10 minutes', now() - interval '1 minute', \
         now() - interval '2 minutes')",
    )
    .bind(delivered.0)
    .execute(&pool)
    .await
    .unwrap();
    let order = order_id.to_string();

    let text = run_ok(jwl(nats.url()).args(["saga", "show", &order]));
    assert!(text.contains("jwl.order.created"), "{text}");
    assert!(text.contains("jwl.payment.authorized"), "{text}");
    assert!(text.contains("inventory__payment_authorized"), "{text}");
    assert!(text.contains("status: unknown (no database URL)"), "{text}");

    let json = run_ok(
        jwl(nats.url())
            .env("JWL_DATABASE_URL", database.url())
            .args(["saga", "show", &order, "--json"]),
    );
    let view: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(view["events"].as_array().unwrap().len(), 2, "{json}");
    assert_eq!(view["events"][0]["event_type"], "jwl.order.created");
    assert_eq!(
        view["dead_letters"][0]["consumer"],
        "inventory__payment_authorized"
    );
    assert_eq!(view["status"]["status"], "paid");

    let text = run_ok(
        jwl(nats.url())
            .env("JWL_DATABASE_URL", database.url())
            .args(["saga", "stuck", "--older-than", "5m"]),
    );
    let line = text
        .lines()
        .find(|line| line.contains(&order))
        .unwrap_or_else(|| panic!("{order} is listed: {text}"));
    assert!(line.contains("jwl.payment.authorized"), "{line}");
    assert!(line.ends_with("inventory"), "{line}");
    assert!(!text.contains(&delivered.to_string()), "terminal: {text}");
    let json = run_ok(
        jwl(nats.url())
            .env("JWL_DATABASE_URL", database.url())
            .args(["saga", "stuck", "--older-than", "1h", "--json"]),
    );
    assert_eq!(
        serde_json::from_str::<Value>(&json).unwrap(),
        Value::Array(vec![])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_to_payment_sends_exactly_what_payment_consumes_and_dry_run_nothing() {
    let nats = jwl_testkit::nats().await.unwrap();
    let broker = broker(nats.url()).await;
    let js = broker.jetstream();
    let order_id = OrderId::new();
    let events = saga(order_id);
    let sequences = publish(&broker, &events).await;
    publish(&broker, &saga(OrderId::new())).await;
    let order = order_id.to_string();

    let json = run_ok(jwl(nats.url()).args([
        "replay",
        "--order",
        &order,
        "--to",
        "payment",
        "--dry-run",
        "--json",
    ]));
    let plan: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(plan["sent"], 0);
    assert_eq!(plan["messages"].as_array().unwrap().len(), 2, "{json}");
    assert_eq!(count(js, "JWL_REPLAY").await, 0, "a dry run sends nothing");

    let printed = run_ok(jwl(nats.url()).args(["replay", "--order", &order]));
    assert_eq!(printed.matches(&order).count(), 4, "{printed}");

    run_ok(jwl(nats.url()).args(["replay", "--order", &order, "--to", "payment"]));
    let sent = messages(js, "JWL_REPLAY").await;
    // payment consumes order.created and courier_assigned of this saga (events 0 and 3)
    let expected = [(0, "order.created"), (3, "dispatch.courier_assigned")];
    assert_eq!(sent.len(), expected.len());
    for ((subject, headers, payload), (index, token)) in sent.iter().zip(expected) {
        let event = &events[index];
        let wire = encode(event, HeaderStyle::Nats);
        assert_eq!(subject, &format!("jwl.replay.payment.{order}.{token}"));
        assert_eq!(
            header(headers, "ce-id"),
            Some(event.id.to_string().as_str())
        );
        assert_eq!(
            header(headers, "ce-type"),
            Some(event.event_type().as_str())
        );
        assert_eq!(header(headers, "jwl-replay-mode"), Some("inbox"));
        let origin = format!("events:{}", sequences[index]);
        assert_eq!(header(headers, "jwl-replay-origin"), Some(origin.as_str()));
        let message_id = header(headers, "Nats-Msg-Id").unwrap();
        assert!(
            message_id.starts_with("replay:") && message_id.ends_with(&format!(":{origin}")),
            "{message_id}"
        );
        assert_eq!(payload, &wire.payload);
    }
    assert_eq!(
        count(js, "JWL_EVENTS").await,
        8,
        "nothing is published to jwl.evt.>"
    );

    run_ok(jwl(nats.url()).args([
        "replay",
        "--order",
        &order,
        "--type",
        "order.created",
        "--to",
        "payment",
        "--rerun",
    ]));
    let sent = messages(js, "JWL_REPLAY").await;
    assert_eq!(sent.len(), 3);
    assert_eq!(header(&sent[2].1, "jwl-replay-mode"), Some("rerun"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_redrive_resumed_sends_each_dead_letter_once() {
    let nats = jwl_testkit::nats().await.unwrap();
    let broker = broker(nats.url()).await;
    let js = broker.jetstream();
    let mut dead_letters = Vec::new();
    for _ in 0..5 {
        let events = saga(OrderId::new());
        let sequences = publish(&broker, &events[..1]).await;
        dead_letters.push(
            publish_dead_letter(&broker, "payment__order_created", &events[0], sequences[0]).await,
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("run.json");
    let state_arg = state.to_str().unwrap();

    let text = run_ok(jwl(nats.url()).args([
        "dlq",
        "redrive",
        "--consumer",
        "payment__order_created",
        "--state-file",
        state_arg,
        "--max",
        "2",
        "--rate",
        "100/s",
    ]));
    assert!(text.contains("2 redriven"), "{text}");
    assert!(text.contains("3 remaining"), "{text}");
    assert_eq!(count(js, "JWL_REPLAY").await, 2);
    assert_eq!(count(js, "JWL_DLQ_LOG").await, 2);
    assert_eq!(count(js, "JWL_DLQ").await, 3);

    // a dead letter arriving after the start is not part of the frozen selection
    let late = saga(OrderId::new());
    let late_seq = publish(&broker, &late[..1]).await;
    publish_dead_letter(&broker, "payment__order_created", &late[0], late_seq[0]).await;

    for _ in 0..2 {
        let text = run_ok(jwl(nats.url()).args(["dlq", "redrive", "--resume", state_arg]));
        assert!(text.contains("5 redriven"), "{text}");
        assert!(text.contains("0 remaining"), "{text}");
    }
    let sent = messages(js, "JWL_REPLAY").await;
    let mut origins: Vec<String> = sent
        .iter()
        .map(|(subject, headers, _)| {
            assert!(subject.starts_with("jwl.replay.payment."), "{subject}");
            assert!(subject.ends_with(".order.created"), "{subject}");
            header(headers, "jwl-replay-origin").unwrap().to_owned()
        })
        .collect();
    origins.sort();
    let mut expected: Vec<String> = dead_letters
        .iter()
        .map(|seq| format!("dlq:{seq}"))
        .collect();
    expected.sort();
    assert_eq!(origins, expected, "each dead letter sent exactly once");
    let records = messages(js, "JWL_DLQ_LOG").await;
    assert_eq!(records.len(), 5);
    for (subject, _, payload) in &records {
        let record: Value = serde_json::from_slice(payload).unwrap();
        assert_eq!(subject, &format!("jwl.dlqlog.{}", record["dlq_seq"]));
        assert_eq!(record["action"], "redriven");
        assert_eq!(record["consumer"], "payment__order_created");
    }
    assert_eq!(
        count(js, "JWL_DLQ").await,
        1,
        "only the late dead letter is left"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn discard_releases_the_hold_keeps_the_reason_and_removes_the_dead_letter() {
    let nats = jwl_testkit::nats().await.unwrap();
    let broker = broker(nats.url()).await;
    let js = broker.jetstream();
    let order_id = OrderId::new();
    let events = saga(order_id);
    let sequences = publish(&broker, &events[..1]).await;
    let seq =
        publish_dead_letter(&broker, "payment__order_created", &events[0], sequences[0]).await;

    let listed: Value =
        serde_json::from_str(&run_ok(jwl(nats.url()).args(["dlq", "ls", "--json"]))).unwrap();
    assert_eq!(listed[0]["dlq_seq"], seq);
    let shown = run_ok(jwl(nats.url()).args(["dlq", "show", &seq.to_string()]));
    assert!(shown.contains("payment__order_created"), "{shown}");
    assert!(shown.contains("card processor said no"), "{shown}");

    run_ok(jwl(nats.url()).args([
        "dlq",
        "discard",
        &seq.to_string(),
        "--reason",
        "customer asked by phone",
    ]));
    assert_eq!(count(js, "JWL_DLQ").await, 0);
    let listed = run_ok(jwl(nats.url()).args(["dlq", "ls", "--json"]));
    assert_eq!(
        serde_json::from_str::<Value>(&listed).unwrap(),
        Value::Array(vec![])
    );
    let records = messages(js, "JWL_DLQ_LOG").await;
    assert_eq!(records.len(), 1);
    let record: Value = serde_json::from_slice(&records[0].2).unwrap();
    assert_eq!(records[0].0, format!("jwl.dlqlog.{seq}"));
    assert_eq!(record["action"], "discarded");
    assert_eq!(record["reason"], "customer asked by phone");
    assert_eq!(record["event_id"], events[0].id.to_string());
    let sent = messages(js, "JWL_REPLAY").await;
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].0,
        format!("jwl.replay.payment.{order_id}.control.release")
    );
    assert_eq!(header(&sent[0].1, "jwl-replay-mode"), Some("release"));
    assert_eq!(
        header(&sent[0].1, "jwl-release-consumer"),
        Some("payment__order_created")
    );

    let output = jwl(nats.url())
        .args(["dlq", "discard", &seq.to_string(), "--reason", "again"])
        .output()
        .unwrap();
    assert!(!output.status.success(), "a discarded dead letter is gone");
}

/// `jwl outbox ls|retry` read and un-park the rows the relay parked in each service's outbox.
#[tokio::test]
async fn outbox_ls_lists_parked_rows_and_retry_unparks_them() {
    let database = jwl_testkit::database().await.unwrap();
    let pool = jwl_service_kit::db::connect(database.url(), jwl_payment::SCHEMA)
        .await
        .unwrap();
    jwl_payment::migrate(&pool).await.unwrap();
    // another service's outbox, with nothing parked
    let inventory = jwl_service_kit::db::connect(database.url(), jwl_inventory::SCHEMA)
        .await
        .unwrap();
    jwl_inventory::migrate(&inventory).await.unwrap();
    let events = saga(OrderId::new());
    for event in &events[..3] {
        let mut tx = pool.begin().await.unwrap();
        jwl_outbox::enqueue(&mut tx, event).await.unwrap();
        tx.commit().await.unwrap();
    }
    // as the relay parks a row the broker refused for good
    let parked: Vec<i64> = sqlx::query_scalar(
        "UPDATE outbox SET parked_at = now(), attempts = 1, \
         last_error = 'message rejected: maximum payload exceeded' \
         WHERE event_id = ANY($1) RETURNING seq",
    )
    .bind(vec![events[0].id.0, events[2].id.0])
    .fetch_all(&pool)
    .await
    .unwrap();
    let (first, second) = (parked[0].min(parked[1]), parked[0].max(parked[1]));
    let url = database.url();

    let text = run_ok(
        jwl("nats://unused:4222")
            .env("JWL_DATABASE_URL", url)
            .args(["outbox", "ls", "--service", "payment,inventory"]),
    );
    assert!(text.starts_with("SERVICE  SEQ"), "{text}");
    assert!(text.contains(&events[0].id.0.to_string()), "{text}");
    assert!(text.contains("order.created"), "{text}");
    assert!(text.contains("maximum payload exceeded"), "{text}");
    assert!(!text.contains(&events[1].id.0.to_string()), "{text}");
    assert!(
        text.ends_with("2 parked row(s) in payment, inventory\n"),
        "{text}"
    );

    let json: Value = serde_json::from_str(&run_ok(
        jwl("nats://unused:4222")
            .env("JWL_DATABASE_URL", url)
            .args(["outbox", "ls", "--service", "payment", "--json"]),
    ))
    .unwrap();
    let rows = json[0]["rows"].as_array().unwrap();
    assert_eq!(json[0]["service"], "payment");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["seq"], first);
    assert_eq!(rows[0]["attempts"], 1);

    // a seq that is not parked is an error, and changes nothing
    let output = jwl("nats://unused:4222")
        .env("JWL_DATABASE_URL", url)
        .args(["outbox", "retry", "payment", "--seq", "999999"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no parked outbox row with seq 999999")
    );
    // neither --seq nor --all: refused by the parser
    assert!(
        !jwl("nats://unused:4222")
            .args(["outbox", "retry", "payment"])
            .output()
            .unwrap()
            .status
            .success()
    );

    let text = run_ok(
        jwl("nats://unused:4222")
            .env("JWL_DATABASE_URL", url)
            .args(["outbox", "retry", "payment", "--seq", &first.to_string()]),
    );
    assert!(
        text.contains(&format!("outbox row {first} un-parked")),
        "{text}"
    );
    let text = run_ok(
        jwl("nats://unused:4222")
            .env("JWL_DATABASE_URL", url)
            .args(["outbox", "retry", "payment", "--all"]),
    );
    assert!(
        text.contains(&format!("outbox row {second} un-parked")),
        "{text}"
    );
    let still_parked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(still_parked, 0, "both are pending again, for the relay");
}
