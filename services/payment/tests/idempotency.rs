//! The card processor is asked inside the batch transaction, which can roll back after it
//! answered. Against a real NATS server and PostgreSQL: the payment handler authorises, then the
//! transaction is rolled back (the handling fails after the processor answered, as a later
//! failure, a stall or a crash before commit would), the event is redelivered and handled again
//! — and the processor has placed exactly one hold, because both requests carried the order's
//! idempotency key.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::{deliver, migrated_pool, order_created};
use jwl_events::{Envelope, EventType};
use jwl_outbox::{Handler, HandlerContext, HandlerError, Messaging, MessagingSettings};
use jwl_payment::{PaymentHandler, SERVICE, SimulatedProcessor};
use jwl_service_kit::Settings;
use jwl_testkit::eventually;
use jwl_testkit::service::{publish_event, service_context};
use tokio_util::sync::CancellationToken;

/// The payment handler, whose first handling of each event fails after the handler ran (so
/// after the processor answered): everything it did rolls back and the event is redelivered.
struct RolledBackOnce {
    inner: PaymentHandler,
    runs: AtomicU32,
}

#[async_trait]
impl Handler for RolledBackOnce {
    fn subscriptions(&self) -> &'static [EventType] {
        self.inner.subscriptions()
    }

    async fn handle(
        &self,
        ctx: &mut HandlerContext<'_>,
        event: &Envelope,
    ) -> Result<(), HandlerError> {
        self.inner.handle(ctx, event).await?;
        self.runs.fetch_add(1, Ordering::SeqCst);
        if ctx.attempt() == 1 {
            return Err(HandlerError::transient(
                "a later failure rolls the batch back after the processor answered",
            ));
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_rolled_back_authorisation_redelivered_holds_the_card_once() {
    let pool = migrated_pool().await.unwrap();
    let messaging = MessagingSettings {
        nak_backoff: vec![Duration::from_millis(50)],
        ..MessagingSettings::default()
    };
    let (ctx, _nats) = service_context(SERVICE, pool.clone(), messaging, Settings::default())
        .await
        .unwrap();
    ctx.broker.ensure_streams(&ctx.messaging).await.unwrap();
    let processor = Arc::new(SimulatedProcessor::new());
    let handler = Arc::new(RolledBackOnce {
        inner: PaymentHandler::new(processor.clone()),
        runs: AtomicU32::new(0),
    });
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(
        Messaging::new(
            SERVICE,
            pool.clone(),
            ctx.broker.clone(),
            ctx.messaging.clone(),
        )
        .run(handler.clone(), shutdown.clone()),
    );

    let created = order_created("tok_ok");
    publish_event(&ctx.broker, &created).await.unwrap();
    eventually(
        "the redelivered order.created is authorised and committed",
        Duration::from_secs(30),
        || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM payments WHERE order_id = $1 AND status = 'authorized')",
            )
            .bind(created.order_id().0)
            .fetch_one(&pool)
            .await
            .unwrap_or(false)
        },
    )
    .await
    .unwrap();

    assert_eq!(
        handler.runs.load(Ordering::SeqCst),
        2,
        "the handler authorised twice: once rolled back, once committed"
    );
    assert_eq!(
        processor.holds_placed(),
        1,
        "the processor placed exactly one hold for the two requests"
    );
    let authorized: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE subject LIKE 'jwl.evt.payment.authorized.%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(authorized, 1, "one payment.authorized");
    // and the committed handling is in the inbox: a later redelivery changes nothing
    assert!(matches!(
        deliver(&pool, &created).await.unwrap(),
        jwl_outbox::Processed::Duplicate
    ));
    assert_eq!(processor.holds_placed(), 1);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the loops stop on shutdown")
        .unwrap()
        .unwrap();
}
