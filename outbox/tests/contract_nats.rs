//! The broker contract ([`contract`]) on NATS JetStream: a private nats-server per case.

mod contract;

use std::sync::Arc;

use contract::{Fixture, JETSTREAM};
use futures::FutureExt;
use jwl_outbox::{JetStreamBroker, MessagingSettings};

async fn start() -> anyhow::Result<Option<Fixture>> {
    let nats = Arc::new(jwl_testkit::nats().await?);
    let broker = JetStreamBroker::connect(nats.url()).await?;
    let settings = MessagingSettings::default();
    broker.ensure_streams(&settings).await?;
    let restarted = nats.clone();
    Ok(Some(Fixture {
        broker: Arc::new(broker),
        settings,
        differences: JETSTREAM,
        restart: Some(Box::new(move || {
            let nats = restarted.clone();
            async move { nats.restart().await }.boxed()
        })),
        server: Box::new(nats),
    }))
}

contract::contract_tests!(start);
