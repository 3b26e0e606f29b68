//! `jwl_inventory::run` against a real NATS server: a `payment.authorized` published to the
//! events stream is consumed, reserved, and the resulting `inventory.reserved` is relayed to the
//! broker; the service stops cleanly on shutdown.

mod common;

use std::time::Duration;

use common::{deliver, line, migrated_pool, payment_authorized};
use jwl_outbox::MessagingSettings;
use jwl_service_kit::Settings;
use jwl_testkit::eventually;
use jwl_testkit::service::{publish_event, service_context};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn consumes_payment_authorized_and_relays_the_reservation() {
    let pool = migrated_pool().await.unwrap();
    sqlx::query("INSERT INTO stock (sku, on_hand) VALUES ('TEA', 5)")
        .execute(&pool)
        .await
        .unwrap();
    let (ctx, _nats) = service_context(
        jwl_inventory::SERVICE,
        pool.clone(),
        MessagingSettings::default(),
        Settings::default(),
    )
    .await
    .unwrap();
    ctx.broker.ensure_streams(&ctx.messaging).await.unwrap();
    let broker = ctx.broker.clone();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(jwl_inventory::run(ctx, shutdown.clone()));

    let authorized = payment_authorized(vec![line("TEA", 2)]);
    publish_event(&broker, &authorized).await.unwrap();

    eventually(
        "the reservation is recorded and relayed",
        Duration::from_secs(30),
        || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM stock WHERE sku = 'TEA' AND reserved = 2)
                    AND EXISTS (SELECT 1 FROM outbox WHERE subject LIKE 'jwl.evt.inventory.reserved.%'
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
