//! `jwl saga show|stuck`: one order's history from the broker with its status from the order
//! service's database, and the orders that stopped moving with the service that should act next
//! ([`jwl_order::stuck_orders`], which the console's `/v1/console/stuck` shares).

use anyhow::Context;
use chrono::{DateTime, Utc};
use jwl_events::OrderId;
use jwl_ops::{OrderHistory, render};
use serde::Serialize;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use super::{connect_operator, print_json};
use crate::args::{DatabaseArgs, SagaCommand, SagaShowArgs, SagaStuckArgs};
use crate::services::ServiceName;

pub async fn run(command: SagaCommand) -> anyhow::Result<()> {
    match command {
        SagaCommand::Show(args) => show(args).await,
        SagaCommand::Stuck(args) => stuck(args).await,
    }
}

/// An order's row in `jwl_order.orders`.
#[derive(Debug, Serialize, sqlx::FromRow)]
struct OrderStatus {
    status: String,
    /// Why it was cancelled, when it was.
    reason: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// `jwl saga show --json`.
#[derive(Debug, Serialize)]
struct SagaView {
    #[serde(flatten)]
    history: OrderHistory,
    /// `null` when there is no database URL or the order is not in the database.
    status: Option<OrderStatus>,
    /// Where the status comes from, or why there is none.
    status_source: &'static str,
}

async fn show(args: SagaShowArgs) -> anyhow::Result<()> {
    let (broker, settings) = connect_operator(&args.broker, "saga").await?;
    let history = OrderHistory::read(&*broker, &settings, &args.order_id)
        .await
        .with_context(|| format!("reading the history of order {}", args.order_id))?;
    let (status, status_source) = match order_pool(&args.databases).await? {
        None => (None, "unknown (no database URL)"),
        Some(pool) => match order_status(&pool, &args.order_id).await? {
            None => (None, "not in the order database"),
            Some(status) => (Some(status), "order database"),
        },
    };
    let view = SagaView {
        history,
        status,
        status_source,
    };
    if args.output.json {
        return print_json(&view);
    }
    print!("{}", render::history_table(&view.history));
    match &view.status {
        Some(status) => println!(
            "status: {}{} (created {}, updated {})",
            status.status,
            status
                .reason
                .as_deref()
                .map(|reason| format!(", reason {reason}"))
                .unwrap_or_default(),
            status.created_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            status.updated_at.format("%Y-%m-%dT%H:%M:%S%.3fZ")
        ),
        None => println!("status: {}", view.status_source),
    }
    Ok(())
}

/// A pool on the order service's database, if a URL is configured.
async fn order_pool(databases: &DatabaseArgs) -> anyhow::Result<Option<PgPool>> {
    let Some(url) = databases.url_for(ServiceName::Order) else {
        return Ok(None);
    };
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .context("connecting to the order service's database")?;
    Ok(Some(pool))
}

async fn order_status(pool: &PgPool, order_id: &OrderId) -> anyhow::Result<Option<OrderStatus>> {
    sqlx::query_as(
        "SELECT status, reason, created_at, updated_at FROM jwl_order.orders WHERE order_id = $1",
    )
    .bind(order_id.0)
    .fetch_optional(pool)
    .await
    .context("reading jwl_order.orders")
}

async fn stuck(args: SagaStuckArgs) -> anyhow::Result<()> {
    let pool = order_pool(&args.databases).await?.context(
        "no database for the order service: set JWL_ORDER_DATABASE_URL or JWL_DATABASE_URL",
    )?;
    let orders = jwl_order::stuck_orders(&pool, args.older_than).await?;
    if args.output.json {
        return print_json(&orders);
    }
    let header: Vec<String> = ["ORDER", "STATUS", "CREATED", "LAST EVENT", "AT", "NEXT"]
        .map(str::to_owned)
        .to_vec();
    let time = |at: &DateTime<Utc>| at.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let rows: Vec<Vec<String>> = orders
        .iter()
        .map(|order| {
            let next: Vec<&str> = order.next.iter().map(|s| s.as_str()).collect();
            vec![
                order.order_id.to_string(),
                order.status.clone(),
                time(&order.created_at),
                order.last_event.clone().unwrap_or_else(|| "-".to_owned()),
                order
                    .last_event_at
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), time),
                if next.is_empty() {
                    "-".to_owned()
                } else {
                    next.join(", ")
                },
            ]
        })
        .collect();
    println!(
        "{} not terminal, created more than {} ago",
        match orders.len() {
            1 => "1 order".to_owned(),
            n => format!("{n} orders"),
        },
        humantime::format_duration(args.older_than)
    );
    if !rows.is_empty() {
        print!("{}", render::table(&header, &rows));
    }
    Ok(())
}
