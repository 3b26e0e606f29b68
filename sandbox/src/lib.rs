//! `jwl-sandbox`: would the current build have done the same with recorded orders?
//! (`jwl replay --sandbox`.)
//!
//! [`read_orders`] reads every event of the orders a [`Selection`] touches (whole orders, in
//! stream order); [`replay`] creates a scratch database (`jwl_sandbox_<uuid>` on the server of
//! the given URL, each service's schema migrated by this build), feeds each recorded event, in
//! recorded stream order, to the [`Handlers`] of every service subscribed to its type — through
//! [`jwl_outbox::process_one`], exactly as a consumer does — and compares the events each
//! handler emitted with those its service recorded as caused by that event (type, causation,
//! payload without ids and times: see [`compare`]). The scratch database is dropped at the end,
//! also on error. What the scratch state is seeded with, and so what can and cannot be judged,
//! is described in [`seed`].
//!
//! Recorded events are fed as they were (same event id, so causation matches), except that ids
//! a service generated (a waybill id) are translated to the ones the sandbox generated in
//! their place, so every service sees the ids its scratch state holds.

pub mod compare;
mod handlers;
mod scratch;
pub mod seed;

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use futures::{StreamExt, TryStreamExt};
use jwl_events::{Envelope, EventData, EventId, EventType, OrderId, Service};
use jwl_ops::{DecodedEvent, EntryEvent, EventEntry, OpsError, Selection, replay as ops_replay};
use jwl_outbox::transport::History;
use jwl_outbox::{MessagingSettings, OutboxError, Processed};
use jwl_service_kit::Settings;
use serde::Serialize;

pub use compare::{FieldDiff, OutputDiff};
pub use handlers::Handlers;
use handlers::SandboxService;
use scratch::Scratch;

/// Orders whose histories are read at once.
const READ_CONCURRENCY: usize = 8;

/// Why a sandbox run could not be completed (a difference is not an error: see
/// [`SandboxReport::differences`]).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("reading the recorded events: {0}")]
    Read(#[from] OpsError),
    #[error("scratch database: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migrating the scratch schema of {service}: {error:#}")]
    Migrate {
        service: &'static str,
        error: anyhow::Error,
    },
    #[error("seeding the scratch state: {0}")]
    Seed(String),
    #[error("re-encoding a recorded event: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("interrupted")]
    Interrupted,
}

/// Every event of each order the selection touches, in stream order (undecodable ones left
/// out; [`SandboxReport::undecodable`] counts them in [`replay`]).
pub async fn read_orders(
    history: &dyn History,
    settings: &MessagingSettings,
    selection: &Selection,
) -> Result<Vec<EventEntry>, SandboxError> {
    let orders: BTreeSet<OrderId> = match selection.order {
        Some(order) => BTreeSet::from([order]),
        None => ops_replay::read(history, settings, selection)
            .await?
            .iter()
            .filter_map(|entry| match &entry.event {
                EntryEvent::Decoded(event) => Some(event.data.order_id()),
                EntryEvent::Undecodable(_) => None,
            })
            .collect(),
    };
    let histories: Vec<Vec<EventEntry>> = futures::stream::iter(orders)
        .map(|order| async move {
            let whole = Selection {
                order: Some(order),
                ..Default::default()
            };
            ops_replay::read(history, settings, &whole).await
        })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    let mut entries: Vec<EventEntry> = histories.into_iter().flatten().collect();
    entries.sort_by_key(|entry| entry.stream_seq);
    Ok(entries)
}

/// What a sandbox run found.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxReport {
    /// The scratch database (dropped by now).
    pub database: String,
    /// Orders replayed.
    pub orders: usize,
    /// Orders left out because their `order.created` is no longer in the stream (retention):
    /// they cannot be replayed from their start.
    pub incomplete: Vec<OrderId>,
    /// Recorded events fed (decoded, of the orders replayed).
    pub events: usize,
    /// Recorded messages that do not decode (not fed).
    pub undecodable: usize,
    /// Deliveries of a recorded event to a subscribed handler.
    pub deliveries: usize,
    /// Recorded outputs compared (those a handler emits: not the timers' and routes').
    pub compared: usize,
    pub differences: Vec<Difference>,
}

impl SandboxReport {
    /// Whether the sandbox's handlers did what was recorded.
    pub fn same(&self) -> bool {
        self.differences.is_empty()
    }
}

/// One handler's different reaction to one recorded input event.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub order_id: OrderId,
    /// The service whose handler reacted differently.
    pub service: Service,
    /// The recorded input: its stream sequence, type and id (the outputs' causation id).
    pub input_seq: u64,
    pub input_type: EventType,
    pub input_id: EventId,
    pub what: DifferenceKind,
}

/// How a handler's reaction differs.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DifferenceKind {
    /// It emitted other events (or other payloads) than recorded.
    Output(OutputDiff),
    /// It failed (nothing it did was kept); what it should have emitted follows as missing.
    Failed { error: String },
}

/// Feeds `entries` (whole orders, in stream order, as [`read_orders`] returns them) to
/// `handlers` in a scratch database on the server of `database_url`, and compares what they
/// emit with what was recorded. `settings` are dispatch's (radius, capacity, deadline) for the
/// couriers placed in the scratch state.
pub async fn replay(
    entries: &[EventEntry],
    database_url: &str,
    settings: &Settings,
    handlers: &Handlers,
) -> Result<SandboxReport, SandboxError> {
    replay_until(
        entries,
        database_url,
        settings,
        handlers,
        std::future::pending(),
    )
    .await
}

/// [`replay`], given up with [`SandboxError::Interrupted`] when `stop` resolves first (e.g. on
/// Ctrl-C); the scratch database is dropped either way.
pub async fn replay_until(
    entries: &[EventEntry],
    database_url: &str,
    settings: &Settings,
    handlers: &Handlers,
    stop: impl Future<Output = ()>,
) -> Result<SandboxReport, SandboxError> {
    let scratch = Scratch::create(database_url).await?;
    let result = tokio::select! {
        result = replay_in(&scratch, entries, settings, handlers) => result,
        () = stop => Err(SandboxError::Interrupted),
    };
    let database = scratch.name.clone();
    scratch.drop_database().await;
    let mut report = result?;
    report.database = database;
    Ok(report)
}

async fn replay_in(
    scratch: &Scratch,
    entries: &[EventEntry],
    settings: &Settings,
    handlers: &Handlers,
) -> Result<SandboxReport, SandboxError> {
    let decoded: Vec<(u64, &DecodedEvent)> = entries
        .iter()
        .filter_map(|entry| match &entry.event {
            EntryEvent::Decoded(event) => Some((entry.stream_seq, event)),
            EntryEvent::Undecodable(_) => None,
        })
        .collect();
    // an order whose order.created left the stream (retention) cannot be replayed from its start
    let created: BTreeSet<OrderId> = decoded
        .iter()
        .filter(|(_, event)| event.event_type == EventType::OrderCreated)
        .map(|(_, event)| event.data.order_id())
        .collect();
    let incomplete: BTreeSet<OrderId> = decoded
        .iter()
        .map(|(_, event)| event.data.order_id())
        .filter(|order| !created.contains(order))
        .collect();
    let recorded: Vec<(u64, &DecodedEvent)> = decoded
        .iter()
        .filter(|(_, event)| created.contains(&event.data.order_id()))
        .copied()
        .collect();
    let mut outputs: HashMap<(EventId, Service), Vec<&DecodedEvent>> = HashMap::new();
    for (_, event) in &recorded {
        if let Some(cause) = event.causation_id {
            let outside = event.source == Service::Dispatch
                && seed::outside_dispatch_handler(&event.data, true);
            if !outside {
                outputs
                    .entry((cause, event.source))
                    .or_default()
                    .push(event);
            }
        }
    }
    // Dispatch events that ended a waybill's wait outside the handler (the deadline timer's
    // failure, a courier's assignment over HTTP), by order. Their place in the stream is when
    // they were published, which may be after a cancellation dispatch handled later than them;
    // but a waybill whose wait ended so was not failed by a cancellation while it waited, so
    // they are applied as soon as dispatch has made the waybill wait.
    let mut wait_ended: HashMap<OrderId, Vec<&DecodedEvent>> = HashMap::new();
    for (_, event) in &recorded {
        let ends_wait = match &event.data {
            EventData::DispatchFailed(_) | EventData::CourierAssigned(_) => {
                seed::outside_dispatch_handler(&event.data, event.causation_id.is_some())
            }
            _ => false,
        };
        if event.source == Service::Dispatch && ends_wait {
            wait_ended
                .entry(event.data.order_id())
                .or_default()
                .push(event);
        }
    }
    let mut report = SandboxReport {
        database: String::new(),
        orders: created.len(),
        incomplete: incomplete.into_iter().collect(),
        events: recorded.len(),
        undecodable: entries.len() - decoded.len(),
        deliveries: 0,
        compared: 0,
        differences: Vec::new(),
    };
    let mut ids = compare::IdMap::default();
    for (seq, event) in recorded {
        let input = Envelope {
            id: event.event_id,
            source: event.source,
            time: event.time,
            causation_id: event.causation_id,
            traceparent: None,
            data: ids.translate(&event.data)?,
        };
        if event.source == Service::Order {
            seed::apply_order_event(scratch.pool(SandboxService::Order), &input).await?;
        }
        if event.source == Service::Dispatch
            && seed::outside_dispatch_handler(&event.data, event.causation_id.is_some())
        {
            seed::apply_dispatch_event(scratch.pool(SandboxService::Dispatch), &input.data).await?;
        }
        for service in SandboxService::ALL {
            let handler = handlers.of(service);
            if !handler.subscriptions().contains(&event.event_type) {
                continue;
            }
            let expected: Vec<&EventData> = outputs
                .get(&(event.event_id, service.service()))
                .map(|events| events.iter().map(|event| &event.data).collect())
                .unwrap_or_default();
            let pool = scratch.pool(service);
            seed_for(service, pool, &input, &expected, settings).await?;
            let consumer = jwl_outbox::durable_name(service.service(), event.event_type);
            let processed =
                jwl_outbox::process_one(pool, service.service(), handler, &consumer, &input).await;
            if service == SandboxService::Dispatch && event.event_type == EventType::WaybillCreated
            {
                seed::clear_couriers(pool).await?;
                for ended in wait_ended.get(&event.data.order_id()).into_iter().flatten() {
                    seed::apply_dispatch_event(pool, &ids.translate(&ended.data)?).await?;
                }
            }
            report.deliveries += 1;
            report.compared += expected.len();
            let difference = |what| Difference {
                order_id: event.data.order_id(),
                service: service.service(),
                input_seq: seq,
                input_type: event.event_type,
                input_id: event.event_id,
                what,
            };
            let emitted = match processed {
                Ok(Processed::Handled { emitted }) => emitted,
                Ok(Processed::Duplicate) => Vec::new(),
                Err(OutboxError::Handler(error)) => {
                    report.differences.push(difference(DifferenceKind::Failed {
                        error: error.to_string(),
                    }));
                    Vec::new()
                }
                Err(other) => {
                    report.differences.push(difference(DifferenceKind::Failed {
                        error: other.to_string(),
                    }));
                    Vec::new()
                }
            };
            let emitted: Vec<&EventData> = emitted.iter().map(|env| &env.data).collect();
            for diff in compare::compare_outputs(&expected, &emitted, &mut ids) {
                report
                    .differences
                    .push(difference(DifferenceKind::Output(diff)));
            }
        }
    }
    Ok(report)
}

/// The state `service`'s handler needs for `input` that no event carries (see [`seed`]).
async fn seed_for(
    service: SandboxService,
    pool: &sqlx::PgPool,
    input: &Envelope,
    expected: &[&EventData],
    settings: &Settings,
) -> Result<(), SandboxError> {
    match (service, &input.data) {
        (SandboxService::Inventory, EventData::PaymentAuthorized(payment)) => {
            let short: Vec<String> = expected
                .iter()
                .flat_map(|data| match data {
                    EventData::InventoryRejected(rejected) => rejected.unavailable_skus.clone(),
                    _ => Vec::new(),
                })
                .collect();
            seed::stock_for(pool, &payment.items, &short).await
        }
        (SandboxService::Dispatch, EventData::WaybillCreated(created)) => {
            let assigned = expected.iter().find_map(|data| match data {
                EventData::CourierAssigned(assigned) => Some(assigned),
                _ => None,
            });
            seed::courier_for(pool, &created.pickup, assigned, settings).await
        }
        _ => Ok(()),
    }
}

/// The report as text: for each recorded input a handler reacted to differently, a header
/// (order, service, input) and one line per difference (`-` recorded only, `+` sandbox only,
/// `~` changed fields, or the handler's failure), then a summary line.
pub fn render(report: &SandboxReport) -> String {
    let mut out = String::new();
    let mut last: Option<(OrderId, Service, u64)> = None;
    for difference in &report.differences {
        let key = (
            difference.order_id,
            difference.service,
            difference.input_seq,
        );
        if last != Some(key) {
            let _ = writeln!(
                out,
                "order {} — {} on {} (seq {}, id {}):",
                difference.order_id,
                difference.service.as_str(),
                difference.input_type.as_str(),
                difference.input_seq,
                difference.input_id
            );
            last = Some(key);
        }
        match &difference.what {
            DifferenceKind::Failed { error } => {
                let _ = writeln!(out, "  handler failed: {error}");
            }
            DifferenceKind::Output(OutputDiff::Missing { event_type, data }) => {
                let _ = writeln!(out, "  - recorded {} {data}", event_type.as_str());
            }
            DifferenceKind::Output(OutputDiff::Unexpected { event_type, data }) => {
                let _ = writeln!(out, "  + sandbox  {} {data}", event_type.as_str());
            }
            DifferenceKind::Output(OutputDiff::Changed { event_type, fields }) => {
                let _ = writeln!(out, "  ~ {}", event_type.as_str());
                for field in fields {
                    let _ = writeln!(
                        out,
                        "    {}: recorded {} / sandbox {}",
                        field.path, field.recorded, field.sandbox
                    );
                }
            }
        }
    }
    let verdict = if report.same() {
        "no difference".to_owned()
    } else {
        format!("{} difference(s)", report.differences.len())
    };
    if !report.incomplete.is_empty() {
        let _ = writeln!(
            out,
            "left out {} order(s) whose order.created is no longer in the stream: {}",
            report.incomplete.len(),
            report
                .incomplete
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = writeln!(
        out,
        "sandbox: {} orders, {} events ({} undecodable), {} deliveries, {} recorded outputs \
         compared: {verdict}",
        report.orders, report.events, report.undecodable, report.deliveries, report.compared
    );
    out
}
