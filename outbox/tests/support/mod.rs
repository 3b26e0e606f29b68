//! Test harness for the reliability tests: a private Postgres database with a service schema, a
//! private nats-server, a recording test handler, and helpers to read streams and tables.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use async_nats::HeaderMap;
use async_nats::jetstream::message::{PublishMessage, StreamMessage};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use jwl_events::{
    Envelope, EventData, EventType, HeaderStyle, OrderId, PaymentCaptured, PaymentVoided, Service,
};
use jwl_outbox::transport::ConsumerSpec;
use jwl_outbox::{
    BatchContext, BatchHandler, Handler, HandlerContext, HandlerError, JetStreamBroker, Messaging,
    MessagingSettings, OutboxError, RelaySignal,
};
use jwl_testkit::{TestDatabase, TestNats};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The service the tests run as.
pub const SERVICE: Service = Service::Payment;
/// Its main subscription (most tests publish only this type).
pub const SUBSCRIBED: EventType = EventType::PaymentCaptured;
/// A second subscription, so that tests can involve two consumers of the same service.
pub const ALSO_SUBSCRIBED: EventType = EventType::PaymentVoided;
pub const SCHEMA: &str = "jwl_test_svc";

/// `amount_cents` values that steer the test handler (amounts must be valid, i.e. ≥ 0).
pub const PERMANENT: i64 = 900_001;
pub const TRANSIENT_TWICE: i64 = 900_002;
pub const ALWAYS_TRANSIENT: i64 = 900_003;
pub const EMITS: i64 = 900_004;
/// Handled after 500 ms of "work".
pub const SLOW: i64 = 900_006;
/// Handled "successfully", but the transaction then fails at commit (a deferred constraint).
pub const FAILS_AT_COMMIT: i64 = 900_005;
/// Refused permanently until the test inserts the event's id into the `fixed` table.
pub const REFUSED_UNTIL_FIXED: i64 = 900_007;
/// Its SQL fails, the handler ignores the error and reports success over an aborted transaction.
pub const SWALLOWS_SQL_ERROR: i64 = 900_008;
/// The handler's database connection is terminated (a database flap: the batch transaction is
/// lost) on its first [`FLAPS`] handlings; handled on the next.
pub const DB_FLAPS: i64 = 900_009;
pub const FLAPS: i64 = 5;

/// Generous deadline for conditions that should hold within a second or two.
pub const SOON: Duration = Duration::from_secs(15);

/// Short timings so the whole file runs in well under a minute.
pub fn test_settings() -> MessagingSettings {
    MessagingSettings {
        ack_wait: Duration::from_secs(2),
        max_attempts: 3,
        nak_backoff: vec![Duration::from_millis(300), Duration::from_millis(600)],
        batch_failure_nak_delay: Duration::from_millis(200),
        relay_poll_interval: Duration::from_millis(200),
        relay_standby_retry: Duration::from_millis(200),
        relay_retry_min_delay: Duration::from_millis(50),
        relay_retry_max_delay: Duration::from_millis(500),
        ..Default::default()
    }
}

pub struct Harness {
    /// The service messaging runs as (the consumer name depends on it).
    pub service: Service,
    pub db: TestDatabase,
    pub pool: PgPool,
    pub nats: TestNats,
    pub broker: JetStreamBroker,
    pub settings: MessagingSettings,
}

impl Harness {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_as(SERVICE).await
    }

    /// Running as `service`: a test that reads metrics uses a service of its own, so that its
    /// consumer's metrics are not shared with other tests.
    pub async fn start_as(service: Service) -> anyhow::Result<Self> {
        Self::start_in(jwl_testkit::database().await?, service).await
    }

    /// The harness over a given database (e.g. one in a dedicated cluster that a test stops).
    pub async fn start_in(db: TestDatabase, service: Service) -> anyhow::Result<Self> {
        init_observability();
        let nats = jwl_testkit::nats().await?;
        let pool = test_pool(&db).await?;
        let broker = JetStreamBroker::connect_named(nats.url(), "jwl-outbox-test").await?;
        let settings = test_settings();
        broker.ensure_streams(&settings).await?;
        Ok(Self {
            service,
            db,
            pool,
            nats,
            broker,
            settings,
        })
    }

    /// The durable (and inbox) consumer name of the test handler.
    /// The consumer name `SUBSCRIBED` events are handled (and dead-lettered) as.
    pub fn consumer(&self) -> String {
        jwl_outbox::durable_name(self.service, SUBSCRIBED)
    }

    pub fn jetstream(&self) -> &async_nats::jetstream::Context {
        self.broker.jetstream()
    }

    /// The spec of the service's durable consumer of the events stream, as its loop opens it.
    pub fn events_consumer_spec(&self) -> ConsumerSpec {
        ConsumerSpec {
            stream: self.settings.events_stream.clone(),
            durable_name: jwl_outbox::events_durable(self.service),
            filter_subjects: [SUBSCRIBED, ALSO_SUBSCRIBED]
                .into_iter()
                .flat_map(jwl_events::type_filters)
                .collect(),
            replaces: [SUBSCRIBED, ALSO_SUBSCRIBED]
                .map(|ty| jwl_outbox::durable_name(self.service, ty))
                .to_vec(),
            ack_wait: self.settings.ack_wait,
            max_ack_pending: self.settings.max_ack_pending,
            prefetch: self.settings.consumer_batch_size,
        }
    }

    pub fn handler(&self) -> Arc<RecordingHandler> {
        Arc::new(RecordingHandler {
            log: self.pool.clone(),
        })
    }

    pub fn messaging(&self) -> Messaging {
        Messaging::new(
            self.service,
            self.pool.clone(),
            self.broker.clone(),
            self.settings.clone(),
        )
    }

    /// Relay plus the test handler's consumer loop.
    pub fn run(&self) -> Running {
        self.run_with(self.handler())
    }

    /// Relay plus a consumer loop feeding `handler`.
    pub fn run_with(&self, handler: Arc<dyn Handler>) -> Running {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(self.messaging().run(handler, shutdown.clone()));
        Running { shutdown, task }
    }

    /// The test handler with a batch way (see [`BatchingHandler`]).
    pub fn batching_handler(&self) -> Arc<BatchingHandler> {
        self.lingering_batching_handler(Duration::ZERO)
    }

    /// [`Self::batching_handler`] whose batches wait `linger` for more messages
    /// ([`Handler::linger`]).
    pub fn lingering_batching_handler(&self, linger: Duration) -> Arc<BatchingHandler> {
        Arc::new(BatchingHandler {
            one_by_one: RecordingHandler {
                log: self.pool.clone(),
            },
            log: self.pool.clone(),
            linger,
        })
    }

    /// The sizes of the batches the batch way was given, and whether it refused each.
    pub async fn batches(&self) -> anyhow::Result<Vec<(i32, bool)>> {
        Ok(sqlx::query_as("SELECT events, refused FROM batches")
            .fetch_all(&self.pool)
            .await?)
    }

    /// Whether the batch way refused each batch it was given that held `event`.
    pub async fn batches_holding(&self, event: &Envelope) -> anyhow::Result<Vec<bool>> {
        Ok(
            sqlx::query_scalar("SELECT refused FROM batches WHERE $1 = ANY(ids)")
                .bind(event.id.0)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub fn run_relay_only(&self) -> Running {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(self.messaging().relay_only(shutdown.clone()));
        Running { shutdown, task }
    }

    /// Enqueues one `payment.captured` per amount, in order, in one transaction.
    pub async fn enqueue(&self, amounts: &[i64]) -> anyhow::Result<Vec<Envelope>> {
        let events: Vec<Envelope> = amounts.iter().map(|&amount| captured(amount)).collect();
        self.enqueue_events(&events).await?;
        Ok(events)
    }

    /// Enqueues `events`, in order, in one transaction.
    pub async fn enqueue_events(&self, events: &[Envelope]) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        for event in events {
            jwl_outbox::enqueue(&mut tx, event).await?;
        }
        tx.commit().await?;
        // as another process would: this signal's relay does not lead, so it sends a NOTIFY
        RelaySignal::new(self.settings.db_stall_timeout)
            .committed(&self.pool)
            .await;
        Ok(())
    }

    /// Publishes `event` straight to the events stream (not through the outbox), with this
    /// broker dedup id.
    pub async fn publish_event(&self, event: &Envelope, msg_id: &str) -> anyhow::Result<()> {
        let wire = jwl_events::encode(event, HeaderStyle::Nats);
        self.publish_raw(&wire.subject, &wire.headers, wire.payload, msg_id)
            .await
    }

    pub async fn publish_raw(
        &self,
        subject: &str,
        headers: &[(String, String)],
        payload: Vec<u8>,
        msg_id: &str,
    ) -> anyhow::Result<()> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(name.as_str(), value.as_str());
        }
        let publish = PublishMessage::build()
            .headers(map)
            .payload(payload.into())
            .message_id(msg_id);
        self.broker
            .jetstream()
            .send_publish(subject.to_owned(), publish)
            .await?
            .await?;
        Ok(())
    }

    pub async fn effects_total(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM effects")
            .fetch_one(&self.pool)
            .await?)
    }

    pub async fn effects_of(&self, event: &Envelope) -> anyhow::Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM effects WHERE event_id = $1")
                .bind(event.id.0)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Attempt numbers and times the handler saw for `event`, in order.
    pub async fn attempts_of(&self, event: &Envelope) -> anyhow::Result<Vec<(i32, DateTime<Utc>)>> {
        Ok(
            sqlx::query_as("SELECT attempt, at FROM attempts WHERE event_id = $1 ORDER BY at")
                .bind(event.id.0)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn pending_in_outbox(&self) -> anyhow::Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn events_in_stream(&self) -> anyhow::Result<Vec<StreamMessage>> {
        stream_messages(&self.broker, &self.settings.events_stream).await
    }

    pub async fn dead_letters(&self) -> anyhow::Result<Vec<StreamMessage>> {
        stream_messages(&self.broker, &self.settings.dlq_stream).await
    }

    /// Whether the test consumer has nothing pending and nothing unacknowledged.
    pub async fn consumer_settled(&self) -> anyhow::Result<bool> {
        let (pending, ack_pending) = self.consumer_counts().await?;
        Ok(pending == 0 && ack_pending == 0)
    }

    /// The test consumer's messages not delivered yet, and delivered and not acknowledged.
    pub async fn consumer_counts(&self) -> anyhow::Result<(u64, usize)> {
        let stream = self
            .broker
            .jetstream()
            .get_stream(&self.settings.events_stream)
            .await?;
        let info = stream
            .consumer_info(jwl_outbox::events_durable(self.service))
            .await?;
        Ok((info.num_pending, info.num_ack_pending))
    }
}

static METRICS: OnceLock<Snapshotter> = OnceLock::new();

/// Logs to the test output, filtered by `RUST_LOG` (default: warnings), and records metrics
/// (installed before any messaging starts, so every metric handle is recorded).
fn init_observability() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
    METRICS.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other metrics recorder in the test process");
        snapshotter
    });
}

/// A counter's name and sorted labels.
type CounterKey = (String, Vec<(String, String)>);

/// Counter totals: the debugging recorder resets a counter each time it is read, so every read
/// goes through [`counter`], which accumulates here.
static COUNTER_TOTALS: Mutex<BTreeMap<CounterKey, u64>> = Mutex::new(BTreeMap::new());

/// The value of gauge `name` with exactly these labels, if it was ever set (counters read
/// meanwhile are kept for [`counter`]).
pub fn gauge(name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let snapshotter = METRICS.get()?;
    let mut wanted: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    wanted.sort_unstable();
    let mut totals = COUNTER_TOTALS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut found = None;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let mut key_labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        key_labels.sort_unstable();
        match value {
            DebugValue::Counter(count) => {
                *totals
                    .entry((key.name().to_owned(), key_labels))
                    .or_default() += count;
            }
            DebugValue::Gauge(value) if key.name() == name && key_labels == wanted => {
                found = Some(value.into_inner());
            }
            _ => {}
        }
    }
    found
}

/// The total of counter `name` with exactly these labels (0 if never incremented).
pub fn counter(name: &str, labels: &[(&str, &str)]) -> u64 {
    let Some(snapshotter) = METRICS.get() else {
        return 0;
    };
    let mut totals = COUNTER_TOTALS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if let DebugValue::Counter(count) = value {
            let key = key.key();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort_unstable();
            *totals.entry((key.name().to_owned(), labels)).or_default() += count;
        }
    }
    let mut wanted: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    wanted.sort_unstable();
    totals.get(&(name.to_owned(), wanted)).copied().unwrap_or(0)
}

/// A running `Messaging`.
pub struct Running {
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), OutboxError>>,
}

impl Running {
    /// Shuts down and checks that messaging returns promptly and cleanly.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .context("messaging did not stop within 10 s of shutdown")???;
        Ok(())
    }
}

/// A `payment.captured` for a new order.
pub fn captured(amount_cents: i64) -> Envelope {
    Envelope::new(
        Service::Payment,
        EventData::PaymentCaptured(PaymentCaptured {
            order_id: OrderId(Uuid::now_v7()),
            amount_cents,
        }),
    )
}

/// The value of header `name` of a stream message.
pub fn header<'m>(message: &'m StreamMessage, name: &str) -> Option<&'m str> {
    message.headers.get(name).map(|value| value.as_str())
}

/// Every message of a stream, in stream order.
pub async fn stream_messages(
    broker: &JetStreamBroker,
    stream: &str,
) -> anyhow::Result<Vec<StreamMessage>> {
    let mut stream = broker.jetstream().get_stream(stream).await?;
    let state = stream.info().await?.state.clone();
    let mut messages = Vec::with_capacity(state.messages as usize);
    if state.messages == 0 {
        return Ok(messages);
    }
    for sequence in state.first_sequence..=state.last_sequence {
        messages.push(stream.get_raw_message(sequence).await?);
    }
    Ok(messages)
}

/// A pool in the test schema, migrated, with the test handler's tables.
pub async fn test_pool(db: &TestDatabase) -> anyhow::Result<PgPool> {
    let pool = service_pool(db, SCHEMA).await?;
    jwl_outbox::migrate(&pool).await?;
    sqlx::raw_sql(
            "CREATE TABLE effects (event_id uuid NOT NULL, txid bigint NOT NULL);
             CREATE TABLE attempts (event_id uuid NOT NULL, attempt int NOT NULL, txid bigint NOT NULL,
                                    at timestamptz NOT NULL DEFAULT clock_timestamp());
             CREATE TABLE checked_at_commit (id int UNIQUE DEFERRABLE INITIALLY DEFERRED);
             CREATE TABLE fixed (event_id uuid PRIMARY KEY);
             CREATE TABLE batches (events int NOT NULL, refused bool NOT NULL, ids uuid[] NOT NULL);",
        )
        .execute(&pool)
        .await?;
    Ok(pool)
}

/// A pool whose connections use `schema` as search_path, like a service's pool.
pub async fn service_pool(db: &TestDatabase, schema: &str) -> anyhow::Result<PgPool> {
    let admin = db.pool().await?;
    sqlx::query(AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}"
    )))
    .execute(&admin)
    .await?;
    admin.close().await;
    let options = PgConnectOptions::from_str(db.url())?.options([("search_path", schema)]);
    Ok(PgPoolOptions::new()
        .max_connections(10)
        // short, so a stopped database surfaces as errors quickly
        .acquire_timeout(Duration::from_secs(1))
        .connect_with(options)
        .await?)
}

/// Records every attempt (outside the batch transaction, so failed ones stay visible) and, on
/// success, an effect inside the transaction. Steered by `amount_cents`.
pub struct RecordingHandler {
    log: PgPool,
}

impl RecordingHandler {
    /// Recording its attempts and effects in `log`'s database (see [`test_pool`]).
    pub fn new(log: PgPool) -> Self {
        Self { log }
    }
}

#[async_trait]
impl Handler for RecordingHandler {
    fn subscriptions(&self) -> &'static [EventType] {
        &[SUBSCRIBED, ALSO_SUBSCRIBED]
    }

    async fn handle(
        &self,
        ctx: &mut HandlerContext<'_>,
        event: &Envelope,
    ) -> Result<(), HandlerError> {
        let amount_cents = match &event.data {
            EventData::PaymentCaptured(captured) => captured.amount_cents,
            EventData::PaymentVoided(voided) => voided.amount_cents,
            _ => return Err(HandlerError::permanent("unexpected event type")),
        };
        let txid: i64 = sqlx::query_scalar("SELECT txid_current()")
            .fetch_one(ctx.db())
            .await?;
        sqlx::query("INSERT INTO attempts (event_id, attempt, txid) VALUES ($1, $2, $3)")
            .bind(event.id.0)
            .bind(ctx.attempt() as i32)
            .bind(txid)
            .execute(&self.log)
            .await?;
        match amount_cents {
            SLOW => tokio::time::sleep(Duration::from_millis(500)).await,
            PERMANENT => {
                return Err(HandlerError::permanent(
                    "amount refused by the test handler",
                ));
            }
            ALWAYS_TRANSIENT => return Err(HandlerError::transient("always failing")),
            REFUSED_UNTIL_FIXED => {
                let fixed: bool =
                    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM fixed WHERE event_id = $1)")
                        .bind(event.id.0)
                        .fetch_one(ctx.db())
                        .await?;
                if !fixed {
                    return Err(HandlerError::permanent("refused until fixed"));
                }
            }
            DB_FLAPS => {
                let runs: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM attempts WHERE event_id = $1")
                        .bind(event.id.0)
                        .fetch_one(&self.log)
                        .await?;
                if runs <= FLAPS {
                    sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())")
                        .execute(ctx.db())
                        .await?;
                }
            }
            TRANSIENT_TWICE if ctx.attempt() < 3 => {
                return Err(HandlerError::transient(
                    "failing for the first two attempts",
                ));
            }
            _ => {}
        }
        sqlx::query("INSERT INTO effects (event_id, txid) VALUES ($1, $2)")
            .bind(event.id.0)
            .bind(txid)
            .execute(ctx.db())
            .await?;
        if amount_cents == SWALLOWS_SQL_ERROR {
            let _ignored = sqlx::query("SELECT 1 / 0").execute(ctx.db()).await;
            return Ok(());
        }
        if amount_cents == FAILS_AT_COMMIT {
            sqlx::query("INSERT INTO checked_at_commit (id) VALUES (1), (1)")
                .execute(ctx.db())
                .await?;
        }
        if amount_cents == EMITS {
            ctx.emit(EventData::PaymentVoided(PaymentVoided {
                order_id: event.order_id(),
                amount_cents: 1,
            }));
        }
        Ok(())
    }
}

/// [`RecordingHandler`] one by one, plus a batch way that records each batch it is given
/// (outside the transaction) and the effects of all its events in one statement, and emits what
/// the one-by-one way emits; it refuses a batch holding a `PERMANENT` amount, so the consumer
/// handles that batch one by one.
pub struct BatchingHandler {
    one_by_one: RecordingHandler,
    log: PgPool,
    linger: Duration,
}

#[async_trait]
impl Handler for BatchingHandler {
    fn subscriptions(&self) -> &'static [EventType] {
        self.one_by_one.subscriptions()
    }

    async fn handle(
        &self,
        ctx: &mut HandlerContext<'_>,
        event: &Envelope,
    ) -> Result<(), HandlerError> {
        self.one_by_one.handle(ctx, event).await
    }

    fn batch(&self) -> Option<&dyn BatchHandler> {
        Some(self)
    }

    fn linger(&self) -> Duration {
        self.linger
    }
}

#[async_trait]
impl BatchHandler for BatchingHandler {
    async fn handle_batch(
        &self,
        ctx: &mut BatchContext<'_>,
        events: &[&Envelope],
    ) -> Result<(), HandlerError> {
        let refused = events.iter().any(|event| {
            matches!(&event.data, EventData::PaymentCaptured(c) if c.amount_cents == PERMANENT)
        });
        let ids: Vec<Uuid> = events.iter().map(|event| event.id.0).collect();
        sqlx::query("INSERT INTO batches (events, refused, ids) VALUES ($1, $2, $3)")
            .bind(events.len() as i32)
            .bind(refused)
            .bind(&ids)
            .execute(&self.log)
            .await?;
        if refused {
            return Err(HandlerError::permanent("the batch way refuses PERMANENT"));
        }
        sqlx::query("INSERT INTO effects (event_id, txid) SELECT id, txid_current() FROM unnest($1::uuid[]) AS id")
            .bind(&ids)
            .execute(ctx.db())
            .await?;
        for event in events {
            if matches!(&event.data, EventData::PaymentCaptured(c) if c.amount_cents == EMITS) {
                ctx.emit(
                    event,
                    EventData::PaymentVoided(PaymentVoided {
                        order_id: event.order_id(),
                        amount_cents: 1,
                    }),
                );
            }
        }
        Ok(())
    }
}
