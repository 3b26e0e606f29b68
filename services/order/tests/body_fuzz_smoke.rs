//! The CI smoke of the `order_body` fuzz target (`fuzz/`, run at length by `scripts/fuzz`): the
//! body of `POST /v1/orders` as order intake reads it, from arbitrary bytes, from arbitrary JSON
//! of roughly the right shape, and from a valid body with one value replaced. Reading never
//! panics; an accepted body's canonical form is accepted and is its own canonical form; a
//! refused one is a 400 naming what is wrong.

use axum::http::StatusCode;
use axum::response::IntoResponse;
use jwl_order::check_order_body;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::{Value, json};

fn valid() -> Value {
    json!({
        "items": [{"sku": "sku-1", "qty": 2, "unit_price_cents": 1299}],
        "pickup": {"lat": 31.2304, "lon": 121.4737},
        "dropoff": {"lat": 31.2243, "lon": 121.4768},
        "payment_token": "tok_ok",
    })
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("items".to_owned()),
                    Just("sku".to_owned()),
                    Just("qty".to_owned()),
                    Just("lat".to_owned()),
                    ".{0,6}".prop_map(String::from),
                ],
                inner,
                0..4
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A valid body with the value at one path replaced.
fn one_value_replaced() -> impl Strategy<Value = Vec<u8>> {
    let paths: &[&[&str]] = &[
        &["items"],
        &["items", "0"],
        &["items", "0", "sku"],
        &["items", "0", "qty"],
        &["items", "0", "unit_price_cents"],
        &["pickup"],
        &["pickup", "lat"],
        &["dropoff", "lon"],
        &["payment_token"],
    ];
    (prop::sample::select(paths.to_vec()), json_value()).prop_map(|(path, replacement)| {
        let mut body = valid();
        let mut slot = &mut body;
        for key in path {
            slot = match key.parse::<usize>() {
                Ok(index) => &mut slot[index],
                Err(_) => &mut slot[*key],
            };
        }
        *slot = replacement;
        serde_json::to_vec(&body).unwrap_or_default()
    })
}

fn check(body: &[u8]) -> Result<(), TestCaseError> {
    match check_order_body(body) {
        Ok(canonical) => {
            let again = check_order_body(canonical.as_bytes()).map_err(|e| e.to_string());
            prop_assert_eq!(again, Ok(canonical));
        }
        Err(problem) => {
            prop_assert_eq!(problem.into_response().status(), StatusCode::BAD_REQUEST);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..256)) {
        check(&body)?;
    }

    #[test]
    fn arbitrary_json(value in json_value()) {
        check(&serde_json::to_vec(&value).unwrap_or_default())?;
    }

    #[test]
    fn a_valid_body_with_one_value_replaced(body in one_value_replaced()) {
        check(&body)?;
    }
}

#[test]
fn the_valid_body_is_accepted() {
    let body = serde_json::to_vec(&valid()).unwrap_or_default();
    assert!(check_order_body(&body).is_ok());
}

/// Coordinates with every exponent a JSON number can carry: the canonical body reads back as
/// itself (found by `a_valid_body_with_one_value_replaced`: a latitude near 1e-228 came back one
/// unit in the last place off while serde_json parsed floats with its fast, inexact path).
#[test]
fn coordinates_of_any_magnitude_read_back_as_themselves() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut tried = 0;
    for exponent in -300..=1 {
        for _ in 0..40 {
            let mantissa = proptest::num::f64::POSITIVE
                .new_tree(&mut runner)
                .map(|tree| tree.current())
                .unwrap_or(1.0);
            let lat = (mantissa.fract() + 1.0) * 10f64.powi(exponent);
            let mut body = valid();
            body["pickup"]["lat"] = json!(lat);
            let body = serde_json::to_vec(&body).unwrap_or_default();
            if let Ok(canonical) = check_order_body(&body) {
                tried += 1;
                assert_eq!(
                    check_order_body(canonical.as_bytes()).map_err(|e| e.to_string()),
                    Ok(canonical.clone()),
                    "latitude {lat:e}"
                );
            }
        }
    }
    assert!(tried > 10_000, "only {tried} bodies were accepted");
}
