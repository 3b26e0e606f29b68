//! W3C trace context for events: the `traceparent` of a tracing span (captured when an event is
//! built, and stored with its outbox row), and a span's parent or links set from an event's
//! `traceparent`, so one order's spans form one trace across services.
//!
//! The span contexts come from the OpenTelemetry layer (`tracing-opentelemetry`). When none is
//! installed (no exporter configured) every span context is invalid: nothing is captured and
//! setting a parent or link does nothing.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The only `traceparent` version this writes (and the one whose layout it reads).
const VERSION: &str = "00";

/// The `traceparent` of `span`, if it has a valid OpenTelemetry span context.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    format_traceparent(span.context().span().span_context())
}

/// The `traceparent` of the current span (see [`traceparent_of`]).
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// Makes the remote span named by `traceparent` the parent of `span`, which must not have
/// been entered yet. An invalid `traceparent` (or no OpenTelemetry layer) leaves it as it is.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if let Some(parent) = parse_traceparent(traceparent) {
        // fails only when the span is disabled or already started: then it keeps its parent
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
}

/// Links `span` to the span named by `traceparent` (ignored when invalid).
pub fn add_link(span: &tracing::Span, traceparent: &str) {
    if let Some(linked) = parse_traceparent(traceparent) {
        span.add_link(linked);
    }
}

/// The `traceparent` stored with an event given `given` and enqueued inside the span whose
/// traceparent is `current`: the current span when the event has none or is in the same trace
/// (it is the closer cause, e.g. the handler that reacted to the event `given` names), else the
/// one given (an event continuing an order's trace from an unrelated request or a timer).
pub fn traceparent_to_store(given: Option<&str>, current: Option<String>) -> Option<String> {
    let Some(current) = current else {
        return given.map(str::to_owned);
    };
    let trace_of = |traceparent: &str| parse_traceparent(traceparent).map(|c| c.trace_id());
    match given {
        Some(given) if trace_of(given).is_some() && trace_of(given) != trace_of(&current) => {
            Some(given.to_owned())
        }
        _ => Some(current),
    }
}

/// `00-<trace id>-<span id>-<flags>` for a valid span context.
pub fn format_traceparent(context: &SpanContext) -> Option<String> {
    context.is_valid().then(|| {
        format!(
            "{VERSION}-{}-{}-{:02x}",
            context.trace_id(),
            context.span_id(),
            context.trace_flags().to_u8()
        )
    })
}

/// The remote span context a W3C `traceparent` names: version `00` (or a later version with
/// the same leading layout), lowercase hex, ids not all zero.
pub fn parse_traceparent(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    let rest_allowed = version != VERSION;
    if parts.next().is_some() && !rest_allowed {
        return None;
    }
    let is_hex = |part: &str, len: usize| {
        part.len() == len && part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if !is_hex(version, 2)
        || version == "ff"
        || !is_hex(trace_id, 32)
        || !is_hex(span_id, 16)
        || !is_hex(flags, 2)
    {
        return None;
    }
    let context = SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        SpanId::from_hex(span_id).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()? & TraceFlags::SAMPLED.to_u8()),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_round_trips() {
        let context = parse_traceparent(SAMPLED).unwrap();
        assert!(context.is_remote() && context.is_sampled());
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(format_traceparent(&context).as_deref(), Some(SAMPLED));
    }

    #[test]
    fn unsampled_flags_are_kept() {
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let context = parse_traceparent(unsampled).unwrap();
        assert!(!context.is_sampled());
        assert_eq!(format_traceparent(&context).as_deref(), Some(unsampled));
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for invalid in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(invalid).is_none(), "{invalid:?}");
        }
    }

    #[test]
    fn a_later_version_may_carry_more_fields() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-next";
        assert!(parse_traceparent(later).is_some());
    }

    #[test]
    fn the_enqueuing_span_parents_events_of_its_own_trace() {
        let enqueuing = "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01".to_owned();
        let other_trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let stored =
            |given, current: Option<&String>| traceparent_to_store(given, current.cloned());
        assert_eq!(
            stored(Some(SAMPLED), Some(&enqueuing)).as_ref(),
            Some(&enqueuing)
        );
        assert_eq!(stored(None, Some(&enqueuing)).as_ref(), Some(&enqueuing));
        assert_eq!(
            stored(Some("garbage"), Some(&enqueuing)).as_ref(),
            Some(&enqueuing)
        );
        assert_eq!(
            stored(Some(other_trace), Some(&enqueuing)).as_deref(),
            Some(other_trace)
        );
        assert_eq!(stored(Some(SAMPLED), None).as_deref(), Some(SAMPLED));
        assert_eq!(stored(None, None), None);
    }

    #[test]
    fn invalid_span_contexts_have_no_traceparent() {
        assert_eq!(format_traceparent(&SpanContext::empty_context()), None);
    }

    #[test]
    fn with_an_opentelemetry_layer_spans_continue_and_carry_the_trace() {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt;

        let tracer = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .build()
            .tracer("test");
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("handle_event");
            set_parent(&span, SAMPLED);
            let own = traceparent_of(&span).unwrap();
            let context = parse_traceparent(&own).unwrap();
            assert_eq!(
                context.trace_id().to_string(),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            );
            assert_ne!(context.span_id().to_string(), "00f067aa0ba902b7");
            span.in_scope(|| assert_eq!(current_traceparent(), Some(own.clone())));

            let relay = tracing::info_span!("relay_publish");
            add_link(&relay, &own);
            let relay_trace = traceparent_of(&relay).and_then(|tp| parse_traceparent(&tp));
            assert!(relay_trace.is_some_and(|c| c.trace_id() != context.trace_id()));
        });
    }

    #[test]
    fn without_an_opentelemetry_layer_nothing_is_captured() {
        let span = tracing::info_span!("no_layer");
        set_parent(&span, SAMPLED);
        assert_eq!(traceparent_of(&span), None);
    }
}
