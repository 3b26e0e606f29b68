//! [`ServiceContext`]: everything a service's routes and background tasks are given.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use jwl_events::Service;
use jwl_outbox::transport::Broker;
use jwl_outbox::{MessagingSettings, RelaySignal};
use sqlx::PgPool;

use crate::config::Settings;

/// The resources of one service inside a process; cheap to clone (every field is a handle).
#[derive(Clone)]
pub struct ServiceContext {
    /// Which bounded context this is.
    pub service: Service,
    /// A pool whose connections have `search_path` set to the service's own schema: the
    /// consumers', relay's and timers' (the messaging runtime's).
    pub pool: PgPool,
    /// The pool the HTTP routes use (same schema). A pool of its own in production
    /// ([`with_http_pool`](Self::with_http_pool), sized by `JWL_HTTP_DB_POOL_SIZE`), so that a
    /// flood of requests waits for its connections and never takes the consumers'; the same
    /// pool as [`pool`](Self::pool) until one is given.
    pub http_pool: PgPool,
    /// The connection to the broker (NATS JetStream, or any other [`Broker`]): the process
    /// connects to the one its configuration names and everything else sees only the trait.
    pub broker: Arc<dyn Broker>,
    /// Stream names, batch sizes, retry policy of the reliable-messaging runtime.
    pub messaging: MessagingSettings,
    /// Business tunables.
    pub settings: Arc<Settings>,
    /// Wakes the service's relay after a commit that enqueued events (shared with its
    /// [`Messaging`](jwl_outbox::Messaging)).
    pub relay: RelaySignal,
    /// Objects shared by the service's routes and its background work ([`Self::shared`]).
    shared: Arc<Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>>,
}

impl ServiceContext {
    /// A context whose relay signal is bounded by the messaging settings' stall timeout.
    pub fn new(
        service: Service,
        pool: PgPool,
        broker: Arc<dyn Broker>,
        messaging: MessagingSettings,
        settings: Arc<Settings>,
    ) -> Self {
        let relay = RelaySignal::new(messaging.db_stall_timeout);
        Self {
            service,
            http_pool: pool.clone(),
            pool,
            broker,
            messaging,
            settings,
            relay,
            shared: Arc::default(),
        }
    }

    /// The one `T` of this context and its clones, made by `init` on first use: how a
    /// service's routes and its background work (given clones of one context) share state, e.g.
    /// a dependency's client and its circuit breaker.
    pub fn shared<T: Send + Sync + 'static>(&self, init: impl FnOnce() -> T) -> Arc<T> {
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = shared
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Arc::new(init()) as Arc<dyn Any + Send + Sync>);
        Arc::clone(entry)
            .downcast::<T>()
            .unwrap_or_else(|_| unreachable!("the map is keyed by the type id"))
    }

    /// This context with its HTTP routes on `http_pool` (a pool in the same schema) instead of
    /// the messaging runtime's pool.
    pub fn with_http_pool(mut self, http_pool: PgPool) -> Self {
        self.http_pool = http_pool;
        self
    }
}
