//! The CI smoke of the `cloudevent_decode` fuzz target (`fuzz/`, run at length by
//! `scripts/fuzz`): every event type's sample message, mutated at random — payload bytes
//! flipped, inserted or cut, header values replaced by arbitrary text, headers dropped, doubled
//! or renamed — in both header styles. Decoding never panics, and whatever it accepts survives
//! encode → decode unchanged.

mod common;

use common::*;
use jwl_events::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Mutation {
    FlipPayloadByte { at: usize, mask: u8 },
    InsertPayloadByte { at: usize, byte: u8 },
    TruncatePayload { at: usize },
    SetHeaderValue { header: usize, value: String },
    DropHeader { header: usize },
    DuplicateHeader { header: usize },
    RenameHeader { header: usize, name: String },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=u8::MAX).prop_map(|(at, mask)| Mutation::FlipPayloadByte { at, mask }),
        (any::<usize>(), any::<u8>())
            .prop_map(|(at, byte)| Mutation::InsertPayloadByte { at, byte }),
        any::<usize>().prop_map(|at| Mutation::TruncatePayload { at }),
        (any::<usize>(), any::<String>())
            .prop_map(|(header, value)| Mutation::SetHeaderValue { header, value }),
        any::<usize>().prop_map(|header| Mutation::DropHeader { header }),
        any::<usize>().prop_map(|header| Mutation::DuplicateHeader { header }),
        (any::<usize>(), "[a-zA-Z_-]{0,16}")
            .prop_map(|(header, name)| Mutation::RenameHeader { header, name }),
    ]
}

fn apply(mutation: &Mutation, headers: &mut Vec<(String, String)>, payload: &mut Vec<u8>) {
    let header_at = |i: usize| (!headers.is_empty()).then(|| i % headers.len());
    match mutation {
        Mutation::FlipPayloadByte { at, mask } => {
            if !payload.is_empty() {
                let at = at % payload.len();
                payload[at] ^= mask;
            }
        }
        Mutation::InsertPayloadByte { at, byte } => {
            let at = at % (payload.len() + 1);
            payload.insert(at, *byte);
        }
        Mutation::TruncatePayload { at } => {
            let at = at % (payload.len() + 1);
            payload.truncate(at);
        }
        Mutation::SetHeaderValue { header, value } => {
            if let Some(i) = header_at(*header) {
                headers[i].1 = value.clone();
            }
        }
        Mutation::DropHeader { header } => {
            if let Some(i) = header_at(*header) {
                headers.remove(i);
            }
        }
        Mutation::DuplicateHeader { header } => {
            if let Some(i) = header_at(*header) {
                let copy = headers[i].clone();
                headers.push(copy);
            }
        }
        Mutation::RenameHeader { header, name } => {
            if let Some(i) = header_at(*header) {
                headers[i].0 = name.clone();
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3_000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_messages_are_rejected_or_round_trip(
        ty in prop::sample::select(EventType::ALL.to_vec()),
        kafka in any::<bool>(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let style = if kafka { HeaderStyle::Kafka } else { HeaderStyle::Nats };
        let wire = encode(&sample(ty), style);
        let (mut headers, mut payload) = (wire.headers, wire.payload);
        for mutation in &mutations {
            apply(mutation, &mut headers, &mut payload);
        }
        if let Ok(event) = decode(style, pairs(&headers), &payload) {
            let again = encode(&event, style);
            let decoded = decode(style, pairs(&again.headers), &again.payload)
                .map_err(|error| error.to_string());
            prop_assert_eq!(decoded, Ok(event));
        }
    }
}
