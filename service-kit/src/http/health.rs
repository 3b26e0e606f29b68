//! `GET /healthz` (the process is alive) and `GET /readyz` (its database pools and the broker
//! answer, and the events stream is available), with the [`ReadinessProbe`] behind the latter.
//!
//! The public `/readyz` says only ready (`200`) or not (`503`, a problem whose detail is just
//! "not ready"): which dependency is down, and its error text, would tell anyone on the internet
//! about the system's insides. The detail is logged, and shown on the metrics listener's
//! `/readyz` ([`super::metrics_router`]), which only operators and Prometheus reach.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use axum::response::{IntoResponse, Response};
use futures::future::{BoxFuture, join_all};
use jwl_outbox::transport::Broker;
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

/// How long the stream info request of the readiness probe may take.
const STREAM_INFO_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one answer about the stream is reused, so that frequent probes (several probers,
/// a load balancer) do not each ask the broker.
const STREAM_CHECK_TTL: Duration = Duration::from_secs(1);

/// The standard probe: every pool answers a ping, the broker connection is up and, when
/// [`with_stream`](Self::with_stream) named one, that stream answers and has a leader.
#[derive(Clone)]
pub struct Readiness {
    pools: Vec<PgPool>,
    broker: Arc<dyn Broker>,
    stream: Option<StreamCheck>,
}

/// The last answer about a stream: when it was asked, and what was wrong.
type LastAnswer = Option<(Instant, Result<(), String>)>;

/// The availability of one stream, asked at most once per [`STREAM_CHECK_TTL`].
#[derive(Clone)]
struct StreamCheck {
    name: String,
    last: Arc<Mutex<LastAnswer>>,
}

impl Readiness {
    /// Ready while every pool answers a ping and the broker connection is up.
    pub fn new(pools: Vec<PgPool>, broker: Arc<dyn Broker>) -> Self {
        Self {
            pools,
            broker,
            stream: None,
        }
    }

    /// Also ready only while `stream` (the events stream) answers a stream info request within
    /// a second and has a leader; the answer is cached for a second.
    pub fn with_stream(mut self, stream: impl Into<String>) -> Self {
        self.stream = Some(StreamCheck {
            name: stream.into(),
            last: Arc::new(Mutex::new(None)),
        });
        self
    }

    async fn stream_problem(&self) -> Option<String> {
        let check = self.stream.as_ref()?;
        // held across the request: concurrent probes wait for the one answer
        let mut last = check.last.lock().await;
        if let Some((at, outcome)) = last.as_ref()
            && at.elapsed() < STREAM_CHECK_TTL
        {
            return outcome.clone().err();
        }
        let outcome = self
            .broker
            .stream_available(&check.name, STREAM_INFO_TIMEOUT)
            .await
            .map_err(|error| format!("broker: {error}"));
        *last = Some((Instant::now(), outcome.clone()));
        outcome.err()
    }
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
            } else if let Some(problem) = self.stream_problem().await {
                problems.push(problem);
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

/// What a `/readyz` answer shows of a failed check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Detail {
    /// Only that the process is not ready (the public listener).
    Hidden,
    /// Which check failed, with its error (the metrics listener).
    Shown,
}

pub(super) async fn readyz(probe: Arc<dyn ReadinessProbe>, shown: Detail) -> Response {
    match probe.check().await {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(detail) => {
            tracing::warn!(%detail, "not ready");
            let text = match shown {
                Detail::Hidden => "not ready".to_owned(),
                Detail::Shown => format!("not ready: {detail}"),
            };
            ApiError::unavailable(1, text).into_response()
        }
    }
}
