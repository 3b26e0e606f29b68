//! Service-level helpers for the integration tests of the service crates (`services/*`): a pool
//! in the service's schema on a fresh test database, a `ServiceContext` against a private
//! nats-server, requests through the real HTTP edge, delivery of an event exactly as a
//! consumer would, publishing events and dead letters as the relay and the consumer loop do,
//! and reading the outbox back.
//!
//! Everything here talks to real PostgreSQL and a real `nats-server`; the assertions stay in
//! the tests.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header, request};
use jwl_events::{Envelope, HeaderStyle, Service};
use jwl_outbox::protocol::dead_letter::{
    CONSUMER_HEADER, ERROR_HEADER, ORDER_ID_HEADER, REASON_HEADER, STREAM_SEQ_HEADER,
    SUBJECT_HEADER, dead_letter_subject,
};
use jwl_outbox::transport::{OutboundMessage, Publisher};
use jwl_outbox::{
    Handler, HandlerError, JetStreamBroker, MessagingSettings, OutboxError, Processed,
};
use jwl_service_kit::auth::{JwtKeys, Scope};
use jwl_service_kit::db::{Planning, PoolSettings, connect_with};
use jwl_service_kit::http::{Readiness, edge};
use jwl_service_kit::{ServiceContext, Settings};
use serde_json::Value;
use sqlx::PgPool;
use sqlx::types::Json;

use crate::TestNats;

/// Largest response body [`send`] reads.
const MAX_BODY_BYTES: usize = 1 << 20;

/// A pool on a fresh test database whose `search_path` is `schema` (created if missing),
/// planning as a service's own pool does ([`Planning::OnceByIndex`]). The acquire timeout is
/// generous, as tests share two cores; the caller runs its migrations.
pub async fn schema_pool(schema: &str) -> anyhow::Result<PgPool> {
    let database = crate::database().await?;
    let settings = PoolSettings {
        acquire_timeout: Duration::from_secs(60),
        planning: Planning::OnceByIndex,
        ..PoolSettings::default()
    };
    connect_with(database.url(), schema, &settings)
        .await
        .with_context(|| format!("connecting to {} in schema {schema}", database.name()))
}

/// A [`ServiceContext`] of `service` on `pool`, with a broker connected to a private
/// nats-server. The server lives as long as the returned [`TestNats`].
pub async fn service_context(
    service: Service,
    pool: PgPool,
    messaging: MessagingSettings,
    settings: Settings,
) -> anyhow::Result<(ServiceContext, TestNats)> {
    let nats = crate::nats().await?;
    let broker = JetStreamBroker::connect(nats.url()).await?;
    let ctx = ServiceContext::new(
        service,
        pool,
        Arc::new(broker),
        messaging,
        Arc::new(settings),
    );
    Ok((ctx, nats))
}

/// A service's routes behind the real HTTP edge, with the context they were built from and the
/// keys its tokens are signed with. The private nats-server lives as long as the app.
pub struct EdgeApp {
    pub ctx: ServiceContext,
    pub router: Router,
    pub keys: JwtKeys,
    pub nats: TestNats,
}

impl EdgeApp {
    /// Builds the [`service_context`] of `service` on `pool` and puts `routes(&ctx)` behind the
    /// edge, authenticating with tokens signed by `jwt_secret`.
    pub async fn start(
        service: Service,
        pool: PgPool,
        messaging: MessagingSettings,
        settings: Settings,
        jwt_secret: &[u8],
        routes: impl FnOnce(&ServiceContext) -> Router,
    ) -> anyhow::Result<Self> {
        let (ctx, nats) = service_context(service, pool, messaging, settings).await?;
        let keys = JwtKeys::new(jwt_secret);
        let router = edge_router(&ctx, routes(&ctx), &keys);
        Ok(Self {
            ctx,
            router,
            keys,
            nats,
        })
    }

    /// A token for `subject` with `scopes`, valid for `valid_for`.
    pub fn token(
        &self,
        subject: &str,
        scopes: &[Scope],
        valid_for: Duration,
    ) -> anyhow::Result<String> {
        Ok(self.keys.issue(subject, scopes, valid_for)?)
    }
}

/// `routes` behind the real HTTP edge (auth with `keys`, problem responses, health), ready when
/// the context's pool and broker are.
fn edge_router(ctx: &ServiceContext, routes: Router, keys: &JwtKeys) -> Router {
    let readiness = Readiness::new(vec![ctx.pool.clone()], ctx.broker.clone());
    edge(routes, keys.clone(), readiness)
}

/// A request builder for `method uri`, with `Authorization: Bearer <token>` when a token is given.
pub fn bearer_request(method: Method, uri: &str, token: Option<&str>) -> request::Builder {
    let request = Request::builder().method(method).uri(uri);
    match token {
        Some(token) => request.header(header::AUTHORIZATION, format!("Bearer {token}")),
        None => request,
    }
}

/// An HTTP response from the edge, its body parsed as JSON (`Null` when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub raw: Vec<u8>,
    pub json: Value,
}

impl Reply {
    /// The `field` of a problem response.
    pub fn field(&self) -> Option<&str> {
        self.json.get("field").and_then(Value::as_str)
    }

    /// The value of the response header `name`, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends `request` through `router` and reads the whole response.
pub async fn send(router: &Router, request: Request<Body>) -> anyhow::Result<Reply> {
    let response = tower::ServiceExt::oneshot(router.clone(), request).await?;
    let status = response.status();
    let headers = response.headers().clone();
    let raw = to_bytes(response.into_body(), MAX_BODY_BYTES)
        .await?
        .to_vec();
    let json = if raw.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&raw).with_context(|| format!("{status}: body is not JSON"))?
    };
    Ok(Reply {
        status,
        headers,
        raw,
        json,
    })
}

/// `GET uri` through `router` as the holder of `token` (if any).
pub async fn get(router: &Router, uri: &str, token: Option<&str>) -> anyhow::Result<Reply> {
    send(
        router,
        bearer_request(Method::GET, uri, token).body(Body::empty())?,
    )
    .await
}

/// Handles `event` with `handler` exactly as `service`'s consumer of its type would: through
/// the inbox under the durable consumer name, with emitted events written to the outbox.
pub async fn deliver(
    pool: &PgPool,
    service: Service,
    handler: &dyn Handler,
    event: &Envelope,
) -> Result<Processed, OutboxError> {
    let consumer = jwl_outbox::durable_name(service, event.event_type());
    jwl_outbox::process_one(pool, service, handler, &consumer, event).await
}

/// Asserts that a batch way refused a batch ([`jwl_outbox::process_batch`]'s `result`): for good
/// (`permanent`: a batch it does not take) or transiently (a case it does not cover, which one
/// by one then decides).
#[track_caller]
pub fn assert_batch_refused<T: std::fmt::Debug>(result: &Result<T, OutboxError>, permanent: bool) {
    let refused = match result {
        Err(OutboxError::Handler(HandlerError::Permanent(_))) => Some(true),
        Err(OutboxError::Handler(HandlerError::Transient(_))) => Some(false),
        _ => None,
    };
    assert_eq!(refused, Some(permanent), "{result:?}");
}

/// Publishes `event` to the events stream as a producer's relay would (NATS headers, the event
/// id as the dedup id) and waits for the broker's acknowledgement.
pub async fn publish_event(broker: &dyn Publisher, event: &Envelope) -> anyhow::Result<()> {
    publish_events(broker, std::slice::from_ref(event)).await?;
    Ok(())
}

/// Publishes `events` in order as a producer's relay would (the event id as the dedup id) and
/// returns their stream sequences.
pub async fn publish_events(
    broker: &dyn Publisher,
    events: &[Envelope],
) -> anyhow::Result<Vec<u64>> {
    let messages: Vec<OutboundMessage> = events
        .iter()
        .map(|event| {
            let wire = jwl_events::encode(event, HeaderStyle::NEUTRAL);
            OutboundMessage {
                dedup_id: event.id.0.to_string(),
                subject: wire.subject,
                headers: wire.headers,
                payload: wire.payload.into(),
            }
        })
        .collect();
    acknowledged(broker, &messages, "publishing events").await
}

/// Publishes a dead letter of `original` (stored at `original_seq` of the events stream) as the
/// consumer loop does: on `jwl.dlq.<consumer>.<order>`, with the original's headers and payload
/// and the dead-letter headers of `jwl_outbox::protocol::dead_letter`. Returns its sequence in
/// the dead-letter stream.
pub async fn publish_dead_letter(
    broker: &dyn Publisher,
    consumer: &str,
    reason: &str,
    error: &str,
    original: &Envelope,
    original_seq: u64,
) -> anyhow::Result<u64> {
    let wire = jwl_events::encode(original, HeaderStyle::NEUTRAL);
    let order = original.order_id().to_string();
    let mut headers = wire.headers;
    headers.extend(
        [
            (CONSUMER_HEADER, consumer.to_owned()),
            (REASON_HEADER, reason.to_owned()),
            (ERROR_HEADER, error.to_owned()),
            (SUBJECT_HEADER, wire.subject),
            (STREAM_SEQ_HEADER, original_seq.to_string()),
            (ORDER_ID_HEADER, order.clone()),
        ]
        .map(|(name, value)| (name.to_owned(), value)),
    );
    let message = OutboundMessage {
        dedup_id: format!("dlq:{consumer}:{}", original.id),
        subject: dead_letter_subject(consumer, &order),
        headers,
        payload: wire.payload.into(),
    };
    let sequences = acknowledged(broker, &[message], "publishing a dead letter").await?;
    sequences
        .first()
        .copied()
        .context("publishing a dead letter: no acknowledgement")
}

/// Publishes `messages` in one batch and returns their stream sequences, or the first failure.
async fn acknowledged(
    broker: &dyn Publisher,
    messages: &[OutboundMessage],
    what: &'static str,
) -> anyhow::Result<Vec<u64>> {
    let receipts = broker.publish_batch(messages).await;
    anyhow::ensure!(
        receipts.len() == messages.len(),
        "{what}: {} acknowledgements for {} messages",
        receipts.len(),
        messages.len()
    );
    receipts
        .into_iter()
        .map(|receipt| receipt.map(|receipt| receipt.sequence).context(what))
        .collect()
}

/// An outbox row's headers and payload.
type OutboxRow = (Json<Vec<(String, String)>>, Vec<u8>);

/// Every event in the outbox of `pool`'s schema, decoded, in enqueue order.
pub async fn outbox_events(pool: &PgPool) -> anyhow::Result<Vec<Envelope>> {
    let rows: Vec<OutboxRow> = sqlx::query_as("SELECT headers, payload FROM outbox ORDER BY seq")
        .fetch_all(pool)
        .await?;
    rows.into_iter()
        .map(|(Json(headers), payload)| {
            let pairs = headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            Ok(jwl_events::decode(HeaderStyle::NEUTRAL, pairs, &payload)?)
        })
        .collect()
}
