//! [`OrderHistory`]: every event of one order, in stream order, and its dead letters
//! (`jwl saga show`).

use jwl_events::OrderId;
use jwl_outbox::MessagingSettings;
use jwl_outbox::transport::History;
use serde::Serialize;

use crate::domain::{DeadLetterFilter, Selection};
use crate::error::OpsError;
use crate::model::{DeadLetterEntry, EventEntry};
use crate::{dead_letters, replay};

/// One order's saga as the broker holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrderHistory {
    pub order_id: OrderId,
    /// Every message of the order's events (on JetStream: its subjects
    /// `jwl.evt.<type>.<order id>`, and the legacy `jwl.evt.<order id>.<type>`), in stream
    /// order; undecodable ones included.
    pub events: Vec<EventEntry>,
    /// Every dead letter of the order (`jwl.dlq.*.<order id>`), in dead-letter stream order.
    pub dead_letters: Vec<DeadLetterEntry>,
}

impl OrderHistory {
    /// Reads the order's events from the events stream by order — on JetStream one ephemeral
    /// ordered consumer per catalogue type and layout on its literal subject
    /// (`jwl.evt.<type>.<order id>`, `jwl.evt.<order id>.<type>`),
    /// from the first message to the stream's last sequence, merged in stream order — and, at
    /// the same time, its dead letters from the dead-letter stream. The time this takes follows
    /// the order's own message count, not the events stream's size.
    pub async fn read(
        history: &dyn History,
        settings: &MessagingSettings,
        order_id: &OrderId,
    ) -> Result<OrderHistory, OpsError> {
        let selection = Selection {
            order: Some(*order_id),
            ..Default::default()
        };
        let dead_letter_filter = DeadLetterFilter {
            order: Some(*order_id),
            ..Default::default()
        };
        let (events, dead_letters) = tokio::try_join!(
            replay::read(history, settings, &selection),
            dead_letters::list(history, settings, &dead_letter_filter)
        )?;
        Ok(OrderHistory {
            order_id: *order_id,
            events,
            dead_letters,
        })
    }
}
