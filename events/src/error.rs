//! Why a message could not be decoded into an [`Envelope`](crate::Envelope).
//!
//! Every variant is permanent: redelivering the same bytes fails the same way, so consumers
//! dead-letter the message instead of retrying it.

use crate::catalogue::{EventType, Service, ValidationError};
use crate::ids::OrderId;

/// A decode failure; each rejection reason has its own variant.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A required CloudEvents attribute (header) is absent.
    #[error("missing CloudEvents attribute `{0}`")]
    MissingAttribute(&'static str),
    /// An attribute is present but malformed (not a UUID, not RFC 3339, …).
    #[error("invalid CloudEvents attribute `{name}`: {reason}")]
    InvalidAttribute { name: &'static str, reason: String },
    /// The same attribute header appears more than once.
    #[error("CloudEvents attribute header `{0}` appears more than once")]
    DuplicateAttribute(String),
    /// `specversion` is not `1.0`.
    #[error("unsupported CloudEvents specversion {0:?} (only 1.0)")]
    UnsupportedSpecVersion(String),
    /// `type` is not in the catalogue.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// `content-type` is not `application/json`.
    #[error("unsupported content type {0:?} (only application/json)")]
    UnsupportedContentType(String),
    /// `dataschema` names a version of the type's schema this build does not read.
    #[error("unsupported schema {found:?} for {ty} (this build reads v{supported})")]
    UnsupportedSchemaVersion {
        ty: EventType,
        found: String,
        supported: u32,
    },
    /// `source` is not the type's emitter.
    #[error("{ty} must come from {expected:?}, not {found:?}", expected = .expected.source())]
    WrongSource {
        ty: EventType,
        expected: Service,
        found: String,
    },
    /// The payload is not JSON of the type's shape (bad JSON, missing field, wrong type).
    #[error("data of {ty} does not parse: {source}")]
    InvalidData {
        ty: EventType,
        source: serde_json::Error,
    },
    /// The payload parsed but breaks an invariant.
    #[error("data of {ty} is invalid: {source}")]
    InvalidPayload {
        ty: EventType,
        source: ValidationError,
    },
    /// `subject` and the payload's `order_id` differ.
    #[error("subject {subject} does not match data.order_id {data}")]
    SubjectMismatch { subject: OrderId, data: OrderId },
}

impl DecodeError {
    /// A short, stable name for the variant (for metrics labels and dead-letter headers).
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::MissingAttribute(_) => "missing_attribute",
            DecodeError::InvalidAttribute { .. } => "invalid_attribute",
            DecodeError::DuplicateAttribute(_) => "duplicate_attribute",
            DecodeError::UnsupportedSpecVersion(_) => "unsupported_specversion",
            DecodeError::UnknownType(_) => "unknown_type",
            DecodeError::UnsupportedContentType(_) => "unsupported_content_type",
            DecodeError::UnsupportedSchemaVersion { .. } => "unsupported_schema_version",
            DecodeError::WrongSource { .. } => "wrong_source",
            DecodeError::InvalidData { .. } => "invalid_data",
            DecodeError::InvalidPayload { .. } => "invalid_payload",
            DecodeError::SubjectMismatch { .. } => "subject_mismatch",
        }
    }
}
