//! Each way a message can be rejected by `decode`, with its own `DecodeError` variant.

mod common;

use common::*;
use jwl_events::*;

/// Encodes the sample of `ty`, applies `edit` to its headers, and decodes `payload` (or the
/// encoded payload when `None`).
fn decode_edited(
    ty: EventType,
    edit: impl FnOnce(&mut Vec<(String, String)>),
    payload: Option<&[u8]>,
) -> Result<Envelope, DecodeError> {
    let msg = encode(&sample(ty), HeaderStyle::Nats);
    let mut headers = msg.headers.clone();
    edit(&mut headers);
    decode(
        HeaderStyle::Nats,
        pairs(&headers),
        payload.unwrap_or(&msg.payload),
    )
}

fn without(name: &'static str) -> impl FnOnce(&mut Vec<(String, String)>) {
    move |headers| headers.retain(|(n, _)| n != name)
}

fn set(name: &'static str, value: &'static str) -> impl FnOnce(&mut Vec<(String, String)>) {
    move |headers| {
        let header = headers
            .iter_mut()
            .find(|(n, _)| n == name)
            .expect("header present");
        header.1 = value.to_owned();
    }
}

/// The sample's JSON data with `edit` applied.
fn edited_data(ty: EventType, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut data: serde_json::Value =
        serde_json::from_slice(&encode(&sample(ty), HeaderStyle::Nats).payload).unwrap();
    edit(&mut data);
    serde_json::to_vec(&data).unwrap()
}

#[test]
fn the_unedited_sample_decodes() {
    assert!(decode_edited(EventType::OrderCreated, |_| {}, None).is_ok());
}

#[test]
fn missing_required_attributes() {
    for (header, attribute) in [
        ("ce-specversion", "specversion"),
        ("ce-id", "id"),
        ("ce-type", "type"),
        ("ce-source", "source"),
        ("ce-subject", "subject"),
        ("ce-time", "time"),
        ("ce-dataschema", "dataschema"),
    ] {
        match decode_edited(EventType::PaymentCaptured, without(header), None) {
            Err(DecodeError::MissingAttribute(name)) => assert_eq!(name, attribute),
            other => panic!("without {header}: {other:?}"),
        }
    }
}

#[test]
fn malformed_attributes() {
    for (header, value, attribute) in [
        ("ce-id", "evt-1", "id"),
        ("ce-time", "yesterday", "time"),
        ("ce-subject", "order-1", "subject"),
        ("ce-causationid", "nope", "causationid"),
        ("ce-dataschema", "not a uri", "dataschema"),
        ("ce-source", "", "source"),
    ] {
        match decode_edited(EventType::PaymentCaptured, set(header, value), None) {
            Err(DecodeError::InvalidAttribute { name, .. }) => {
                assert_eq!(name, attribute, "{header}")
            }
            other => panic!("{header}={value:?}: {other:?}"),
        }
    }
}

#[test]
fn duplicate_attribute_header() {
    let result = decode_edited(
        EventType::PaymentCaptured,
        |h| h.push(("CE-Type".into(), "jwl.payment.voided".into())),
        None,
    );
    assert!(matches!(result, Err(DecodeError::DuplicateAttribute(name)) if name == "ce-type"));
}

#[test]
fn specversion_other_than_1_0() {
    let result = decode_edited(EventType::OrderCreated, set("ce-specversion", "0.3"), None);
    assert!(matches!(result, Err(DecodeError::UnsupportedSpecVersion(v)) if v == "0.3"));
}

#[test]
fn unknown_type() {
    let result = decode_edited(
        EventType::OrderCreated,
        set("ce-type", "jwl.order.shipped"),
        None,
    );
    assert!(matches!(result, Err(DecodeError::UnknownType(t)) if t == "jwl.order.shipped"));
}

#[test]
fn non_json_content_type() {
    let result = decode_edited(
        EventType::OrderCreated,
        set("content-type", "application/xml"),
        None,
    );
    assert!(
        matches!(result, Err(DecodeError::UnsupportedContentType(ct)) if ct == "application/xml")
    );
}

#[test]
fn unsupported_dataschema_version() {
    let result = decode_edited(
        EventType::OrderCreated,
        set("ce-dataschema", "urn:jwl:schema:jwl.order.created:v2"),
        None,
    );
    match result {
        Err(DecodeError::UnsupportedSchemaVersion {
            ty,
            found,
            supported,
        }) => {
            assert_eq!(ty, EventType::OrderCreated);
            assert_eq!(found, "urn:jwl:schema:jwl.order.created:v2");
            assert_eq!(supported, 1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn source_that_is_not_the_emitter() {
    for source in ["/jwl/payment", "/elsewhere"] {
        match decode_edited(EventType::OrderCreated, set("ce-source", source), None) {
            Err(DecodeError::WrongSource {
                ty,
                expected,
                found,
            }) => {
                assert_eq!(
                    (ty, expected, found.as_str()),
                    (EventType::OrderCreated, Service::Order, source)
                );
            }
            other => panic!("{source}: {other:?}"),
        }
    }
}

#[test]
fn data_that_does_not_parse() {
    let not_json = decode_edited(EventType::OrderCreated, |_| {}, Some(b"{\"order_id\":"));
    assert!(matches!(
        not_json,
        Err(DecodeError::InvalidData {
            ty: EventType::OrderCreated,
            ..
        })
    ));

    let wrong_type = edited_data(EventType::PaymentCaptured, |d| {
        d["amount_cents"] = "100".into()
    });
    let result = decode_edited(EventType::PaymentCaptured, |_| {}, Some(&wrong_type));
    assert!(
        matches!(result, Err(DecodeError::InvalidData { .. })),
        "{result:?}"
    );

    let missing = edited_data(EventType::PaymentCaptured, |d| {
        d.as_object_mut().unwrap().remove("amount_cents");
    });
    let result = decode_edited(EventType::PaymentCaptured, |_| {}, Some(&missing));
    assert!(
        matches!(result, Err(DecodeError::InvalidData { .. })),
        "{result:?}"
    );

    let bad_enum = edited_data(EventType::DispatchFailed, |d| {
        d["reason"] = "weather".into()
    });
    let result = decode_edited(EventType::DispatchFailed, |_| {}, Some(&bad_enum));
    assert!(
        matches!(result, Err(DecodeError::InvalidData { .. })),
        "{result:?}"
    );

    let negative_qty = edited_data(EventType::InventoryReleased, |d| {
        d["items"][0]["qty"] = (-1).into()
    });
    let result = decode_edited(EventType::InventoryReleased, |_| {}, Some(&negative_qty));
    assert!(
        matches!(result, Err(DecodeError::InvalidData { .. })),
        "{result:?}"
    );
}

#[test]
fn out_of_range_coordinates_are_rejected() {
    let lat_91 = edited_data(EventType::WaybillCreated, |d| {
        d["pickup"]["lat"] = 91.0.into()
    });
    let result = decode_edited(EventType::WaybillCreated, |_| {}, Some(&lat_91));
    // GeoPoint deserialisation validates, so this surfaces while parsing the data.
    match result {
        Err(DecodeError::InvalidData { ty, source }) => {
            assert_eq!(ty, EventType::WaybillCreated);
            assert!(source.to_string().contains("latitude"), "{source}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn payloads_that_break_invariants() {
    type Edit = fn(&mut serde_json::Value);
    let cases: [(EventType, Edit, &str); 5] = [
        (
            EventType::OrderCreated,
            |d| d["items"][0]["qty"] = 0.into(),
            "items[0].qty",
        ),
        (
            EventType::OrderCreated,
            |d| d["amount_cents"] = 1.into(),
            "amount_cents",
        ),
        (
            EventType::OrderCreated,
            |d| d["items"] = serde_json::json!([]),
            "items",
        ),
        (
            EventType::PaymentAuthorized,
            |d| d["items"][1]["unit_price_cents"] = 0.into(),
            "items[1].unit_price_cents",
        ),
        (
            EventType::InventoryRejected,
            |d| d["unavailable_skus"][0] = "x".repeat(65).into(),
            "unavailable_skus[0]",
        ),
    ];
    for (ty, edit, field) in cases {
        let data = edited_data(ty, edit);
        match decode_edited(ty, |_| {}, Some(&data)) {
            Err(DecodeError::InvalidPayload { ty: got, source }) => {
                assert_eq!(got, ty);
                assert_eq!(source.field, field);
            }
            other => panic!("{ty} {field}: {other:?}"),
        }
    }
}

#[test]
fn subject_must_match_the_payload_order() {
    let other = "0196a3f2-7c1e-7d40-9a51-ffffffffffff";
    let result = decode_edited(EventType::PaymentVoided, set("ce-subject", other), None);
    match result {
        Err(DecodeError::SubjectMismatch { subject, data }) => {
            assert_eq!(subject.to_string(), other);
            assert_eq!(data, order_id());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_variant_has_a_distinct_kind() {
    let errors = [
        decode_edited(EventType::OrderCreated, without("ce-id"), None),
        decode_edited(EventType::OrderCreated, set("ce-id", "x"), None),
        decode_edited(
            EventType::OrderCreated,
            |h| h.push(("ce-id".into(), "x".into())),
            None,
        ),
        decode_edited(EventType::OrderCreated, set("ce-specversion", "0.3"), None),
        decode_edited(EventType::OrderCreated, set("ce-type", "jwl.x"), None),
        decode_edited(
            EventType::OrderCreated,
            set("content-type", "text/plain"),
            None,
        ),
        decode_edited(
            EventType::OrderCreated,
            set("ce-dataschema", "urn:jwl:schema:jwl.order.created:v9"),
            None,
        ),
        decode_edited(
            EventType::OrderCreated,
            set("ce-source", "/jwl/dispatch"),
            None,
        ),
        decode_edited(EventType::OrderCreated, |_| {}, Some(b"[]")),
        decode_edited(
            EventType::OrderCreated,
            |_| {},
            Some(&edited_data(EventType::OrderCreated, |d| {
                d["amount_cents"] = 0.into()
            })),
        ),
        decode_edited(
            EventType::OrderCreated,
            set("ce-subject", "0196a3f2-7c1e-7d40-9a51-ffffffffffff"),
            None,
        ),
    ];
    let mut kinds: Vec<&str> = errors
        .iter()
        .map(|r| r.as_ref().unwrap_err().kind())
        .collect();
    kinds.sort_unstable();
    kinds.dedup();
    assert_eq!(kinds.len(), errors.len(), "{kinds:?}");
}
