//! Starting, killing and restarting a real private tansu broker (skipped when tansu is not
//! installed: it is optional). Topics over the Kafka protocol are covered by the outbox's
//! contract tests; this checks the process handling and the storage choice.

use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use jwl_local_infra::{
    InfraError, TansuOptions, TansuServer, TansuStorage, find_binary, free_port,
};

fn installed() -> bool {
    match find_binary("tansu") {
        Ok(_) => true,
        Err(error) => {
            eprintln!("skipping: {error}");
            false
        }
    }
}

fn refuses_connections(port: u16) -> bool {
    TcpStream::connect_timeout(
        &(Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_millis(500),
    )
    .is_err()
}

#[test]
fn a_broker_is_killed_started_again_and_restarted_on_the_same_port_and_database() {
    if !installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut server = TansuServer::start(TansuOptions {
        data_dir: dir.path().join("data"),
        port: free_port().unwrap(),
        storage: TansuStorage::Sqlite,
    })
    .unwrap();
    let port = server.port();
    assert_eq!(server.bootstrap_servers(), format!("127.0.0.1:{port}"));
    assert!(server.is_running());
    assert!(
        server.data_dir().join("tansu.db").exists(),
        "SQLite storage in the data dir"
    );
    let first = server.pid();

    server.kill().unwrap();
    assert!(!server.is_running());
    assert!(refuses_connections(port));
    server.start_again().unwrap();
    assert!(server.is_running());
    assert_ne!(server.pid(), first);

    let before = server.pid();
    server.restart().unwrap();
    assert!(server.is_running());
    assert_ne!(server.pid(), before);
    assert!(server.log_file().exists());

    server.stop().unwrap();
    assert!(!server.is_running());
    assert!(refuses_connections(port));
}

#[test]
fn a_memory_broker_starts_without_a_database() {
    if !installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = TansuServer::start(TansuOptions {
        data_dir: dir.path().to_owned(),
        port: free_port().unwrap(),
        storage: TansuStorage::Memory,
    })
    .unwrap();
    assert_eq!(server.storage(), TansuStorage::Memory);
    assert!(!dir.path().join("tansu.db").exists());
}

#[test]
fn a_taken_port_is_reported_as_such() {
    if !installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    // something that is not a Kafka broker holds the port
    let result = TansuServer::start(TansuOptions {
        data_dir: dir.path().to_owned(),
        port,
        storage: TansuStorage::Memory,
    });
    match result {
        Err(InfraError::PortInUse { port: reported, .. }) => assert_eq!(reported, port),
        other => panic!("expected PortInUse, got {other:?}"),
    }
}
