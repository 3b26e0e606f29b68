//! `GET /healthz` (the process is alive) and `GET /readyz` (its database pools and the broker
//! answer), with the [`ReadinessProbe`] behind the latter.

use std::sync::Arc;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use futures::future::{BoxFuture, join_all};
use jwl_outbox::JetStreamBroker;
use serde_json::json;
use sqlx::PgPool;

use crate::db;
use crate::extract::Json;
use crate::problem::ApiError;

/// How long one pool ping may take before the process counts as not ready.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Something that can tell whether the process can serve traffic; `Err` says what is down.
pub trait ReadinessProbe: Send + Sync + 'static {
    fn check(&self) -> BoxFuture<'_, Result<(), String>>;
}

/// The standard probe: every pool answers a ping and the broker connection is up.
#[derive(Clone)]
pub struct Readiness {
    pub pools: Vec<PgPool>,
    pub broker: JetStreamBroker,
}

impl ReadinessProbe for Readiness {
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let pings = join_all(
                self.pools
                    .iter()
                    .map(|pool| tokio::time::timeout(PING_TIMEOUT, db::ping(pool))),
            );
            let mut problems = Vec::new();
            for (index, outcome) in pings.await.into_iter().enumerate() {
                match outcome {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => problems.push(format!("database pool {index}: {error}")),
                    Err(_) => problems.push(format!(
                        "database pool {index}: no answer within {PING_TIMEOUT:?}"
                    )),
                }
            }
            if !self.broker.is_healthy() {
                problems.push("broker: not connected".to_owned());
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems.join("; "))
            }
        })
    }
}

pub(super) async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

pub(super) async fn readyz(probe: Arc<dyn ReadinessProbe>) -> Response {
    match probe.check().await {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(detail) => {
            tracing::warn!(%detail, "not ready");
            ApiError::unavailable(1, format!("not ready: {detail}")).into_response()
        }
    }
}
