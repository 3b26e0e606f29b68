//! JWT issue/verify and the `Caller` extractor's 401/403 answers.

mod common;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use axum::routing::get;
use jwl_service_kit::ApiResult;
use jwl_service_kit::auth::{AuthError, Caller, Claims, JwtKeys, Scope};

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn issued_tokens_verify_with_their_claims() {
    let keys = common::keys();
    let token = keys
        .issue("customer-7", &[Scope::OrdersWrite, Scope::OrdersRead], HOUR)
        .unwrap();
    let claims = keys.verify(&token).unwrap();
    assert_eq!(claims.sub, "customer-7");
    assert_eq!(claims.scope, "orders:write orders:read");
    assert_eq!(claims.scopes(), vec![Scope::OrdersWrite, Scope::OrdersRead]);
    assert_eq!(claims.exp - claims.iat, 3600);
}

#[test]
fn tokens_signed_with_another_secret_are_invalid() {
    let token = JwtKeys::new(b"some-other-secret-of-enough-length!!")
        .issue("x", &[Scope::Admin], HOUR)
        .unwrap();
    assert!(matches!(
        common::keys().verify(&token),
        Err(AuthError::Invalid(_))
    ));
    assert!(matches!(
        common::keys().verify("not.a.jwt"),
        Err(AuthError::Invalid(_))
    ));
}

fn sign(claims: &Claims) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(common::SECRET),
    )
    .unwrap()
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

#[test]
fn expired_tokens_are_rejected() {
    let claims = Claims {
        sub: "x".into(),
        scope: "admin".into(),
        iat: now() - 120,
        exp: now() - 60,
        iss: None,
        aud: None,
    };
    assert!(matches!(
        common::keys().verify(&sign(&claims)),
        Err(AuthError::Expired)
    ));
}

#[test]
fn tokens_without_exp_are_rejected() {
    #[derive(serde::Serialize)]
    struct NoExp<'a> {
        sub: &'a str,
        scope: &'a str,
    }
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &NoExp {
            sub: "x",
            scope: "admin",
        },
        &jsonwebtoken::EncodingKey::from_secret(common::SECRET),
    )
    .unwrap();
    assert!(matches!(
        common::keys().verify(&token),
        Err(AuthError::Invalid(_))
    ));
}

#[test]
fn empty_subjects_are_refused() {
    assert!(matches!(
        common::keys().issue(" ", &[Scope::Admin], HOUR),
        Err(AuthError::EmptySubject)
    ));
}

fn app() -> Router {
    common::edge(Router::new().route(
        "/couriers/me",
        get(|caller: Caller| async move {
            caller.require(Scope::CouriersWrite)?;
            ApiResult::Ok(caller.subject)
        }),
    ))
}

fn with_token(token: &str) -> Request<Body> {
    Request::get("/couriers/me")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn caller_with_the_scope_gets_through() {
    let token = common::keys()
        .issue("courier-1", &[Scope::CouriersWrite], HOUR)
        .unwrap();
    let (response, body) = common::send(&app(), with_token(&token)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(body, b"courier-1");
}

#[tokio::test]
async fn admin_gets_through_everywhere() {
    let token = common::keys().issue("ops", &[Scope::Admin], HOUR).unwrap();
    let (response, _) = common::send(&app(), with_token(&token)).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn missing_bad_or_expired_tokens_are_401_with_a_challenge() {
    let expired = sign(&Claims {
        sub: "x".into(),
        scope: "admin".into(),
        iat: now() - 120,
        exp: now() - 60,
        iss: None,
        aud: None,
    });
    let foreign = JwtKeys::new(b"another-secret-entirely-0123456789")
        .issue("x", &[Scope::Admin], HOUR)
        .unwrap();
    let requests = [
        Request::get("/couriers/me").body(Body::empty()).unwrap(),
        Request::get("/couriers/me")
            .header(header::AUTHORIZATION, "Basic dXNlcjpwdw==")
            .body(Body::empty())
            .unwrap(),
        with_token("garbage"),
        with_token(&expired),
        with_token(&foreign),
    ];
    for request in requests {
        let (response, body) = common::send(&app(), request).await;
        common::problem(&response, &body, 401);
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
        assert!(common::request_id(&response).is_some());
    }
}

#[tokio::test]
async fn wrong_scope_is_403() {
    let token = common::keys()
        .issue("customer-1", &[Scope::OrdersWrite, Scope::OrdersRead], HOUR)
        .unwrap();
    let (response, body) = common::send(&app(), with_token(&token)).await;
    let problem = common::problem(&response, &body, 403);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("couriers:write")
    );
}
