//! `jwl bench` as a user runs it: against `jwl up` on a private NATS and PostgreSQL, 20 orders
//! go through the whole saga and the JSON report carries the ingest, saga and baseline figures.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use jwl_testkit::eventually;
use serde_json::Value;

const JWL: &str = env!("CARGO_BIN_EXE_jwl");
const SECRET: &str = "bench-test-secret";

/// `jwl` with a clean `JWL_*` environment, pointed at the test's servers and secret.
fn jwl(database_url: &str, nats_url: &str) -> Command {
    let mut command = Command::new(JWL);
    for (key, _) in std::env::vars() {
        if key.starts_with("JWL_") && key != "JWL_TOOLS_DIR" {
            command.env_remove(key);
        }
    }
    command
        .env("JWL_DATABASE_URL", database_url)
        .env("JWL_NATS_URL", nats_url)
        .env("JWL_JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn");
    command
}

/// A `jwl` child process that is killed when the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn number(value: &Value) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_drives_twenty_orders_through_the_saga_and_reports_them() {
    let database = jwl_testkit::database().await.unwrap();
    let nats = jwl_testkit::nats().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _up = jwl(database.url(), nats.url())
        .env("JWL_DATA_DIR", dir.path().join("data"))
        .env("JWL_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .arg("up")
        .stdout(Stdio::null())
        .spawn()
        .map(Running)
        .unwrap();
    eventually("jwl up is ready", Duration::from_secs(60), || async {
        match reqwest::get(format!("{base}/readyz")).await {
            Ok(response) => response.status() == 200,
            Err(_) => false,
        }
    })
    .await
    .unwrap();

    let report_path = dir.path().join("bench.json");
    let output = tokio::task::spawn_blocking({
        let mut command = jwl(database.url(), nats.url());
        command.args([
            "bench",
            "--url",
            &base,
            "--orders",
            "20",
            "--rate",
            "20",
            "--settle-timeout",
            "40s",
            "--baseline-duration",
            "1s",
            "--json",
        ]);
        command.arg(&report_path);
        move || command.output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("Ingest"), "{stdout}");
    assert!(stdout.contains("Baselines"), "{stdout}");

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    assert_eq!(report["ingest"]["sent"], 20, "{report:#}");
    assert_eq!(report["ingest"]["accepted"], 20, "{report:#}");
    assert_eq!(report["ingest"]["errors"], 0, "{report:#}");
    assert!(number(&report["ingest"]["accepted_per_second"]) > 0.0);
    assert!(number(&report["ingest"]["post_latency"]["p50_ms"]) > 0.0);
    assert_eq!(report["saga"]["terminal"], 20, "{report:#}");
    assert_eq!(report["saga"]["unsettled"], 0, "{report:#}");
    assert_eq!(
        report["saga"]["outcomes"]["dispatched"], 20,
        "every order finds a courier: {report:#}"
    );
    assert!(number(&report["saga"]["end_to_end_latency"]["p50_ms"]) > 0.0);
    assert_eq!(report["saga"]["end_to_end_latency"]["samples"], 20);
    assert!(number(&report["saga"]["completed_per_second"]) > 0.0);
    for baseline in ["postgres_commits", "jetstream_acked_publishes"] {
        assert_eq!(
            report["baselines"][baseline]["status"], "measured",
            "{report:#}"
        );
        assert!(number(&report["baselines"][baseline]["per_second"]) > 0.0);
    }
    assert!(number(&report["ratios"]["sagas_per_postgres_commit"]) > 0.0);
    assert!(number(&report["ratios"]["ingest_per_jetstream_publish"]) > 0.0);

    // The scratch table and stream are gone.
    let pool = database.pool().await.unwrap();
    let leftover_tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'jwl_bench'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(leftover_tables, 0);
    let client = async_nats::connect(nats.url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let names: Vec<String> = futures::TryStreamExt::try_collect(jetstream.stream_names())
        .await
        .unwrap();
    assert!(
        names.iter().all(|name| !name.starts_with("JWL_BENCH")),
        "{names:?}"
    );
}
