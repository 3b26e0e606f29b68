//! Group commit for `POST /v1/orders` ([`Intake`]): the orders placed at the same moment are
//! written in one transaction.
//!
//! A request validates its order, builds its `order.created` and hands both to the intake, then
//! waits for the answer. One writer takes whatever has queued up since it last committed (up to
//! [`MAX_BATCH`]) and writes it with one statement per table (orders, timeline, outbox) and one
//! commit; while it commits, the next batch builds up. At low load a batch is one order and
//! costs what a transaction per request cost; under load the commits, round trips and pooled
//! connections per order fall as the concurrency grows, where a transaction per request made each
//! request wait for a connection of its own.
//!
//! - **Durability.** A request is answered `201` only after its batch committed.
//! - **Idempotency keys.** Claimed one by one inside the batch, in arrival order, so a key
//!   repeated within one batch is answered like one repeated later: the first places the order,
//!   the others get its recorded response.
//! - **Failure.** A batch the database refuses is written again one order per transaction, so an
//!   order at fault fails alone and the others are placed; while the database is unavailable,
//!   every order of the batch is answered `503` at once.
//! - **A caller that goes away** (its connection closed while its order waits) does not take
//!   the order back: it is placed if its batch commits, as it would be had the caller gone away
//!   just after the commit. Retrying with the same `Idempotency-Key` is safe.

use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use jwl_events::{Envelope, OrderId};
use jwl_outbox::stall::KeptConnection;
use jwl_outbox::{Enqueued, RelaySignal};
use jwl_service_kit::ApiError;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};

use crate::domain::ValidOrder;
use crate::store::{self, IdempotentResponse, NewOrder, RecordedResponse};

/// Most orders written in one transaction. With one writer this bounds the intake's rate at
/// saturation (what queued during one commit): 64 shed orders with `503` when 1 400 a second
/// were offered (POST p99 0.8 s), 256 kept up (p99 0.2 s, as two writers of 64 did).
const MAX_BATCH: usize = 256;
/// The writer keeps its database connection from one batch to the next
/// ([`KeptConnection`]: no pool round trips per batch) and pings it first when it has been idle
/// longer than this, so that the first order after a database restart or a network cut is placed
/// on a working connection, as a pool that pings before acquire would place it.
const CHECK_AFTER_IDLE: Duration = Duration::from_millis(100);
/// Orders waiting for the writer, at most (a full queue makes requests wait to enqueue; the
/// intake's in-flight limit keeps it far from full).
const QUEUE: usize = 4 * MAX_BATCH;

/// An order to place: validated, with its event and the response it gets.
pub(crate) struct Placement {
    pub order_id: OrderId,
    pub customer_id: String,
    pub order: ValidOrder,
    pub deadline: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// `order.created`, whose trace the order belongs to.
    pub event: Envelope,
    /// The `201` body.
    pub body: String,
    /// The request's `Idempotency-Key` and canonical body, if it had a key.
    pub idempotency: Option<Idempotency>,
}

/// An idempotency key and the canonical request body it was given with.
pub(crate) struct Idempotency {
    pub key: String,
    pub canonical_request: String,
}

/// What became of a placement.
pub(crate) enum Placed {
    /// Placed now.
    Created,
    /// Its idempotency key was already taken: the response recorded under it.
    Recorded(RecordedResponse),
}

type Reply = oneshot::Sender<Result<Placed, ApiError>>;

/// The order service's intake: see the module doc. Cloning shares it; the writer stops once
/// every clone is dropped and what was queued is written.
///
/// One writer, not several: a second one, each taking what queued up while the other committed,
/// halved the batches at moderate load and so added commits, which queue behind each other's
/// WAL flush with every consumer's: at 600 orders/s one writer made a third fewer intake
/// commits, and the saga p99 was lower in every back-to-back pair (docs/performance.md).
#[derive(Clone)]
pub(crate) struct Intake {
    queue: mpsc::Sender<(Placement, Reply)>,
}

impl Intake {
    /// Starts the writer on `pool`; `idempotency_ttl` is how long a key stays taken;
    /// `stall_timeout` bounds each batch's database work (past it the batch fails, the
    /// connection is closed).
    pub(crate) fn start(
        pool: PgPool,
        relay: RelaySignal,
        idempotency_ttl: Duration,
        stall_timeout: Duration,
    ) -> Self {
        let (queue, received) = mpsc::channel(QUEUE);
        let writer = Writer {
            received,
            conn: KeptConnection::new(pool.clone()).checked_after(CHECK_AFTER_IDLE),
            pool,
            relay,
            idempotency_ttl,
            stall_timeout,
        };
        tokio::spawn(writer.run());
        Self { queue }
    }

    /// Places `placement` and answers once its transaction committed (or failed).
    pub(crate) async fn place(&self, placement: Placement) -> Result<Placed, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((placement, reply))
            .await
            .map_err(|_| ApiError::internal("the order intake has stopped"))?;
        answer
            .await
            .map_err(|_| ApiError::internal("the order intake stopped before answering"))?
    }
}

/// The writer: the queue's receiving end and what it writes with.
struct Writer {
    received: mpsc::Receiver<(Placement, Reply)>,
    /// The connection it writes with, kept while orders keep coming.
    conn: KeptConnection,
    pool: PgPool,
    relay: RelaySignal,
    idempotency_ttl: Duration,
    stall_timeout: Duration,
}

impl Writer {
    async fn run(mut self) {
        while let Some(batch) = self.next_batch().await {
            let placements: Vec<&Placement> =
                batch.iter().map(|(placement, _)| placement).collect();
            match self.write(&placements).await {
                Ok(placed) => {
                    for ((_, reply), placed) in batch.into_iter().zip(placed) {
                        // a caller that went away does not take its order back
                        let _ = reply.send(Ok(placed));
                    }
                }
                Err(ApiError::DatabaseUnavailable) => {
                    // nothing to single out: the database is the trouble
                    for (_, reply) in batch {
                        let _ = reply.send(Err(ApiError::DatabaseUnavailable));
                    }
                }
                Err(error) if batch.len() == 1 => {
                    if let Some((_, reply)) = batch.into_iter().next() {
                        let _ = reply.send(Err(error));
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, orders = batch.len(),
                        "an intake batch failed; placing its orders one by one");
                    for (placement, reply) in batch {
                        let placed = self.write(&[&placement]).await.and_then(|mut placed| {
                            placed
                                .pop()
                                .ok_or_else(|| ApiError::internal("an order was not written"))
                        });
                        let _ = reply.send(placed);
                    }
                }
            }
        }
    }

    /// What has queued up, at least one and at most [`MAX_BATCH`]; `None` once the intake is
    /// dropped and everything was taken.
    async fn next_batch(&mut self) -> Option<Vec<(Placement, Reply)>> {
        let received = &mut self.received;
        let first = self.conn.waiting_for(received.recv()).await?;
        let mut batch = Vec::with_capacity(MAX_BATCH.min(received.len() + 1));
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match received.try_recv() {
                Ok(next) => batch.push(next),
                Err(_empty_or_closed) => break,
            }
        }
        Some(batch)
    }

    /// Writes `placements` in one transaction: each one's idempotency key claimed in order,
    /// then every order placed now, its timeline entry and its `order.created`, one statement
    /// each. What became of each, in order.
    async fn write(&mut self, placements: &[&Placement]) -> Result<Vec<Placed>, ApiError> {
        let idempotency_ttl = self.idempotency_ttl;
        let (outcomes, created) = self
            .conn
            .run(
                self.stall_timeout,
                async |conn| write_on(conn, placements, idempotency_ttl).await,
                // kept when committed
                Result::is_ok,
            )
            .await?;
        self.relay.committed_rows(&self.pool, created).await;
        Ok(outcomes)
    }
}

/// [`Writer::write`]'s transaction on `conn`: what became of each placement, and the outbox rows
/// of the orders created (none if none was).
async fn write_on(
    conn: &mut PgConnection,
    placements: &[&Placement],
    idempotency_ttl: Duration,
) -> Result<(Vec<Placed>, Enqueued), ApiError> {
    let mut tx = conn.begin().await?;
    let mut outcomes = Vec::with_capacity(placements.len());
    let mut created = Vec::with_capacity(placements.len());
    let mut enqueued = Enqueued::default();
    for placement in placements {
        if let Some(idempotency) = &placement.idempotency {
            let response = IdempotentResponse {
                customer_id: &placement.customer_id,
                key: &idempotency.key,
                canonical_request: &idempotency.canonical_request,
                order_id: placement.order_id,
                status: StatusCode::CREATED.as_u16(),
                body: &placement.body,
            };
            if !store::claim_idempotency_key(&mut tx, &response, idempotency_ttl).await? {
                let recorded = store::recorded_response(
                    &mut tx,
                    &placement.customer_id,
                    &idempotency.key,
                    &idempotency.canonical_request,
                )
                .await
                .map_err(crate::http::store_error)?
                .ok_or_else(|| ApiError::internal("an idempotency key vanished"))?;
                outcomes.push(Placed::Recorded(recorded));
                continue;
            }
        }
        outcomes.push(Placed::Created);
        created.push(*placement);
    }
    if !created.is_empty() {
        let orders: Vec<NewOrder<'_>> = created
            .iter()
            .map(|placement| NewOrder {
                order_id: placement.order_id,
                customer_id: &placement.customer_id,
                order: &placement.order,
                deadline: placement.deadline,
                created_at: placement.created_at,
                traceparent: placement.event.traceparent.as_deref(),
            })
            .collect();
        let events: Vec<&Envelope> = created.iter().map(|placement| &placement.event).collect();
        store::insert_orders(&mut tx, &orders).await?;
        store::insert_timelines(&mut tx, &events).await?;
        enqueued = jwl_outbox::enqueue_all(&mut tx, &events)
            .await
            .map_err(crate::http::outbox_error)?;
    }
    tx.commit().await?;
    Ok((outcomes, enqueued))
}

#[cfg(test)]
mod tests {
    //! Against a real database. The tests run on a current-thread runtime, so every placement
    //! they hand in together is queued before the writer runs: one batch, deterministically.

    use chrono::SubsecRound;
    use jwl_events::{GeoPoint, LineItem, OrderCreated, Service};

    use super::*;

    async fn intake() -> (Intake, PgPool) {
        let pool = jwl_testkit::service::schema_pool(crate::SCHEMA)
            .await
            .unwrap();
        crate::migrate(&pool).await.unwrap();
        let intake = Intake::start(
            pool.clone(),
            RelaySignal::new(Duration::from_secs(5)),
            Duration::from_secs(3600),
            Duration::from_secs(30),
        );
        (intake, pool)
    }

    fn placement(order_id: OrderId, key: Option<&str>, qty: u32) -> Placement {
        let point = GeoPoint::new(31.23, 121.47).unwrap();
        let order = ValidOrder {
            items: vec![LineItem {
                sku: "TEA".into(),
                qty,
                unit_price_cents: 100,
            }],
            amount_cents: i64::from(qty) * 100,
            pickup: point,
            dropoff: point,
            payment_token: "tok_ok".into(),
        };
        let created_at = Utc::now().trunc_subsecs(6);
        let deadline = created_at + chrono::TimeDelta::minutes(30);
        let event = Envelope::new(
            Service::Order,
            OrderCreated {
                order_id,
                customer_id: "cust-1".into(),
                items: order.items.clone(),
                amount_cents: order.amount_cents,
                pickup: point,
                dropoff: point,
                payment_token: order.payment_token.clone(),
                deadline,
            }
            .into(),
        );
        Placement {
            order_id,
            customer_id: "cust-1".into(),
            order,
            deadline,
            created_at,
            event,
            body: format!("{{\"order_id\":\"{order_id}\"}}"),
            idempotency: key.map(|key| Idempotency {
                key: key.into(),
                canonical_request: format!("qty={qty}"),
            }),
        }
    }

    /// (orders, transactions that wrote them, `order.created` rows in the outbox, timeline rows)
    async fn written(pool: &PgPool) -> (i64, i64, i64, i64) {
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM orders), (SELECT count(DISTINCT xmin::text) FROM orders),
                    (SELECT count(*) FROM outbox), (SELECT count(*) FROM order_timeline)",
        )
        .fetch_one(pool)
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn orders_placed_together_share_one_transaction_and_a_repeated_key_is_answered_once() {
        let (intake, pool) = intake().await;
        let keyed = OrderId::new();
        let placements = (0..10).map(|_| placement(OrderId::new(), None, 1)).chain([
            placement(keyed, Some("k-1"), 1),
            // the same key and body again, then with another body
            placement(OrderId::new(), Some("k-1"), 1),
            placement(OrderId::new(), Some("k-1"), 2),
        ]);
        let answers =
            futures::future::join_all(placements.map(|placement| intake.place(placement))).await;
        let mut created = 0;
        let mut recorded = Vec::new();
        for answer in answers {
            match answer.unwrap() {
                Placed::Created => created += 1,
                Placed::Recorded(response) => recorded.push(response),
            }
        }
        assert_eq!(created, 11);
        let recorded: Vec<(OrderId, bool)> = recorded
            .iter()
            .map(|response| (response.order_id, response.same_request))
            .collect();
        assert_eq!(recorded, [(keyed, true), (keyed, false)]);
        assert_eq!(written(&pool).await, (11, 1, 11, 11));
    }

    #[tokio::test]
    async fn an_order_the_database_refuses_fails_alone() {
        let (intake, pool) = intake().await;
        let taken = OrderId::new();
        assert!(matches!(
            intake.place(placement(taken, None, 1)).await,
            Ok(Placed::Created)
        ));
        // the same order id again: its insert breaks the batch's transaction
        let placements = [
            placement(OrderId::new(), None, 1),
            placement(taken, None, 1),
            placement(OrderId::new(), None, 1),
        ];
        let answers =
            futures::future::join_all(placements.map(|placement| intake.place(placement))).await;
        let outcomes: Vec<bool> = answers
            .iter()
            .map(|answer| matches!(answer, Ok(Placed::Created)))
            .collect();
        assert_eq!(outcomes, [true, false, true]);
        assert!(matches!(answers[1], Err(ApiError::Internal(_))));
        // the first order, then the two placed one by one
        assert_eq!(written(&pool).await, (3, 3, 3, 3));
    }
}
