//! `/readyz` with the real probe: every pool pings, the broker is connected and, when named,
//! the events stream answers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use jwl_outbox::{JetStreamBroker, MessagingSettings};
use jwl_service_kit::db;
use jwl_service_kit::http::{Readiness, edge, metrics_router};
use jwl_testkit::eventually;

async fn readyz_status(app: &Router) -> u16 {
    common::get(app, "/readyz").await.0.status().as_u16()
}

#[tokio::test]
async fn ready_while_database_and_broker_answer_and_not_ready_without_the_broker() {
    let database = jwl_testkit::database().await.unwrap();
    let nats = jwl_testkit::nats().await.unwrap();
    let order_pool = db::connect(database.url(), "jwl_order").await.unwrap();
    let payment_pool = db::connect(database.url(), "jwl_payment").await.unwrap();
    let broker = JetStreamBroker::connect(nats.url()).await.unwrap();
    let readiness = Readiness::new(vec![order_pool, payment_pool.clone()], Arc::new(broker));
    let app = edge(Router::new(), common::keys(), readiness.clone());
    // the listener that says which check failed (JWL_METRICS_ADDR)
    let admin = metrics_router(Arc::new(readiness));

    // The broker connects in the background; ready once it has.
    eventually("readyz reports ready", Duration::from_secs(20), || async {
        readyz_status(&app).await == 200
    })
    .await
    .unwrap();

    nats.kill().await.unwrap();
    eventually(
        "readyz reports the broker down",
        Duration::from_secs(20),
        || async { readyz_status(&app).await == 503 },
    )
    .await
    .unwrap();
    let (response, body) = common::get(&admin, "/readyz").await;
    let problem = common::problem(&response, &body, 503);
    assert!(
        problem["detail"].as_str().unwrap().contains("broker"),
        "{problem}"
    );
    let (response, body) = common::get(&app, "/readyz").await;
    let problem = common::problem(&response, &body, 503);
    assert_eq!(
        problem["detail"], "not ready",
        "the public is told nothing more"
    );

    nats.start_again().await.unwrap();
    eventually("readyz recovers", Duration::from_secs(30), || async {
        readyz_status(&app).await == 200
    })
    .await
    .unwrap();

    payment_pool.close().await;
    let (response, body) = common::get(&admin, "/readyz").await;
    let problem = common::problem(&response, &body, 503);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("database pool 1"),
        "{problem}"
    );
}

#[tokio::test]
async fn not_ready_while_the_events_stream_is_unavailable() -> anyhow::Result<()> {
    let database = jwl_testkit::database().await?;
    let nats = jwl_testkit::nats().await?;
    let pool = db::connect(database.url(), "jwl_order").await?;
    let broker = JetStreamBroker::connect(nats.url()).await?;
    let settings = MessagingSettings::default();
    let readiness =
        Readiness::new(vec![pool], Arc::new(broker.clone())).with_stream(&settings.events_stream);
    let app = edge(Router::new(), common::keys(), readiness.clone());
    let admin = metrics_router(Arc::new(readiness));
    eventually("connected", Duration::from_secs(20), || async {
        broker.is_healthy()
    })
    .await?;

    // connected, but no stream yet: not ready, and the metrics listener's answer says why
    let (response, body) = common::get(&admin, "/readyz").await;
    let problem = common::problem(&response, &body, 503);
    let detail = problem["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.contains("JWL_EVENTS"), "{problem}");

    broker.ensure_streams(&settings).await?;
    eventually(
        "ready once the stream exists",
        Duration::from_secs(10),
        || async { readyz_status(&app).await == 200 },
    )
    .await?;

    broker
        .jetstream()
        .delete_stream(&settings.events_stream)
        .await?;
    eventually(
        "not ready once it is gone",
        Duration::from_secs(10),
        || async { readyz_status(&app).await == 503 },
    )
    .await?;
    Ok(())
}
