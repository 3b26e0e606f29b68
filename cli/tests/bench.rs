//! `jwl bench` as a user runs it: against `jwl up` with its own private NATS and PostgreSQL
//! (as the README says, with the URLs `jwl up` prints). A city run with declined and
//! out-of-stock orders reports each outcome, the cost per saga (CPU time of `jwl up` and its
//! servers, Postgres commits and statements) and the baselines; a two-step sweep reports both
//! steps and draws its plot as a PNG.

mod support;

use support::free_port;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use jwl_testkit::eventually;
use serde_json::Value;
use sqlx::Connection;

const SECRET: &str = "bench-test-secret-0123456789abcdef0123";
const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

/// `jwl` with a clean `JWL_*` environment and the test's secret.
fn jwl() -> Command {
    let mut command = support::jwl_clean("warn");
    command.env("JWL_JWT_SECRET", SECRET);
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

fn number(value: &Value) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

/// The `JWL_NATS_URL` and `JWL_DATABASE_URL` of `jwl up`'s banner.
fn read_operator_env(child: &mut Child) -> (String, String) {
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("jwl up prints its banner");
        let Some(exports) = line.trim().strip_prefix("export JWL_") else {
            continue;
        };
        let value = |name: &str| {
            format!("JWL_{exports}")
                .split_whitespace()
                .find_map(|pair| pair.strip_prefix(&format!("{name}=")).map(str::to_owned))
                .unwrap_or_else(|| panic!("{name} missing from {line:?}"))
        };
        let urls = (value("JWL_NATS_URL"), value("JWL_DATABASE_URL"));
        std::thread::spawn(move || while lines_rx.recv().is_ok() {});
        return urls;
    }
}

/// Runs `jwl bench` with `args` and the system's URLs; its stdout, after checking it succeeded.
async fn bench(nats_url: &str, database_url: &str, args: Vec<String>) -> String {
    let mut command = jwl();
    command
        .env("JWL_NATS_URL", nats_url)
        .env("JWL_DATABASE_URL", database_url)
        .arg("bench")
        .args(args);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_a_city_s_outcomes_and_costs_and_sweeps_with_a_plot() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut up = jwl()
        .env("JWL_DATA_DIR", dir.path().join("data"))
        .env("JWL_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .arg("up")
        .stdout(Stdio::piped())
        .spawn()
        .map(Running)
        .unwrap();
    let up_pid = up.0.id();
    let (nats_url, database_url) = tokio::task::block_in_place(|| read_operator_env(&mut up.0));
    eventually("jwl up is ready", Duration::from_secs(60), || async {
        match reqwest::get(format!("{base}/readyz")).await {
            Ok(response) => response.status() == 200,
            Err(_) => false,
        }
    })
    .await
    .unwrap();

    // A city run: 20 orders, 4 declined, 4 for a SKU out of stock.
    let report_path = dir.path().join("bench.json");
    let mut args = strings(&[
        "--url",
        &base,
        "--orders",
        "20",
        "--rate",
        "20",
        "--skus",
        "40",
        "--decline-ratio",
        "0.2",
        "--out-of-stock-ratio",
        "0.2",
        "--settle-timeout",
        "40s",
        "--baseline-duration",
        "1s",
        "--pg-stats-wait",
        "1s",
        "--warmup",
        "1s",
        "--system-pid",
        &up_pid.to_string(),
        "--json",
    ]);
    args.push(report_path.display().to_string());
    let stdout = bench(&nats_url, &database_url, args).await;
    for section in ["Ingest", "Sagas", "Cost per saga", "Baselines", "Ratios"] {
        assert!(stdout.contains(section), "{section} missing: {stdout}");
    }

    let report = read_json(&report_path);
    // the warm-up's 20 orders are not counted
    assert_eq!(report["setup"]["warmup_seconds"], 1.0, "{report:#}");
    assert_eq!(report["ingest"]["sent"], 20, "{report:#}");
    assert_eq!(report["ingest"]["accepted"], 20, "{report:#}");
    assert_eq!(report["ingest"]["errors"], 0, "{report:#}");
    assert!(number(&report["ingest"]["post_latency"]["p50_ms"]) > 0.0);
    let saga = &report["saga"];
    assert_eq!(saga["terminal"], 20, "{report:#}");
    assert_eq!(saga["unsettled"], 0, "{report:#}");
    assert_eq!(saga["outcomes"]["dispatched"], 12, "{report:#}");
    assert_eq!(saga["outcomes"]["rejected"], 4, "{report:#}");
    assert_eq!(saga["outcomes"]["cancelled/out_of_stock"], 4, "{report:#}");
    assert!(
        saga["observed_by"].as_str().unwrap().starts_with("NATS"),
        "{report:#}"
    );
    // Latency is of the dispatched orders only.
    assert_eq!(saga["end_to_end_latency"]["samples"], 12, "{report:#}");
    assert!(number(&saga["end_to_end_latency"]["p50_ms"]) > 0.0);
    assert!(number(&saga["completed_per_second"]) > 0.0);
    assert_eq!(
        saga["confirmation"]["agreed"], saga["confirmation"]["checked"],
        "{report:#}"
    );
    assert!(number(&saga["confirmation"]["checked"]) > 0.0);
    let updates = &report["courier_updates"];
    assert!(number(&updates["ok"]) >= 1.0, "{report:#}");
    assert_eq!(updates["failed"], 0, "{report:#}");

    let cost = &report["cost"];
    assert_eq!(cost["sagas"], 20, "{report:#}");
    assert_eq!(cost["cpu"]["status"], "measured", "{report:#}");
    assert!(number(&cost["cpu"]["ms_per_saga"]) > 0.0, "{report:#}");
    for kind in ["jwl", "postgres", "nats-server"] {
        assert!(
            cost["cpu"]["by_kind"][kind]["seconds"].is_number(),
            "{kind}: {report:#}"
        );
    }
    assert!(
        cost["cpu"]["pids"]["jwl"]
            .as_array()
            .unwrap()
            .contains(&Value::from(up_pid)),
        "{report:#}"
    );
    assert_eq!(cost["postgres"]["status"], "measured", "{report:#}");
    assert!(
        number(&cost["postgres"]["commits_per_saga"]) > 0.0,
        "{report:#}"
    );
    assert!(number(&cost["postgres"]["xids_per_saga"]) > 0.0);
    let mut conn = sqlx::PgConnection::connect(&database_url).await.unwrap();
    let statements_installed: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    // the warm-up's orders were placed and ended before the window, on SKUs of their own
    let (orders, warm_up_orders): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE EXISTS (
             SELECT 1 FROM jsonb_array_elements(items) AS item
             WHERE item->>'sku' LIKE '%-w-%'))
         FROM jwl_order.orders",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!((orders, warm_up_orders), (40, 20));
    if statements_installed {
        assert!(
            number(&cost["postgres"]["statements_per_saga"]) > 0.0,
            "{report:#}"
        );
    } else {
        // Not shipped with this PostgreSQL: said so, never zero.
        assert!(cost["postgres"]["statements_per_saga"].is_null());
        assert!(cost["postgres"]["statements_unavailable"].is_string());
    }
    for baseline in ["postgres_commits", "jetstream_acked_publishes"] {
        assert_eq!(
            report["baselines"][baseline]["status"], "measured",
            "{report:#}"
        );
        assert!(number(&report["baselines"][baseline]["per_second"]) > 0.0);
    }
    assert!(number(&report["ratios"]["sagas_per_postgres_commit"]) > 0.0);

    // The scratch table and stream are gone.
    let leftover_tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'jwl_bench'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(leftover_tables, 0);
    let client = async_nats::connect(&nats_url).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let names: Vec<String> = futures::TryStreamExt::try_collect(jetstream.stream_names())
        .await
        .unwrap();
    assert!(
        names.iter().all(|name| !name.starts_with("JWL_BENCH")),
        "{names:?}"
    );

    // A two-step sweep, plotted.
    let sweep_path = dir.path().join("sweep.json");
    let plot_path = dir.path().join("sweep.png");
    let mut args = strings(&[
        "--url",
        &base,
        "--sweep",
        "5,10",
        "--orders",
        "6",
        "--skus",
        "20",
        "--settle-timeout",
        "40s",
        "--baseline-duration",
        "1s",
        "--pg-stats-wait",
        "0s",
        "--warmup",
        "0s",
        "--system-pid",
        &up_pid.to_string(),
        "--plot",
    ]);
    args.push(plot_path.display().to_string());
    args.push("--json".to_owned());
    args.push(sweep_path.display().to_string());
    let stdout = bench(&nats_url, &database_url, args).await;
    assert!(stdout.contains("Sweep"), "{stdout}");
    let sweep = read_json(&sweep_path);
    let steps = sweep["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{sweep:#}");
    for (step, rate) in steps.iter().zip([5, 10]) {
        assert_eq!(step["setup"]["rate_per_second"], rate, "{sweep:#}");
        assert_eq!(step["saga"]["outcomes"]["dispatched"], 6, "{sweep:#}");
        assert!(
            number(&step["cost"]["cpu"]["ms_per_saga"]) > 0.0,
            "{sweep:#}"
        );
    }
    assert_ne!(
        steps[0]["setup"]["prefix"], steps[1]["setup"]["prefix"],
        "fresh SKUs and couriers per step"
    );
    assert_eq!(sweep["baselines"]["postgres_commits"]["status"], "measured");
    let png = std::fs::read(&plot_path).unwrap();
    assert_eq!(png[..8], PNG_SIGNATURE);
    assert!(
        png.len() > 5_000,
        "a plot with text is more than {} bytes",
        png.len()
    );
}
