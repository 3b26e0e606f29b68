//! `jwl serve` on a 3-node JetStream cluster (private nats-server processes clustered over
//! loopback routes) with `JWL_STREAM_REPLICAS=3` and a list of URLs in `JWL_NATS_URL` whose
//! first node is down: while the cluster has no quorum (two nodes down) the service starts,
//! serves `/healthz` and reports not ready on `/readyz` instead of exiting; once the nodes are
//! back it provisions the R3 streams by itself and becomes ready. The credentials in the URL
//! list are never printed.

mod support;

use std::process::{Child, Stdio};
use std::time::Duration;

use jwl_testkit::{eventually, nats_cluster};

/// The password of the (unreachable) first URL: it must never appear in the output.
const PASSWORD: &str = "hunter2-never-printed";

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn http_status(url: &str) -> Result<u16, reqwest::Error> {
    Ok(reqwest::get(url).await?.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_starts_not_ready_without_a_stream_quorum_and_provisions_later() -> anyhow::Result<()>
{
    let cluster = nats_cluster(3).await?;
    let database = jwl_testkit::database().await?;
    let nodes = cluster.nodes();
    // no quorum: one node of three left
    nodes[1].kill().await?;
    nodes[2].kill().await?;

    let dead = free_port()?;
    let urls = format!("nats://jwl:{PASSWORD}@127.0.0.1:{dead},{}", cluster.urls());
    let port = free_port()?;
    let log_dir = tempfile::tempdir()?;
    let log_path = log_dir.path().join("serve.log");
    let log = std::fs::File::create(&log_path)?;
    let mut command = support::jwl_clean("info");
    let mut child = Running(
        command
            .env("JWL_DATABASE_URL", database.url())
            .env("JWL_NATS_URL", &urls)
            .env("JWL_STREAM_REPLICAS", "3")
            .env(
                "JWL_JWT_SECRET",
                "cluster-secret-0123456789abcdef0123456789",
            )
            .env("JWL_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .args(["serve", "payment"])
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()?,
    );
    let base = format!("http://127.0.0.1:{port}");

    eventually("the service serves", Duration::from_secs(90), || async {
        http_status(&format!("{base}/healthz"))
            .await
            .map(|s| s == 200)
    })
    .await?;
    assert_eq!(
        http_status(&format!("{base}/readyz")).await?,
        503,
        "not ready while the events stream cannot be provisioned"
    );
    assert!(
        child.0.try_wait()?.is_none(),
        "the service must not exit while the streams are unavailable"
    );

    nodes[1].start_again().await?;
    nodes[2].start_again().await?;
    eventually(
        "ready once the cluster is back",
        Duration::from_secs(90),
        || async {
            http_status(&format!("{base}/readyz"))
                .await
                .map(|s| s == 200)
        },
    )
    .await?;

    // the service creates the streams (the events stream first) with three replicas
    let client = async_nats::connect(cluster.urls().split(',').collect::<Vec<_>>()).await?;
    let jetstream = async_nats::jetstream::new(client);
    eventually("four R3 streams", Duration::from_secs(30), || async {
        for name in ["JWL_EVENTS", "JWL_DLQ", "JWL_REPLAY", "JWL_DLQ_LOG"] {
            let mut stream = jetstream.get_stream(name).await?;
            let replicas = stream.info().await?.config.num_replicas;
            anyhow::ensure!(replicas == 3, "{name} has {replicas} replicas");
        }
        anyhow::Ok(())
    })
    .await?;

    let pid = libc::pid_t::try_from(child.0.id())?;
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = eventually("jwl exits", Duration::from_secs(40), || {
        std::future::ready(child.0.try_wait().ok().flatten())
    })
    .await?;
    let output = std::fs::read_to_string(&log_path)?;
    assert!(status.success(), "{status}: {output}");
    assert!(
        !output.contains(PASSWORD),
        "credentials were printed: {output}"
    );
    assert!(
        output.contains("starting not ready"),
        "the service should say it starts not ready: {output}"
    );
    Ok(())
}
