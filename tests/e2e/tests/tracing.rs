//! One trace per order: the five services export their spans over OTLP/HTTP to a receiver in
//! the test; one order placed with a W3C `traceparent` runs to `dispatched`, and its spans must
//! all be in the caller's trace, each consumer's `handle_event` span a child of a span of the
//! service that emitted the event, and each service's relay publish linked into the trace.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jwl_e2e::otlp::{OtlpReceiver, ReceivedSpan};
use jwl_e2e::{LineItem, NewOrder, OrderStatus, Point, Service, SystemOptions, with_system};
use reqwest::StatusCode;

/// How long one saga may take on a busy 2-core machine.
const SAGA_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the spans may take to arrive once the order is dispatched.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(30);
/// The caller's trace and span: the order's trace must continue it.
const CALLER_TRACE_ID: &str = "5d1a6a3f0c7e4b2d9e8f7a6b5c4d3e2f";
const CALLER_SPAN_ID: &str = "a1b2c3d4e5f60718";

const SERVICES: [Service; 5] = [
    Service::Order,
    Service::Payment,
    Service::Inventory,
    Service::Fulfillment,
    Service::Dispatch,
];

/// (consuming service, event type) pairs a dispatched order must have been handled through.
const REQUIRED_HANDLINGS: [(&str, &str); 7] = [
    ("payment", "jwl.order.created"),
    ("inventory", "jwl.payment.authorized"),
    ("fulfillment", "jwl.inventory.reserved"),
    ("dispatch", "jwl.fulfillment.waybill_created"),
    ("order", "jwl.dispatch.courier_assigned"),
    ("payment", "jwl.dispatch.courier_assigned"),
    ("order", "jwl.payment.captured"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_is_one_trace_across_the_five_services() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    with_system(SystemOptions::default(), async |system| {
        let tracing_env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ];
        for service in SERVICES {
            system.service(service).restart_with(&tracing_env).await?;
        }
        system.set_stock("TEA", 10).await?;
        let pickup = Point::JIANGWAN;
        system
            .move_courier("courier-1", pickup.offset_km(0.5, 0.5))
            .await?;

        let order_id = place_order_in_trace(system, pickup).await?;
        let view = system.wait_terminal(&order_id, SAGA_TIMEOUT).await?;
        assert_eq!(view.status, OrderStatus::Dispatched, "{view:?}");

        let spans = jwl_e2e::eventually("the order's spans", EXPORT_TIMEOUT, || async {
            complete_trace(&receiver.spans(), &order_id)
        })
        .await?;
        let everything = receiver.spans();
        check_trace(&spans, &everything, &order_id);
        println!("{}", span_tree(&spans));
        Ok(())
    })
    .await
}

/// Places an order with a `traceparent` naming the caller's span; returns its id.
async fn place_order_in_trace(system: &jwl_e2e::System, pickup: Point) -> anyhow::Result<String> {
    let order = NewOrder {
        items: vec![LineItem {
            sku: "TEA".to_owned(),
            qty: 2,
            unit_price_cents: 1250,
        }],
        pickup,
        dropoff: pickup.offset_km(2.0, 0.0),
        payment_token: "tok_ok".to_owned(),
    };
    let token = system.tokens().customer("alice")?;
    let response = reqwest::Client::new()
        .post(format!(
            "{}/v1/orders",
            system.service(Service::Order).base_url()
        ))
        .bearer_auth(token)
        .header(
            "traceparent",
            format!("00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"),
        )
        .json(&order)
        .send()
        .await?;
    let status = response.status();
    let body: serde_json::Value = response.json().await?;
    anyhow::ensure!(status == StatusCode::CREATED, "{status}: {body}");
    body["order_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no order_id in {body}"))
}

/// The spans of the caller's trace once every required handling and every parent of a
/// `handle_event` span has arrived.
fn complete_trace(received: &[ReceivedSpan], order_id: &str) -> Result<Vec<ReceivedSpan>, String> {
    let trace: Vec<ReceivedSpan> = received
        .iter()
        .filter(|span| span.trace_id == CALLER_TRACE_ID)
        .cloned()
        .collect();
    let handled: BTreeSet<(&str, &str)> = handle_event_spans(&trace)
        .filter(|span| span.attribute("order_id") == Some(order_id))
        .filter_map(|span| Some((span.service.as_str(), span.attribute("event_type")?)))
        .collect();
    let missing: Vec<_> = REQUIRED_HANDLINGS
        .iter()
        .filter(|required| !handled.contains(*required))
        .collect();
    if !missing.is_empty() {
        return Err(format!("no handle_event span yet for {missing:?}"));
    }
    let ids: BTreeSet<&str> = trace.iter().map(|span| span.span_id.as_str()).collect();
    let orphans = handle_event_spans(&trace)
        .filter(|span| {
            span.parent_span_id
                .as_deref()
                .is_none_or(|parent| !ids.contains(parent))
        })
        .count();
    if orphans > 0 {
        return Err(format!(
            "{orphans} handle_event spans whose parent has not arrived"
        ));
    }
    Ok(trace)
}

fn handle_event_spans(spans: &[ReceivedSpan]) -> impl Iterator<Item = &ReceivedSpan> {
    spans.iter().filter(|span| span.name == "handle_event")
}

/// The service that emits `event_type` (`jwl.<service>.<name>`).
fn emitter(event_type: &str) -> Option<&str> {
    event_type.strip_prefix("jwl.")?.split('.').next()
}

fn check_trace(trace: &[ReceivedSpan], everything: &[ReceivedSpan], order_id: &str) {
    let by_id: BTreeMap<&str, &ReceivedSpan> = trace
        .iter()
        .map(|span| (span.span_id.as_str(), span))
        .collect();

    let services: BTreeSet<&str> = trace.iter().map(|span| span.service.as_str()).collect();
    for service in SERVICES {
        assert!(
            services.contains(service.as_str()),
            "no span of {service} in the order's trace (services: {services:?})"
        );
    }

    // the HTTP edge continued the caller's trace
    let request = trace
        .iter()
        .find(|span| span.name == "http_request" && span.attribute("order_id") == Some(order_id))
        .expect("the POST /v1/orders span is in the trace");
    assert_eq!(request.service, "order");
    assert_eq!(request.parent_span_id.as_deref(), Some(CALLER_SPAN_ID));

    for span in handle_event_spans(trace) {
        let event_type = span.attribute("event_type").unwrap_or_default();
        let parent = span
            .parent_span_id
            .as_deref()
            .and_then(|parent| by_id.get(parent))
            .unwrap_or_else(|| panic!("handle_event {event_type} has no parent in the trace"));
        assert_eq!(
            Some(parent.service.as_str()),
            emitter(event_type),
            "the parent of {} handling {event_type} is {} {} of {}",
            span.service,
            parent.name,
            parent.span_id,
            parent.service
        );
        assert!(
            matches!(parent.name.as_str(), "handle_event" | "http_request"),
            "{event_type} was emitted from a {} span",
            parent.name
        );
        assert_eq!(span.attribute("order_id"), Some(order_id), "{span:?}");
        assert!(span.attribute("consumer").is_some(), "{span:?}");
        assert!(span.attribute("attempt").is_some(), "{span:?}");
        assert!(
            matches!(span.attribute("outcome"), Some("ok" | "duplicate")),
            "{span:?}"
        );
    }

    // no span of this order started a trace of its own
    let strays: Vec<_> = everything
        .iter()
        .filter(|span| span.attribute("order_id") == Some(order_id))
        .filter(|span| span.trace_id != CALLER_TRACE_ID)
        .collect();
    assert!(
        strays.is_empty(),
        "spans of the order in other traces: {strays:?}"
    );

    // the relay of every service that emitted some of the trace's events linked its publish
    // span to the rows' trace context
    let emitters: BTreeSet<&str> = handle_event_spans(trace)
        .filter_map(|span| emitter(span.attribute("event_type")?))
        .collect();
    for service in emitters {
        let linked = everything.iter().any(|span| {
            span.service == service
                && span.name == "relay_publish"
                && span.links.iter().any(|(trace_id, span_id)| {
                    trace_id == CALLER_TRACE_ID && by_id.contains_key(span_id.as_str())
                })
        });
        assert!(
            linked,
            "no relay_publish span of {service} links into the trace"
        );
    }
}

/// The trace as an indented tree: service, span name and the span's event fields.
fn span_tree(trace: &[ReceivedSpan]) -> String {
    let ids: BTreeSet<&str> = trace.iter().map(|span| span.span_id.as_str()).collect();
    let mut children: BTreeMap<Option<&str>, Vec<&ReceivedSpan>> = BTreeMap::new();
    for span in trace {
        let parent = span
            .parent_span_id
            .as_deref()
            .filter(|parent| ids.contains(parent));
        children.entry(parent).or_default().push(span);
    }
    let mut text = format!("trace {CALLER_TRACE_ID} (caller span {CALLER_SPAN_ID})\n");
    let mut stack: Vec<(&ReceivedSpan, usize)> = children
        .get(&None)
        .into_iter()
        .flatten()
        .rev()
        .map(|span| (*span, 0))
        .collect();
    while let Some((span, depth)) = stack.pop() {
        let fields: Vec<String> = [
            "event_type",
            "consumer",
            "attempt",
            "outcome",
            "method",
            "path",
        ]
        .iter()
        .filter_map(|key| Some(format!("{key}={}", span.attribute(key)?)))
        .collect();
        text.push_str(&format!(
            "{}{} {} [{}]\n",
            "  ".repeat(depth + 1),
            span.service,
            span.name,
            fields.join(" ")
        ));
        if let Some(kids) = children.get(&Some(span.span_id.as_str())) {
            stack.extend(kids.iter().rev().map(|kid| (*kid, depth + 1)));
        }
    }
    text
}
