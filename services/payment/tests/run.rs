//! `jwl_payment::run` against a real NATS server: an `order.created` published to the events
//! stream is consumed, authorised, and the resulting `payment.authorized` is relayed to the
//! broker; the service stops cleanly on shutdown.

mod common;

use std::time::Duration;

use common::{deliver, migrated_pool, order_created};
use jwl_outbox::MessagingSettings;
use jwl_service_kit::Settings;
use jwl_testkit::eventually;
use jwl_testkit::service::{publish_event, service_context};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn consumes_order_created_and_relays_the_authorization() {
    let pool = migrated_pool().await.unwrap();
    let (ctx, _nats) = service_context(
        jwl_payment::SERVICE,
        pool.clone(),
        MessagingSettings::default(),
        Settings::default(),
    )
    .await
    .unwrap();
    ctx.broker.ensure_streams(&ctx.messaging).await.unwrap();
    let broker = ctx.broker.clone();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(jwl_payment::run(ctx, shutdown.clone()));

    let created = order_created("tok_ok");
    publish_event(&broker, &created).await.unwrap();

    eventually(
        "the authorisation is recorded and relayed",
        Duration::from_secs(30),
        || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM payments WHERE order_id = $1 AND status = 'authorized')
                    AND EXISTS (SELECT 1 FROM outbox WHERE subject LIKE 'jwl.evt.payment.authorized.%'
                                AND published_at IS NOT NULL)",
            )
            .bind(created.order_id().0)
            .fetch_one(&pool)
            .await
            .unwrap_or(false)
        },
    )
    .await
    .unwrap();

    // the consumer recorded the event in the inbox under its durable name
    assert!(matches!(
        deliver(&pool, &created).await.unwrap(),
        jwl_outbox::Processed::Duplicate
    ));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("run stops on shutdown")
        .unwrap()
        .unwrap();
}
