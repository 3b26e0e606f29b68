//! SQL on the `stock`, `order_reservations` and `reservations` tables. Stock rows are always
//! locked in SKU order (`ORDER BY sku FOR UPDATE`) so concurrent orders cannot deadlock; order
//! transitions are conditional on the state they expect and report whether they happened.

use std::collections::BTreeMap;

use jwl_events::{LineItem, OrderId};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};

use crate::domain::{OrderState, ReservationDecision, StockLevel};

/// A stored order state that is not an [`OrderState`] (the table's CHECK makes this a bug).
#[derive(Debug, thiserror::Error)]
#[error("unknown reservation state {0:?} in the order_reservations table")]
pub struct UnknownState(String);

/// The order's reservation state, locking its row until the transaction ends; `None` if
/// inventory has not heard of the order.
pub async fn lock_order(
    conn: &mut PgConnection,
    order_id: OrderId,
) -> Result<Option<OrderState>, sqlx::Error> {
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM order_reservations WHERE order_id = $1 FOR UPDATE")
            .bind(order_id.0)
            .fetch_optional(conn)
            .await?;
    state
        .map(|state| {
            OrderState::parse(&state)
                .ok_or_else(|| sqlx::Error::Decode(Box::new(UnknownState(state))))
        })
        .transpose()
}

/// Locks, for a batch of events, the stock rows of the SKUs in `reserving` and of the still
/// reserved lines of the orders in `settling` (in SKU order), then the reservation rows of
/// `orders` that exist (in order id order): one global order for every batch, so concurrent
/// batches queue instead of deadlocking. The handlers' own locks on these rows are then free.
pub async fn lock_for_batch(
    conn: &mut PgConnection,
    reserving: &[String],
    settling: &[OrderId],
    orders: &[OrderId],
) -> Result<(), sqlx::Error> {
    let settling: Vec<uuid::Uuid> = settling.iter().map(|order| order.0).collect();
    let orders: Vec<uuid::Uuid> = orders.iter().map(|order| order.0).collect();
    // One statement, one round trip: the order rows' scan starts only once its one-time filter
    // has read every stock row locked, so the stock is always locked first.
    sqlx::query(
        "WITH stock_rows AS MATERIALIZED (
             SELECT sku FROM stock
             WHERE sku = ANY(ARRAY(
                 SELECT unnest($1::text[])
                 UNION
                 SELECT sku FROM reservations WHERE order_id = ANY($2) AND state = 'reserved'))
             ORDER BY sku FOR UPDATE
         ), order_rows AS MATERIALIZED (
             SELECT order_id FROM order_reservations
             WHERE order_id = ANY($3) AND (SELECT count(*) FROM stock_rows) >= 0
             ORDER BY order_id FOR UPDATE
         )
         SELECT count(*) FROM order_rows",
    )
    .bind(reserving)
    .bind(&settling)
    .bind(&orders)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records the `release_requested` tombstone of an order inventory has not heard of (a release
/// that came before the reservation); `false` if the order already has a row.
pub async fn insert_release_requested(
    conn: &mut PgConnection,
    order_id: OrderId,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "INSERT INTO order_reservations (order_id, state) VALUES ($1, $2)
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id.0)
    .bind(OrderState::ReleaseRequested.as_str())
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// The stock of those of `skus` that exist, locking their rows in SKU order.
pub async fn lock_stock(
    conn: &mut PgConnection,
    skus: &[String],
) -> Result<BTreeMap<String, StockLevel>, sqlx::Error> {
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT sku, on_hand, reserved, shipped FROM stock
         WHERE sku = ANY($1) ORDER BY sku FOR UPDATE",
    )
    .bind(skus)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(sku, on_hand, reserved, shipped)| {
            (
                sku,
                StockLevel {
                    on_hand,
                    reserved,
                    shipped,
                },
            )
        })
        .collect())
}

/// An order inventory has not heard of, and what was decided for it.
pub struct NewOrder<'a> {
    pub order_id: OrderId,
    pub items: &'a [LineItem],
    pub decision: &'a ReservationDecision,
}

/// Records each of `orders` as decided, in one statement: `reserved` with its items, its
/// lines added to `stock.reserved` and recorded; or `rejected` with its items. An order that
/// already has a row is left as it is, and nothing of it changes. Returns how many were
/// recorded. The stock rows must be locked ([`lock_stock`] or [`lock_for_batch`]) and the
/// decisions taken against them in turn ([`crate::domain::decide_reservations`]).
pub async fn record_orders(
    conn: &mut PgConnection,
    orders: &[NewOrder<'_>],
) -> Result<u64, sqlx::Error> {
    let mut ids = Vec::with_capacity(orders.len());
    let mut states = Vec::with_capacity(orders.len());
    let mut items = Vec::with_capacity(orders.len());
    let (mut line_orders, mut skus, mut quantities) = (Vec::new(), Vec::new(), Vec::new());
    for order in orders {
        ids.push(order.order_id.0);
        items.push(Json(order.items));
        match order.decision {
            ReservationDecision::Reserve(lines) => {
                states.push(OrderState::Reserved.as_str());
                for line in lines {
                    line_orders.push(order.order_id.0);
                    skus.push(line.sku.as_str());
                    quantities.push(line.qty);
                }
            }
            ReservationDecision::Reject { .. } => states.push(OrderState::Rejected.as_str()),
        }
    }
    // The lines are checked against an array of the recorded ids, not joined to them: a service
    // pool plans without hash joins, and a nested loop over two in-memory sets grows with the
    // square of the batch.
    let recorded: i64 = sqlx::query_scalar(
        "WITH recorded AS (
             INSERT INTO order_reservations (order_id, state, items)
             SELECT order_id, state, items
             FROM unnest($1::uuid[], $2::text[], $3::jsonb[]) AS new (order_id, state, items)
             ORDER BY order_id
             ON CONFLICT (order_id) DO NOTHING
             RETURNING order_id),
         line AS (
             SELECT line.order_id, line.sku, line.qty
             FROM unnest($4::uuid[], $5::text[], $6::bigint[]) AS line (order_id, sku, qty)
             WHERE line.order_id = ANY (ARRAY(SELECT order_id FROM recorded))),
         noted AS (
             INSERT INTO reservations (order_id, sku, qty, state)
             SELECT order_id, sku, qty, 'reserved' FROM line
             RETURNING 1),
         held AS (
             UPDATE stock SET reserved = stock.reserved + total.qty, updated_at = now()
             FROM (SELECT sku, sum(qty)::bigint AS qty FROM line GROUP BY sku) AS total
             WHERE stock.sku = total.sku
             RETURNING 1)
         SELECT count(*) FROM recorded",
    )
    .bind(&ids)
    .bind(&states)
    .bind(&items)
    .bind(&line_orders)
    .bind(&skus)
    .bind(&quantities)
    .fetch_one(conn)
    .await?;
    Ok(u64::try_from(recorded).unwrap_or(0))
}

/// Gives a reserved order's stock back and returns its lines; `None` (and nothing changed)
/// unless it was reserved. One statement; the stock rows are locked by the batch
/// ([`lock_for_batch`], which every consumer batch takes first, in SKU order).
pub async fn release(
    conn: &mut PgConnection,
    order_id: OrderId,
) -> Result<Option<Vec<LineItem>>, sqlx::Error> {
    let items: Option<Json<Vec<LineItem>>> = sqlx::query_scalar(
        "WITH released AS (
             UPDATE order_reservations SET state = 'released', updated_at = now()
             WHERE order_id = $1 AND state = 'reserved'
             RETURNING order_id, items),
         line AS (
             UPDATE reservations SET state = 'released', updated_at = now()
             FROM released
             WHERE reservations.order_id = released.order_id AND reservations.state = 'reserved'
             RETURNING reservations.sku, reservations.qty),
         given_back AS (
             UPDATE stock SET reserved = stock.reserved - line.qty, updated_at = now()
             FROM line WHERE stock.sku = line.sku
             RETURNING 1)
         SELECT items FROM released",
    )
    .bind(order_id.0)
    .fetch_optional(conn)
    .await?;
    Ok(items.map(|Json(items)| items))
}

/// Ships the stock of those of `orders` that are reserved (on_hand and reserved go down,
/// shipped up) and returns how many were; the others are left as they are. One statement; the
/// stock rows are locked by the batch ([`lock_for_batch`]).
pub async fn commit(conn: &mut PgConnection, orders: &[OrderId]) -> Result<u64, sqlx::Error> {
    let orders: Vec<uuid::Uuid> = orders.iter().map(|order| order.0).collect();
    let committed: i64 = sqlx::query_scalar(
        "WITH committed AS (
             UPDATE order_reservations SET state = 'committed', updated_at = now()
             WHERE order_id = ANY($1) AND state = 'reserved'
             RETURNING order_id),
         line AS (
             UPDATE reservations SET state = 'committed', updated_at = now()
             FROM committed
             WHERE reservations.order_id = committed.order_id
               AND reservations.state = 'reserved'
             RETURNING reservations.sku, reservations.qty),
         shipped AS (
             UPDATE stock
             SET on_hand = stock.on_hand - total.qty,
                 reserved = stock.reserved - total.qty,
                 shipped = stock.shipped + total.qty,
                 updated_at = now()
             FROM (SELECT sku, sum(qty)::bigint AS qty FROM line GROUP BY sku) AS total
             WHERE stock.sku = total.sku
             RETURNING 1)
         SELECT count(*) FROM committed",
    )
    .bind(&orders)
    .fetch_one(conn)
    .await?;
    Ok(u64::try_from(committed).unwrap_or(0))
}

/// An order's reservation state as stored (any of the table's states) and its lines
/// `(sku, qty, state)` in SKU order; `None` if inventory has not heard of the order.
pub async fn find_order(
    conn: &mut PgConnection,
    order_id: OrderId,
) -> Result<Option<(String, Vec<(String, i64, String)>)>, sqlx::Error> {
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM order_reservations WHERE order_id = $1")
            .bind(order_id.0)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(state) = state else {
        return Ok(None);
    };
    let lines =
        sqlx::query_as("SELECT sku, qty, state FROM reservations WHERE order_id = $1 ORDER BY sku")
            .bind(order_id.0)
            .fetch_all(&mut *conn)
            .await?;
    Ok(Some((state, lines)))
}

/// The SKU's stock; `None` if the SKU is unknown.
pub async fn find_stock(
    db: impl PgExecutor<'_>,
    sku: &str,
) -> Result<Option<StockLevel>, sqlx::Error> {
    let row: Option<(i64, i64, i64)> =
        sqlx::query_as("SELECT on_hand, reserved, shipped FROM stock WHERE sku = $1")
            .bind(sku)
            .fetch_optional(db)
            .await?;
    Ok(row.map(|(on_hand, reserved, shipped)| StockLevel {
        on_hand,
        reserved,
        shipped,
    }))
}

/// The SKU's stock, creating it empty if unknown, locked until the transaction ends.
pub async fn lock_or_create_stock(
    conn: &mut PgConnection,
    sku: &str,
) -> Result<StockLevel, sqlx::Error> {
    sqlx::query("INSERT INTO stock (sku, on_hand) VALUES ($1, 0) ON CONFLICT (sku) DO NOTHING")
        .bind(sku)
        .execute(&mut *conn)
        .await?;
    let (on_hand, reserved, shipped): (i64, i64, i64) =
        sqlx::query_as("SELECT on_hand, reserved, shipped FROM stock WHERE sku = $1 FOR UPDATE")
            .bind(sku)
            .fetch_one(conn)
            .await?;
    Ok(StockLevel {
        on_hand,
        reserved,
        shipped,
    })
}

/// Sets the (locked) SKU's `on_hand` and returns the new stock.
pub async fn set_on_hand(
    conn: &mut PgConnection,
    sku: &str,
    on_hand: i64,
) -> Result<StockLevel, sqlx::Error> {
    let (on_hand, reserved, shipped): (i64, i64, i64) = sqlx::query_as(
        "UPDATE stock SET on_hand = $2, updated_at = now() WHERE sku = $1
         RETURNING on_hand, reserved, shipped",
    )
    .bind(sku)
    .bind(on_hand)
    .fetch_one(conn)
    .await?;
    Ok(StockLevel {
        on_hand,
        reserved,
        shipped,
    })
}
