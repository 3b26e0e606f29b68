//! Human-readable text for the terminal: aligned tables of events and dead letters, and one
//! dead letter in full. Pure functions over the returned data (JSON output is serde's).

use chrono::{DateTime, Utc};
use jwl_events::parse_subject;

use crate::domain::ReplayMessage;
use crate::domain::one_line;
use crate::history::OrderHistory;
use crate::model::{DeadLetterDetail, DeadLetterEntry, EntryEvent, EventEntry};

/// Longest error text shown in a table cell; the JSON output has it whole.
const MAX_CELL_CHARS: usize = 160;

const EVENT_COLUMNS: [&str; 7] = [
    "SEQ",
    "TIME",
    "TYPE",
    "SOURCE",
    "EVENT ID",
    "CAUSED BY",
    "TRACE",
];

/// An order's history: one row per event in stream order, each dead letter right after the
/// event it came from (dead letters whose event is not in the stream come last), then a
/// summary line. `TIME` is the event's time, or the stored time for rows without one.
pub fn history_table(history: &OrderHistory) -> String {
    let mut rows = Vec::new();
    let mut placed = vec![false; history.dead_letters.len()];
    for entry in &history.events {
        rows.push(event_row(entry, false));
        for (index, letter) in history.dead_letters.iter().enumerate() {
            if letter.original_stream_seq == Some(entry.stream_seq) {
                rows.push(dead_letter_row(letter));
                placed[index] = true;
            }
        }
    }
    for (letter, placed) in history.dead_letters.iter().zip(placed) {
        if !placed {
            rows.push(dead_letter_row(letter));
        }
    }
    let undecodable = history
        .events
        .iter()
        .filter(|entry| matches!(entry.event, EntryEvent::Undecodable(_)))
        .count();
    let mut out = format!(
        "order {}: {}, {} undecodable, {}\n",
        history.order_id,
        count(history.events.len(), "event"),
        undecodable,
        count(history.dead_letters.len(), "dead letter")
    );
    if !rows.is_empty() {
        out.push_str(&table(&columns(&EVENT_COLUMNS, &["SUMMARY"]), &rows));
    }
    out
}

/// Events of any orders (`jwl replay`): like [`history_table`] with an `ORDER` column.
pub fn events_table(entries: &[EventEntry]) -> String {
    if entries.is_empty() {
        return "no events\n".to_owned();
    }
    let rows: Vec<Vec<String>> = entries.iter().map(|entry| event_row(entry, true)).collect();
    table(&columns(&EVENT_COLUMNS, &["ORDER", "SUMMARY"]), &rows)
}

/// Dead letters (`jwl dlq ls`), one row each.
pub fn dead_letters_table(entries: &[DeadLetterEntry]) -> String {
    if entries.is_empty() {
        return "no dead letters\n".to_owned();
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|letter| {
            vec![
                letter.dlq_seq.to_string(),
                timestamp(letter.stored_at),
                letter.consumer.clone(),
                letter.reason.clone(),
                letter
                    .original_type
                    .clone()
                    .unwrap_or_else(|| "?".to_owned()),
                letter
                    .order_id
                    .map_or_else(|| "unknown".to_owned(), |order| order.to_string()),
                letter
                    .original_stream_seq
                    .map_or_else(|| "?".to_owned(), |seq| seq.to_string()),
                clip(&letter.error),
            ]
        })
        .collect();
    let header = [
        "SEQ",
        "STORED",
        "CONSUMER",
        "REASON",
        "TYPE",
        "ORDER",
        "EVENT SEQ",
        "ERROR",
    ];
    table(&header.map(str::to_owned), &rows)
}

/// One dead letter in full (`jwl dlq show`): metadata, the original event, headers, payload.
pub fn dead_letter_text(detail: &DeadLetterDetail) -> String {
    let letter = &detail.entry;
    let optional = |value: Option<String>| value.unwrap_or_else(|| "?".to_owned());
    let fields = [
        ("stored", timestamp(letter.stored_at)),
        ("consumer", letter.consumer.clone()),
        ("reason", letter.reason.clone()),
        ("error", one_line(&letter.error)),
        (
            "order",
            optional(letter.order_id.map(|order| order.to_string())),
        ),
        ("event subject", optional(letter.original_subject.clone())),
        (
            "event seq",
            optional(letter.original_stream_seq.map(|seq| seq.to_string())),
        ),
        ("event", original_text(&detail.original)),
    ];
    let mut out = format!("dead letter {} ({})\n", letter.dlq_seq, detail.subject);
    for (name, value) in fields {
        out.push_str(&format!("  {:<14}{value}\n", format!("{name}:")));
    }
    out.push_str("headers:\n");
    for (name, value) in &detail.headers {
        out.push_str(&format!("  {name}: {}\n", one_line(value)));
    }
    out.push_str(&format!("payload ({} bytes):\n", detail.payload_bytes));
    for line in detail.payload.lines() {
        out.push_str(&format!("  {}\n", one_line(line)));
    }
    out
}

fn original_text(original: &EntryEvent) -> String {
    match original {
        EntryEvent::Decoded(event) => format!(
            "{} {} from {}: {}",
            event.event_type, event.event_id, event.source, event.summary
        ),
        EntryEvent::Undecodable(bad) => {
            format!("UNDECODABLE ({}): {}", bad.error_kind, one_line(&bad.error))
        }
    }
}

fn event_row(entry: &EventEntry, with_order: bool) -> Vec<String> {
    let mut row = vec![entry.stream_seq.to_string()];
    let (order, summary) = match &entry.event {
        EntryEvent::Decoded(event) => {
            row.extend([
                timestamp(event.time),
                event.event_type.to_string(),
                event.source.to_string(),
                event.event_id.to_string(),
                event
                    .causation_id
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
                event.trace_id.clone().unwrap_or_default(),
            ]);
            (event.data.order_id().to_string(), event.summary.clone())
        }
        EntryEvent::Undecodable(bad) => {
            row.extend([
                timestamp(entry.stored_at),
                bad.type_header
                    .as_deref()
                    .map(one_line)
                    .unwrap_or_else(|| "?".to_owned()),
                String::new(),
                bad.id_header.as_deref().map(one_line).unwrap_or_default(),
                String::new(),
                String::new(),
            ]);
            let order = parse_subject(&entry.subject)
                .map_or_else(|| "?".to_owned(), |(order, _)| order.to_string());
            let summary = format!("UNDECODABLE ({}): {}", bad.error_kind, clip(&bad.error));
            (order, summary)
        }
    };
    if with_order {
        row.push(order);
    }
    row.push(summary);
    row
}

fn dead_letter_row(letter: &DeadLetterEntry) -> Vec<String> {
    vec![
        format!("dlq {}", letter.dlq_seq),
        timestamp(letter.stored_at),
        letter
            .original_type
            .clone()
            .unwrap_or_else(|| "?".to_owned()),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        format!(
            "DEAD-LETTERED by {} ({}): {}",
            letter.consumer,
            letter.reason,
            clip(&letter.error)
        ),
    ]
}

fn columns(first: &[&str], rest: &[&str]) -> Vec<String> {
    first
        .iter()
        .chain(rest)
        .map(|name| (*name).to_owned())
        .collect()
}

fn count(n: usize, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

/// RFC 3339 UTC with milliseconds: `2026-11-24T10:30:00.123Z`.
fn timestamp(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// One line of at most [`MAX_CELL_CHARS`] characters.
fn clip(text: &str) -> String {
    let line = one_line(text);
    if line.chars().count() <= MAX_CELL_CHARS {
        return line;
    }
    let mut clipped: String = line.chars().take(MAX_CELL_CHARS - 1).collect();
    clipped.push('…');
    clipped
}

/// Left-aligned columns two spaces apart; the last column is not padded.
/// Replay messages (`jwl replay --to … --dry-run`): subject, origin, mode, event id, message id.
pub fn replay_table(messages: &[ReplayMessage]) -> String {
    let header = columns(&["SUBJECT", "ORIGIN", "MODE", "EVENT ID", "MSG ID"], &[]);
    let rows: Vec<Vec<String>> = messages
        .iter()
        .map(|message| {
            let mut row = vec![message.subject.clone()];
            row.extend(
                ["jwl-replay-origin", "jwl-replay-mode", "ce-id"]
                    .map(|name| one_line(message.header(name).unwrap_or("-"))),
            );
            row.push(message.message_id.clone());
            row
        })
        .collect();
    format!(
        "{}\n{}",
        count(messages.len(), "message"),
        table(&header, &rows)
    )
}

/// An aligned table: a header row, then one line per row (cells separated by two spaces).
pub fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        let mut line = String::new();
        for (index, cell) in row.iter().enumerate() {
            if index > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if index + 1 < row.len() {
                let pad = widths[index].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use jwl_events::{EventId, EventType, OrderId, PaymentCaptured, Service};

    use super::*;
    use crate::model::{DecodedEvent, UndecodableMessage};

    const ORDER: &str = "0196a3f2-7c1e-7d40-9a51-2f0c8e6b1a01";

    fn at(secs: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 10, 30, secs).unwrap()
    }

    fn captured(seq: u64) -> EventEntry {
        let order_id: OrderId = ORDER.parse().unwrap();
        EventEntry {
            stream_seq: seq,
            stored_at: at(1),
            subject: format!("jwl.evt.{ORDER}.payment.captured"),
            event: EntryEvent::Decoded(DecodedEvent {
                time: at(0),
                event_type: EventType::PaymentCaptured,
                source: Service::Payment,
                event_id: EventId::new(),
                causation_id: None,
                trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned()),
                summary: "captured 5 cents".to_owned(),
                data: PaymentCaptured {
                    order_id,
                    amount_cents: 5,
                }
                .into(),
            }),
        }
    }

    fn undecodable(seq: u64) -> EventEntry {
        EventEntry {
            stream_seq: seq,
            stored_at: at(2),
            subject: format!("jwl.evt.{ORDER}.payment.captured"),
            event: EntryEvent::Undecodable(UndecodableMessage {
                error: "missing CloudEvents attribute `id`".to_owned(),
                error_kind: "missing_attribute",
                type_header: Some("jwl.payment.captured".to_owned()),
                id_header: None,
            }),
        }
    }

    fn letter(dlq_seq: u64, original: Option<u64>) -> DeadLetterEntry {
        DeadLetterEntry {
            dlq_seq,
            stored_at: at(3),
            consumer: "payment__order_created".to_owned(),
            reason: "permanent".to_owned(),
            error: "x".repeat(500),
            original_type: Some("jwl.payment.captured".to_owned()),
            original_subject: None,
            original_stream_seq: original,
            order_id: Some(ORDER.parse().unwrap()),
        }
    }

    #[test]
    fn tables_align_columns_and_do_not_pad_the_last() {
        let text = table(
            &["A".to_owned(), "BB".to_owned(), "C".to_owned()],
            &[vec!["xxx".to_owned(), "y".to_owned(), "z".to_owned()]],
        );
        assert_eq!(text, "A    BB  C\nxxx  y   z\n");
    }

    #[test]
    fn history_places_dead_letters_after_their_event() {
        let history = OrderHistory {
            order_id: ORDER.parse().unwrap(),
            events: vec![captured(4), undecodable(7), captured(9)],
            dead_letters: vec![letter(2, Some(99)), letter(1, Some(7))],
        };
        let text = history_table(&history);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            format!("order {ORDER}: 3 events, 1 undecodable, 2 dead letters")
        );
        assert!(lines[1].starts_with("SEQ "));
        assert!(lines[2].starts_with("4 ") && lines[2].ends_with("captured 5 cents"));
        assert!(lines[2].contains("2026-11-24T10:30:00.000Z"));
        assert!(lines[3].starts_with("7 ") && lines[3].contains("UNDECODABLE (missing_attribute)"));
        assert!(
            lines[4].starts_with("dlq 1 ")
                && lines[4].contains("DEAD-LETTERED by payment__order_created (permanent)")
        );
        assert!(lines[4].ends_with('…'), "long errors are clipped");
        assert!(lines[5].starts_with("9 "));
        assert!(
            lines[6].starts_with("dlq 2 "),
            "unmatched dead letters come last"
        );
        assert_eq!(lines.len(), 7);
    }

    #[test]
    fn replay_table_has_an_order_column() {
        let text = events_table(&[captured(1), undecodable(2)]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("ORDER") && lines[0].ends_with("SUMMARY"));
        assert!(lines[1].contains(ORDER));
        assert!(
            lines[2].contains(ORDER),
            "undecodable rows take the order from the subject"
        );
        assert_eq!(events_table(&[]), "no events\n");
    }

    #[test]
    fn dead_letter_list_and_detail() {
        let text = dead_letters_table(&[letter(5, Some(12))]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("SEQ") && lines[0].ends_with("ERROR"));
        assert!(lines[1].starts_with("5 ") && lines[1].contains("payment__order_created"));
        assert!(lines[1].contains(" 12 "));
        assert_eq!(dead_letters_table(&[]), "no dead letters\n");

        let detail = DeadLetterDetail {
            entry: letter(5, Some(12)),
            subject: format!("jwl.dlq.payment__order_created.{ORDER}"),
            headers: vec![("ce-type".to_owned(), "jwl.payment.captured".to_owned())],
            payload: "{\"a\":1}".to_owned(),
            payload_bytes: 7,
            original: undecodable(1).event,
        };
        let text = dead_letter_text(&detail);
        assert!(text.starts_with("dead letter 5 (jwl.dlq.payment__order_created."));
        assert!(text.contains("  reason:       permanent\n"));
        assert!(text.contains("  event seq:    12\n"));
        assert!(text.contains("UNDECODABLE (missing_attribute)"));
        assert!(text.contains("headers:\n  ce-type: jwl.payment.captured\n"));
        assert!(text.ends_with("payload (7 bytes):\n  {\"a\":1}\n"));
    }
}
