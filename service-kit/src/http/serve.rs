//! [`serve`]: run a router on a TCP listener until a cancellation token fires, then drain
//! in-flight requests (graceful shutdown).

use std::io;
use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("could not listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("the HTTP server failed: {0}")]
    Serve(#[source] io::Error),
}

/// Binds `addr` and serves `app` until `shutdown` is cancelled, then waits for in-flight
/// requests to finish.
pub async fn serve(
    addr: SocketAddr,
    app: Router,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    serve_on(listener, app, shutdown).await
}

/// [`serve`] on an already bound listener (e.g. port 0 in tests).
pub async fn serve_on(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP listening");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(ServeError::Serve)?;
    tracing::info!("HTTP server stopped");
    Ok(())
}
