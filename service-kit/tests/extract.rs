//! The `Json` and `Path` extractors reject bad input with problems naming the field.

mod common;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use axum::routing::{get, post};
use jwl_service_kit::extract::{Json, Path};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

#[derive(Debug, Deserialize, Serialize)]
struct NewOrder {
    items: Vec<Item>,
    payment_token: String,
}

#[derive(Debug, Deserialize, Serialize)]
struct Item {
    sku: String,
    qty: u32,
}

fn app() -> Router {
    common::edge(
        Router::new()
            .route(
                "/orders",
                post(|Json(order): Json<NewOrder>| async move { Json(order) }),
            )
            .route(
                "/orders/{id}",
                get(|Path(id): Path<Uuid>| async move { id.to_string() }),
            )
            .route(
                "/couriers/{id}/deliveries/{waybill}",
                get(
                    |Path((courier, waybill)): Path<(String, Uuid)>| async move {
                        format!("{courier}/{waybill}")
                    },
                ),
            ),
    )
}

#[tokio::test]
async fn valid_body_is_parsed_and_unknown_fields_are_ignored() {
    let body = json!({"items": [{"sku": "A", "qty": 2, "colour": "red"}], "payment_token": "tok_ok", "extra": 1});
    let (response, bytes) =
        common::send(&app(), common::post_json("/orders", body.to_string())).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    let echoed: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        echoed,
        json!({"items": [{"sku": "A", "qty": 2}], "payment_token": "tok_ok"})
    );
}

#[tokio::test]
async fn wrong_type_names_the_json_path() {
    let body = json!({"items": [{"sku": "A", "qty": 1}, {"sku": "B", "qty": "two"}], "payment_token": "t"});
    let (response, bytes) =
        common::send(&app(), common::post_json("/orders", body.to_string())).await;
    let problem = common::problem(&response, &bytes, 400);
    assert_eq!(problem["field"], "items[1].qty");
    assert!(
        problem["detail"].as_str().unwrap().contains("items[1].qty"),
        "{problem}"
    );
}

#[tokio::test]
async fn negative_quantity_names_the_json_path() {
    let body = json!({"items": [{"sku": "A", "qty": -1}], "payment_token": "t"});
    let (response, bytes) =
        common::send(&app(), common::post_json("/orders", body.to_string())).await;
    assert_eq!(
        common::problem(&response, &bytes, 400)["field"],
        "items[0].qty"
    );
}

#[tokio::test]
async fn missing_field_is_named() {
    let body = json!({"items": [{"sku": "A"}], "payment_token": "t"});
    let (response, bytes) =
        common::send(&app(), common::post_json("/orders", body.to_string())).await;
    assert_eq!(
        common::problem(&response, &bytes, 400)["field"],
        "items[0].qty"
    );

    let body = json!({"items": []});
    let (response, bytes) =
        common::send(&app(), common::post_json("/orders", body.to_string())).await;
    assert_eq!(
        common::problem(&response, &bytes, 400)["field"],
        "payment_token"
    );
}

#[tokio::test]
async fn malformed_json_is_a_bad_request() {
    let (response, bytes) =
        common::send(&app(), common::post_json("/orders", "{\"items\": [")).await;
    let problem = common::problem(&response, &bytes, 400);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON"),
        "{problem}"
    );

    let (response, bytes) = common::send(&app(), common::post_json("/orders", "{} trailing")).await;
    common::problem(&response, &bytes, 400);
}

#[tokio::test]
async fn non_json_content_type_is_unsupported() {
    let request = Request::post("/orders")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("{}"))
        .unwrap();
    let (response, bytes) = common::send(&app(), request).await;
    common::problem(&response, &bytes, 415);

    let request = Request::post("/orders").body(Body::from("{}")).unwrap();
    let (response, bytes) = common::send(&app(), request).await;
    common::problem(&response, &bytes, 415);
}

#[tokio::test]
async fn bad_path_parameter_is_named() {
    let (response, bytes) = common::get(&app(), "/orders/not-a-uuid").await;
    let problem = common::problem(&response, &bytes, 400);
    assert_eq!(problem["field"], "id");

    let id = Uuid::now_v7();
    let (response, bytes) = common::get(&app(), &format!("/orders/{id}")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(bytes, id.to_string().as_bytes());
}

#[tokio::test]
async fn bad_parameter_among_several_is_a_bad_request() {
    let (response, bytes) = common::get(&app(), "/couriers/c-1/deliveries/nope").await;
    common::problem(&response, &bytes, 400);
}
