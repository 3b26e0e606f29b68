//! The auth matrix: every HTTP route of every service × {no token, another scheme, a malformed
//! token, a bad signature, an expired token, the wrong scope or role, another customer's or
//! courier's resource} → the status the API defines (401, 403, or 404 for another customer's
//! order), each a problem-details body; and the rightful caller gets through (so the refusals
//! are about who calls, not about the request).
//!
//! The five services' real routers (`jwl_<service>::routes`, as `jwl up` merges them) behind
//! the real edge, on a real PostgreSQL database and NATS. The routes come from the routers
//! themselves ([`ListedRouter::routes`]): a route of a service missing from the table below
//! fails the test, as does a row of the table that no service routes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use jwl_events::{OrderId, Service, WaybillId};
use jwl_outbox::transport::Broker;
use jwl_outbox::{JetStreamBroker, MessagingSettings};
use jwl_service_kit::auth::{JwtKeys, Scope};
use jwl_service_kit::http::{ListedRoute, ListedRouter, Readiness, RouteMethod, edge};
use jwl_service_kit::{ServiceContext, Settings};
use serde_json::{Value, json};

const SECRET: &[u8] = b"auth-matrix-secret-0123456789abcdef0123";
const OTHER_SECRET: &[u8] = b"not-the-deployment-secret-0123456789abc";
const TTL: Duration = Duration::from_secs(600);

const CUSTOMER: &str = "cust-a";
const OTHER_CUSTOMER: &str = "cust-b";
const COURIER: &str = "courier-a";
const OTHER_COURIER: &str = "courier-b";
const SKU: &str = "SKU-MATRIX-1";

/// Who calls: a subject and its scopes.
#[derive(Debug, Clone, Copy)]
struct As(&'static str, &'static [Scope]);

const ADMIN: As = As("ops", &[Scope::Admin]);
/// Every scope but admin: not enough for the admin-only routes.
const EVERYTHING_BUT_ADMIN: As = As(
    CUSTOMER,
    &[Scope::OrdersWrite, Scope::OrdersRead, Scope::CouriersWrite],
);

/// One route of the matrix, with a concrete request and its callers.
struct Row {
    route: ListedRoute,
    uri: String,
    body: Option<Value>,
    /// The caller the route is for, and what it gets (its success, or a domain answer such as
    /// `404` for a payment that does not exist).
    rightful: (As, StatusCode),
    /// A caller of the wrong scope or role: always `403`.
    wrong_role: As,
    /// Another customer or courier on this one's resource, and the answer; `None` where the
    /// route has no owner (admin only, placing an order).
    other_owner: Option<(As, StatusCode)>,
}

/// What a case sends as `Authorization`.
#[derive(Debug, Clone)]
enum Credential {
    None,
    Raw(&'static str),
    Token(String),
}

struct Matrix {
    app: Router,
    keys: JwtKeys,
    routes: Vec<ListedRoute>,
    _nats: jwl_testkit::TestNats,
}

/// The five services on one database (a schema each) and one broker, their routes merged
/// behind the edge as `jwl up` does.
async fn start() -> anyhow::Result<Matrix> {
    let database = jwl_testkit::database().await?;
    let nats = jwl_testkit::nats().await?;
    let broker = JetStreamBroker::connect(nats.url()).await?;
    // the streams a running system has (the console's routes read them)
    broker.ensure_streams(&MessagingSettings::default()).await?;
    let broker: Arc<dyn Broker> = Arc::new(broker);
    let settings = Arc::new(Settings::default());
    let mut pools = Vec::new();
    let mut routers: Vec<ListedRouter> = Vec::new();
    for service in Service::ALL {
        let (schema, routes): (&str, fn(&ServiceContext) -> ListedRouter) = match service {
            Service::Order => (jwl_order::SCHEMA, jwl_order::routes),
            Service::Payment => (jwl_payment::SCHEMA, jwl_payment::routes),
            Service::Inventory => (jwl_inventory::SCHEMA, jwl_inventory::routes),
            Service::Fulfillment => (jwl_fulfillment::SCHEMA, jwl_fulfillment::routes),
            Service::Dispatch => (jwl_dispatch::SCHEMA, jwl_dispatch::routes),
        };
        let pool = jwl_service_kit::db::connect(database.url(), schema).await?;
        match service {
            Service::Order => jwl_order::migrate(&pool).await?,
            Service::Payment => jwl_payment::migrate(&pool).await?,
            Service::Inventory => jwl_inventory::migrate(&pool).await?,
            Service::Fulfillment => jwl_fulfillment::migrate(&pool).await?,
            Service::Dispatch => jwl_dispatch::migrate(&pool).await?,
        }
        let ctx = ServiceContext::new(
            service,
            pool.clone(),
            broker.clone(),
            MessagingSettings::default(),
            settings.clone(),
        );
        routers.push(routes(&ctx));
        pools.push(pool);
    }
    let routes: Vec<ListedRoute> = routers
        .iter()
        .flat_map(|router| router.routes().iter().copied())
        .collect();
    let merged = routers.into_iter().fold(Router::new(), |merged, router| {
        merged.merge(router.into_router())
    });
    let keys = JwtKeys::new(SECRET);
    let app = edge(merged, keys.clone(), Readiness::new(pools, broker));
    Ok(Matrix {
        app,
        keys,
        routes,
        _nats: nats,
    })
}

/// The answer to one request: status, headers and body.
struct Answer {
    status: StatusCode,
    content_type: Option<String>,
    challenge: bool,
    json: Value,
}

impl Matrix {
    fn token(&self, who: As) -> anyhow::Result<String> {
        Ok(self.keys.issue(who.0, who.1, TTL)?)
    }

    async fn send(
        &self,
        method: RouteMethod,
        uri: &str,
        body: Option<&Value>,
        credential: &Credential,
    ) -> anyhow::Result<Answer> {
        let mut request = Request::builder().method(method.method()).uri(uri);
        match credential {
            Credential::None => {}
            Credential::Raw(value) => request = request.header(header::AUTHORIZATION, *value),
            Credential::Token(token) => {
                request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(body)?))?,
            None => request.body(Body::empty())?,
        };
        let reply = jwl_testkit::service::send(&self.app, request).await?;
        Ok(Answer {
            status: reply.status,
            content_type: reply.header("content-type").map(str::to_owned),
            challenge: reply.headers.contains_key(header::WWW_AUTHENTICATE),
            json: reply.json,
        })
    }

    /// Sends `request` as `who` and asks for `expected`.
    async fn expect(
        &self,
        row: &Row,
        case: &str,
        credential: &Credential,
        expected: StatusCode,
    ) -> anyhow::Result<Option<String>> {
        let answer = self
            .send(row.route.method, &row.uri, row.body.as_ref(), credential)
            .await?;
        let mut wrong = Vec::new();
        if answer.status != expected {
            wrong.push(format!("status {} (expected {expected})", answer.status));
        }
        if answer.status.is_client_error() || answer.status.is_server_error() {
            if answer.content_type.as_deref() != Some("application/problem+json") {
                wrong.push(format!("content type {:?}", answer.content_type));
            }
            if answer.json["status"] != answer.status.as_u16() || !answer.json["title"].is_string()
            {
                wrong.push(format!("not a problem body: {}", answer.json));
            }
        }
        if answer.status == StatusCode::UNAUTHORIZED && !answer.challenge {
            wrong.push("no WWW-Authenticate".to_owned());
        }
        Ok((!wrong.is_empty()).then(|| {
            format!(
                "{} ({}) {case}: {}; body {}",
                row.route,
                row.uri,
                wrong.join(", "),
                answer.json
            )
        }))
    }
}

/// A token signed with the deployment's secret whose `exp` passed two minutes ago.
fn expired_token(who: As) -> anyhow::Result<String> {
    let now = jsonwebtoken::get_current_timestamp();
    let scope: Vec<&str> = who.1.iter().map(|s| s.as_str()).collect();
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": who.0, "scope": scope.join(" "), "iat": now - 600, "exp": now - 120}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )?)
}

fn route(method: RouteMethod, path: &'static str) -> ListedRoute {
    ListedRoute { method, path }
}

/// The table: every route of every service.
fn rows(order: OrderId, waybill: WaybillId) -> Vec<Row> {
    use RouteMethod::{Get, Post, Put};
    let customer = As(CUSTOMER, &[Scope::OrdersWrite, Scope::OrdersRead]);
    let other_customer = As(OTHER_CUSTOMER, &[Scope::OrdersWrite, Scope::OrdersRead]);
    let courier = As(COURIER, &[Scope::CouriersWrite]);
    let other_courier = As(OTHER_COURIER, &[Scope::CouriersWrite]);
    let order_body = json!({
        "items": [{"sku": SKU, "qty": 1, "unit_price_cents": 1299}],
        "pickup": {"lat": 31.2304, "lon": 121.4737},
        "dropoff": {"lat": 31.2243, "lon": 121.4768},
        "payment_token": "tok_ok"
    });
    let location = json!({"lat": 31.2304, "lon": 121.4737});
    // every service's `GET /v1/holds/<service>/{order_id}`: nothing held, an empty answer
    let holds = Service::ALL.map(|service| Row {
        route: route(Get, jwl_service_kit::http::holds::path(service)),
        uri: format!("/v1/holds/{service}/{order}"),
        body: None,
        rightful: (ADMIN, StatusCode::OK),
        wrong_role: EVERYTHING_BUT_ADMIN,
        other_owner: None,
    });
    let mut rows = vec![
        Row {
            route: route(Post, "/v1/orders"),
            uri: "/v1/orders".to_owned(),
            body: Some(order_body),
            rightful: (As(CUSTOMER, &[Scope::OrdersWrite]), StatusCode::CREATED),
            wrong_role: As(CUSTOMER, &[Scope::OrdersRead, Scope::CouriersWrite]),
            other_owner: None,
        },
        Row {
            route: route(Get, "/v1/orders/{id}"),
            uri: format!("/v1/orders/{order}"),
            body: None,
            rightful: (As(CUSTOMER, &[Scope::OrdersRead]), StatusCode::OK),
            wrong_role: As(CUSTOMER, &[Scope::OrdersWrite, Scope::CouriersWrite]),
            // another customer's order is reported missing: ids cannot be probed
            other_owner: Some((other_customer, StatusCode::NOT_FOUND)),
        },
        Row {
            route: route(Post, "/v1/orders/{id}/cancel"),
            uri: format!("/v1/orders/{order}/cancel"),
            body: None,
            rightful: (customer, StatusCode::ACCEPTED),
            wrong_role: As(CUSTOMER, &[Scope::OrdersRead, Scope::CouriersWrite]),
            other_owner: Some((other_customer, StatusCode::NOT_FOUND)),
        },
        Row {
            route: route(Get, "/v1/console/orders/{id}"),
            uri: format!("/v1/console/orders/{order}"),
            body: None,
            rightful: (ADMIN, StatusCode::OK),
            wrong_role: EVERYTHING_BUT_ADMIN,
            other_owner: None,
        },
        Row {
            route: route(Get, "/v1/console/dead-letters"),
            uri: "/v1/console/dead-letters".to_owned(),
            body: None,
            rightful: (ADMIN, StatusCode::OK),
            wrong_role: EVERYTHING_BUT_ADMIN,
            other_owner: None,
        },
        Row {
            route: route(Post, "/v1/console/dead-letters/{seq}/redrive"),
            uri: "/v1/console/dead-letters/1/redrive".to_owned(),
            body: None,
            // there is no dead letter 1
            rightful: (ADMIN, StatusCode::NOT_FOUND),
            wrong_role: EVERYTHING_BUT_ADMIN,
            other_owner: None,
        },
        Row {
            route: route(Post, "/v1/console/dead-letters/{seq}/discard"),
            uri: "/v1/console/dead-letters/1/discard".to_owned(),
            body: Some(json!({"reason": "auth matrix"})),
            // there is no dead letter 1
            rightful: (ADMIN, StatusCode::NOT_FOUND),
            wrong_role: EVERYTHING_BUT_ADMIN,
            other_owner: None,
        },
        Row {
            route: route(Get, "/v1/console/stuck"),
            uri: "/v1/console/stuck?older_than_secs=0".to_owned(),
            body: None,
            rightful: (ADMIN, StatusCode::OK),
            wrong_role: EVERYTHING_BUT_ADMIN,
            other_owner: None,
        },
        Row {
            route: route(Get, "/v1/console/figures"),
            uri: "/v1/console/figures".to_owned(),
            body: None,
            rightful: (ADMIN, StatusCode::OK),
            wrong_role: EVERYTHING_BUT_ADMIN,
            other_owner: None,
        },
        Row {
            route: route(Put, "/v1/stock/{sku}"),
            uri: format!("/v1/stock/{SKU}"),
            body: Some(json!({"on_hand": 100})),
            rightful: (ADMIN, StatusCode::OK),
            wrong_role: EVERYTHING_BUT_ADMIN,
            other_owner: None,
        },
        Row {
            route: route(Get, "/v1/stock/{sku}"),
            uri: format!("/v1/stock/{SKU}"),
            body: None,
            rightful: (ADMIN, StatusCode::OK),
            wrong_role: EVERYTHING_BUT_ADMIN,
            other_owner: None,
        },
        Row {
            route: route(Get, "/v1/reservations/{order_id}"),
            uri: format!("/v1/reservations/{order}"),
            body: None,
            // no consumer runs here: inventory has not heard of the order
            rightful: (ADMIN, StatusCode::NOT_FOUND),
            wrong_role: EVERYTHING_BUT_ADMIN,
            other_owner: None,
        },
        Row {
            route: route(Get, "/v1/payments/{order_id}"),
            uri: format!("/v1/payments/{order}"),
            body: None,
            // no consumer runs here: the order has no payment yet
            rightful: (ADMIN, StatusCode::NOT_FOUND),
            wrong_role: EVERYTHING_BUT_ADMIN,
            other_owner: None,
        },
        Row {
            route: route(Get, "/v1/payment-processor"),
            uri: "/v1/payment-processor".to_owned(),
            body: None,
            rightful: (ADMIN, StatusCode::OK),
            wrong_role: EVERYTHING_BUT_ADMIN,
            other_owner: None,
        },
        Row {
            route: route(Put, "/v1/payment-processor"),
            uri: "/v1/payment-processor".to_owned(),
            // no fault: the healthy processor
            body: Some(json!({})),
            rightful: (ADMIN, StatusCode::OK),
            wrong_role: EVERYTHING_BUT_ADMIN,
            other_owner: None,
        },
        Row {
            route: route(Get, "/v1/waybills/{id}"),
            uri: format!("/v1/waybills/{waybill}"),
            body: None,
            rightful: (ADMIN, StatusCode::NOT_FOUND),
            wrong_role: EVERYTHING_BUT_ADMIN,
            other_owner: None,
        },
        Row {
            route: route(Get, "/v1/couriers/{id}"),
            uri: format!("/v1/couriers/{COURIER}"),
            body: None,
            rightful: (courier, StatusCode::OK),
            // a customer is not a courier
            wrong_role: customer,
            other_owner: Some((other_courier, StatusCode::FORBIDDEN)),
        },
        Row {
            route: route(Put, "/v1/couriers/{id}/location"),
            uri: format!("/v1/couriers/{COURIER}/location"),
            body: Some(location),
            rightful: (courier, StatusCode::OK),
            // the courier itself, without `couriers:write`
            wrong_role: As(COURIER, &[Scope::OrdersWrite, Scope::OrdersRead]),
            other_owner: Some((other_courier, StatusCode::FORBIDDEN)),
        },
        Row {
            route: route(Post, "/v1/couriers/{id}/deliveries/{waybill_id}"),
            uri: format!("/v1/couriers/{COURIER}/deliveries/{waybill}"),
            body: None,
            // no such waybill: past authentication and authorisation
            rightful: (courier, StatusCode::NOT_FOUND),
            wrong_role: As(COURIER, &[Scope::OrdersWrite, Scope::OrdersRead]),
            other_owner: Some((other_courier, StatusCode::FORBIDDEN)),
        },
    ];
    rows.extend(holds);
    rows
}

#[tokio::test]
async fn every_route_refuses_whoever_it_is_not_for() -> anyhow::Result<()> {
    let matrix = start().await?;

    // resources to be refused on: an order of CUSTOMER, COURIER's position, SKU's stock
    let placed = matrix
        .send(
            RouteMethod::Post,
            "/v1/orders",
            Some(&json!({
                "items": [{"sku": SKU, "qty": 1, "unit_price_cents": 1299}],
                "pickup": {"lat": 31.2304, "lon": 121.4737},
                "dropoff": {"lat": 31.2243, "lon": 121.4768},
                "payment_token": "tok_ok"
            })),
            &Credential::Token(matrix.token(As(CUSTOMER, &[Scope::OrdersWrite]))?),
        )
        .await?;
    anyhow::ensure!(placed.status == StatusCode::CREATED, "{}", placed.json);
    let order = OrderId::parse(placed.json["order_id"].as_str().unwrap_or_default())?;
    for (uri, body, who) in [
        (
            format!("/v1/couriers/{COURIER}/location"),
            json!({"lat": 31.2304, "lon": 121.4737}),
            As(COURIER, &[Scope::CouriersWrite]),
        ),
        (format!("/v1/stock/{SKU}"), json!({"on_hand": 100}), ADMIN),
    ] {
        let answer = matrix
            .send(
                RouteMethod::Put,
                &uri,
                Some(&body),
                &Credential::Token(matrix.token(who)?),
            )
            .await?;
        anyhow::ensure!(answer.status == StatusCode::OK, "{uri}: {}", answer.json);
    }
    let rows = rows(order, WaybillId::new());

    // the table and the routers agree, both ways
    let routed: BTreeSet<ListedRoute> = matrix.routes.iter().copied().collect();
    let tabled: BTreeSet<ListedRoute> = rows.iter().map(|row| row.route).collect();
    assert_eq!(rows.len(), tabled.len(), "a route is twice in the table");
    let missing: Vec<String> = routed.difference(&tabled).map(|r| r.to_string()).collect();
    assert!(
        missing.is_empty(),
        "routes missing from the auth matrix: {missing:?}"
    );
    let unrouted: Vec<String> = tabled.difference(&routed).map(|r| r.to_string()).collect();
    assert!(
        unrouted.is_empty(),
        "rows for routes no service has: {unrouted:?}"
    );

    let foreign = JwtKeys::new(OTHER_SECRET);
    let mut failures = Vec::new();
    let mut checked = 0;
    for row in &rows {
        let (rightful, success) = row.rightful;
        let mut cases = vec![
            ("no token", Credential::None, StatusCode::UNAUTHORIZED),
            (
                "another scheme",
                Credential::Raw("Basic Y3VzdC1hOnB3"),
                StatusCode::UNAUTHORIZED,
            ),
            (
                "malformed token",
                Credential::Raw("Bearer not.a-jwt"),
                StatusCode::UNAUTHORIZED,
            ),
            (
                "bad signature",
                Credential::Token(foreign.issue(rightful.0, rightful.1, TTL)?),
                StatusCode::UNAUTHORIZED,
            ),
            (
                "expired",
                Credential::Token(expired_token(rightful)?),
                StatusCode::UNAUTHORIZED,
            ),
            (
                "wrong scope or role",
                Credential::Token(matrix.token(row.wrong_role)?),
                StatusCode::FORBIDDEN,
            ),
        ];
        if let Some((other, status)) = row.other_owner {
            cases.push((
                "another's resource",
                Credential::Token(matrix.token(other)?),
                status,
            ));
        }
        // last: it may change the resource (an order placed, a cancellation requested)
        cases.push((
            "the rightful caller",
            Credential::Token(matrix.token(rightful)?),
            success,
        ));
        for (case, credential, expected) in &cases {
            checked += 1;
            if let Some(failure) = matrix.expect(row, case, credential, *expected).await? {
                failures.push(failure);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} cases answered wrongly:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}
