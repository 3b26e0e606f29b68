//! Upgrading an order database: what a later migration does to the rows an earlier version of
//! the service left.

use jwl_testkit::service::schema_pool;
use sqlx::migrate::Migrator;
use uuid::Uuid;

/// The migration that made "open" mean "not finished" (`finished_at IS NULL`).
const FINISHED_MEANS_TERMINAL: i64 = 20261207000001;

/// Orders that reached a terminal status before `finished_at` existed have none; after the
/// upgrade they count as finished (their last update), so the deadline timer and admission,
/// which now read `finished_at IS NULL`, never take them for open ones.
#[tokio::test]
async fn orders_finished_before_finished_at_existed_count_as_finished_after_the_upgrade()
-> anyhow::Result<()> {
    let pool = schema_pool(jwl_order::SCHEMA).await?;
    let all = sqlx::migrate!("./migrations");
    let mut earlier = Migrator::with_migrations(
        all.iter()
            .filter(|migration| migration.version < FINISHED_MEANS_TERMINAL)
            .cloned()
            .collect(),
    );
    earlier.set_ignore_missing(true);
    earlier.run(&pool).await?;

    let (delivered, paid) = (Uuid::now_v7(), Uuid::now_v7());
    for (order_id, status) in [(delivered, "delivered"), (paid, "paid")] {
        sqlx::query(
            "INSERT INTO orders (order_id, customer_id, status, amount_cents, items, pickup_lat,
                                 pickup_lon, dropoff_lat, dropoff_lon, deadline, created_at,
                                 updated_at)
             VALUES ($1, 'cust-42', $2, 2000, '[]', 31.23, 121.47, 31.22, 121.47,
                     now() - interval '1 minute', now() - interval '10 minutes',
                     now() - interval '9 minutes')",
        )
        .bind(order_id)
        .bind(status)
        .execute(&pool)
        .await?;
    }

    jwl_order::migrate(&pool).await?;
    let finished = |order_id: Uuid| {
        sqlx::query_scalar::<_, bool>(
            "SELECT finished_at IS NOT DISTINCT FROM updated_at FROM orders WHERE order_id = $1",
        )
        .bind(order_id)
        .fetch_one(&pool)
    };
    assert!(
        finished(delivered).await?,
        "the delivered order is finished"
    );
    let open: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT finished_at FROM orders WHERE order_id = $1")
            .bind(paid)
            .fetch_one(&pool)
            .await?;
    assert_eq!(open, None, "the paid order is still open");

    // and from now on a terminal status without `finished_at` cannot be written
    let refused = sqlx::query("UPDATE orders SET status = 'dispatched' WHERE order_id = $1")
        .bind(paid)
        .execute(&pool)
        .await;
    assert!(
        matches!(&refused, Err(sqlx::Error::Database(error))
            if error.constraint() == Some("orders_finished_when_terminal")),
        "{refused:?}"
    );
    Ok(())
}
