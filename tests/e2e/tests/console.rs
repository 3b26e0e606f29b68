//! The operator's console in a browser: three orders with different outcomes (dispatched,
//! payment declined, out of stock), a dead letter of a real event, and a message held behind a
//! real dead letter (a contradicting `payment.captured` of the out-of-stock order, which
//! inventory refuses for good, holding the order there, then a second `payment.authorized` of
//! it, which inventory parks); then a headless Chromium driven by `tests/e2e/console/drive.mjs`
//! (playwright-core) against the order service's `/console`: the sign-in refuses a bad token,
//! each order shows its status, swim lanes and events, the dead letter is inline on its order
//! and grouped on the dead-letters view, is redriven through the page, the held message is a
//! grey box on inventory's lane ("held behind dead letter #N") and the order is marked held in
//! inventory, and once that dead letter is discarded through the page the order is held no
//! more; an event payment committed for the declined order but the broker refused for good
//! (a header NATS cannot carry, so payment's relay parks the row) is a dashed box on payment's
//! lane with the broker's error; the stuck view answers, and the live figures show no open order and every service's
//! outbox. The order service runs with `JWL_CONSOLE_PEERS` naming the
//! other services, so each order also shows its current state in each of them (payment
//! captured or declined, inventory committed, the waybill, the courier). Screenshots go to
//! `console-shots/` in the cargo target directory's `tmp/`, kept after the run (their paths are
//! printed). After the page: the dead-letter stream is empty, both outcomes are recorded with the
//! admin token's subject, and inventory holds nothing of the order any more.
//!
//! Chromium (Debian's `chromium`) and npm's `playwright-core` are optional tools
//! (`scripts/install-deps` installs them): without them the test prints SKIPPED and passes.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use jwl_e2e::{
    LineItem, NewOrder, OrderStatus, Point, Service, System, SystemOptions, eventually, with_system,
};
use jwl_events::{Envelope, EventData, EventType, HeaderStyle, PaymentCaptured, PaymentDeclined};
use serde_json::json;

const SAGA_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a crafted event may take to be dead-lettered or parked.
const HOLD_TIMEOUT: Duration = Duration::from_secs(30);
/// The consumer the crafted dead letter names (payment's handling of `order.created`).
const CONSUMER: &str = "payment__order_created";
/// The consumer that really dead-letters the contradicting `payment.captured`.
const HOLDING_CONSUMER: &str = "inventory__payment_captured";

/// Chromium, node and the playwright-core module directory, or why the test cannot run.
struct Browser {
    chromium: PathBuf,
    modules: PathBuf,
}

fn browser() -> Result<Browser, String> {
    let chromium = std::env::var_os("JWL_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| {
            ["chromium", "chromium-browser"].iter().find_map(|name| {
                let path = PathBuf::from("/usr/bin").join(name);
                path.exists().then_some(path)
            })
        })
        .ok_or("chromium is not installed")?;
    Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .ok_or("node is not installed")?;
    let tools = std::env::var_os("JWL_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/jwl/tools"))
        })
        .ok_or("neither JWL_TOOLS_DIR nor HOME is set")?;
    let modules = tools.join("node/node_modules");
    if !modules.join("playwright-core/package.json").exists() {
        return Err(format!("playwright-core is not in {}", modules.display()));
    }
    Ok(Browser { chromium, modules })
}

fn order(sku: &str, payment_token: &str) -> NewOrder {
    NewOrder {
        items: vec![LineItem {
            sku: sku.to_owned(),
            qty: 1,
            unit_price_cents: 1250,
        }],
        pickup: Point::JIANGWAN,
        dropoff: Point::JIANGWAN.offset_km(2.0, 0.0),
        payment_token: payment_token.to_owned(),
    }
}

/// Publishes a dead letter of `order_id`'s real `order.created` event, as payment's consumer
/// writes one when it gives up (reason `permanent`); returns its sequence in `JWL_DLQ`.
async fn dead_letter_of_order_created(system: &System, order_id: &str) -> anyhow::Result<u64> {
    let events = system.broker().events().await?;
    let created = events
        .events
        .iter()
        .find(|event| {
            event.envelope.order_id().to_string() == order_id
                && event.envelope.event_type() == EventType::OrderCreated
        })
        .context("the order's order.created is in the events stream")?;
    let wire = jwl_events::encode(&created.envelope, HeaderStyle::Nats);
    let mut headers = wire.headers.clone();
    headers.extend(
        [
            ("jwl-dlq-consumer", CONSUMER.to_owned()),
            ("jwl-dlq-reason", "permanent".to_owned()),
            (
                "jwl-dlq-error",
                "console test: the card processor refused the token".to_owned(),
            ),
            ("jwl-dlq-subject", created.subject.clone()),
            ("jwl-dlq-stream-seq", created.sequence.to_string()),
            ("jwl-dlq-order-id", order_id.to_owned()),
        ]
        .map(|(name, value)| (name.to_owned(), value)),
    );
    system
        .broker()
        .nats()?
        .publish_raw(
            &format!("jwl.dlq.{CONSUMER}.{order_id}"),
            &headers,
            wire.payload,
            &format!("console-test-dlq-{order_id}"),
        )
        .await
}

/// Publishes `envelope` to the events stream as its emitter would.
async fn publish(system: &System, envelope: &Envelope) -> anyhow::Result<u64> {
    let wire = jwl_events::encode(envelope, HeaderStyle::Nats);
    system
        .broker()
        .nats()?
        .publish_raw(
            &wire.subject,
            &wire.headers,
            wire.payload,
            &envelope.id.0.to_string(),
        )
        .await
}

/// Holds `order_id` (out of stock, so inventory rejected it) in inventory behind a real dead
/// letter, and parks a message behind it: a `payment.captured` of the order contradicts
/// inventory's rejection, so its handler refuses it for good (dead letter, hold); then a second
/// `payment.authorized` of the order (the real one's data as a new event), which inventory would
/// ignore, is parked. Returns the parked event's id once inventory's admin route lists it.
async fn hold_in_inventory(system: &System, order_id: &str) -> anyhow::Result<String> {
    let events = system.broker().events().await?;
    let authorized = events
        .events
        .iter()
        .find(|event| {
            event.envelope.order_id().to_string() == order_id
                && event.envelope.event_type() == EventType::PaymentAuthorized
        })
        .context("the order's payment.authorized is in the events stream")?
        .envelope
        .clone();
    let EventData::PaymentAuthorized(payment) = &authorized.data else {
        anyhow::bail!("a payment.authorized without its data: {authorized:?}");
    };
    let mut captured = Envelope::new(
        Service::Payment,
        EventData::PaymentCaptured(PaymentCaptured {
            order_id: payment.order_id,
            amount_cents: payment.amount_cents,
        }),
    );
    captured.causation_id = authorized.causation_id;
    publish(system, &captured).await?;
    let api = system.api();
    let token = system.admin_token();
    eventually("inventory holds the order", HOLD_TIMEOUT, || async {
        let holds = api.holds(token, Service::Inventory, order_id).await?;
        anyhow::ensure!(holds["held"] == json!(true), "not held yet: {holds}");
        anyhow::ensure!(
            holds["holds"][0]["consumer"] == HOLDING_CONSUMER
                && holds["holds"][0]["head_event_id"] == json!(captured.id.0.to_string()),
            "held by another head: {holds}"
        );
        Ok(())
    })
    .await?;
    // the same payment again, as a new event (a new id and time)
    let mut again = Envelope::new(Service::Payment, authorized.data.clone());
    again.causation_id = authorized.causation_id;
    publish(system, &again).await?;
    let parked = again.id.0.to_string();
    eventually(
        "inventory parks the second payment.authorized",
        HOLD_TIMEOUT,
        || async {
            let holds = api.holds(token, Service::Inventory, order_id).await?;
            anyhow::ensure!(
                holds["parked_messages"][0]["event_id"] == json!(parked)
                    && holds["parked_messages"][0]["event_type"] == "jwl.payment.authorized",
                "not parked yet: {holds}"
            );
            Ok(())
        },
    )
    .await?;
    Ok(parked)
}

/// Commits a second `payment.declined` of `order_id` to payment's outbox with a header the
/// broker cannot carry, so that payment's relay parks it for good; returns its event id once
/// payment's admin route lists it as a parked row.
async fn park_in_payments_outbox(system: &System, order_id: &str) -> anyhow::Result<String> {
    let payment = system.api().payment(system.admin_token(), order_id).await?;
    let declined = Envelope::new(
        Service::Payment,
        EventData::PaymentDeclined(PaymentDeclined {
            order_id: order_id.parse()?,
            amount_cents: payment.amount_cents,
            reason: "console test: a header the broker refuses".to_owned(),
        }),
    );
    let pool = system.database().pool().await?;
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL search_path = jwl_payment")
        .execute(&mut *tx)
        .await?;
    jwl_outbox::enqueue(&mut tx, &declined).await?;
    sqlx::query(
        "UPDATE outbox SET headers = headers || '[[\"bad header\", \"x\"]]'::jsonb
         WHERE event_id = $1",
    )
    .bind(declined.id.0)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    pool.close().await;
    let event_id = declined.id.0.to_string();
    let api = system.api();
    let token = system.admin_token();
    eventually("payment's relay parks the row", HOLD_TIMEOUT, || async {
        let holds = api.holds(token, Service::Payment, order_id).await?;
        anyhow::ensure!(
            holds["parked_rows"][0]["event_id"] == json!(event_id)
                && holds["parked_rows"][0]["last_error"]
                    .as_str()
                    .is_some_and(|error| error.contains("invalid header")),
            "not parked yet: {holds}"
        );
        Ok(())
    })
    .await?;
    Ok(event_id)
}

/// The outcome records on `jwl.dlqlog.>` (JSON), read with an ordered consumer.
async fn dead_letter_outcomes(system: &System) -> anyhow::Result<Vec<serde_json::Value>> {
    let client = async_nats::connect(system.nats_urls()?).await?;
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = jetstream.get_stream("JWL_DLQ_LOG").await?;
    let count = stream.info().await?.state.messages;
    let mut outcomes = Vec::new();
    if count == 0 {
        return Ok(outcomes);
    }
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: "jwl.dlqlog.>".to_owned(),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    while (outcomes.len() as u64) < count {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .context("reading the dead-letter log")?
            .context("the dead-letter log ended early")??;
        outcomes.push(serde_json::from_slice(&message.payload)?);
    }
    Ok(outcomes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_reads_sagas_and_redrives_a_dead_letter_in_the_console() -> anyhow::Result<()> {
    let browser = match browser() {
        Ok(browser) => browser,
        Err(why) => {
            // straight to stderr, past the test harness's capture
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {why}, so the console browser test did not run \
                 (scripts/install-deps installs chromium and playwright-core)"
            );
            return Ok(());
        }
    };
    let options = SystemOptions {
        courier_capacity: 5,
        ..SystemOptions::default()
    };
    with_system(options, async |system| {
        system.set_stock("TEA", 10).await?;
        system.set_stock("SCARCE", 0).await?;
        system.line_up_couriers(2, 0.2).await?;
        let placed = system
            .place_orders(vec![
                order("TEA", "tok_ok"),
                order("TEA", "tok_decline"),
                order("SCARCE", "tok_ok"),
            ])
            .await?;
        let views = system.wait_all_terminal(&placed, SAGA_TIMEOUT).await?;
        let statuses: Vec<OrderStatus> = views.iter().map(|view| view.status).collect();
        assert_eq!(
            statuses,
            [
                OrderStatus::Dispatched,
                OrderStatus::Rejected,
                OrderStatus::Cancelled
            ],
            "{views:?}"
        );
        let dispatched = &placed[0].order_id;
        let seq = dead_letter_of_order_created(system, dispatched).await?;
        let out_of_stock = &placed[2].order_id;
        let parked = hold_in_inventory(system, out_of_stock).await?;
        let declined = &placed[1].order_id;
        let unsent = park_in_payments_outbox(system, declined).await?;

        // the console reads each order's state in the other services from their own replicas
        let peers = [
            Service::Payment,
            Service::Inventory,
            Service::Fulfillment,
            Service::Dispatch,
        ]
        .map(|service| format!("{service}={}", system.service(service).base_url()))
        .join(",");
        system
            .service(Service::Order)
            .restart_with(&[("JWL_CONSOLE_PEERS", &peers)])
            .await?;

        // kept after the run (the log directory is swept by the next e2e test process)
        let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-shots");
        std::fs::create_dir_all(&shots)?;
        let cases = json!({
            "orders": [
                {"id": placed[0].order_id, "status": "dispatched",
                 "sees": ["order.created", "payment.authorized", "inventory.reserved",
                          "fulfillment.waybill_created", "dispatch.courier_assigned",
                          "payment: captured 1250 ¢", "inventory: committed (TEA ×1)",
                          "fulfillment: waybill ", "dispatch: courier "]},
                {"id": placed[1].order_id, "status": "rejected",
                 "sees": ["order.created", "payment.declined", "payment: declined",
                          "fulfillment: the order has no waybill yet"]},
                {"id": placed[2].order_id, "status": "cancelled",
                 "sees": ["inventory.rejected", "payment.voided (compensation)", "out_of_stock"]},
            ],
            "dead_letter": {"seq": seq, "order_id": dispatched, "consumer": CONSUMER,
                            "reason": "permanent"},
            "held": {"order_id": out_of_stock, "service": "inventory",
                     "consumer": HOLDING_CONSUMER, "reason": "permanent",
                     "event": "payment.authorized", "head": "payment.captured"},
            "parked_row": {"order_id": declined, "service": "payment",
                           "event": "payment.declined", "error": "invalid header"},
        });
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("console/drive.mjs");
        let output = tokio::task::spawn_blocking({
            let url = system.api().base_url(Service::Order)?.to_owned();
            let token = system.admin_token().to_owned();
            let shots = shots.clone();
            move || {
                Command::new("node")
                    .arg(script)
                    .env("CONSOLE_URL", url)
                    .env("ADMIN_TOKEN", token)
                    .env("CHROMIUM", &browser.chromium)
                    .env("PLAYWRIGHT_MODULES", &browser.modules)
                    .env("SHOTS", shots)
                    .env("CASES", cases.to_string())
                    .output()
            }
        })
        .await?
        .context("running node")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        println!("{stdout}");
        anyhow::ensure!(
            output.status.success() && stdout.lines().any(|line| line == "ok"),
            "the console drive failed ({}):\n{stdout}\n{stderr}",
            output.status
        );
        let screenshots: Vec<&str> = stdout
            .lines()
            .filter(|line| line.starts_with("screenshot "))
            .collect();
        assert!(screenshots.len() >= 13, "{stdout}");
        for line in &screenshots {
            let path = line.split(' ').nth(1).unwrap_or_default();
            assert!(std::fs::metadata(path)?.len() > 0, "{path} is empty");
        }

        // what the page did is what the broker holds
        assert_eq!(system.broker().dead_letter_count().await?, 0);
        let outcomes = dead_letter_outcomes(system).await?;
        let outcome = outcomes
            .iter()
            .find(|outcome| outcome["dlq_seq"] == json!(seq))
            .with_context(|| format!("no outcome for dead letter {seq}: {outcomes:?}"))?;
        assert_eq!(outcome["action"], "redriven", "{outcome}");
        assert_eq!(outcome["operator"], "e2e-operator", "{outcome}");
        let discarded = outcomes
            .iter()
            .find(|outcome| outcome["action"] == "discarded")
            .with_context(|| format!("no discard outcome: {outcomes:?}"))?;
        assert_eq!(discarded["operator"], "e2e-operator", "{discarded}");
        // the discard released the hold: the parked message was handled, nothing is held back
        let holds = system
            .api()
            .holds(system.admin_token(), Service::Inventory, out_of_stock)
            .await?;
        assert_eq!(
            (&holds["held"], &holds["parked_messages"]),
            (&json!(false), &json!([])),
            "{holds}"
        );
        println!(
            "e2e console: 3 orders, dead letter {seq} redriven through the page, {parked} held \
             behind inventory's dead letter shown and released by a discard, payment's unsent \
             {unsent} shown, {} screenshots in {}",
            screenshots.len(),
            shots.display()
        );
        Ok(())
    })
    .await
}
