//! Sandbox replay (`jwl replay --sandbox`) against a real run: a mixed run of orders
//! (dispatched, declined, out of stock, no courier, some of those cancelled) replayed against this build's handlers
//! shows no difference (exit 0); the same run replayed with a payment handler changed to
//! decline large orders shows the diff catching it.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jwl_e2e::{LineItem, NewOrder, OrderStatus, Point, System, SystemOptions, with_system};
use jwl_events::{Envelope, EventData, EventType};
use jwl_outbox::{Handler, HandlerContext, HandlerError, JetStreamBroker, MessagingSettings};
use jwl_sandbox::{DifferenceKind, Handlers, OutputDiff};
use jwl_service_kit::Settings;

/// Orders of the mixed run (a quarter of each kind). 200 as the issue asks; the whole test
/// takes about a minute on a 2-core machine.
const ORDERS: usize = 200;
/// Every this many orders, a dispatched order is large (5 units instead of 1).
const LARGE_EVERY: usize = 40;
const PRICE_CENTS: i64 = 1250;
/// The sandbox's scratch databases on the server.
const SCRATCH_DATABASES: &str =
    "SELECT datname FROM pg_database WHERE datname LIKE 'jwl\\_sandbox\\_%'";
/// Every this many orders, a no-courier order is cancelled by its customer.
const CANCEL_EVERY: usize = 20;
/// How long the whole run may take to finish on a busy machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// The changed handler: the current payment handler, except that it declines any order above
/// `above_cents` paid with an accepted card (as if the card processor had refused it).
struct DeclineLarge {
    inner: Arc<dyn Handler>,
    above_cents: i64,
}

#[async_trait]
impl Handler for DeclineLarge {
    fn subscriptions(&self) -> &'static [EventType] {
        self.inner.subscriptions()
    }

    async fn handle(
        &self,
        ctx: &mut HandlerContext<'_>,
        event: &Envelope,
    ) -> Result<(), HandlerError> {
        if let EventData::OrderCreated(order) = &event.data
            && order.amount_cents > self.above_cents
        {
            let mut changed = event.clone();
            if let EventData::OrderCreated(order) = &mut changed.data {
                order.payment_token = jwl_payment::DECLINED_TOKEN.to_owned();
            }
            return self.inner.handle(ctx, &changed).await;
        }
        self.inner.handle(ctx, event).await
    }
}

fn tea(qty: u32) -> LineItem {
    LineItem {
        sku: "TEA".to_owned(),
        qty,
        unit_price_cents: PRICE_CENTS,
    }
}

/// Order `n` of the mix: declined, out of stock (one of its two SKUs), no courier (picked up
/// 50 km from every courier), or dispatched (some of them large).
fn mixed_order(n: usize) -> NewOrder {
    let here = Point::JIANGWAN;
    let (items, pickup, token) = match n % 4 {
        0 => (vec![tea(1)], here, "tok_decline"),
        1 => (
            vec![
                tea(1),
                LineItem {
                    sku: "RARE".to_owned(),
                    qty: 2,
                    unit_price_cents: PRICE_CENTS,
                },
            ],
            here,
            "tok_ok",
        ),
        2 => (vec![tea(1)], here.offset_km(50.0, 0.0), "tok_ok"),
        _ if n % LARGE_EVERY == 3 => (vec![tea(5)], here, "tok_ok"),
        _ => (vec![tea(1)], here.offset_km(0.3, 0.0), "tok_ok"),
    };
    NewOrder {
        items,
        pickup,
        dropoff: pickup.offset_km(2.0, 0.0),
        payment_token: token.to_owned(),
    }
}

/// `jwl replay --sandbox <args>` as an operator runs it: (exit code, stdout, stderr).
fn jwl_sandbox(system: &System, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let output = Command::new(jwl_e2e::binary::jwl_binary()?)
        .args(["replay", "--sandbox"])
        .args(args)
        .env("JWL_NATS_URL", system.nats_urls()?)
        .env("JWL_DATABASE_URL", system.database().url())
        .output()?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn sandbox_replay_finds_no_difference_and_catches_a_changed_handler() -> anyhow::Result<()> {
    let options = SystemOptions {
        dispatch_deadline: Duration::from_secs(3),
        courier_capacity: 40,
        ..SystemOptions::default()
    };
    with_system(options, async |system| {
        let started = Instant::now();
        system.set_stock("TEA", 100_000).await?;
        system.set_stock("RARE", 1).await?;
        system.line_up_couriers(3, 1.0).await?;
        let since = chrono::Utc::now() - chrono::Duration::seconds(1);
        let orders: Vec<NewOrder> = (0..ORDERS).map(mixed_order).collect();
        let placed = system.place_orders(orders).await?;
        // some customers of no-courier orders cancel at once: dispatch decides (a tombstone
        // before the waybill, a failure while it waits, nothing once the timer failed it)
        for placed in placed.iter().skip(2).step_by(CANCEL_EVERY) {
            let token = system.tokens().customer(&placed.customer_id)?;
            let reply = system.api().cancel_order(&token, &placed.order_id).await?;
            assert!(
                reply.status.is_success() || reply.status.as_u16() == 409,
                "{reply:?}"
            );
        }
        let views = system.wait_all_terminal(&placed, RUN_TIMEOUT).await?;
        let count = |status: OrderStatus| views.iter().filter(|v| v.status == status).count();
        let (dispatched, rejected, cancelled) = (
            count(OrderStatus::Dispatched),
            count(OrderStatus::Rejected),
            count(OrderStatus::Cancelled),
        );
        assert_eq!(dispatched, ORDERS / 4, "dispatched");
        assert_eq!(rejected, ORDERS / 4, "declined");
        assert_eq!(cancelled, ORDERS / 2, "out of stock and no courier");
        let run_took = started.elapsed();

        // unchanged code: no difference, exit 0
        let since_arg = since.to_rfc3339();
        let replay_started = Instant::now();
        let (code, stdout, stderr) = jwl_sandbox(system, &["--since", &since_arg])?;
        let replay_took = replay_started.elapsed();
        assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(
            stdout.contains(&format!("sandbox: {ORDERS} orders"))
                && stdout.contains("no difference"),
            "{stdout}"
        );
        print!("{stdout}");
        // interrupted (Ctrl-C) once its scratch database exists: exit 2, the database dropped
        let db = system.database().pool().await?;
        let mut running = Command::new(jwl_e2e::binary::jwl_binary()?)
            .args(["replay", "--sandbox", "--since", &since_arg])
            .env("JWL_NATS_URL", system.nats_urls()?)
            .env("JWL_DATABASE_URL", system.database().url())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        jwl_e2e::eventually("the sandbox's scratch database", RUN_TIMEOUT, || async {
            let scratch: Vec<(String,)> = sqlx::query_as(SCRATCH_DATABASES)
                .fetch_all(&db)
                .await
                .map_err(|e| e.to_string())?;
            if scratch.is_empty() {
                Err("not created yet".to_owned())
            } else {
                Ok(())
            }
        })
        .await?;
        let signalled = Command::new("kill")
            .args(["-INT", &running.id().to_string()])
            .status()?;
        assert!(signalled.success());
        let status = running.wait()?;
        let mut stderr = String::new();
        if let Some(mut pipe) = running.stderr.take() {
            std::io::Read::read_to_string(&mut pipe, &mut stderr)?;
        }
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("interrupted"), "{stderr}");
        let left: Vec<(String,)> = sqlx::query_as(SCRATCH_DATABASES).fetch_all(&db).await?;
        assert_eq!(left, Vec::new());

        // one order alone, too
        let (code, stdout, stderr) = jwl_sandbox(system, &["--order", &placed[3].order_id])?;
        assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");

        // a changed payment handler: the library, with the changed handler in place
        let broker = JetStreamBroker::connect(&system.nats_urls()?).await?;
        let selection = jwl_ops::Selection {
            since: Some(since),
            ..Default::default()
        };
        let entries =
            jwl_sandbox::read_orders(&broker, &MessagingSettings::default(), &selection).await?;
        let settings = Settings {
            dispatch_radius_km: system.options().dispatch_radius_km,
            courier_capacity: system.options().courier_capacity,
            dispatch_deadline: system.options().dispatch_deadline,
            ..Settings::default()
        };
        let current = Handlers::current(Arc::new(settings.clone()));
        let changed = Handlers {
            payment: Arc::new(DeclineLarge {
                inner: current.payment.clone(),
                above_cents: 4 * PRICE_CENTS,
            }),
            ..current
        };
        let report =
            jwl_sandbox::replay(&entries, system.database().url(), &settings, &changed).await?;
        println!("the diff of the changed payment handler:");
        print!("{}", jwl_sandbox::render(&report));
        let large: Vec<&str> = placed
            .iter()
            .filter(|p| p.order.amount_cents() > 4 * PRICE_CENTS)
            .map(|p| p.order_id.as_str())
            .collect();
        assert_eq!(large.len(), ORDERS / LARGE_EVERY);
        assert!(!report.same());
        for difference in &report.differences {
            let order = difference.order_id.to_string();
            assert!(large.contains(&order.as_str()), "{difference:?}");
        }
        for order in &large {
            let of_order: Vec<&DifferenceKind> = report
                .differences
                .iter()
                .filter(|d| d.order_id.to_string() == *order)
                .map(|d| &d.what)
                .collect();
            assert!(
                of_order.iter().any(|what| matches!(
                    what,
                    DifferenceKind::Output(OutputDiff::Missing {
                        event_type: EventType::PaymentAuthorized,
                        ..
                    })
                )),
                "{of_order:?}"
            );
            assert!(
                of_order.iter().any(|what| matches!(
                    what,
                    DifferenceKind::Output(OutputDiff::Unexpected {
                        event_type: EventType::PaymentDeclined,
                        ..
                    })
                )),
                "{of_order:?}"
            );
        }
        // the scratch databases are gone
        let scratch: Vec<(String,)> = sqlx::query_as(SCRATCH_DATABASES).fetch_all(&db).await?;
        assert_eq!(scratch, Vec::new());
        println!(
            "e2e sandbox: {ORDERS} orders (run {:.1}s), jwl replay --sandbox {:.1}s, changed \
             handler: {} differences over {} large orders",
            run_took.as_secs_f64(),
            replay_took.as_secs_f64(),
            report.differences.len(),
            large.len()
        );
        Ok(())
    })
    .await
}
