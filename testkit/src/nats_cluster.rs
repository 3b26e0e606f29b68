//! Three (or more) private `nats-server -js` nodes clustered over loopback routes, each with its
//! own store and free ports, for tests of replicated streams and broker failover.

use anyhow::Context;
use jwl_local_infra::{InfraError, NatsClusterNode, NatsOptions, NatsServer, free_port};

use crate::nats::TestNats;
use crate::scratch;

const START_ATTEMPTS: usize = 5;

/// A JetStream cluster of private servers. Dropping it kills every node and removes the stores.
#[derive(Debug)]
pub struct TestNatsCluster {
    nodes: Vec<TestNats>,
}

/// Starts a cluster of `size` nodes (at least 3 for R3 streams) and waits until every node's
/// JetStream answers.
pub async fn nats_cluster(size: usize) -> anyhow::Result<TestNatsCluster> {
    tokio::task::spawn_blocking(move || start_blocking(size))
        .await
        .context("nats cluster start task failed")?
}

fn start_blocking(size: usize) -> anyhow::Result<TestNatsCluster> {
    let cluster_name = format!("jwl-test-{}", std::process::id());
    let mut attempt = 0;
    loop {
        attempt += 1;
        let dirs = (0..size)
            .map(|_| scratch::new_dir("natscluster"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let cluster_ports = (0..size)
            .map(|_| free_port())
            .collect::<Result<Vec<_>, _>>()?;
        let mut nodes = Vec::with_capacity(size);
        for (index, dir) in dirs.iter().enumerate() {
            let options = NatsOptions {
                store_dir: dir.path().join("store"),
                port: free_port()?,
                config_file: None,
                env: Vec::new(),
            };
            let node = NatsClusterNode {
                cluster_name: cluster_name.clone(),
                cluster_port: cluster_ports[index],
                routes: cluster_ports
                    .iter()
                    .enumerate()
                    .filter(|&(other, _)| other != index)
                    .map(|(_, &port)| port)
                    .collect(),
            };
            nodes.push((options, node));
        }
        match NatsServer::start_cluster(nodes) {
            Ok(servers) => {
                let nodes = servers
                    .into_iter()
                    .zip(dirs)
                    .map(|(server, dir)| TestNats::from_server(server, dir))
                    .collect();
                return Ok(TestNatsCluster { nodes });
            }
            Err(InfraError::PortInUse { .. }) if attempt < START_ATTEMPTS => continue,
            Err(error) => return Err(error).context("starting a private nats cluster for a test"),
        }
    }
}

impl TestNatsCluster {
    /// The nodes, each killable and restartable on its own.
    pub fn nodes(&self) -> &[TestNats] {
        &self.nodes
    }

    /// Every node's URL, comma-separated (what `JWL_NATS_URL` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(TestNats::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node whose server name is `name` (e.g. a stream's cluster leader).
    pub fn node_named(&self, name: &str) -> Option<&TestNats> {
        self.nodes.iter().find(|node| node.server_name() == name)
    }
}
