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

impl WireMessage {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The headers as `(&str, &str)` pairs, the shape [`decode`] takes.
    pub fn header_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}
