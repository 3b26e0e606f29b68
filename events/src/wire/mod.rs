//! How events travel: subjects, and CloudEvents binary mode over message headers.

mod binary;
mod subjects;

pub use binary::{decode, encode};
pub use subjects::{
    EVENTS_SUBJECTS, order_filters, parse_subject, subject, subject_order, subject_type,
    subjects_of, type_filter, type_filters,
};

/// The header naming of the CloudEvents protocol binding in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderStyle {
    /// NATS (and HTTP) binding: `ce-id`, `ce-type`, …
    Nats,
    /// Kafka binding: `ce_id`, `ce_type`, …
    Kafka,
}

impl HeaderStyle {
    /// The form messages take between the outbox, the transports and the operator tools (and
    /// the form outbox rows store): the `ce-` names. A transport whose binding names them
    /// otherwise (Kafka's `ce_`) maps them on the wire and back, so nothing above the transport
    /// depends on the broker.
    pub const NEUTRAL: Self = Self::Nats;

    /// The attribute header prefix: `"ce-"` or `"ce_"`.
    pub const fn prefix(self) -> &'static str {
        match self {
            HeaderStyle::Nats => "ce-",
            HeaderStyle::Kafka => "ce_",
        }
    }
}

/// The header carrying `datacontenttype` in binary mode (both bindings).
pub const CONTENT_TYPE_HEADER: &str = "content-type";

/// The only content type events are written in.
pub const APPLICATION_JSON: &str = "application/json";

/// A broker-neutral message: where it goes, its headers, its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireMessage {
    pub subject: String,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

/// The value of the first of `headers` called `name` (header names are case-insensitive), for
/// any shape of name/value pairs a transport or a tool holds (`String`s or `&str`s).
pub fn header_value<'h, N, V>(headers: &'h [(N, V)], name: &str) -> Option<&'h str>
where
    N: AsRef<str>,
    V: AsRef<str>,
{
    headers
        .iter()
        .find(|(n, _)| n.as_ref().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_ref())
}

impl WireMessage {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    /// The headers as `(&str, &str)` pairs, the shape [`decode`] takes.
    pub fn header_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_is_found_by_its_name_in_any_case_and_the_first_one_wins() {
        let borrowed = [("Jwl-Replay-Mode", "rerun"), ("jwl-replay-mode", "release")];
        assert_eq!(header_value(&borrowed, "jwl-replay-mode"), Some("rerun"));
        assert_eq!(header_value(&borrowed, "jwl-replay-origin"), None);
        let owned = vec![("CE-ID".to_owned(), "e-1".to_owned())];
        assert_eq!(header_value(&owned, "ce-id"), Some("e-1"));
    }
}
