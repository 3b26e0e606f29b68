//! Writing an event to the outbox inside the caller's transaction ([`enqueue`]). The relay is
//! told afterwards, by [`RelaySignal::committed`](crate::RelaySignal::committed).

use jwl_events::{Envelope, HeaderStyle};
use sqlx::PgConnection;
use sqlx::types::Json;

use crate::error::OutboxError;
use crate::trace_context;

/// Prefix of the `LISTEN/NOTIFY` channel the relay of a schema listens on.
pub(crate) const CHANNEL_PREFIX: &str = "jwl_outbox.";

/// The notification channel of the relay for `schema`: `jwl_outbox.<schema>`.
pub fn notify_channel(schema: &str) -> String {
    format!("{CHANNEL_PREFIX}{schema}")
}

/// Encodes `env` (CloudEvents binary mode, NATS headers) and inserts it into the outbox of the
/// connection's current schema. Call it inside the transaction that makes the state change the
/// event reports, and [`RelaySignal::committed`](crate::RelaySignal::committed) after the commit
/// (without it the relay finds the row at its next poll). No `NOTIFY` here: see
/// [`RelaySignal`](crate::RelaySignal) for why.
///
/// The W3C `traceparent` is captured here, with the row: enqueued inside a span of the event's
/// own trace (or of any trace, when the event has none), the event is parented by that span
/// rather than by an earlier one it was given (see [`trace_context::traceparent_to_store`]).
pub async fn enqueue(conn: &mut PgConnection, env: &Envelope) -> Result<(), OutboxError> {
    let traceparent = trace_context::traceparent_to_store(
        env.traceparent.as_deref(),
        trace_context::current_traceparent(),
    );
    let wire = if traceparent == env.traceparent {
        jwl_events::encode(env, HeaderStyle::NEUTRAL)
    } else {
        let mut env = env.clone();
        env.traceparent = traceparent;
        jwl_events::encode(&env, HeaderStyle::NEUTRAL)
    };
    // the relay partition of the row is `order_hash % partitions`: the same hash as migration
    // 0004 computes for older rows, of the same key as the relay's ordering key
    let order_key = crate::relay::steps::ordering_key_of(&wire.subject, &wire.headers);
    sqlx::query(
        "INSERT INTO outbox (event_id, subject, headers, payload, order_hash)
         VALUES ($1, $2, $3, $4, hashtext($5) & 2147483647)",
    )
    .bind(env.id.0)
    .bind(&wire.subject)
    .bind(Json(&wire.headers))
    .bind(&wire.payload)
    .bind(order_key)
    .execute(conn)
    .await?;
    Ok(())
}
