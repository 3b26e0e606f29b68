//! Identifiers carried by events: event, order and waybill ids (UUIDs) and courier ids.
//!
//! Each id is its own type so that an order id can never be passed where a waybill id is
//! expected. All of them print and parse as their canonical text form and serialise as a
//! plain JSON string.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a text could not be parsed into an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The text is not a UUID.
    #[error("not a UUID: {0}")]
    NotAUuid(#[from] uuid::Error),
    /// The nil UUID (all zeros) is never a valid id.
    #[error("the nil UUID is not a valid id")]
    Nil,
    /// A courier id must be 1..=64 characters.
    #[error("courier id must be 1..={max} characters, got {len}", max = CourierId::MAX_LEN)]
    CourierIdLength { len: usize },
    /// A courier id may only contain `[A-Za-z0-9_-]`.
    #[error("courier id may only contain A-Z, a-z, 0-9, '_' and '-', found {0:?}")]
    CourierIdCharacter(char),
}

/// Defines a UUID newtype with Display/FromStr as the hyphenated UUID and transparent serde.
macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id (UUIDv7).
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// Parses the hyphenated (or any RFC 9562 textual) form; rejects the nil UUID.
            pub fn parse(text: &str) -> Result<Self, IdError> {
                let uuid = Uuid::parse_str(text)?;
                if uuid.is_nil() {
                    return Err(IdError::Nil);
                }
                Ok(Self(uuid))
            }

            /// The underlying UUID.
            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, IdError> {
                Self::parse(text)
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }
    };
}

uuid_id! {
    /// The id of one event (UUIDv7); also the broker's dedup id (`Nats-Msg-Id`).
    EventId
}

uuid_id! {
    /// The id of an order; the saga's correlation id and the NATS subject's order token.
    OrderId
}

uuid_id! {
    /// The id of a waybill (运单) created by fulfillment.
    WaybillId
}

/// The id of a courier: 1..=64 characters of `[A-Za-z0-9_-]`.
///
/// The only way to get one is [`CourierId::parse`] (also used by `FromStr` and serde), so every
/// value is valid.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CourierId(String);

impl CourierId {
    /// Longest accepted courier id, in characters.
    pub const MAX_LEN: usize = 64;

    /// Validates and wraps a courier id.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        Self::validate(text)?;
        Ok(Self(text.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn validate(text: &str) -> Result<(), IdError> {
        let len = text.chars().count();
        if len == 0 || len > Self::MAX_LEN {
            return Err(IdError::CourierIdLength { len });
        }
        match text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            Some(bad) => Err(IdError::CourierIdCharacter(bad)),
            None => Ok(()),
        }
    }
}

impl fmt::Display for CourierId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for CourierId {
    type Err = IdError;
    fn from_str(text: &str) -> Result<Self, IdError> {
        Self::parse(text)
    }
}

impl TryFrom<String> for CourierId {
    type Error = IdError;
    fn try_from(text: String) -> Result<Self, IdError> {
        Self::validate(&text)?;
        Ok(Self(text))
    }
}

impl From<CourierId> for String {
    fn from(id: CourierId) -> String {
        id.0
    }
}

impl AsRef<str> for CourierId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_ids_round_trip_as_hyphenated_text() {
        let id = OrderId::new();
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(text.parse::<OrderId>().unwrap(), id);
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{text}\""));
        assert_eq!(
            serde_json::from_str::<OrderId>(&format!("\"{text}\"")).unwrap(),
            id
        );
    }

    #[test]
    fn new_event_ids_are_v7() {
        assert_eq!(EventId::new().0.get_version_num(), 7);
    }

    #[test]
    fn uuid_ids_reject_garbage_and_nil() {
        assert!(matches!(
            WaybillId::parse("not-a-uuid"),
            Err(IdError::NotAUuid(_))
        ));
        assert_eq!(
            EventId::parse("00000000-0000-0000-0000-000000000000"),
            Err(IdError::Nil)
        );
    }

    #[test]
    fn courier_id_accepts_the_allowed_alphabet() {
        let id = CourierId::parse("rider_07-Pudong").unwrap();
        assert_eq!(id.as_str(), "rider_07-Pudong");
        assert!(CourierId::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn courier_id_rejects_bad_length_and_characters() {
        assert_eq!(
            CourierId::parse(""),
            Err(IdError::CourierIdLength { len: 0 })
        );
        assert_eq!(
            CourierId::parse(&"a".repeat(65)),
            Err(IdError::CourierIdLength { len: 65 })
        );
        assert_eq!(
            CourierId::parse("a b"),
            Err(IdError::CourierIdCharacter(' '))
        );
        assert_eq!(
            CourierId::parse("骑手"),
            Err(IdError::CourierIdCharacter('骑'))
        );
    }

    #[test]
    fn courier_id_deserialisation_validates() {
        assert!(serde_json::from_str::<CourierId>("\"c-1\"").is_ok());
        assert!(serde_json::from_str::<CourierId>("\"c/1\"").is_err());
        assert!(serde_json::from_str::<CourierId>("17").is_err());
    }
}
