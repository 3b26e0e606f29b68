//! `jwl_inventory::run` against a real NATS server: a `payment.authorized` published to the
//! events stream is consumed, reserved, and the resulting `inventory.reserved` is relayed to the
//! broker; the service stops cleanly on shutdown.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::message::PublishMessage;
use common::{deliver, line, migrated_pool, payment_authorized};
use jwl_events::HeaderStyle;
use jwl_outbox::{JetStreamBroker, MessagingSettings};
use jwl_service_kit::{ServiceContext, Settings};
use jwl_testkit::eventually;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn consumes_payment_authorized_and_relays_the_reservation() {
    let pool = migrated_pool().await.unwrap();
    sqlx::query("INSERT INTO stock (sku, on_hand) VALUES ('TEA', 5)")
        .execute(&pool)
        .await
        .unwrap();
    let nats = jwl_testkit::nats().await.unwrap();
    let broker = JetStreamBroker::connect(nats.url()).await.unwrap();
    let messaging = MessagingSettings::default();
    broker.ensure_streams(&messaging).await.unwrap();
    let ctx = ServiceContext {
        service: jwl_inventory::SERVICE,
        pool: pool.clone(),
        broker: broker.clone(),
        messaging,
        settings: Arc::new(Settings::default()),
    };
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(jwl_inventory::run(ctx, shutdown.clone()));

    let authorized = payment_authorized(vec![line("TEA", 2)]);
    let wire = jwl_events::encode(&authorized, HeaderStyle::Nats);
    let mut headers = HeaderMap::new();
    for (name, value) in &wire.headers {
        headers.append(name.as_str(), value.as_str());
    }
    let publish = PublishMessage::build()
        .headers(headers)
        .payload(wire.payload.into())
        .message_id(authorized.id.0.to_string());
    broker
        .jetstream()
        .send_publish(wire.subject, publish)
        .await
        .unwrap()
        .await
        .unwrap();

    eventually(
        "the reservation is recorded and relayed",
        Duration::from_secs(30),
        || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM stock WHERE sku = 'TEA' AND reserved = 2)
                    AND EXISTS (SELECT 1 FROM outbox WHERE subject LIKE '%.inventory.reserved'
                                AND published_at IS NOT NULL)",
            )
            .fetch_one(&pool)
            .await
            .unwrap_or(false)
        },
    )
    .await
    .unwrap();

    // the consumer recorded the event in the inbox under its durable name
    assert!(matches!(
        deliver(&pool, &authorized).await.unwrap(),
        jwl_outbox::Processed::Duplicate
    ));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("run stops on shutdown")
        .unwrap()
        .unwrap();
}
