//! The HTTP listeners of `jwl up` and `jwl serve`: the API (`JWL_HTTP_ADDR`) and, when
//! `JWL_METRICS_ADDR` is set, a second one for `/metrics` and the detailed `/readyz`, which the
//! API listener then no longer serves. The API listener also serves `/openapi.json`, the
//! description of what it serves.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use jwl_service_kit::auth::JwtKeys;
use jwl_service_kit::http::{self, MetricsOn, Readiness};
use jwl_service_kit::openapi::{self, OpenApi};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::args::HttpArgs;
use crate::supervise::Supervisor;

/// Bound listeners with the routers they serve, not yet serving.
pub struct Listeners {
    api: (TcpListener, Router),
    metrics: Option<(TcpListener, Router)>,
}

impl Listeners {
    /// Puts `routes` (described by the document parts `api`) and `/openapi.json` behind the
    /// edge and binds the API listener, and the metrics listener when one is configured. `hint`
    /// is added to the error of a failed bind of the API address.
    pub async fn bind(
        http: &HttpArgs,
        routes: Router,
        api: Vec<OpenApi>,
        keys: JwtKeys,
        readiness: Readiness,
        hint: &str,
    ) -> anyhow::Result<Self> {
        let metrics_on = if http.metrics_addr.is_some() {
            MetricsOn::Separate
        } else {
            MetricsOn::Public
        };
        let document = openapi::document(api, metrics_on);
        let routes = routes.merge(
            openapi::route(&document).context("rendering the OpenAPI document (internal error)")?,
        );
        let app = http::edge_with(routes, keys, Arc::new(readiness.clone()), metrics_on);
        let api = TcpListener::bind(http.http_addr)
            .await
            .with_context(|| format!("listening on {}{hint}", http.http_addr))?;
        let metrics = match http.metrics_addr {
            Some(addr) => {
                let listener = TcpListener::bind(addr).await.with_context(|| {
                    format!("listening on {addr} for metrics (JWL_METRICS_ADDR)")
                })?;
                Some((listener, http::metrics_router(Arc::new(readiness))))
            }
            None => None,
        };
        Ok(Self {
            api: (api, app),
            metrics,
        })
    }

    /// The address the API listener is bound to.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.0.local_addr().ok()
    }

    /// The address the metrics listener is bound to, if there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
            .as_ref()
            .and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// Serves each listener as a task of `tasks` until `shutdown`.
    pub fn spawn(self, tasks: &mut Supervisor, shutdown: &CancellationToken) {
        let (listener, app) = self.api;
        let api_shutdown = shutdown.clone();
        tasks.spawn("HTTP server", async move {
            Ok(http::serve_on(listener, app, api_shutdown).await?)
        });
        if let Some((listener, app)) = self.metrics {
            let metrics_shutdown = shutdown.clone();
            tasks.spawn("metrics HTTP server", async move {
                Ok(http::serve_on(listener, app, metrics_shutdown).await?)
            });
        }
    }
}
