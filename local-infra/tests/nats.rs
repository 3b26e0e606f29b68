//! Starting, killing and restarting a real private nats-server with JetStream.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use jwl_local_infra::{InfraError, NatsOptions, NatsServer, free_port};

fn options(dir: &tempfile::TempDir) -> NatsOptions {
    NatsOptions {
        store_dir: dir.path().join("store"),
        port: free_port().unwrap(),
        config_file: None,
        env: Vec::new(),
    }
}

fn refuses_connections(port: u16) -> bool {
    TcpStream::connect_timeout(
        &(Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_millis(500),
    )
    .is_err()
}

async fn stored_messages(url: &str) -> u64 {
    let client = async_nats::connect(url).await.expect("connects");
    let js = jetstream::new(client);
    let mut stream = js.get_stream("T").await.expect("stream survives");
    stream.info().await.unwrap().state.messages
}

#[tokio::test]
async fn jetstream_data_survives_kill_stop_and_restart_on_the_same_port() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = NatsServer::start(options(&dir)).unwrap();
    let url = server.url();
    assert_eq!(url, format!("nats://127.0.0.1:{}", server.port()));
    assert!(server.log_file().exists());

    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    js.create_stream(stream::Config {
        name: "T".into(),
        subjects: vec!["t.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish("t.1", "one".into())
        .await
        .unwrap()
        .await
        .unwrap();
    drop(js);

    server.kill().unwrap();
    assert!(!server.is_running());
    assert!(refuses_connections(server.port()));
    server.start_again().unwrap();
    assert_eq!(server.url(), url);
    assert_eq!(stored_messages(&url).await, 1);

    server.restart().unwrap();
    assert!(server.is_running());
    assert_eq!(stored_messages(&url).await, 1);

    server.stop().unwrap();
    assert!(refuses_connections(server.port()));
    server.start_again().unwrap();
    server.start_again().unwrap(); // no-op while running
    assert_eq!(stored_messages(&url).await, 1);

    let port = server.port();
    drop(server);
    assert!(refuses_connections(port), "drop kills the server");
}

#[test]
fn a_taken_port_is_reported_as_port_in_use() {
    let dir = tempfile::tempdir().unwrap();
    // the occupier takes a port of the kernel's choosing (a port picked as free first could be
    // taken by a concurrent test before it binds)
    let occupier = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let mut options = options(&dir);
    options.port = occupier.local_addr().unwrap().port();
    match NatsServer::start(options.clone()) {
        Err(InfraError::PortInUse {
            server: "nats-server",
            port,
        }) => assert_eq!(port, options.port),
        other => panic!("expected PortInUse, got {other:?}"),
    }
}
