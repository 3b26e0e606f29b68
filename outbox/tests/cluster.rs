//! Replicated streams on a real 3-node JetStream cluster (three private nats-server processes
//! clustered over loopback routes): the replica count of every stream follows
//! `stream_replicas` (an existing R1 stream is changed to R3), the broker takes a list of URLs
//! and connects even when the first one is down, it fails over when the node it is on dies,
//! and the stream availability that `/readyz` reports follows the stream's leader (lost
//! without a quorum, back once nodes return). Also: a single server refuses R3 with an error
//! that says what to do.

use std::time::Duration;

use jwl_outbox::{JetStreamBroker, MessagingSettings};
use jwl_testkit::{eventually, nats, nats_cluster};
use tokio::time::Instant;

const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

fn settings(replicas: Option<usize>) -> MessagingSettings {
    MessagingSettings {
        stream_replicas: replicas,
        ..MessagingSettings::default()
    }
}

fn stream_names(settings: &MessagingSettings) -> [&str; 4] {
    [
        &settings.events_stream,
        &settings.dlq_stream,
        &settings.replay_stream,
        &settings.dlq_log_stream,
    ]
}

async fn replicas_of(broker: &JetStreamBroker, stream: &str) -> anyhow::Result<usize> {
    let mut stream = broker.jetstream().get_stream(stream).await?;
    Ok(stream.info().await?.config.num_replicas)
}

async fn leader_of(broker: &JetStreamBroker, stream: &str) -> anyhow::Result<String> {
    let info = tokio::time::timeout(PROBE_TIMEOUT * 2, async {
        let mut stream = broker.jetstream().get_stream(stream).await?;
        anyhow::Ok(stream.info().await?.clone())
    })
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "no stream info within {:?} (connected: {})",
            PROBE_TIMEOUT * 2,
            broker.is_healthy()
        )
    })??;
    info.cluster
        .as_ref()
        .and_then(|cluster| cluster.leader.clone())
        .ok_or_else(|| anyhow::anyhow!("{stream:?} has no leader yet"))
}

#[tokio::test]
async fn a_single_server_refuses_replicas_with_what_to_do() -> anyhow::Result<()> {
    let nats = nats().await?;
    let broker = JetStreamBroker::connect(nats.url()).await?;
    eventually("connected", Duration::from_secs(10), || async {
        broker.is_healthy()
    })
    .await?;

    let error = broker
        .ensure_streams(&settings(Some(3)))
        .await
        .expect_err("a single server cannot hold R3 streams");
    assert!(error.is_fatal(), "{error}");
    assert!(error.to_string().contains("JWL_STREAM_REPLICAS"), "{error}");

    broker.ensure_streams(&settings(Some(1))).await?;
    for stream in stream_names(&settings(None)) {
        assert_eq!(replicas_of(&broker, stream).await?, 1, "{stream}");
    }
    // an existing R1 stream cannot be changed to R3 here either: the same clear error
    let error = broker
        .ensure_streams(&settings(Some(3)))
        .await
        .expect_err("a single server cannot rescale to R3");
    assert!(error.is_fatal(), "{error}");
    assert!(error.to_string().contains("nats stream edit"), "{error}");
    // the operator tools' settings leave the replica count alone
    broker.ensure_streams(&settings(None)).await?;
    broker
        .stream_available(&settings(None).events_stream, PROBE_TIMEOUT)
        .await?;
    Ok(())
}

#[tokio::test]
async fn streams_are_replicated_and_follow_their_leader_across_node_failures() -> anyhow::Result<()>
{
    let cluster = nats_cluster(3).await?;
    // a URL nobody listens on first: connecting must still succeed through the others
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let urls = format!("nats://127.0.0.1:{dead},{}", cluster.urls());
    let broker = JetStreamBroker::connect_named(&urls, "jwl-cluster-test").await?;
    eventually(
        "connected to a live node",
        Duration::from_secs(20),
        || async { broker.is_healthy() },
    )
    .await?;

    // created R1 (as earlier versions did), then brought to R3
    let r1 = settings(Some(1));
    eventually("R1 streams created", Duration::from_secs(30), || {
        broker.ensure_streams(&r1)
    })
    .await?;
    for stream in stream_names(&r1) {
        assert_eq!(replicas_of(&broker, stream).await?, 1, "{stream}");
    }
    let r3 = settings(Some(3));
    eventually("streams rescaled to R3", Duration::from_secs(30), || {
        broker.ensure_streams(&r3)
    })
    .await?;
    for stream in stream_names(&r3) {
        assert_eq!(replicas_of(&broker, stream).await?, 3, "{stream}");
    }
    let events = r3.events_stream.clone();
    eventually("events stream available", Duration::from_secs(30), || {
        broker.stream_available(&events, PROBE_TIMEOUT)
    })
    .await?;

    // once both followers have caught up, kill -9 the events stream's leader: a new one is
    // elected, and the client fails over if it was on that node
    eventually("every replica current", Duration::from_secs(30), || async {
        let mut stream = broker.jetstream().get_stream(&events).await?;
        let info = stream.info().await?;
        let replicas = info
            .cluster
            .as_ref()
            .map(|c| c.replicas.clone())
            .unwrap_or_default();
        anyhow::ensure!(
            replicas.len() == 2 && replicas.iter().all(|peer| peer.current && !peer.offline),
            "replicas {replicas:?}"
        );
        anyhow::Ok(())
    })
    .await?;
    let leader = leader_of(&broker, &events).await?;
    let leader_node = cluster
        .node_named(&leader)
        .ok_or_else(|| anyhow::anyhow!("leader {leader} is not one of our nodes"))?;
    let killed_at = Instant::now();
    leader_node.kill().await?;
    let new_leader = eventually("a new events leader", Duration::from_secs(30), || async {
        match leader_of(&broker, &events).await {
            Ok(new) if new != leader => Ok(new),
            Ok(same) => Err(anyhow::anyhow!("still led by {same}")),
            Err(error) => Err(error),
        }
    })
    .await?;
    eventually(
        "events stream available again",
        Duration::from_secs(30),
        || broker.stream_available(&events, PROBE_TIMEOUT),
    )
    .await?;
    println!(
        "events stream leader failover: {leader} -> {new_leader} in {:?}",
        killed_at.elapsed()
    );

    // a second node down: no quorum, no leader, the stream is reported unavailable
    let second = cluster
        .node_named(&new_leader)
        .ok_or_else(|| anyhow::anyhow!("leader {new_leader} is not one of our nodes"))?;
    second.kill().await?;
    eventually(
        "events stream unavailable without quorum",
        Duration::from_secs(30),
        || async {
            broker
                .stream_available(&events, PROBE_TIMEOUT)
                .await
                .is_err()
        },
    )
    .await?;

    // both back: available again
    leader_node.start_again().await?;
    second.start_again().await?;
    eventually(
        "events stream available after recovery",
        Duration::from_secs(60),
        || broker.stream_available(&events, PROBE_TIMEOUT),
    )
    .await?;
    // the other streams elect their leaders on their own time after a restart
    eventually(
        "every stream provisioned after recovery",
        Duration::from_secs(60),
        || broker.ensure_streams(&r3),
    )
    .await?;
    Ok(())
}
