//! CloudEvents 1.0 binary mode: attributes in `ce-`/`ce_` headers, the JSON data as payload.
//!
//! Both directions go through the `cloudevents-sdk` [`Event`] model: `encode` builds an SDK
//! event and writes its attributes out; `decode` gathers the headers, lets the SDK builder
//! check the required attributes, then applies this catalogue's rules (type, source,
//! schema version, subject, payload).

use std::borrow::Cow;

use chrono::SecondsFormat;
use cloudevents::event::{AttributeValue, EventBuilderError, ExtensionValue};
use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};

use super::{APPLICATION_JSON, CONTENT_TYPE_HEADER, HeaderStyle, WireMessage, subject};
use crate::catalogue::{EventData, EventType, Service};
use crate::envelope::Envelope;
use crate::error::DecodeError;
use crate::ids::{EventId, OrderId};

/// CloudEvents extension: the saga's correlation id (the order id).
const CORRELATION_ID: &str = "correlationid";
/// CloudEvents extension: the id of the event this one reacts to.
const CAUSATION_ID: &str = "causationid";
/// CloudEvents distributed-tracing extension: W3C `traceparent`.
const TRACEPARENT: &str = "traceparent";
/// Extensions, in the order they are written.
const EXTENSIONS: [&str; 3] = [CORRELATION_ID, CAUSATION_ID, TRACEPARENT];

/// Encodes `env` in binary mode with `style`'s header names.
pub fn encode(env: &Envelope, style: HeaderStyle) -> WireMessage {
    let ty = env.event_type();
    let order_id = env.order_id();
    let mut event = to_cloud_event(env, ty, &order_id);
    // Move the data out without touching `datacontenttype`/`dataschema` (`take_data` would).
    let payload = match event.set_data_unchecked(Vec::new()) {
        Some(cloudevents::Data::Binary(bytes)) => bytes,
        _ => Vec::new(),
    };
    let mut headers = Vec::with_capacity(11);
    let prefix = style.prefix();
    for (name, value) in event.iter_attributes() {
        let value = match value {
            AttributeValue::Time(time) => time.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            other => other.to_string(),
        };
        let header = match name {
            "datacontenttype" => CONTENT_TYPE_HEADER.to_owned(),
            _ => format!("{prefix}{name}"),
        };
        headers.push((header, value));
    }
    for name in EXTENSIONS {
        if let Some(value) = event.extension(name) {
            headers.push((format!("{prefix}{name}"), value.to_string()));
        }
    }
    WireMessage {
        subject: subject(&order_id, ty),
        headers,
        payload,
    }
}

/// The SDK event for `env`, with the JSON data as binary data.
fn to_cloud_event(env: &Envelope, ty: EventType, order_id: &OrderId) -> Event {
    let mut builder = EventBuilderV10::new()
        .id(env.id.to_string())
        .ty(ty.as_str())
        .source(env.source.source())
        .subject(order_id.to_string())
        .time(env.time)
        .extension(CORRELATION_ID, order_id.to_string())
        .data_with_schema(APPLICATION_JSON, ty.dataschema(), env.data.to_json());
    if let Some(cause) = env.causation_id {
        builder = builder.extension(CAUSATION_ID, cause.to_string());
    }
    if let Some(traceparent) = &env.traceparent {
        builder = builder.extension(TRACEPARENT, traceparent.as_str());
    }
    // Every input is well-formed by construction: id, type and source are always set, the
    // source is a non-empty constant, the time is already a DateTime and the dataschema is a
    // `urn:` URI (covered for every type by the round-trip tests).
    builder
        .build()
        .expect("invariant: a catalogue envelope always forms a valid CloudEvent")
}

/// Decodes a binary-mode message. `headers` are matched case-insensitively; headers that are
/// not CloudEvents attributes (e.g. `Nats-Msg-Id`) and unknown extensions are ignored.
pub fn decode<'a>(
    style: HeaderStyle,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    payload: &[u8],
) -> Result<Envelope, DecodeError> {
    let attrs = HeaderAttributes::collect(style, headers)?;
    attrs.check_specversion()?;
    attrs.check_content_type()?;
    let event = attrs.to_cloud_event()?;

    let id = EventId::parse(event.id()).map_err(|e| invalid("id", e))?;
    let (ty, source) = type_and_source(&event)?;
    let subject = event
        .subject()
        .ok_or(DecodeError::MissingAttribute("subject"))?;
    let subject = OrderId::parse(subject).map_err(|e| invalid("subject", e))?;
    let time = *event.time().ok_or(DecodeError::MissingAttribute("time"))?;
    let dataschema = event
        .dataschema()
        .ok_or(DecodeError::MissingAttribute("dataschema"))?;
    check_dataschema(ty, dataschema.as_str())?;
    let causation_id = match event.extension(CAUSATION_ID) {
        None => None,
        Some(ExtensionValue::String(cause)) => {
            Some(EventId::parse(cause).map_err(|e| invalid("causationid", e))?)
        }
        Some(other) => return Err(invalid("causationid", format!("not a UUID: {other}"))),
    };
    // W3C Trace Context: an invalid traceparent is dropped (a new trace starts), not fatal.
    let traceparent = match event.extension(TRACEPARENT) {
        Some(ExtensionValue::String(tp)) if is_valid_traceparent(tp) => Some(tp.clone()),
        _ => None,
    };

    let data = EventData::from_json(ty, payload)
        .map_err(|source| DecodeError::InvalidData { ty, source })?;
    data.validate()
        .map_err(|source| DecodeError::InvalidPayload { ty, source })?;
    if data.order_id() != subject {
        return Err(DecodeError::SubjectMismatch {
            subject,
            data: data.order_id(),
        });
    }
    Ok(Envelope {
        id,
        source,
        time,
        causation_id,
        traceparent,
        data,
    })
}

/// The catalogue type of `event` and its source, which must be the type's emitter.
fn type_and_source(event: &Event) -> Result<(EventType, Service), DecodeError> {
    let ty = EventType::parse(event.ty())
        .ok_or_else(|| DecodeError::UnknownType(event.ty().to_owned()))?;
    let source = Service::from_source(event.source())
        .filter(|s| *s == ty.emitter())
        .ok_or_else(|| DecodeError::WrongSource {
            ty,
            expected: ty.emitter(),
            found: event.source().clone(),
        })?;
    Ok((ty, source))
}

fn invalid(name: &'static str, reason: impl ToString) -> DecodeError {
    DecodeError::InvalidAttribute {
        name,
        reason: reason.to_string(),
    }
}

/// `dataschema` must be `urn:jwl:schema:<type>:v<n>` with `n` the supported version.
fn check_dataschema(ty: EventType, dataschema: &str) -> Result<(), DecodeError> {
    let version = dataschema
        .strip_prefix("urn:jwl:schema:")
        .and_then(|rest| rest.strip_prefix(ty.as_str()))
        .and_then(|rest| rest.strip_prefix(":v"))
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            invalid(
                "dataschema",
                format!("expected {}, got {dataschema}", ty.dataschema()),
            )
        })?;
    if version.parse::<u32>().ok() != Some(ty.schema_version()) {
        return Err(DecodeError::UnsupportedSchemaVersion {
            ty,
            found: dataschema.to_owned(),
            supported: ty.schema_version(),
        });
    }
    Ok(())
}

/// W3C Trace Context `traceparent`: `vv-<32 hex>-<16 hex>-<2 hex>`, lowercase, ids not all
/// zero, version not `ff`; future versions may append `-…`.
fn is_valid_traceparent(value: &str) -> bool {
    fn hex(s: &str, len: usize) -> bool {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }
    let mut parts = value.splitn(5, '-');
    let (Some(version), Some(trace_id), Some(parent_id), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let rest_ok = match parts.next() {
        None => true,
        Some(_) => version != "00",
    };
    hex(version, 2)
        && version != "ff"
        && hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && hex(parent_id, 16)
        && parent_id.bytes().any(|b| b != b'0')
        && hex(flags, 2)
        && rest_ok
}

/// The CloudEvents headers of one message, borrowed.
#[derive(Default)]
struct HeaderAttributes<'a> {
    specversion: Option<&'a str>,
    id: Option<&'a str>,
    ty: Option<&'a str>,
    source: Option<&'a str>,
    subject: Option<&'a str>,
    time: Option<&'a str>,
    dataschema: Option<&'a str>,
    content_type: Option<&'a str>,
    correlation_id: Option<&'a str>,
    causation_id: Option<&'a str>,
    traceparent: Option<&'a str>,
}

impl<'a> HeaderAttributes<'a> {
    fn collect(
        style: HeaderStyle,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, DecodeError> {
        let prefix = style.prefix();
        let mut attrs = HeaderAttributes::default();
        for (name, value) in headers {
            let slot = if name.eq_ignore_ascii_case(CONTENT_TYPE_HEADER) {
                &mut attrs.content_type
            } else {
                let Some(attribute) = name
                    .get(..prefix.len())
                    .filter(|p| p.eq_ignore_ascii_case(prefix))
                    .and_then(|_| name.get(prefix.len()..))
                else {
                    continue;
                };
                match attrs.slot(attribute) {
                    Some(slot) => slot,
                    None => continue,
                }
            };
            if slot.replace(value).is_some() {
                return Err(DecodeError::DuplicateAttribute(name.to_ascii_lowercase()));
            }
        }
        Ok(attrs)
    }

    /// Where the attribute `name` (without prefix, any case) goes; `None` if it is not read.
    fn slot(&mut self, name: &str) -> Option<&mut Option<&'a str>> {
        // Header names are normally lowercase already; only fold case when they are not.
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(name.to_ascii_lowercase())
        } else {
            Cow::Borrowed(name)
        };
        let slot = match name.as_ref() {
            "specversion" => &mut self.specversion,
            "id" => &mut self.id,
            "type" => &mut self.ty,
            "source" => &mut self.source,
            "subject" => &mut self.subject,
            "time" => &mut self.time,
            "dataschema" => &mut self.dataschema,
            CORRELATION_ID => &mut self.correlation_id,
            CAUSATION_ID => &mut self.causation_id,
            TRACEPARENT => &mut self.traceparent,
            _ => return None,
        };
        Some(slot)
    }

    fn check_specversion(&self) -> Result<(), DecodeError> {
        match self.specversion {
            None => Err(DecodeError::MissingAttribute("specversion")),
            Some("1.0") => Ok(()),
            Some(other) => Err(DecodeError::UnsupportedSpecVersion(other.to_owned())),
        }
    }

    /// `content-type` must be JSON when present (absent means the CloudEvents default, JSON).
    fn check_content_type(&self) -> Result<(), DecodeError> {
        let Some(content_type) = self.content_type else {
            return Ok(());
        };
        let media_type = content_type.split(';').next().unwrap_or_default().trim();
        if media_type.eq_ignore_ascii_case(APPLICATION_JSON) {
            Ok(())
        } else {
            Err(DecodeError::UnsupportedContentType(content_type.to_owned()))
        }
    }

    /// Builds the SDK event, which rejects missing required attributes and malformed
    /// `time`, `source` or `dataschema`.
    fn to_cloud_event(&self) -> Result<Event, DecodeError> {
        let mut builder = EventBuilderV10::new();
        if let Some(id) = self.id {
            builder = builder.id(id);
        }
        if let Some(ty) = self.ty {
            builder = builder.ty(ty);
        }
        if let Some(source) = self.source {
            builder = builder.source(source);
        }
        if let Some(subject) = self.subject {
            builder = builder.subject(subject);
        }
        if let Some(time) = self.time {
            builder = builder.time(time);
        }
        if let Some(dataschema) = self.dataschema {
            // The payload stays borrowed and is parsed straight from the message, so the SDK
            // event gets empty data here; it is only used to validate the attributes.
            let content_type = self.content_type.unwrap_or(APPLICATION_JSON);
            builder = builder.data_with_schema(content_type, dataschema, Vec::new());
        }
        for (name, value) in [
            (CORRELATION_ID, self.correlation_id),
            (CAUSATION_ID, self.causation_id),
            (TRACEPARENT, self.traceparent),
        ] {
            if let Some(value) = value {
                builder = builder.extension(name, value);
            }
        }
        builder.build().map_err(|e| match e {
            EventBuilderError::MissingRequiredAttribute { attribute_name } => {
                DecodeError::MissingAttribute(attribute_name)
            }
            EventBuilderError::ParseTimeError {
                attribute_name,
                source,
            } => invalid(attribute_name, source),
            EventBuilderError::ParseUrlError {
                attribute_name,
                source,
            } => invalid(attribute_name, source),
            EventBuilderError::InvalidUriRefError { attribute_name } => {
                invalid(attribute_name, "must be a non-empty URI reference")
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_validation_follows_w3c() {
        assert!(is_valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(is_valid_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"
        ));
        assert!(!is_valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"
        ));
        assert!(!is_valid_traceparent(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!is_valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"
        ));
        assert!(!is_valid_traceparent(
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_valid_traceparent(
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_valid_traceparent("garbage"));
    }

    #[test]
    fn dataschema_shape_and_version() {
        let ty = EventType::OrderCreated;
        assert!(check_dataschema(ty, "urn:jwl:schema:jwl.order.created:v1").is_ok());
        assert!(matches!(
            check_dataschema(ty, "urn:jwl:schema:jwl.order.created:v2"),
            Err(DecodeError::UnsupportedSchemaVersion { .. })
        ));
        for bad in [
            "urn:jwl:schema:jwl.payment.voided:v1",
            "urn:jwl:schema:jwl.order.created:v",
            "urn:x",
        ] {
            assert!(
                matches!(
                    check_dataschema(ty, bad),
                    Err(DecodeError::InvalidAttribute {
                        name: "dataschema",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }
}
