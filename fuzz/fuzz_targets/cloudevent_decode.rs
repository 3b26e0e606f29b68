//! Fuzz target: decoding a binary-mode CloudEvent (headers + payload), as every consumer does
//! with each message it pulls. Input: header lines `name: value`, an empty line, then the
//! payload. Both header styles (NATS `ce-`, Kafka `ce_`) are tried. Decoding must never panic,
//! and an event it accepts must survive encode → decode unchanged.
#![no_main]

use jwl_events::{HeaderStyle, decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (head, payload) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let headers: Vec<(&str, &str)> = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim(), value.trim()))
        .collect();
    for style in [HeaderStyle::Nats, HeaderStyle::Kafka] {
        if let Ok(event) = decode(style, headers.iter().copied(), payload) {
            let wire = encode(&event, style);
            let again = decode(
                style,
                wire.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
                &wire.payload,
            )
            .expect("an accepted event re-encodes to a decodable message");
            assert_eq!(again, event, "encode → decode changed the event");
        }
    }
});
