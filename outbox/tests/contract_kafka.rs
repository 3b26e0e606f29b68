//! The broker contract ([`contract`]) on Kafka: a private tansu broker per case, with SQLite
//! storage when the installed tansu has it (else memory, and the restart case is skipped). Every
//! case passes without doing anything when tansu is not installed (`scripts/install-deps`
//! builds it; it is optional).

mod contract;

use std::sync::Arc;

use contract::{Fixture, KAFKA};
use futures::FutureExt;
use jwl_outbox::transport::Broker;
use jwl_outbox::{KafkaBroker, KafkaSettings, MessagingSettings};

async fn start() -> anyhow::Result<Option<Fixture>> {
    let Some(tansu) = jwl_testkit::tansu().await? else {
        return Ok(None);
    };
    let tansu = Arc::new(tansu);
    let settings = MessagingSettings::default();
    let kafka = KafkaSettings {
        partitions: 4,
        ..KafkaSettings::new(tansu.bootstrap_servers())
    };
    let broker = KafkaBroker::connect(kafka, &settings).await?;
    broker.ensure_streams(&settings).await?;
    let restart: Option<contract::Restart> = if tansu.is_persistent() {
        let restarted = tansu.clone();
        Some(Box::new(move || {
            let tansu = restarted.clone();
            async move { tansu.restart().await }.boxed()
        }))
    } else {
        None
    };
    Ok(Some(Fixture {
        broker: Arc::new(broker),
        settings,
        differences: KAFKA,
        restart,
        server: Box::new(tansu),
    }))
}

contract::contract_tests!(start);
