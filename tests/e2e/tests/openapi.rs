//! The OpenAPI document (`/openapi.json`) against what is really routed, and against the
//! README:
//!
//! - its operations are exactly the five services' routes ([`ListedRouter::routes`], as
//!   `jwl up` merges them, on a real PostgreSQL database and NATS) plus the edge's: a route
//!   missing from the document fails, and so does an operation nothing routes;
//! - the README's API table lists exactly the document's operations.
//!
//! That every field of the request and response types is in their schemas is checked next to
//! each type (`services/*/src/http.rs`, `every_field_is_in_the_document`).

use std::collections::BTreeSet;
use std::sync::Arc;

use jwl_events::Service;
use jwl_outbox::transport::Broker;
use jwl_outbox::{JetStreamBroker, MessagingSettings};
use jwl_service_kit::http::{ListedRouter, MetricsOn};
use jwl_service_kit::openapi::{self, OpenApi};
use jwl_service_kit::{ServiceContext, Settings};

const README: &str = include_str!("../../../README.md");

/// What the edge serves next to the services' routes.
const EDGE: [(&str, &str); 4] = [
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
];

/// The document `jwl up` serves.
fn document() -> OpenApi {
    openapi::document(
        [
            jwl_order::openapi(),
            jwl_payment::openapi(),
            jwl_inventory::openapi(),
            jwl_fulfillment::openapi(),
            jwl_dispatch::openapi(),
        ],
        MetricsOn::Public,
    )
}

fn pairs<'a>(items: impl IntoIterator<Item = (&'a str, &'a str)>) -> BTreeSet<(String, String)> {
    items
        .into_iter()
        .map(|(method, path)| (method.to_owned(), path.to_owned()))
        .collect()
}

#[tokio::test]
async fn the_document_describes_every_route_and_nothing_else() -> anyhow::Result<()> {
    let database = jwl_testkit::database().await?;
    let nats = jwl_testkit::nats().await?;
    let broker: Arc<dyn Broker> = Arc::new(JetStreamBroker::connect(nats.url()).await?);
    let settings = Arc::new(Settings::default());
    let mut routed = BTreeSet::new();
    for service in Service::ALL {
        let (schema, routes): (&str, fn(&ServiceContext) -> ListedRouter) = match service {
            Service::Order => (jwl_order::SCHEMA, jwl_order::routes),
            Service::Payment => (jwl_payment::SCHEMA, jwl_payment::routes),
            Service::Inventory => (jwl_inventory::SCHEMA, jwl_inventory::routes),
            Service::Fulfillment => (jwl_fulfillment::SCHEMA, jwl_fulfillment::routes),
            Service::Dispatch => (jwl_dispatch::SCHEMA, jwl_dispatch::routes),
        };
        // building the routers needs no migrated schema: no request is sent
        let pool = jwl_service_kit::db::connect(database.url(), schema).await?;
        let ctx = ServiceContext::new(
            service,
            pool,
            broker.clone(),
            MessagingSettings::default(),
            settings.clone(),
        );
        for route in routes(&ctx).routes() {
            routed.insert((route.method.method().to_string(), route.path.to_owned()));
        }
    }
    routed.extend(pairs(EDGE));

    let described = openapi::operations(&document());
    let undocumented: Vec<_> = routed.difference(&described).collect();
    let unrouted: Vec<_> = described.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routes missing from the OpenAPI document: {undocumented:?}; \
         operations of the document that nothing routes: {unrouted:?}"
    );
    Ok(())
}

#[test]
fn operation_ids_are_unique() {
    let doc = serde_json::to_value(document()).unwrap();
    let mut ids = BTreeSet::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for operation in item.as_object().unwrap().values() {
            let id = operation["operationId"].as_str().unwrap().to_owned();
            assert!(ids.insert(id.clone()), "operationId {id} is used twice");
        }
    }
}

/// The `METHOD /path` pairs in the first column of the README's API table.
fn readme_operations() -> BTreeSet<(String, String)> {
    let section = README
        .split("\n## HTTP API\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the README has an HTTP API section");
    let mut found = BTreeSet::new();
    for line in section.lines() {
        let Some(first_cell) = line
            .strip_prefix("| ")
            .and_then(|row| row.split(" |").next())
        else {
            continue;
        };
        for code in first_cell.split('`').skip(1).step_by(2) {
            if let Some((method, path)) = code.split_once(' ')
                && ["GET", "PUT", "POST", "DELETE"].contains(&method)
            {
                found.insert((method.to_owned(), path.to_owned()));
            }
        }
    }
    found
}

#[test]
fn the_readme_api_table_lists_the_document_s_operations() {
    let readme = readme_operations();
    let described = openapi::operations(&document());
    assert_eq!(
        readme, described,
        "the README's API table and the OpenAPI document differ"
    );
}
