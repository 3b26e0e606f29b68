//! `jwl up --broker kafka` from the outside: the whole system on a private tansu (a
//! Kafka-protocol broker) instead of nats-server. One order goes through the whole saga over
//! HTTP to `dispatched`, and `jwl saga show`, with the variables the banner printed, reads its
//! events back from Kafka; `jwl bench` with the same variables polls the orders to their end
//! (its NATS watcher and JetStream baseline do not apply).
//!
//! tansu is optional (`scripts/install-deps` builds it): without it the test says so on stderr
//! and passes.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use jwl_testkit::eventually;
use serde_json::{Value, json};
use support::free_port;

const SECRET: &str = "kafka-test-secret-0123456789abcdef01234567";

/// `jwl` with a clean `JWL_*` environment and the test's secret.
fn jwl() -> Command {
    let mut command = support::jwl_clean("warn");
    command.env("JWL_JWT_SECRET", SECRET);
    command
}

/// A `jwl up` child process, killed when the test ends, with its data dir.
struct Up {
    child: Child,
    base: String,
    /// The `export …` line of the banner: what the operator tools need.
    operator_env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl Drop for Up {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `jwl up --broker kafka` and waits until it is ready.
async fn up_on_kafka() -> Up {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = jwl()
        .env("JWL_DATA_DIR", dir.path().join("data"))
        .env("JWL_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .args(["up", "--broker", "kafka"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // drain its stdout (the banner), so that it never blocks on a full pipe
    let stdout = child.stdout.take().unwrap();
    let (banner_tx, banner_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut exports = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("export JWL_") {
                exports = Some(line.clone());
            }
            if line.contains("Press Ctrl-C") {
                let _ = banner_tx.send(exports.take());
            }
        }
    });
    let exports = tokio::task::block_in_place(|| banner_rx.recv_timeout(Duration::from_secs(180)))
        .expect("jwl up prints its banner")
        .expect("the banner has the operator tools' variables");
    let operator_env = exports
        .split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    let up = Up {
        child,
        base: format!("http://127.0.0.1:{port}"),
        operator_env,
        dir,
    };
    let readyz = format!("{}/readyz", up.base);
    eventually("jwl up is ready", Duration::from_secs(90), || async {
        reqwest::get(&readyz)
            .await
            .is_ok_and(|response| response.status() == 200)
    })
    .await
    .unwrap();
    up
}

async fn put(client: &reqwest::Client, url: String, token: &str, body: Value) {
    let response = client
        .put(&url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert!(
        status.is_success(),
        "PUT {url}: {status} {}",
        response.text().await.unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_dispatched_on_kafka_and_saga_show_reads_its_events() {
    if let Err(error) = jwl_local_infra::find_binary("tansu") {
        eprintln!("skipping: {error} (scripts/install-deps builds tansu)");
        return;
    }
    let up = up_on_kafka().await;
    let names: Vec<&str> = up.operator_env.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"JWL_KAFKA_BROKERS"), "{names:?}");
    assert!(!names.contains(&"JWL_NATS_URL"), "{names:?}");
    assert!(
        up.operator_env
            .iter()
            .any(|(name, value)| name == "JWL_BROKER" && value == "kafka"),
        "{:?}",
        up.operator_env
    );

    let client = reqwest::Client::new();
    let admin = support::token(SECRET, "admin-1", "admin");
    let courier = support::token(SECRET, "courier-1", "couriers:write");
    let customer = support::token(SECRET, "customer-1", "orders:write,orders:read");
    put(
        &client,
        format!("{}/v1/stock/sku-1", up.base),
        &admin,
        json!({"on_hand": 10}),
    )
    .await;
    put(
        &client,
        format!("{}/v1/couriers/courier-1/location", up.base),
        &courier,
        json!({"lat": 31.2304, "lon": 121.4737}),
    )
    .await;
    let created = client
        .post(format!("{}/v1/orders", up.base))
        .bearer_auth(&customer)
        .json(&json!({
            "items": [{"sku": "sku-1", "qty": 1, "unit_price_cents": 1299}],
            "pickup": {"lat": 31.2310, "lon": 121.4740},
            "dropoff": {"lat": 31.2243, "lon": 121.4768},
            "payment_token": "tok_ok",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let order_id = created["order_id"].as_str().unwrap().to_owned();

    let order_url = format!("{}/v1/orders/{order_id}", up.base);
    eventually(
        "the order is dispatched",
        Duration::from_secs(90),
        || async {
            let Ok(response) = client.get(&order_url).bearer_auth(&customer).send().await else {
                return false;
            };
            let order: Value = response.json().await.unwrap_or_default();
            // a terminal status other than `dispatched` will never change: fail at once
            assert!(
                !matches!(order["status"].as_str(), Some("rejected" | "cancelled")),
                "{order}"
            );
            order["status"] == "dispatched"
        },
    )
    .await
    .unwrap();

    // `jwl saga show` with what the banner printed reads the order's events from Kafka
    let output = tokio::task::spawn_blocking({
        let mut command = jwl();
        command
            .envs(
                up.operator_env
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str())),
            )
            .args(["saga", "show", &order_id, "--json"]);
        move || command.output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let view: Value = serde_json::from_str(&stdout).unwrap();
    let types: Vec<&str> = view["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|event| event["event_type"].as_str())
        .collect();
    for expected in [
        "jwl.order.created",
        "jwl.payment.authorized",
        "jwl.inventory.reserved",
        "jwl.fulfillment.waybill_created",
        "jwl.dispatch.courier_assigned",
    ] {
        assert!(types.contains(&expected), "{expected} missing: {types:?}");
    }
    assert_eq!(view["status"]["status"], "dispatched", "{stdout}");

    // `jwl bench` on Kafka: the sagas' ends are seen on the events topic (so the hops are
    // measured), the JetStream baseline is skipped
    let report_path = up.dir.path().join("bench.json");
    let output = tokio::task::spawn_blocking({
        let mut command = jwl();
        command
            .envs(
                up.operator_env
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str())),
            )
            .args(["bench", "--url", &up.base, "--orders", "3", "--rate", "10"])
            .args(["--skus", "3", "--settle-timeout", "60s"])
            .args([
                "--baseline-duration",
                "1s",
                "--pg-stats-wait",
                "0s",
                "--warmup",
                "0s",
                "--json",
            ])
            .arg(&report_path);
        move || command.output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    assert_eq!(report["saga"]["terminal"], 3, "{report:#}");
    assert_eq!(report["saga"]["outcomes"]["dispatched"], 3, "{report:#}");
    let observed_by = report["saga"]["observed_by"].as_str().unwrap();
    assert!(observed_by.starts_with("Kafka"), "{observed_by}");
    assert_eq!(
        report["saga"]["event_hop_latency"]["samples"], 15,
        "five hops of three sagas: {report:#}"
    );
    let jetstream = &report["baselines"]["jetstream_acked_publishes"];
    assert_eq!(jetstream["status"], "skipped", "{report:#}");
    assert!(
        jetstream["reason"]
            .as_str()
            .unwrap()
            .contains("NATS broker"),
        "{report:#}"
    );
}
