//! [`ServiceContext`]: everything a service's routes and background tasks are given.

use std::sync::Arc;

use jwl_events::Service;
use jwl_outbox::{JetStreamBroker, MessagingSettings, RelaySignal};
use sqlx::PgPool;

use crate::config::Settings;

/// The resources of one service inside a process; cheap to clone (every field is a handle).
#[derive(Clone)]
pub struct ServiceContext {
    /// Which bounded context this is.
    pub service: Service,
    /// A pool whose connections have `search_path` set to the service's own schema.
    pub pool: PgPool,
    /// The connection to NATS JetStream.
    pub broker: JetStreamBroker,
    /// Stream names, batch sizes, retry policy of the reliable-messaging runtime.
    pub messaging: MessagingSettings,
    /// Business tunables.
    pub settings: Arc<Settings>,
    /// Wakes the service's relay after a commit that enqueued events (shared with its
    /// [`Messaging`](jwl_outbox::Messaging)).
    pub relay: RelaySignal,
}

impl ServiceContext {
    /// A context whose relay signal is bounded by the messaging settings' stall timeout.
    pub fn new(
        service: Service,
        pool: PgPool,
        broker: JetStreamBroker,
        messaging: MessagingSettings,
        settings: Arc<Settings>,
    ) -> Self {
        let relay = RelaySignal::new(messaging.db_stall_timeout);
        Self {
            service,
            pool,
            broker,
            messaging,
            settings,
            relay,
        }
    }
}
