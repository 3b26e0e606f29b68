//! Servers die with the process that owns them, even when it is SIGKILLed.
//!
//! The test re-runs this test binary as a helper "owner" process that starts both servers on a
//! short-lived thread (which must not matter), prints their pids and waits to be killed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jwl_local_infra::{
    NatsOptions, NatsServer, PgTuning, PostgresOptions, PostgresServer, free_port,
};

const HELPER_ENV: &str = "JWL_LOCAL_INFRA_OWNER_HELPER";

fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| {
            !s.lines()
                .any(|l| l.starts_with("State:") && (l.contains('Z') || l.contains('X')))
        })
        .unwrap_or(false)
}

#[test]
#[ignore = "helper process for servers_die_with_their_owner_process"]
fn owner_helper() {
    let Ok(dir) = std::env::var(HELPER_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let (nats, postgres) = std::thread::spawn(move || {
        let nats = NatsServer::start(NatsOptions {
            store_dir: dir.join("nats"),
            port: free_port().unwrap(),
            config_file: None,
            env: Vec::new(),
        })
        .unwrap();
        let postgres = PostgresServer::start(PostgresOptions {
            data_dir: dir.join("pg"),
            port: free_port().unwrap(),
            tuning: PgTuning::FastUnsafe,
        })
        .unwrap();
        (nats, postgres)
    })
    .join()
    .unwrap();
    // The spawning thread is gone; both servers must still be up.
    std::thread::sleep(Duration::from_millis(300));
    let (nats_pid, postgres_pid) = (nats.pid().unwrap(), postgres.pid().unwrap());
    assert!(is_alive(nats_pid) && is_alive(postgres_pid));
    println!("PIDS {nats_pid} {postgres_pid}");
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn servers_die_with_their_owner_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "owner_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(helper.stdout.take().unwrap());
    // libtest prints "test owner_helper ... " without a newline before the helper's output.
    let pids: Vec<u32> = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            line.split_once("PIDS ")
                .map(|(_, rest)| rest.split(' ').map(|p| p.parse().unwrap()).collect())
        })
        .expect("helper reports the server pids");

    helper.kill().unwrap(); // SIGKILL: no destructor runs in the owner
    helper.wait().unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    while pids.iter().any(|&pid| is_alive(pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in pids {
        assert!(!is_alive(pid), "server pid {pid} outlived its owner");
    }
}
