//! Readiness check for PostgreSQL: does the server at a port accept a connection?
//!
//! Speaks just enough of the frontend/backend protocol (v3 StartupMessage) to tell "accepting
//! connections" (the server asks for authentication or accepts) from "starting up / shutting
//! down / in recovery" (it answers with an ErrorResponse), without a client library.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

const PROTOCOL_3_0: i32 = 196_608;

/// `Ok(())` if PostgreSQL on 127.0.0.1:`port` accepts connections for `user`, else why not.
pub(crate) fn accepts_connections(port: u16, user: &str, timeout: Duration) -> Result<(), String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream =
        TcpStream::connect_timeout(&address, timeout).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(&startup_message(user, "postgres"))
        .map_err(|e| format!("send startup: {e}"))?;

    let mut header = [0u8; 5];
    stream
        .read_exact(&mut header)
        .map_err(|e| format!("read reply: {e}"))?;
    let reply = match header[0] {
        // Authentication request (AuthenticationOk with trust): the server accepts sessions.
        b'R' => Ok(()),
        b'E' => {
            let length = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
            let mut body = vec![
                0u8;
                usize::try_from(length)
                    .unwrap_or(4)
                    .saturating_sub(4)
                    .min(8192)
            ];
            stream
                .read_exact(&mut body)
                .map_err(|e| format!("read error reply: {e}"))?;
            Err(error_message(&body))
        }
        other => Err(format!("unexpected reply {:?}", other as char)),
    };
    // Terminate politely; ignore failures (the server may already have closed).
    let _ = stream.write_all(&[b'X', 0, 0, 0, 4]);
    reply
}

fn startup_message(user: &str, database: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    body.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
    for (key, value) in [("user", user), ("database", database)] {
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let length = i32::try_from(body.len() + 4).unwrap_or(i32::MAX);
    let mut message = length.to_be_bytes().to_vec();
    message.extend_from_slice(&body);
    message
}

/// The human-readable `M` field of an ErrorResponse body (`<type byte><cstring>`… `\0`).
fn error_message(body: &[u8]) -> String {
    body.split(|&b| b == 0)
        .find_map(|field| field.strip_prefix(b"M"))
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .unwrap_or_else(|| "error response".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_message_is_length_prefixed_and_terminated() {
        let message = startup_message("postgres", "postgres");
        let length = i32::from_be_bytes(message[..4].try_into().unwrap());
        assert_eq!(length as usize, message.len());
        assert_eq!(&message[4..8], &PROTOCOL_3_0.to_be_bytes());
        assert!(message.ends_with(b"postgres\0\0"));
    }

    #[test]
    fn extracts_the_message_field() {
        let body = b"SFATAL\0C57P03\0Mthe database system is starting up\0\0";
        assert_eq!(error_message(body), "the database system is starting up");
    }

    #[test]
    fn nothing_listening_is_not_ready() {
        let port = crate::free_port().unwrap();
        assert!(accepts_connections(port, "postgres", Duration::from_millis(200)).is_err());
    }
}
