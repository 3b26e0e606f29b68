//! The OpenAPI 3.1 description of the HTTP API, served at `GET /openapi.json`.
//!
//! Each service crate describes its own routes (`#[utoipa::path]` on the handlers, `ToSchema` on
//! their bodies) and exports the part as an [`OpenApi`]; [`document`] puts the parts a listener
//! serves together with what the edge adds: `/healthz`, `/readyz`, `/metrics` (when on this
//! listener), `/openapi.json` itself, the [`BEARER`] security scheme, the [`Problem`] schema, and
//! a `default` problem-details response on every operation (any status an operation does not
//! list is a problem). [`route`] serves the document.
//!
//! For the tests that keep the document honest: [`operations`] lists its `(method, path)` pairs,
//! to compare with what the routers route ([`crate::http::ListedRouter::routes`]), and
//! [`field_mismatches`] compares a sample value of a body type with its schema, field by field.

use std::collections::BTreeSet;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::routing::get;
use serde_json::Value;
use utoipa::Modify;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};

pub use utoipa::openapi::OpenApi;

use crate::http::MetricsOn;
use crate::problem::{PROBLEM_JSON, Problem};

/// Name of the bearer-JWT security scheme the services' operations require.
pub const BEARER: &str = "bearer";

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/openapi.json";

/// The document of a listener that serves `services` (the parts the service crates export) and
/// `/metrics` where `metrics` says.
pub fn document(services: impl IntoIterator<Item = OpenApi>, metrics: MetricsOn) -> OpenApi {
    use utoipa::OpenApi as _;
    let mut doc = EdgeApi::openapi();
    if metrics == MetricsOn::Public {
        doc.merge(MetricsApi::openapi());
    }
    for part in services {
        doc.merge(part);
    }
    add_default_problem(&mut doc);
    doc
}

/// `GET /openapi.json` answering `doc` (rendered once, here).
pub fn route(doc: &OpenApi) -> Result<Router, serde_json::Error> {
    let body = axum::body::Bytes::from(doc.to_json()?);
    Ok(Router::new().route(
        OPENAPI_PATH,
        get(move || {
            let body = body.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )],
                    body,
                )
            }
        }),
    ))
}

/// Every `(METHOD, path)` the document describes, e.g. `("GET", "/v1/orders/{id}")`.
pub fn operations(doc: &OpenApi) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for (path, item) in &doc.paths.paths {
        let methods = [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("OPTIONS", &item.options),
            ("HEAD", &item.head),
            ("PATCH", &item.patch),
            ("TRACE", &item.trace),
        ];
        for (method, operation) in methods {
            if operation.is_some() {
                found.insert((method.to_owned(), path.clone()));
            }
        }
    }
    found
}

/// How `sample` (a serialized body, with every optional field set) differs from the component
/// schema `schema_name` of `doc`: its fields that the schema lacks and the schema's properties
/// the sample lacks, by JSON path (`timeline[].type`). Empty when they agree. Nested objects and
/// arrays are followed through `$ref`, `allOf` (flattened fields), `oneOf`/`anyOf` (optional
/// ones) and `items`.
pub fn field_mismatches(doc: &OpenApi, schema_name: &str, sample: &Value) -> Vec<String> {
    let doc = match serde_json::to_value(doc) {
        Ok(doc) => doc,
        Err(error) => return vec![format!("the document does not serialize: {error}")],
    };
    let mut mismatches = Vec::new();
    let root = serde_json::json!({ "$ref": format!("#/components/schemas/{schema_name}") });
    compare(&doc, &root, sample, schema_name, &mut mismatches);
    mismatches
}

fn compare(doc: &Value, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            let Some(properties) = properties(doc, schema) else {
                out.push(format!("{at}: the schema describes no object here"));
                return;
            };
            for (name, field) in fields {
                match properties.iter().find(|(property, _)| property == name) {
                    Some((_, property_schema)) => {
                        compare(doc, property_schema, field, &format!("{at}.{name}"), out)
                    }
                    None => out.push(format!("{at}.{name}: not in the schema")),
                }
            }
            for (property, _) in &properties {
                if !fields.contains_key(property) {
                    out.push(format!("{at}.{property}: in the schema, not in the type"));
                }
            }
        }
        Value::Array(elements) => {
            let items: Vec<Value> = branches(doc, schema)
                .into_iter()
                .filter_map(|branch| branch.get("items").cloned())
                .collect();
            if items.is_empty() {
                out.push(format!("{at}: the schema describes no array here"));
                return;
            }
            for element in elements {
                // the first item schema that describes the element's fields
                let mut best: Option<Vec<String>> = None;
                for item in &items {
                    let mut found = Vec::new();
                    compare(doc, item, element, &format!("{at}[]"), &mut found);
                    if best.as_ref().is_none_or(|best| found.len() < best.len()) {
                        best = Some(found);
                    }
                }
                out.extend(best.unwrap_or_default());
            }
        }
        _ => {}
    }
}

/// `schema` with its `$ref`s resolved and its `allOf`/`oneOf`/`anyOf` branches expanded.
fn branches(doc: &Value, schema: &Value) -> Vec<Value> {
    let mut found = Vec::new();
    expand(doc, schema, &mut found, 0);
    found
}

fn expand(doc: &Value, schema: &Value, found: &mut Vec<Value>, depth: usize) {
    if depth > 32 {
        return;
    }
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let pointer = reference.trim_start_matches('#');
        if let Some(target) = doc.pointer(pointer) {
            expand(doc, target, found, depth + 1);
        }
        return;
    }
    found.push(schema.clone());
    for combinator in ["allOf", "oneOf", "anyOf"] {
        if let Some(parts) = schema.get(combinator).and_then(Value::as_array) {
            for part in parts {
                expand(doc, part, found, depth + 1);
            }
        }
    }
}

/// The properties an object schema (and its branches) declares; `None` if it declares none.
fn properties(doc: &Value, schema: &Value) -> Option<Vec<(String, Value)>> {
    let mut found: Vec<(String, Value)> = Vec::new();
    let mut any = false;
    for branch in branches(doc, schema) {
        if let Some(declared) = branch.get("properties").and_then(Value::as_object) {
            any = true;
            for (name, property) in declared {
                if !found.iter().any(|(known, _)| known == name) {
                    found.push((name.clone(), property.clone()));
                }
            }
        }
    }
    any.then_some(found)
}

/// Adds a `default` problem-details response to every operation that has none.
fn add_default_problem(doc: &mut OpenApi) {
    for item in doc.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            operation
                .responses
                .responses
                .entry("default".to_owned())
                .or_insert_with(|| {
                    RefOr::T(
                        ResponseBuilder::new()
                            .description(
                                "An error, as problem details (RFC 9457): 400 bad input \
                                 (`field` names it), 401 no or bad token, 403 not allowed, \
                                 404, 405, 409, 413, 415, 422, 429 and 503 (with \
                                 `Retry-After`), 500",
                            )
                            .content(
                                PROBLEM_JSON,
                                Content::new(Some(Ref::from_schema_name("Problem"))),
                            )
                            .build(),
                    )
                });
        }
    }
}

/// The bearer-JWT security scheme.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "HS256 JWT signed with `JWL_JWT_SECRET` (`jwl token` issues one); `sub` is \
                         the customer or courier id, `scope` any of `orders:write`, \
                         `orders:read`, `couriers:write`, `admin`",
                    ))
                    .build(),
            ),
        );
    }
}

/// What the edge serves on every listener.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Jiangwanli",
        description = "Order, payment, inventory, fulfillment and dispatch: the HTTP API of the \
                       services this listener serves. Errors are problem details \
                       (`application/problem+json`); every response carries `X-Request-ID`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(healthz, readyz, openapi_json),
    components(schemas(Problem, Status)),
    modifiers(&BearerScheme),
    tags(
        (name = "edge", description = "Health, readiness, metrics and this document"),
        (name = "order", description = "Placing, reading and cancelling orders"),
        (name = "payment", description = "Payments (admin)"),
        (name = "inventory", description = "Stock (admin)"),
        (name = "fulfillment", description = "Waybills (admin)"),
        (name = "dispatch", description = "Couriers: positions and deliveries"),
    ),
)]
struct EdgeApi;

/// `/metrics`, when on the public listener.
#[derive(utoipa::OpenApi)]
#[openapi(paths(metrics))]
struct MetricsApi;

/// The body of `/healthz` and of a ready `/readyz`.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
struct Status {
    /// `ok` (`/healthz`) or `ready` (`/readyz`).
    status: String,
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "edge", responses(
    (status = 200, description = "The process is alive", body = Status),
))]
#[allow(dead_code)]
fn healthz() {}

/// Readiness: every database pool and the broker answer, and the events stream is available.
#[utoipa::path(get, path = "/readyz", tag = "edge", responses(
    (status = 200, description = "Ready", body = Status),
    (status = 503, description = "Not ready (the failed check is logged, not shown)",
     body = Problem, content_type = "application/problem+json"),
))]
#[allow(dead_code)]
fn readyz() {}

/// Prometheus metrics (unless `JWL_METRICS_ADDR` gives them a listener of their own).
#[utoipa::path(get, path = "/metrics", tag = "edge", responses(
    (status = 200, description = "Prometheus text format", body = String,
     content_type = "text/plain"),
))]
#[allow(dead_code)]
fn metrics() {}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "edge", responses(
    (status = 200, description = "The OpenAPI 3.1 document", body = Object),
))]
#[allow(dead_code)]
fn openapi_json() {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_edge_document_is_openapi_3_1_with_a_default_problem_everywhere() {
        let doc = document([], MetricsOn::Public);
        let text = serde_json::to_value(&doc).unwrap();
        assert!(text["openapi"].as_str().unwrap().starts_with("3.1"));
        assert_eq!(
            operations(&doc),
            [
                ("GET", "/healthz"),
                ("GET", "/metrics"),
                ("GET", "/openapi.json"),
                ("GET", "/readyz")
            ]
            .map(|(m, p)| (m.to_owned(), p.to_owned()))
            .into()
        );
        assert!(
            text["paths"]["/healthz"]["get"]["responses"]["default"]["content"][PROBLEM_JSON]
                .is_object()
        );
        assert_eq!(
            text["components"]["securitySchemes"][BEARER]["scheme"],
            "bearer"
        );
        let without = document([], MetricsOn::Separate);
        assert!(!operations(&without).contains(&("GET".to_owned(), "/metrics".to_owned())));
    }

    #[test]
    fn the_problem_schema_has_every_field_of_a_problem() {
        let doc = document([], MetricsOn::Public);
        let problem = Problem::new(axum::http::StatusCode::BAD_REQUEST, "bad")
            .with_field(Some("qty".to_owned()));
        let sample = serde_json::to_value(problem).unwrap();
        assert_eq!(
            field_mismatches(&doc, "Problem", &sample),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_field_missing_from_the_schema_is_found() {
        let doc = document([], MetricsOn::Public);
        let sample = json!({"type": "t", "title": "T", "status": 400, "detail": "d",
                            "field": "f", "extra": 1});
        assert_eq!(
            field_mismatches(&doc, "Problem", &sample),
            vec!["Problem.extra: not in the schema".to_owned()]
        );
        let short = json!({"type": "t", "title": "T", "status": 400, "detail": "d"});
        assert_eq!(
            field_mismatches(&doc, "Problem", &short),
            vec!["Problem.field: in the schema, not in the type".to_owned()]
        );
    }
}
