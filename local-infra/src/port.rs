//! Choosing a free loopback TCP port for a private server.

use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, OnceLock};

use crate::error::InfraError;

/// Ports below the kernel's ephemeral range are used so that a chosen port cannot be taken in
/// the meantime by the local end of an outgoing connection.
const LOWEST_PORT: u16 = 15_000;
const ATTEMPTS: usize = 200;

/// Returns a loopback port that nothing listens on right now and that this process has not
/// handed out before. Another process may still take it before the server binds it; the
/// servers report that as [`InfraError::PortInUse`], so callers can retry with a new port.
pub fn free_port() -> Result<u16, InfraError> {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    let (low, high) = candidate_range();
    for _ in 0..ATTEMPTS {
        let port = low + (random_u64() % u64::from(high - low)) as u16;
        let mut taken = handed_out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if taken.contains(&port) || TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
            continue;
        }
        taken.insert(port);
        return Ok(port);
    }
    // Fall back to the kernel's choice (inside the ephemeral range).
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| InfraError::io("binding 127.0.0.1:0 to find a free port", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| InfraError::io("reading the bound port", e))?
        .port();
    Ok(port)
}

/// `[LOWEST_PORT, start of the ephemeral range)`, or a fixed range if that is too small.
fn candidate_range() -> (u16, u16) {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral_start > LOWEST_PORT + 1_000 {
        (LOWEST_PORT, ephemeral_start)
    } else {
        (61_000, 65_000)
    }
}

fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each port is bound as soon as it is handed out: the machine is shared (CI runs beside
    /// other services and their clients), so a port checked only after fifty more were chosen
    /// may have been taken by another process in the meantime, which `free_port` documents.
    #[test]
    fn ports_are_bindable_and_never_repeated() {
        let (low, high) = candidate_range();
        let mut ports = HashSet::new();
        for _ in 0..50 {
            let port = free_port().expect("a free port");
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port));
            assert!(
                listener.is_ok(),
                "port {port} was handed out but is not bindable"
            );
            assert!(
                (low..high).contains(&port),
                "port {port} is outside the candidate range {low}..{high}"
            );
            assert!(ports.insert(port), "port {port} was handed out twice");
        }
    }
}
