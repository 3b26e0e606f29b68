//! The `jwl` binary as a user runs it: configuration precedence, `token`, `migrate`, `serve`
//! and `up` (with its private servers and restart), against real PostgreSQL and NATS.

mod support;

use support::free_port;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use jwl_service_kit::auth::{JwtKeys, Scope};
use jwl_testkit::eventually;

/// `jwl` with a clean `JWL_*` environment (the developer's own settings must not leak in).
fn jwl() -> Command {
    support::jwl_clean("info")
}

fn run(command: &mut Command) -> Output {
    command.output().expect("jwl runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[test]
fn token_prints_only_a_token_signed_with_the_configured_secret() {
    let output = run(jwl()
        .env("JWL_JWT_SECRET", "s3cret-from-env-0123456789abcdef0123")
        .args([
            "token",
            "--sub",
            "customer-1",
            "--scope",
            "orders:write",
            "--scope",
            "orders:read",
        ]));
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert_eq!(
        text.lines().count(),
        1,
        "stdout is exactly the token: {text:?}"
    );
    let claims = JwtKeys::new(b"s3cret-from-env-0123456789abcdef0123")
        .verify(text.trim())
        .unwrap();
    assert_eq!(claims.sub, "customer-1");
    assert_eq!(claims.scopes(), vec![Scope::OrdersWrite, Scope::OrdersRead]);
    assert_eq!(claims.exp - claims.iat, 3600, "default ttl is 1h");
}

#[test]
fn flags_win_over_environment_variables() {
    let output = run(jwl()
        .env("JWL_JWT_SECRET", "from-env-0123456789abcdef0123456789")
        .args([
            "token",
            "--sub",
            "ops",
            "--scope",
            "admin",
            "--ttl",
            "10m",
            "--jwt-secret",
            "from-flag-0123456789abcdef012345678",
        ]));
    assert!(output.status.success(), "{}", stderr(&output));
    let token = stdout(&output);
    let claims = JwtKeys::new(b"from-flag-0123456789abcdef012345678")
        .verify(token.trim())
        .unwrap();
    assert_eq!(claims.exp - claims.iat, 600);
    assert!(
        JwtKeys::new(b"from-env-0123456789abcdef0123456789")
            .verify(token.trim())
            .is_err()
    );
}

#[test]
fn token_reads_the_secret_file_of_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("jwt-secret"),
        "file-secret-0123456789abcdef0123456789\n",
    )
    .unwrap();
    let output = run(jwl().env("JWL_DATA_DIR", dir.path()).args([
        "token",
        "--sub",
        "c-9",
        "--scope",
        "couriers:write",
    ]));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        JwtKeys::new(b"file-secret-0123456789abcdef0123456789")
            .verify(stdout(&output).trim())
            .is_ok()
    );
}

#[test]
fn token_without_any_secret_fails_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(jwl()
        .env("JWL_DATA_DIR", dir.path())
        .args(["token", "--sub", "x", "--scope", "admin"]));
    assert!(!output.status.success());
    assert!(stdout(&output).is_empty());
    assert!(
        stderr(&output).contains("JWL_JWT_SECRET"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn invalid_settings_are_refused_with_the_variable_named() {
    let output = run(jwl()
        .env("JWL_DISPATCH_RADIUS_KM", "-3")
        .args(["serve", "dispatch"]));
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("dispatch-radius-km"),
        "{}",
        stderr(&output)
    );
    let output = run(jwl()
        .env("JWL_ORDER_DEADLINE", "soon")
        .args(["serve", "order"]));
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("order-deadline"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn serve_without_a_database_names_the_variables() {
    let output = run(jwl()
        .env("JWL_JWT_SECRET", "x-0123456789abcdef0123456789abcdef")
        .env("JWL_NATS_URL", "nats://127.0.0.1:1")
        .args(["serve", "payment"]));
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("JWL_PAYMENT_DATABASE_URL") && message.contains("JWL_DATABASE_URL"),
        "{message}"
    );
}

#[test]
fn kafka_without_its_bootstrap_brokers_names_the_variable() {
    let serve = run(jwl()
        .env("JWL_JWT_SECRET", "x-0123456789abcdef0123456789abcdef")
        .env("JWL_DATABASE_URL", "postgres://127.0.0.1:1/jwl")
        .env("JWL_BROKER", "kafka")
        .args(["serve", "payment"]));
    let saga = run(jwl().env("JWL_BROKER", "kafka").args([
        "saga",
        "show",
        "0193a7a4-8b48-7d41-8b4f-1e0c3e6a9f00",
    ]));
    for output in [serve, saga] {
        assert!(!output.status.success());
        let message = stderr(&output);
        assert!(message.contains("JWL_KAFKA_BROKERS"), "{message}");
    }
    let unknown = run(jwl().env("JWL_BROKER", "rabbitmq").args([
        "saga",
        "show",
        "0193a7a4-8b48-7d41-8b4f-1e0c3e6a9f00",
    ]));
    assert!(!unknown.status.success());
    let message = stderr(&unknown);
    assert!(
        message.contains("rabbitmq") && message.contains("kafka"),
        "{message}"
    );
}

#[test]
fn nats_without_its_url_names_the_variable() {
    let output = run(jwl().args(["dlq", "ls"]));
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("JWL_NATS_URL"), "{message}");
}

#[tokio::test]
async fn migrate_creates_each_named_service_schema() {
    let database = jwl_testkit::database().await.unwrap();
    let output = run(jwl()
        .env("JWL_DATABASE_URL", database.url())
        .args(["migrate", "order", "payment"]));
    assert!(output.status.success(), "{}", stderr(&output));
    let pool = database.pool().await.unwrap();
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'jwl\\_%' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(schemas, ["jwl_order", "jwl_payment"]);
    // Idempotent, and the per-service URL wins over the shared one.
    let other = jwl_testkit::database().await.unwrap();
    let output = run(jwl()
        .env("JWL_DATABASE_URL", database.url())
        .env("JWL_DISPATCH_DATABASE_URL", other.url())
        .args(["migrate"]));
    assert!(output.status.success(), "{}", stderr(&output));
    let in_other: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'jwl\\_%'")
            .fetch_all(&other.pool().await.unwrap())
            .await
            .unwrap();
    assert_eq!(in_other, ["jwl_dispatch"]);
}

/// A `jwl` child process that is killed if the test fails before it exits.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Sends SIGINT (like Ctrl-C) or SIGTERM.
fn signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

async fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    eventually("jwl exits", within, || {
        std::future::ready(child.try_wait().ok().flatten())
    })
    .await
    .unwrap()
}

async fn http_status(url: &str) -> Result<u16, reqwest::Error> {
    Ok(reqwest::get(url).await?.status().as_u16())
}

async fn wait_ready(base: &str) {
    eventually("readyz is 200", Duration::from_secs(90), || async {
        http_status(&format!("{base}/readyz"))
            .await
            .map(|s| s == 200)
            .unwrap_or(false)
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn serve_runs_one_service_until_sigterm() {
    let database = jwl_testkit::database().await.unwrap();
    let nats = jwl_testkit::nats().await.unwrap();
    let port = free_port();
    let metrics_port = free_port();
    const SECRET: &str = "serve-secret-0123456789abcdef0123456";
    let mut child = jwl()
        .env("JWL_DATABASE_URL", database.url())
        .env("JWL_NATS_URL", nats.url())
        .env("JWL_JWT_SECRET", SECRET)
        .env("JWL_JWT_ISSUER", "https://auth.jwl.test")
        .env("JWL_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("JWL_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env("JWL_HTTP_DB_POOL_SIZE", "3")
        .args(["serve", "inventory"])
        .stdout(Stdio::null())
        .spawn()
        .map(Running)
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&base).await;
    let response = reqwest::get(format!("{base}/no/such/route")).await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(response.headers().contains_key("x-request-id"));

    // tokens must name the configured issuer
    let stock = |keys: JwtKeys| {
        let token = keys
            .issue("ops", &[Scope::Admin], Duration::from_secs(60))
            .unwrap();
        reqwest::Client::new()
            .get(format!("{base}/v1/stock/sku-1"))
            .bearer_auth(token)
            .send()
    };
    let without_issuer = stock(JwtKeys::new(SECRET.as_bytes())).await.unwrap();
    assert_eq!(without_issuer.status(), 401);
    let with_issuer = stock(JwtKeys::new(SECRET.as_bytes()).with_issuer("https://auth.jwl.test"))
        .await
        .unwrap();
    assert_ne!(with_issuer.status(), 401);

    // /metrics moved to its own listener, with the HTTP routes' pool of JWL_HTTP_DB_POOL_SIZE
    assert_eq!(http_status(&format!("{base}/metrics")).await.unwrap(), 404);
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    for line in [
        "jwl_db_pool_max_connections{pool=\"jwl_inventory_http\"} 3",
        "jwl_db_pool_max_connections{pool=\"jwl_inventory\"} 10",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in {text}");
    }
    assert_eq!(
        http_status(&format!("http://127.0.0.1:{metrics_port}/readyz"))
            .await
            .unwrap(),
        200
    );

    signal(&child.0, libc::SIGTERM);
    let status = wait_exit(&mut child.0, Duration::from_secs(40)).await;
    assert!(status.success(), "{status}");
}

/// Reads `jwl up`'s stdout until the banner's URL and token lines appear.
fn read_banner(child: &mut Child) -> (String, String) {
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut url, mut token) = (None, None);
    while url.is_none() || token.is_none() {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("jwl up prints its banner");
        if let Some(rest) = line.strip_prefix("Jiangwanli is up at ") {
            url = Some(rest.trim().to_owned());
        }
        if let Some(rest) = line.trim().strip_prefix("export TOKEN=") {
            token = Some(rest.to_owned());
        }
    }
    std::thread::spawn(move || while lines_rx.recv().is_ok() {});
    (url.unwrap(), token.unwrap())
}

fn start_up(data_dir: &Path, port: u16) -> Running {
    let child = jwl()
        .env("JWL_DATA_DIR", data_dir)
        .env("JWL_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .arg("up")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    Running(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_everything_and_keeps_its_state_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("jwl-data");
    let port = free_port();

    let mut child = start_up(&data_dir, port);
    let (url, token) = tokio::task::block_in_place(|| read_banner(&mut child.0));
    assert_eq!(url, format!("http://127.0.0.1:{port}"));
    wait_ready(&url).await;

    let secret = std::fs::read_to_string(data_dir.join("jwt-secret")).unwrap();
    let claims = JwtKeys::new(secret.trim().as_bytes())
        .verify(&token)
        .unwrap();
    assert_eq!(claims.scopes(), vec![Scope::Admin]);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data_dir.join("jwt-secret"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert!(data_dir.join("pg").join("PG_VERSION").exists());
    assert!(data_dir.join("nats").exists());
    let pg_port = std::fs::read_to_string(data_dir.join("pg.port")).unwrap();

    // Leave a marker in the private database to see it again after the restart.
    let db_url = format!("postgres://postgres@127.0.0.1:{}/jwl", pg_port.trim());
    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    sqlx::query("CREATE TABLE public.restart_marker (v int)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    signal(&child.0, libc::SIGINT);
    let status = wait_exit(&mut child.0, Duration::from_secs(60)).await;
    assert!(status.success(), "{status}");
    assert!(
        reqwest::get(format!("{url}/healthz")).await.is_err(),
        "the listener is closed"
    );

    let mut child = start_up(&data_dir, port);
    let (_, token_again) = tokio::task::block_in_place(|| read_banner(&mut child.0));
    wait_ready(&url).await;
    assert!(
        JwtKeys::new(secret.trim().as_bytes())
            .verify(&token_again)
            .is_ok(),
        "the secret is reused"
    );
    assert_eq!(
        std::fs::read_to_string(data_dir.join("pg.port")).unwrap(),
        pg_port,
        "the port is remembered"
    );
    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    let markers: i64 = sqlx::query_scalar("SELECT count(*) FROM public.restart_marker")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        markers, 0,
        "the table created before the restart still exists"
    );
    pool.close().await;

    signal(&child.0, libc::SIGINT);
    let status = wait_exit(&mut child.0, Duration::from_secs(60)).await;
    assert!(status.success(), "{status}");
}

#[test]
fn a_short_jwt_secret_is_refused_with_what_to_do() {
    let output = run(jwl().env("JWL_JWT_SECRET", "too-short").args([
        "token",
        "--sub",
        "customer-1",
        "--scope",
        "orders:write",
    ]));
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("at least 32") && !message.contains("too-short"),
        "{message}"
    );
}

#[test]
fn token_lifetimes_are_bounded() {
    let output = run(jwl()
        .env("JWL_JWT_SECRET", "s3cret-from-env-0123456789abcdef0123")
        .args(["token", "--sub", "ops", "--scope", "admin", "--ttl", "365d"]));
    assert!(!output.status.success());
    assert!(stderr(&output).contains("30 days"), "{}", stderr(&output));
}

#[test]
fn token_carries_the_configured_issuer_and_audience() {
    const SECRET: &[u8] = b"s3cret-from-env-0123456789abcdef0123";
    let output = run(jwl()
        .env("JWL_JWT_SECRET", "s3cret-from-env-0123456789abcdef0123")
        .env("JWL_JWT_ISSUER", "https://auth.jwl.example")
        .env("JWL_JWT_AUDIENCE", "jwl-api")
        .args(["token", "--sub", "ops", "--scope", "admin"]));
    assert!(output.status.success(), "{}", stderr(&output));
    let token = stdout(&output);
    let claims = JwtKeys::new(SECRET)
        .with_issuer("https://auth.jwl.example")
        .with_audience("jwl-api")
        .verify(token.trim())
        .unwrap();
    assert_eq!(claims.iss.as_deref(), Some("https://auth.jwl.example"));
    assert_eq!(claims.aud.as_deref(), Some("jwl-api"));
    // a deployment expecting another audience refuses it
    assert!(
        JwtKeys::new(SECRET)
            .with_audience("another-api")
            .verify(token.trim())
            .is_err()
    );
}
