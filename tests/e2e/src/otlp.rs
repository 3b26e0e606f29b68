//! A small OTLP/HTTP trace receiver for tests: it answers `POST /v1/traces` with a JSON
//! `ExportTraceServiceRequest` (what the services send when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! points at it) on a free local port, and keeps every span with its service for assertions.
//!
//! Only the fields the tests look at are read: `service.name`, trace/span/parent ids (lowercase
//! hex in OTLP JSON), name, string/int/bool attributes and links.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One received span.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// `None` for a root span.
    pub parent_span_id: Option<String>,
    pub name: String,
    /// String, integer and boolean attributes, as text.
    pub attributes: BTreeMap<String, String>,
    /// The (trace id, span id) of each link.
    pub links: Vec<(String, String)>,
}

impl ReceivedSpan {
    /// The attribute `key`, if the span has it.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// A running receiver; it stops when dropped.
pub struct OtlpReceiver {
    endpoint: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    server: JoinHandle<()>,
}

impl OtlpReceiver {
    /// Starts a receiver on a free port of 127.0.0.1.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the OTLP receiver")?;
        let addr = listener.local_addr()?;
        let spans = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(spans.clone());
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                eprintln!("the OTLP receiver stopped: {error}");
            }
        });
        Ok(Self {
            endpoint: format!("http://{addr}"),
            spans,
            server,
        })
    }

    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT` (`http://127.0.0.1:<port>`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(
    State(spans): State<Arc<Mutex<Vec<ReceivedSpan>>>>,
    body: axum::body::Bytes,
) -> (StatusCode, &'static str) {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(_) => return (StatusCode::BAD_REQUEST, "{}"),
    };
    let received = parse_export_request(&request);
    spans
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .extend(received);
    (StatusCode::OK, "{}")
}

/// The spans of a JSON `ExportTraceServiceRequest`.
pub fn parse_export_request(request: &Value) -> Vec<ReceivedSpan> {
    let mut spans = Vec::new();
    for resource_spans in array(request, "resourceSpans") {
        let resource_attributes = attributes(&resource_spans["resource"]);
        let service = resource_attributes
            .get("service.name")
            .cloned()
            .unwrap_or_default();
        for scope_spans in array(resource_spans, "scopeSpans") {
            for span in array(scope_spans, "spans") {
                let text = |key: &str| span[key].as_str().unwrap_or_default().to_owned();
                let parent = text("parentSpanId");
                spans.push(ReceivedSpan {
                    service: service.clone(),
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent_span_id: (!parent.is_empty()).then_some(parent),
                    name: text("name"),
                    attributes: attributes(span),
                    links: array(span, "links")
                        .map(|link| {
                            let text = |key: &str| link[key].as_str().unwrap_or_default();
                            (text("traceId").to_owned(), text("spanId").to_owned())
                        })
                        .collect(),
                });
            }
        }
    }
    spans
}

fn array<'a>(value: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    value[key].as_array().into_iter().flatten()
}

/// An OTLP `attributes` list as text values (`stringValue`, `intValue`, `boolValue`,
/// `doubleValue`).
fn attributes(value: &Value) -> BTreeMap<String, String> {
    array(value, "attributes")
        .filter_map(|attribute| {
            let key = attribute["key"].as_str()?;
            let value = &attribute["value"];
            let text = if let Some(text) = value["stringValue"].as_str() {
                text.to_owned()
            } else if let Some(int) = value.get("intValue") {
                // int64 is a JSON string in OTLP, but accept a number too
                int.as_str().map_or_else(|| int.to_string(), str::to_owned)
            } else if let Some(flag) = value["boolValue"].as_bool() {
                flag.to_string()
            } else {
                value.get("doubleValue")?.to_string()
            };
            Some((key.to_owned(), text))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_export_request_is_read() {
        let request = json!({"resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": "payment"}}]},
            "scopeSpans": [{"scope": {"name": "jwl"}, "spans": [{
                "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
                "spanId": "00f067aa0ba902b7",
                "parentSpanId": "",
                "name": "handle_event",
                "attributes": [
                    {"key": "event_type", "value": {"stringValue": "jwl.order.created"}},
                    {"key": "attempt", "value": {"intValue": "1"}},
                    {"key": "ok", "value": {"boolValue": true}}],
                "links": [{"traceId": "0af7651916cd43dd8448eb211c80319c",
                           "spanId": "b7ad6b7169203331"}]
            }]}]
        }]});
        let spans = parse_export_request(&request);
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(span.service, "payment");
        assert_eq!(span.parent_span_id, None);
        assert_eq!(span.attribute("event_type"), Some("jwl.order.created"));
        assert_eq!(span.attribute("attempt"), Some("1"));
        assert_eq!(span.attribute("ok"), Some("true"));
        assert_eq!(
            span.links,
            vec![(
                "0af7651916cd43dd8448eb211c80319c".to_owned(),
                "b7ad6b7169203331".to_owned()
            )]
        );
    }
}
