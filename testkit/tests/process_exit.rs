//! The shared cluster is stopped and its directory removed when the test process exits.
//!
//! Re-runs this binary as a helper that starts the shared cluster, reports its port and data
//! directory, and exits normally.

use std::process::Command;
use std::time::{Duration, Instant};

const HELPER_ENV: &str = "JWL_TESTKIT_EXIT_HELPER";

#[tokio::test]
#[ignore = "helper process for the shared_cluster_is_cleaned_up_at_exit test"]
async fn exit_helper() {
    if std::env::var(HELPER_ENV).is_err() {
        return;
    }
    let db = jwl_testkit::database().await.unwrap();
    let pool = db.pool().await.unwrap();
    sqlx::query("SELECT 1").execute(&pool).await.unwrap();
    let cluster = jwl_testkit::cluster().await.unwrap();
    let data_dir = cluster.log_file().parent().unwrap().to_owned();
    println!("\nCLUSTER {} {}", cluster.port(), data_dir.display());
}

#[test]
fn shared_cluster_is_cleaned_up_at_exit() {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "exit_helper", "--nocapture"])
        .env(HELPER_ENV, "1")
        .env_remove(jwl_testkit::TEST_DATABASE_URL_ENV)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "helper failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (port, data_dir) = stdout
        .lines()
        .find_map(|line| line.strip_prefix("CLUSTER "))
        .and_then(|rest| rest.split_once(' '))
        .map(|(port, dir)| (port.parse::<u16>().unwrap(), std::path::PathBuf::from(dir)))
        .expect("helper reports the cluster port and directory");
    // The helper has exited; its exit hook stopped the server and removed the directory.
    let deadline = Instant::now() + Duration::from_secs(10);
    while data_dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!data_dir.exists(), "{} was left behind", data_dir.display());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the cluster still listens"
    );
}
