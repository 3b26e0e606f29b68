//! What a service implements to consume events ([`Handler`], and [`BatchHandler`] to take a
//! batch's events together) and what it gets while handling them ([`HandlerContext`],
//! [`BatchContext`], [`HandlerError`]).

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use jwl_events::{Envelope, EventData, EventId, EventType, Service};
use sqlx::PgConnection;

use crate::enqueue::OutboxRow;
use crate::trace_context::current_traceparent;

/// A boxed error for [`HandlerError::Transient`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A service's event handler. It knows nothing of the broker: it gets the decoded event and a
/// database connection inside the batch transaction, under this message's savepoint.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Event types this handler consumes (the service's one durable consumer filters on them).
    fn subscriptions(&self) -> &'static [EventType];

    /// The most batches of this handler worth running at once in one process (at most
    /// `consumer_workers`). A handler whose batches contend for the same rows (stock of popular
    /// SKUs, locked until the batch commits) gains nothing from more: they would queue behind one
    /// another's locks while holding their own.
    fn max_workers(&self) -> usize {
        usize::MAX
    }

    /// How long a batch waits for more messages after its first one reached its worker (default:
    /// not at all, a batch is what is ready). For a handler that no other service waits on — a
    /// read model, which emits nothing — a short wait turns a trickle of one-message
    /// transactions into a few larger ones: fewer commits, which every other transaction of
    /// the database waits behind at its WAL flush, for each message applied up to this much
    /// later. A full batch, a closing subscription or a pause ends the wait at once.
    fn linger(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// Takes, at the start of a batch transaction and before any of its events is handled, the
    /// row locks the batch's events will need (default: none). `events` are the batch's events
    /// for this handler (some may turn out to be duplicates). A handler whose events lock shared
    /// rows — stock of popular SKUs — locks them all here in one global order (`ORDER BY key
    /// FOR UPDATE`): concurrent batches, of other workers or other replicas, then queue behind
    /// one another instead of deadlocking, as they do when each event takes its own rows in
    /// turn (one batch holds A and wants B while another holds B and wants A). An error fails
    /// the batch as a database error of a handler would.
    async fn lock_batch(
        &self,
        _conn: &mut PgConnection,
        _events: &[&Envelope],
    ) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// Handles one event. Everything done through `ctx` commits together with the inbox row, or
    /// not at all. Events emitted with [`HandlerContext::emit`] are written to the outbox after
    /// the handler returns `Ok` (with those of the batch's other events, in one statement), and
    /// published after commit.
    async fn handle(
        &self,
        ctx: &mut HandlerContext<'_>,
        event: &Envelope,
    ) -> Result<(), HandlerError>;

    /// This handler's way of taking several events at once, if it has one (default: none).
    fn batch(&self) -> Option<&dyn BatchHandler> {
        None
    }

    /// Resolves when the handler can work, e.g. once the circuit breaker of a dependency it
    /// needs lets calls through again (default: always ready). The consumer loop checks it
    /// before each message it hands out, without waiting: while it is pending, the loop stops
    /// pulling and holds the messages it has (they stay the broker's, each renewed as in
    /// progress, no delivery attempt spent) until it resolves. It must therefore resolve on its
    /// first poll whenever the handler is ready.
    async fn ready(&self) {}
}

/// A [`Handler`] that can also handle the fresh events of a batch together, in a few statements
/// rather than a few per event. The consumer uses it on its fast path (no hold, no rerun) when a
/// batch holds two or more events not handled before.
#[async_trait]
pub trait BatchHandler: Send + Sync {
    /// Whether the batch way covers `events` (fresh events of one batch, in delivery order);
    /// if not, the consumer handles them one by one in the same transaction instead (default:
    /// it covers every batch). Cheaper than an error from [`BatchHandler::handle_batch`], which
    /// rolls the batch back and runs it again.
    fn takes(&self, _events: &[&Envelope]) -> bool {
        true
    }

    /// Handles `events` (fresh events of one batch, in delivery order) through `ctx`, inside the
    /// batch transaction, with the same effect as [`Handler::handle`] on each in turn, events
    /// emitted included. An error rolls the whole batch back, and the consumer then handles each
    /// event on its own with [`Handler::handle`], which judges the failure: so returning an error
    /// is always safe, e.g. for an event the batch way does not cover.
    async fn handle_batch(
        &self,
        ctx: &mut BatchContext<'_>,
        events: &[&Envelope],
    ) -> Result<(), HandlerError>;
}

/// Whether every one of `events` is of a kind `kind` accepts and no two are of one order: the
/// common [`BatchHandler::takes`] of a batch way that handles each order once.
pub fn each_order_once(events: &[&Envelope], kind: impl Fn(&EventData) -> bool) -> bool {
    let mut orders = HashSet::with_capacity(events.len());
    events
        .iter()
        .all(|event| kind(&event.data) && orders.insert(event.order_id()))
}

/// Why a handler did not handle an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying (database hiccup, a dependency briefly down): the message is redelivered
    /// with backoff, and dead-lettered once it reaches `max_attempts`.
    #[error("transient: {0}")]
    Transient(BoxError),
    /// Retrying cannot help (the event contradicts the handler's state): dead-lettered at once.
    #[error("permanent: {0}")]
    Permanent(String),
    /// A dependency the handler needs is unavailable (its circuit breaker is open): not the
    /// message's fault, so it costs no delivery attempt. The batch is rolled back and the
    /// consumer holds its messages, stops pulling until [`Handler::ready`] resolves, and then
    /// handles them again.
    #[error("dependency unavailable: {0}")]
    Unavailable(BoxError),
}

impl HandlerError {
    /// A transient error from anything that can be an error.
    pub fn transient(error: impl Into<BoxError>) -> Self {
        Self::Transient(error.into())
    }

    /// A dependency-unavailable error (see [`HandlerError::Unavailable`]).
    pub fn unavailable(error: impl Into<BoxError>) -> Self {
        Self::Unavailable(error.into())
    }

    /// A permanent error with this reason.
    pub fn permanent(reason: impl Into<String>) -> Self {
        Self::Permanent(reason.into())
    }

    /// `Ok` if a set-based statement of a batch way applied to all `wanted` rows; otherwise
    /// another transaction got to some first (or the batch way met a case it does not cover),
    /// and the batch fails transiently, to be handled one by one, which decides each event.
    pub fn unless_all_applied(applied: u64, wanted: usize, were_not: &str) -> Result<(), Self> {
        let wanted = u64::try_from(wanted).unwrap_or(u64::MAX);
        if applied == wanted {
            return Ok(());
        }
        Err(Self::transient(format!(
            "{} of {wanted} {were_not}",
            wanted.saturating_sub(applied)
        )))
    }

    /// `Ok` if the handler inserted the first row of `what`; otherwise a concurrent handler
    /// inserted it after this one looked, and the message is retried (everything done so far
    /// rolls back) so that the next attempt sees the row.
    pub fn unless_inserted(inserted: bool, what: impl std::fmt::Display) -> Result<(), Self> {
        if inserted {
            Ok(())
        } else {
            Err(Self::transient(ConcurrentInsert(what.to_string())))
        }
    }
}

/// See [`HandlerError::unless_inserted`].
#[derive(Debug, thiserror::Error)]
#[error("{0} was created concurrently; retrying")]
struct ConcurrentInsert(String);

impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        Self::Transient(Box::new(error))
    }
}

/// Handed to [`Handler::handle`] for one event.
pub struct HandlerContext<'a> {
    conn: &'a mut PgConnection,
    service: Service,
    incoming: &'a Envelope,
    attempt: u32,
    emitted: Emitted,
}

/// The events a handler emitted: the envelopes, and the same encoded for the outbox (encoded at
/// [`HandlerContext::emit`], so each captures the `traceparent` of the span it was emitted in).
#[derive(Default)]
pub(crate) struct Emitted {
    pub envelopes: Vec<Envelope>,
    pub rows: Vec<OutboxRow>,
}

impl<'a> HandlerContext<'a> {
    pub(crate) fn new(
        conn: &'a mut PgConnection,
        service: Service,
        incoming: &'a Envelope,
        attempt: u32,
    ) -> Self {
        Self {
            conn,
            service,
            incoming,
            attempt,
            emitted: Emitted::default(),
        }
    }

    /// The connection inside the batch transaction, under this message's savepoint.
    pub fn db(&mut self) -> &mut PgConnection {
        self.conn
    }

    /// Emits a new event of this service, caused by the incoming one. It goes to the outbox once
    /// the handler has returned `Ok`, in the same transaction, and is published only if the batch
    /// commits. Its `traceparent` is the current span's (the `handle_event` span, so its
    /// consumers' spans are children of this handler's), else the incoming event's.
    pub fn emit(&mut self, data: impl Into<EventData>) {
        let mut env = Envelope::new(self.service, data.into());
        env.traceparent = current_traceparent();
        let env = env.caused_by(self.incoming);
        self.emitted.rows.push(OutboxRow::encode(&env));
        self.emitted.envelopes.push(env);
    }

    /// Which delivery this is: 1 for the first.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The service this handler runs in.
    pub fn service(&self) -> Service {
        self.service
    }

    /// What the handler emitted, still to be written to the outbox.
    pub(crate) fn into_emitted(self) -> Emitted {
        self.emitted
    }
}

/// Handed to [`BatchHandler::handle_batch`] for the events of a batch.
pub struct BatchContext<'a> {
    conn: &'a mut PgConnection,
    service: Service,
    /// The `traceparent` of each event's `handle_event` span, by event id.
    spans: HashMap<EventId, Option<String>>,
    emitted: Emitted,
}

impl<'a> BatchContext<'a> {
    pub(crate) fn new(
        conn: &'a mut PgConnection,
        service: Service,
        spans: HashMap<EventId, Option<String>>,
    ) -> Self {
        Self {
            conn,
            service,
            spans,
            emitted: Emitted::default(),
        }
    }

    /// The connection inside the batch transaction.
    pub fn db(&mut self) -> &mut PgConnection {
        self.conn
    }

    /// Emits a new event of this service, caused by `cause` (one of the batch's events), as
    /// [`HandlerContext::emit`] does for one: written to the outbox once the batch way has
    /// returned `Ok`, published only if the batch commits, its `traceparent` that of the
    /// cause's `handle_event` span.
    pub fn emit(&mut self, cause: &Envelope, data: impl Into<EventData>) {
        let mut env = Envelope::new(self.service, data.into());
        env.traceparent = self.spans.get(&cause.id).cloned().flatten();
        let env = env.caused_by(cause);
        let current = env.traceparent.clone();
        self.emitted
            .rows
            .push(OutboxRow::encode_under(&env, current));
        self.emitted.envelopes.push(env);
    }

    /// The `traceparent` of `cause`'s `handle_event` span (the one [`BatchContext::emit`] gives
    /// the events `cause` causes), for a handler that stores it to continue the trace later.
    pub fn traceparent(&self, cause: &Envelope) -> Option<&str> {
        self.spans.get(&cause.id).and_then(Option::as_deref)
    }

    /// What the batch way emitted, still to be written to the outbox.
    pub(crate) fn into_emitted(self) -> Emitted {
        self.emitted
    }
}
