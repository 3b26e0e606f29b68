//! The problem-details rendering of every `ApiError` variant.

mod common;

use axum::body::to_bytes;
use axum::http::header;
use axum::response::IntoResponse;
use jwl_service_kit::ApiError;
use serde_json::{Value, json};

async fn render(error: ApiError) -> (axum::http::Response<()>, Value) {
    let (parts, body) = error.into_response().into_parts();
    let bytes = to_bytes(body, 1 << 16).await.unwrap();
    let response = axum::http::Response::from_parts(parts, ());
    let json = common::problem(&response, &bytes, response.status().as_u16());
    (response, json)
}

#[tokio::test]
async fn bad_request_names_the_field() {
    let (_, body) = render(ApiError::bad_field("items[0].qty", "must be positive")).await;
    assert_eq!(
        body,
        json!({
            "type": "https://jiangwanli.dev/problems/bad-request",
            "title": "Bad Request",
            "status": 400,
            "detail": "must be positive",
            "field": "items[0].qty",
        })
    );
    let (_, body) = render(ApiError::bad_request("no field")).await;
    assert!(
        body.get("field").is_none(),
        "field is omitted when none is at fault: {body}"
    );
}

#[tokio::test]
async fn each_variant_has_its_status_and_type() {
    let cases = [
        (ApiError::PayloadTooLarge, 413, "payload-too-large"),
        (
            ApiError::UnsupportedMediaType("json only".into()),
            415,
            "unsupported-media-type",
        ),
        (
            ApiError::Unauthorized("no token".into()),
            401,
            "unauthorized",
        ),
        (ApiError::Forbidden("no scope".into()), 403, "forbidden"),
        (ApiError::NotFound("no order".into()), 404, "not-found"),
        (ApiError::Conflict("terminal".into()), 409, "conflict"),
        (
            ApiError::Unprocessable("key reused".into()),
            422,
            "unprocessable-entity",
        ),
        (
            ApiError::unavailable(2, "db down"),
            503,
            "service-unavailable",
        ),
        (ApiError::internal("boom"), 500, "internal-server-error"),
    ];
    for (error, status, kind) in cases {
        let (response, body) = render(error).await;
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(
            body["type"],
            format!("https://jiangwanli.dev/problems/{kind}")
        );
    }
}

#[tokio::test]
async fn unauthorized_challenges_with_bearer() {
    let (response, body) = render(ApiError::Unauthorized("missing bearer token".into())).await;
    assert_eq!(body["detail"], "missing bearer token");
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .unwrap()
        .to_str()
        .unwrap();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
}

#[tokio::test]
async fn unavailable_sets_retry_after() {
    let (response, body) = render(ApiError::unavailable(2, "database restarting")).await;
    assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "2");
    assert_eq!(body["detail"], "database restarting");
}

#[tokio::test]
async fn internal_errors_are_not_leaked() {
    let (_, body) = render(ApiError::internal("password=hunter2 in connection string")).await;
    assert!(!body.to_string().contains("hunter2"), "{body}");
    assert_eq!(body["detail"], "an internal error occurred");
}

#[tokio::test]
async fn database_errors_map_to_unavailable_or_internal() {
    let (response, _) = render(ApiError::from(sqlx::Error::PoolTimedOut)).await;
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key(header::RETRY_AFTER));
    let (response, body) = render(ApiError::from(sqlx::Error::ColumnNotFound(
        "secret_col".into(),
    )))
    .await;
    assert_eq!(response.status().as_u16(), 500);
    assert!(!body.to_string().contains("secret_col"));
}
