//! [`Proxy`]: a small TCP proxy between one service and NATS or PostgreSQL, so that a test can
//! cut that one path ([`Proxy::cut`]) and restore it ([`Proxy::restore`]) while everything
//! else keeps running.
//!
//! While cut, the live connections are dropped and new ones are accepted but black-holed: no
//! byte goes either way and nothing is closed until the path is restored (then they are
//! dropped, and the client must connect again). That is what a partition looks like to a
//! client: its connect "succeeds" and then nothing answers. [`Proxy::cut_silently`] instead
//! black-holes the live connections for good, without closing them (a partition that also lost
//! their state, say a NAT or firewall in between): half-open connections, which a client only
//! gives up by its own timeouts or keepalives.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Which of a service's connections goes through a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Link {
    /// `JWL_NATS_URL`.
    Nats,
    /// `JWL_<SERVICE>_DATABASE_URL`.
    Postgres,
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Link::Nats => "nats",
            Link::Postgres => "postgres",
        })
    }
}

/// How [`Proxy::cut_for`] cuts the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// As [`Proxy::cut`]: live connections dropped, new ones black-holed.
    Closing,
    /// As [`Proxy::cut_silently`]: live connections black-holed for good, nothing closed.
    Silent,
}

/// The state of the path through a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Open,
    /// Live connections dropped, new ones black-holed.
    Cut,
    /// Live connections black-holed for good, new ones until restored; nothing closed.
    Silent,
}

/// A running proxy on a loopback port, forwarding to one upstream address.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    path: Arc<watch::Sender<Path>>,
    accept_loop: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`
    /// (`host:port`).
    pub async fn start(upstream: &str) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding a proxy port")?;
        let addr = listener.local_addr().context("reading the proxy port")?;
        let path = Arc::new(watch::channel(Path::Open).0);
        let accept_loop = tokio::spawn(accept_loop(listener, upstream.to_owned(), path.clone()));
        Ok(Proxy {
            addr,
            path,
            accept_loop,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the path: drops every live connection and black-holes new ones.
    pub fn cut(&self) {
        self.path.send_replace(Path::Cut);
    }

    /// Cuts the path without closing anything: the live connections are black-holed for as long
    /// as the proxy lives, new ones until [`Proxy::restore`].
    pub fn cut_silently(&self) {
        self.path.send_replace(Path::Silent);
    }

    /// Restores the path: new connections are forwarded again (the black-holed ones are dropped).
    pub fn restore(&self) {
        self.path.send_replace(Path::Open);
    }

    /// Cuts the path as `how` says for `duration` (a fault's length, not a wait for a
    /// condition), then restores it.
    pub async fn cut_for(&self, how: Cut, duration: std::time::Duration) {
        match how {
            Cut::Closing => self.cut(),
            Cut::Silent => self.cut_silently(),
        }
        tokio::time::sleep(duration).await;
        self.restore();
    }

    /// Whether the path is cut now.
    pub fn is_cut(&self) -> bool {
        *self.path.borrow() != Path::Open
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: String, path: Arc<watch::Sender<Path>>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve(client, upstream.clone(), path.subscribe()));
    }
}

/// One client connection: black-holed while the path is cut, else forwarded until it ends or
/// the path is cut (then dropped, or held silently until the path is restored).
async fn serve(mut client: TcpStream, upstream: String, mut path: watch::Receiver<Path>) {
    if *path.borrow_and_update() != Path::Open {
        // hold the connection without a byte either way, drop it when the path comes back
        let _ = path.wait_for(|path| *path == Path::Open).await;
        return;
    }
    let Ok(mut server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let cut_to = tokio::select! {
        _ = copy_bidirectional(&mut client, &mut server) => return,
        cut_to = path.wait_for(|path| *path != Path::Open) => cut_to.map(|p| *p).ok(),
    };
    if cut_to == Some(Path::Silent) {
        // half-open for good: held (not a byte either way) until the proxy is dropped
        while path.changed().await.is_ok() {}
    }
}

/// `url` split around its `host:port`: (everything before, `host:port`, everything after).
fn split_address(url: &str) -> anyhow::Result<(&str, &str, &str)> {
    let scheme_end = url
        .find("://")
        .map(|i| i + 3)
        .with_context(|| format!("no scheme in {url}"))?;
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let host_start = scheme_end + rest[..authority_end].rfind('@').map_or(0, |i| i + 1);
    let host_end = scheme_end + authority_end;
    let host_port = &url[host_start..host_end];
    anyhow::ensure!(
        host_port.contains(':'),
        "no port in {url} (the proxy needs host:port)"
    );
    Ok((&url[..host_start], host_port, &url[host_end..]))
}

/// The `host:port` of `url`.
pub fn address_of(url: &str) -> anyhow::Result<String> {
    Ok(split_address(url)?.1.to_owned())
}

/// `url` with its `host:port` replaced by `addr` (userinfo, path and query kept).
pub fn reroute(url: &str, addr: SocketAddr) -> anyhow::Result<String> {
    let (before, _, after) = split_address(url)?;
    Ok(format!("{before}{addr}{after}"))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn reroute_keeps_everything_but_the_address() {
        let proxy: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let database = "postgres://postgres@127.0.0.1:5433/db_1?x=y";
        assert_eq!(
            reroute(database, proxy).unwrap(),
            "postgres://postgres@127.0.0.1:4000/db_1?x=y"
        );
        assert_eq!(address_of(database).unwrap(), "127.0.0.1:5433");
        assert_eq!(
            reroute("nats://127.0.0.1:4222", proxy).unwrap(),
            "nats://127.0.0.1:4000"
        );
        assert_eq!(
            address_of("nats://127.0.0.1:4222").unwrap(),
            "127.0.0.1:4222"
        );
        assert!(reroute("nats://localhost", proxy).is_err());
    }

    /// An echo server the proxy forwards to.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = socket.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    async fn echoes(stream: &mut TcpStream) -> bool {
        let mut reply = [0u8; 4];
        stream.write_all(b"ping").await.is_ok()
            && tokio::time::timeout(
                std::time::Duration::from_millis(500),
                stream.read_exact(&mut reply),
            )
            .await
            .is_ok_and(|read| read.is_ok() && &reply == b"ping")
    }

    #[tokio::test]
    async fn cut_drops_live_connections_black_holes_new_ones_and_restore_heals() {
        let proxy = Proxy::start(&echo_server().await.to_string())
            .await
            .unwrap();
        let mut live = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(echoes(&mut live).await);

        proxy.cut();
        assert!(proxy.is_cut());
        let mut buffer = [0u8; 4];
        let read = tokio::time::timeout(std::time::Duration::from_secs(2), live.read(&mut buffer))
            .await
            .expect("the live connection is dropped at once");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let mut black_holed = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(!echoes(&mut black_holed).await);

        proxy.restore();
        let mut healed = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(echoes(&mut healed).await);
    }

    #[tokio::test]
    async fn a_silent_cut_holds_live_connections_open_without_a_byte() {
        let proxy = Proxy::start(&echo_server().await.to_string())
            .await
            .unwrap();
        let mut live = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(echoes(&mut live).await);

        proxy.cut_silently();
        assert!(proxy.is_cut());
        assert!(
            !echoes(&mut live).await,
            "nothing comes back, nothing is closed"
        );

        proxy.restore();
        let mut healed = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(echoes(&mut healed).await);
    }
}
