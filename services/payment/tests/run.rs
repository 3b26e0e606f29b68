//! `jwl_payment::run` against a real NATS server: an `order.created` published to the events
//! stream is consumed, authorised, and the resulting `payment.authorized` is relayed to the
//! broker; the service stops cleanly on shutdown.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::message::PublishMessage;
use common::{deliver, migrated_pool, order_created};
use jwl_events::HeaderStyle;
use jwl_outbox::{JetStreamBroker, MessagingSettings};
use jwl_service_kit::{ServiceContext, Settings};
use jwl_testkit::eventually;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn consumes_order_created_and_relays_the_authorization() {
    let pool = migrated_pool().await.unwrap();
    let nats = jwl_testkit::nats().await.unwrap();
    let broker = JetStreamBroker::connect(nats.url()).await.unwrap();
    let messaging = MessagingSettings::default();
    broker.ensure_streams(&messaging).await.unwrap();
    let ctx = ServiceContext {
        service: jwl_payment::SERVICE,
        pool: pool.clone(),
        broker: broker.clone(),
        messaging,
        settings: Arc::new(Settings::default()),
    };
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(jwl_payment::run(ctx, shutdown.clone()));

    let created = order_created("tok_ok");
    let wire = jwl_events::encode(&created, HeaderStyle::Nats);
    let mut headers = HeaderMap::new();
    for (name, value) in &wire.headers {
        headers.append(name.as_str(), value.as_str());
    }
    let publish = PublishMessage::build()
        .headers(headers)
        .payload(wire.payload.into())
        .message_id(created.id.0.to_string());
    broker
        .jetstream()
        .send_publish(wire.subject, publish)
        .await
        .unwrap()
        .await
        .unwrap();

    eventually(
        "the authorisation is recorded and relayed",
        Duration::from_secs(30),
        || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM payments WHERE order_id = $1 AND status = 'authorized')
                    AND EXISTS (SELECT 1 FROM outbox WHERE subject LIKE '%.payment.authorized'
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
