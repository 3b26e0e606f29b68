//! Golden wire fixtures: `tests/fixtures/<event type>.json` holds the NATS subject, the
//! binary-mode headers and the JSON data of the fixed sample envelope of each type.
//!
//! Encoding the sample must give the fixture, and decoding the fixture must give the sample,
//! so any change to the wire format shows up here as a reviewed fixture diff.
//! Regenerate after an intended change with `JWL_BLESS=1 cargo test -p jwl-events --test golden`.

mod common;

use std::path::PathBuf;

use common::*;
use jwl_events::*;
use serde_json::{Map, Value, json};

const BLESS_HINT: &str = "if the change is intended, regenerate with \
    `JWL_BLESS=1 cargo test -p jwl-events --test golden` and review the fixture diff";

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture_path(ty: EventType) -> PathBuf {
    fixtures_dir().join(format!("{ty}.json"))
}

fn blessing() -> bool {
    std::env::var("JWL_BLESS").is_ok_and(|v| v == "1")
}

/// The fixture document for an encoded message.
fn to_fixture(msg: &WireMessage) -> Value {
    let headers: Map<String, Value> = msg
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), Value::String(v.clone())))
        .collect();
    let data: Value = serde_json::from_slice(&msg.payload).expect("payload is JSON");
    json!({ "subject": msg.subject, "headers": headers, "data": data })
}

/// The first line where `expected` and `actual` differ, for the failure message.
fn first_difference(expected: &str, actual: &str) -> String {
    let (mut e, mut a) = (expected.lines(), actual.lines());
    for line in 1.. {
        match (e.next(), a.next()) {
            (None, None) => break,
            (el, al) if el != al => {
                return format!(
                    "first difference at line {line}:\n  fixture: {}\n  encoded: {}",
                    el.unwrap_or("<end of file>"),
                    al.unwrap_or("<end of file>")
                );
            }
            _ => {}
        }
    }
    "no line differs (whitespace or key order only)".into()
}

#[test]
fn encoding_each_sample_gives_its_fixture() {
    let mut failures = Vec::new();
    for ty in EventType::ALL {
        let actual = to_fixture(&encode(&sample(ty), HeaderStyle::Nats));
        let actual_text = serde_json::to_string_pretty(&actual).unwrap() + "\n";
        let path = fixture_path(ty);
        if blessing() {
            std::fs::write(&path, &actual_text).unwrap();
            continue;
        }
        let Ok(expected_text) = std::fs::read_to_string(&path) else {
            failures.push(format!("{ty}: missing fixture {}", path.display()));
            continue;
        };
        let expected: Value = serde_json::from_str(&expected_text).unwrap();
        if expected != actual {
            failures.push(format!(
                "{ty}: encoded message differs from {}\n{}\n--- encoded ---\n{actual_text}",
                path.display(),
                first_difference(&expected_text, &actual_text),
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n\n{BLESS_HINT}",
        failures.join("\n\n")
    );
}

#[test]
fn decoding_each_fixture_gives_its_sample() {
    if blessing() {
        return; // the fixtures are being rewritten by the other test
    }
    for ty in EventType::ALL {
        let path = fixture_path(ty);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}\n{BLESS_HINT}", path.display()));
        let fixture: Value = serde_json::from_str(&text).unwrap();
        let headers: Vec<(&str, &str)> = fixture["headers"]
            .as_object()
            .expect("headers object")
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str().expect("header values are strings")))
            .collect();
        let payload = serde_json::to_vec(&fixture["data"]).unwrap();
        let decoded = decode(HeaderStyle::Nats, headers, &payload)
            .unwrap_or_else(|e| panic!("{}: does not decode: {e}", path.display()));
        assert_eq!(
            decoded,
            sample(ty),
            "{}: decodes to another envelope",
            path.display()
        );
        assert_eq!(
            fixture["subject"],
            subject(&decoded.order_id(), ty),
            "{}",
            path.display()
        );
    }
}

#[test]
fn there_is_exactly_one_fixture_per_event_type() {
    if blessing() {
        return; // the fixtures are being rewritten by the other test
    }
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> = EventType::ALL
        .iter()
        .map(|ty| format!("{ty}.json"))
        .collect();
    expected.sort();
    assert_eq!(names, expected, "stray or missing fixtures; {BLESS_HINT}");
}
