//! Shared by the integration tests: a private nats-server with the jwl streams, realistic
//! sagas, and publishing of encoded events, raw messages and dead letters in the outbox's format.

#![allow(dead_code)] // each test file uses a different part

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage};
use chrono::{DateTime, Utc};
use jwl_events::{
    CourierAssigned, CourierId, Envelope, EventData, GeoPoint, InventoryReserved, LineItem,
    OrderCreated, OrderId, PaymentAuthorized, PaymentCaptured, Service, WaybillCreated, WaybillId,
};
use jwl_outbox::{JetStreamBroker, MessagingSettings};
use jwl_testkit::TestNats;
#[allow(unused_imports)] // each test file uses a different part
pub use jwl_testkit::service::{publish_dead_letter, publish_events as publish};

/// Deadline for conditions that should hold within a second or two.
pub const SOON: Duration = Duration::from_secs(20);

/// A private nats-server with `JWL_EVENTS` and `JWL_DLQ` provisioned.
pub struct Broker {
    pub nats: TestNats,
    pub broker: JetStreamBroker,
    pub settings: MessagingSettings,
}

impl Broker {
    pub async fn start() -> anyhow::Result<Broker> {
        let nats = jwl_testkit::nats().await?;
        let broker = JetStreamBroker::connect(nats.url()).await?;
        let settings = MessagingSettings::default();
        broker.ensure_streams(&settings).await?;
        Ok(Broker {
            nats,
            broker,
            settings,
        })
    }

    pub fn js(&self) -> &jetstream::Context {
        self.broker.jetstream()
    }
}

fn geo(lat: f64) -> GeoPoint {
    GeoPoint::new(lat, 121.47).unwrap()
}

/// The happy path of one order, each event caused by the one before, in one trace:
/// created → authorized → reserved → waybill created → courier assigned → captured.
pub fn saga(order_id: OrderId) -> Vec<Envelope> {
    let items = vec![
        LineItem {
            sku: "TEA-250G".to_owned(),
            qty: 2,
            unit_price_cents: 1000,
        },
        LineItem {
            sku: "MOONCAKE-6".to_owned(),
            qty: 1,
            unit_price_cents: 598,
        },
    ];
    let (pickup, dropoff) = (geo(31.23), geo(31.22));
    let waybill_id = WaybillId::new();
    let data: Vec<(Service, EventData)> = vec![
        (
            Service::Order,
            OrderCreated {
                order_id,
                customer_id: "cust-42".to_owned(),
                items: items.clone(),
                amount_cents: 2598,
                pickup,
                dropoff,
                payment_token: "tok_ok".to_owned(),
                deadline: Utc::now() + chrono::Duration::minutes(5),
            }
            .into(),
        ),
        (
            Service::Payment,
            PaymentAuthorized {
                order_id,
                amount_cents: 2598,
                items: items.clone(),
                pickup,
                dropoff,
            }
            .into(),
        ),
        (
            Service::Inventory,
            InventoryReserved {
                order_id,
                items,
                pickup,
                dropoff,
            }
            .into(),
        ),
        (
            Service::Fulfillment,
            WaybillCreated {
                order_id,
                waybill_id,
                pickup,
                dropoff,
            }
            .into(),
        ),
        (
            Service::Dispatch,
            CourierAssigned {
                order_id,
                waybill_id,
                courier_id: CourierId::parse("courier-7").unwrap(),
                distance_km: 0.42,
            }
            .into(),
        ),
        (
            Service::Payment,
            PaymentCaptured {
                order_id,
                amount_cents: 2598,
            }
            .into(),
        ),
    ];
    let trace = format!("00-{}-00f067aa0ba902b7-01", order_id.0.simple());
    let mut events: Vec<Envelope> = Vec::new();
    for (source, data) in data {
        let event = match events.last() {
            None => Envelope::new(source, data).with_traceparent(trace.clone()),
            Some(cause) => Envelope::new(source, data).caused_by(cause),
        };
        events.push(event);
    }
    events
}

/// A small event (for filling streams).
pub fn captured(order_id: OrderId, amount_cents: i64) -> Envelope {
    Envelope::new(
        Service::Payment,
        PaymentCaptured {
            order_id,
            amount_cents,
        }
        .into(),
    )
}

pub fn header_map(headers: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(name.as_str(), value.as_str());
    }
    map
}

/// Publishes a message and returns its stream sequence.
pub async fn publish_raw(
    js: &jetstream::Context,
    subject: &str,
    headers: &[(String, String)],
    payload: &[u8],
) -> anyhow::Result<u64> {
    let message = PublishMessage::build()
        .payload(payload.to_vec().into())
        .headers(header_map(headers));
    Ok(js
        .send_publish(subject.to_owned(), message)
        .await?
        .await?
        .sequence)
}

/// The time the broker stored message `seq` of `stream`.
pub async fn stored_at(
    js: &jetstream::Context,
    stream: &str,
    seq: u64,
) -> anyhow::Result<DateTime<Utc>> {
    let message = js
        .get_stream_no_info(stream)
        .await?
        .get_raw_message(seq)
        .await?;
    let nanos = i64::try_from(message.time.unix_timestamp_nanos())?;
    Ok(DateTime::from_timestamp_nanos(nanos))
}

/// Waits until the clock is past `time` by `margin`, so that what is published next is stored
/// clearly later than everything before.
pub async fn clock_passes(time: DateTime<Utc>, margin: Duration) -> anyhow::Result<()> {
    let target = time + chrono::Duration::from_std(margin)?;
    jwl_testkit::eventually("the clock passes the mark", SOON, || async {
        Utc::now() > target
    })
    .await
}
