//! Readiness check for `nats-server -js`: is *our* server listening, and does JetStream answer?
//!
//! Speaks the text protocol directly: reads `INFO` (checks the server name, so a foreign server
//! on the same port is never mistaken for ours), then requests `$JS.API.INFO` and waits for the
//! account-info response.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

const INBOX: &str = "_INBOX.jwl_local_infra_probe";

/// `Ok(())` if the server named `server_name` on 127.0.0.1:`port` has JetStream enabled and ready.
pub(crate) fn jetstream_ready(
    port: u16,
    server_name: &str,
    timeout: Duration,
) -> Result<(), String> {
    let stream = connect(port, timeout)?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);

    let info = read_line(&mut reader)?;
    if !info.starts_with("INFO ") {
        return Err(format!("expected INFO, got {info:?}"));
    }
    if !info.contains(&format!("\"server_name\":\"{server_name}\"")) {
        return Err(format!("another server answers on port {port}: {info}"));
    }
    let request = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":false,\"name\":\"jwl-probe\"}}\r\n\
         SUB {INBOX} 1\r\nPUB $JS.API.INFO {INBOX} 0\r\n\r\nPING\r\n"
    );
    writer
        .write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;

    loop {
        let line = read_line(&mut reader)?;
        if let Some(rest) = line.strip_prefix("MSG ") {
            let size: usize = rest
                .split_whitespace()
                .last()
                .and_then(|s| s.parse().ok())
                .ok_or("bad MSG line")?;
            let mut payload = vec![0u8; size + 2];
            reader
                .read_exact(&mut payload)
                .map_err(|e| format!("read payload: {e}"))?;
            let payload = String::from_utf8_lossy(&payload[..size]).into_owned();
            return if payload.contains("account_info_response") && !payload.contains("\"error\"") {
                Ok(())
            } else {
                Err(format!("JetStream not ready: {payload}"))
            };
        }
        if line.starts_with("-ERR") {
            return Err(line);
        }
        // PONG, PING and +OK are skipped; the reply (or a read timeout) ends the loop.
    }
}

/// `Ok(())` if the server named `server_name` on 127.0.0.1:`port` greets clients and its log at
/// `log_path` says it is ready (JetStream is set up before that line). For a server with a
/// configuration of its own, whose clients may need TLS and credentials.
pub(crate) fn configured_server_ready(
    port: u16,
    server_name: &str,
    log_path: &std::path::Path,
    timeout: Duration,
) -> Result<(), String> {
    let stream = connect(port, timeout)?;
    let info = read_line(&mut BufReader::new(stream))?;
    if !info.starts_with("INFO ") {
        return Err(format!("expected INFO, got {info:?}"));
    }
    if !info.contains(&format!("\"server_name\":\"{server_name}\"")) {
        return Err(format!("another server answers on port {port}: {info}"));
    }
    let log = std::fs::read_to_string(log_path).map_err(|e| format!("reading the log: {e}"))?;
    // the log is appended to across restarts: only this run's lines count
    let this_run = log.rsplit("Starting nats-server").next().unwrap_or(&log);
    if this_run.contains("Server is ready") {
        Ok(())
    } else {
        Err("the server has not logged that it is ready".to_owned())
    }
}

fn read_line(reader: &mut impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Err("connection closed".to_owned()),
        Ok(_) => Ok(line.trim_end().to_owned()),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// A connection to 127.0.0.1:`port` whose reads and writes give up after `timeout`.
fn connect(port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream =
        TcpStream::connect_timeout(&address, timeout).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}
