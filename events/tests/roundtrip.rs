//! Encode → decode round trips for every event type in both header styles.

mod common;

use common::*;
use jwl_events::*;

const STYLES: [HeaderStyle; 2] = [HeaderStyle::Nats, HeaderStyle::Kafka];

#[test]
fn every_type_round_trips_in_both_header_styles() {
    for style in STYLES {
        for ty in EventType::ALL {
            let env = sample(ty);
            let msg = encode(&env, style);
            let decoded = decode(style, msg.header_pairs(), &msg.payload)
                .unwrap_or_else(|e| panic!("{ty} ({style:?}) failed to decode: {e}"));
            assert_eq!(decoded, env, "{ty} ({style:?})");
        }
    }
}

#[test]
fn fresh_envelopes_round_trip_too() {
    for ty in EventType::ALL {
        let cause = sample(EventType::OrderCreated);
        let env = Envelope::new(ty.emitter(), sample_data(ty)).caused_by(&cause);
        let msg = encode(&env, HeaderStyle::Nats);
        assert_eq!(
            decode(HeaderStyle::Nats, msg.header_pairs(), &msg.payload).unwrap(),
            env
        );
    }
}

#[test]
fn nats_headers_follow_the_binary_mode_contract() {
    let env = sample(EventType::PaymentAuthorized);
    let msg = encode(&env, HeaderStyle::Nats);
    assert_eq!(
        msg.subject,
        format!("jwl.evt.payment.authorized.{ORDER_ID}")
    );
    let expected = [
        ("ce-specversion", "1.0".to_owned()),
        ("ce-id", env.id.to_string()),
        ("ce-type", "jwl.payment.authorized".to_owned()),
        ("ce-source", "/jwl/payment".to_owned()),
        ("content-type", "application/json".to_owned()),
        (
            "ce-dataschema",
            "urn:jwl:schema:jwl.payment.authorized:v1".to_owned(),
        ),
        ("ce-subject", ORDER_ID.to_owned()),
        ("ce-time", "2026-11-24T10:30:00.123456Z".to_owned()),
        ("ce-correlationid", ORDER_ID.to_owned()),
        ("ce-causationid", CAUSE_ID.to_owned()),
        ("ce-traceparent", TRACEPARENT.to_owned()),
    ];
    let actual: Vec<(&str, String)> = msg
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.clone()))
        .collect();
    assert_eq!(actual, expected);
    let data: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(data["order_id"], ORDER_ID);
    assert_eq!(data["amount_cents"], AMOUNT_CENTS);
}

#[test]
fn kafka_uses_underscore_prefix_and_the_same_payload() {
    let env = sample(EventType::DispatchFailed);
    let nats = encode(&env, HeaderStyle::Nats);
    let kafka = encode(&env, HeaderStyle::Kafka);
    assert_eq!(kafka.payload, nats.payload);
    assert_eq!(kafka.subject, nats.subject);
    for ((kn, kv), (nn, nv)) in kafka.headers.iter().zip(&nats.headers) {
        assert_eq!(kv, nv);
        assert_eq!(kn.replacen("ce_", "ce-", 1), *nn);
    }
    assert_eq!(kafka.header("ce_type"), Some("jwl.dispatch.failed"));
    // A Kafka message is not read as NATS: no ce- attributes at all.
    assert!(matches!(
        decode(HeaderStyle::Nats, kafka.header_pairs(), &kafka.payload),
        Err(DecodeError::MissingAttribute("specversion"))
    ));
}

#[test]
fn absent_cause_and_trace_mean_absent_headers() {
    let env = sample(EventType::OrderCreated);
    let msg = encode(&env, HeaderStyle::Nats);
    assert_eq!(msg.header("ce-causationid"), None);
    assert_eq!(msg.header("ce-traceparent"), None);
    assert_eq!(msg.header("ce-correlationid"), Some(ORDER_ID));
}

#[test]
fn header_names_match_case_insensitively_and_other_headers_are_ignored() {
    let env = sample(EventType::CourierAssigned);
    let msg = encode(&env, HeaderStyle::Nats);
    let mut headers: Vec<(String, String)> = msg
        .headers
        .iter()
        .map(|(n, v)| (n.to_ascii_uppercase(), v.clone()))
        .collect();
    headers.push(("Nats-Msg-Id".into(), env.id.to_string()));
    headers.push(("ce-someotherext".into(), "x".into()));
    let decoded = decode(HeaderStyle::Nats, pairs(&headers), &msg.payload).unwrap();
    assert_eq!(decoded, env);
}

#[test]
fn readers_tolerate_unknown_fields_and_content_type_parameters() {
    let env = sample(EventType::WaybillCreated);
    let msg = encode(&env, HeaderStyle::Nats);
    let mut data: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    data["added_in_a_later_minor"] = serde_json::json!({"any": [1, 2]});
    data["pickup"]["alt_m"] = serde_json::json!(12.5);
    let payload = serde_json::to_vec(&data).unwrap();
    let mut headers = msg.headers.clone();
    for (name, value) in &mut headers {
        if name == "content-type" {
            *value = "application/json; charset=utf-8".into();
        }
    }
    assert_eq!(
        decode(HeaderStyle::Nats, pairs(&headers), &payload).unwrap(),
        env
    );
}

#[test]
fn an_invalid_traceparent_is_dropped_not_fatal() {
    let mut env = sample(EventType::PaymentVoided);
    env.traceparent = Some("not-a-trace".into());
    let msg = encode(&env, HeaderStyle::Nats);
    let decoded = decode(HeaderStyle::Nats, msg.header_pairs(), &msg.payload).unwrap();
    assert_eq!(decoded.traceparent, None);
    assert_eq!(decoded.data, env.data);
}
