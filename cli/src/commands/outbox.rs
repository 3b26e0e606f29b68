//! `jwl outbox ls|retry`: the outbox rows the broker rejected for good (parked by the relay,
//! never retried on their own), read from each service's database, and un-parking them so the
//! service's relay publishes them again once the cause is fixed.

use std::str::FromStr;

use anyhow::{Context, bail};
use jwl_outbox::parked_rows::{self, ParkedRow, Unpark};
use serde::Serialize;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::print_json;
use crate::args::{OutboxCommand, OutboxLsArgs, OutboxRetryArgs};
use crate::services::ServiceName;

pub async fn run(command: OutboxCommand) -> anyhow::Result<()> {
    match command {
        OutboxCommand::Ls(args) => ls(args).await,
        OutboxCommand::Retry(args) => retry(args).await,
    }
}

/// One service's parked rows, as printed.
#[derive(Debug, Serialize)]
struct ServiceParked {
    service: &'static str,
    schema: &'static str,
    rows: Vec<ParkedRow>,
}

async fn ls(args: OutboxLsArgs) -> anyhow::Result<()> {
    let services = if args.services.is_empty() {
        ServiceName::ALL.to_vec()
    } else {
        args.services.clone()
    };
    let mut listed = Vec::new();
    for service in services {
        let Some(url) = args.databases.url_for(service) else {
            if !args.services.is_empty() {
                args.databases.require_url_for(service)?;
            }
            continue;
        };
        let pool = service_pool(service, url).await?;
        let mut conn = pool.acquire().await?;
        let rows = parked_rows::list(&mut conn)
            .await
            .with_context(|| format!("reading the {service} service's outbox"))?;
        listed.push(ServiceParked {
            service: service.as_str(),
            schema: service.entry().schema,
            rows,
        });
    }
    if listed.is_empty() {
        bail!("no service database: set JWL_DATABASE_URL or JWL_<SERVICE>_DATABASE_URL");
    }
    if args.output.json {
        return print_json(&listed);
    }
    print!("{}", parked_table(&listed));
    Ok(())
}

async fn retry(args: OutboxRetryArgs) -> anyhow::Result<()> {
    let service = args.service;
    let url = args.databases.require_url_for(service)?;
    let pool = service_pool(service, url).await?;
    let which = if args.all {
        Unpark::All
    } else {
        Unpark::Seqs(args.seqs.clone())
    };
    let mut tx = pool.begin().await?;
    let unparked = parked_rows::unpark(&mut tx, &which)
        .await
        .with_context(|| format!("un-parking rows of the {service} service's outbox"))?;
    tx.commit().await?;
    for seq in &unparked {
        println!("{service}: outbox row {seq} un-parked; the relay publishes it again");
    }
    if let Unpark::Seqs(asked) = &which {
        let missing: Vec<String> = asked
            .iter()
            .filter(|seq| !unparked.contains(seq))
            .map(i64::to_string)
            .collect();
        if !missing.is_empty() {
            bail!(
                "{service}: no parked outbox row with seq {}",
                missing.join(", ")
            );
        }
    } else if unparked.is_empty() {
        println!("{service}: no parked outbox row");
    }
    Ok(())
}

/// A one-connection pool on `url` whose `search_path` is the service's schema (not created:
/// a missing schema is an error, not a new empty outbox).
async fn service_pool(service: ServiceName, url: &str) -> anyhow::Result<PgPool> {
    let schema = service.entry().schema;
    let options = PgConnectOptions::from_str(url)
        .with_context(|| format!("the {service} service's database URL"))?
        .options([("search_path", schema)]);
    PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .with_context(|| format!("connecting to the {service} service's database"))
}

fn parked_table(listed: &[ServiceParked]) -> String {
    let header: Vec<String> = [
        "SERVICE",
        "SEQ",
        "EVENT ID",
        "TYPE",
        "ATTEMPTS",
        "PARKED AT",
        "LAST ERROR",
    ]
    .map(str::to_owned)
    .to_vec();
    let rows: Vec<Vec<String>> = listed
        .iter()
        .flat_map(|service| {
            service.rows.iter().map(|row| {
                vec![
                    service.service.to_owned(),
                    row.seq.to_string(),
                    row.event_id.to_string(),
                    row.event_type().unwrap_or("?").to_owned(),
                    row.attempts.to_string(),
                    row.parked_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    row.last_error.clone().unwrap_or_default(),
                ]
            })
        })
        .collect();
    let total: usize = listed.iter().map(|service| service.rows.len()).sum();
    let mut text = jwl_ops::render::table(&header, &rows);
    let services: Vec<&str> = listed.iter().map(|service| service.service).collect();
    text.push_str(&format!(
        "{total} parked row(s) in {}\n",
        services.join(", ")
    ));
    text
}
