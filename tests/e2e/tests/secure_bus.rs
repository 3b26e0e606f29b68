//! The system on a secured bus, as `deploy/nats/` ships it: one nats-server requiring TLS and
//! client certificates (made by the test with rcgen), with the users and permissions of
//! `deploy/nats/jwl-auth.conf`. Each of the five `jwl serve` processes connects as its own user
//! (`JWL_NATS_USER`/`JWL_NATS_PASSWORD`, `JWL_NATS_TLS_*`), so the saga running to delivery shows
//! that every subject a service needs is allowed; the operator commands (`jwl saga show`,
//! `jwl replay --to`, `jwl dlq ls`) run as `jwl-operator`.
//! A service given a wrong password stops at start-up with a message that says so, and the
//! password is shown nowhere.

use std::process::Command;
use std::time::{Duration, Instant};

use jwl_e2e::binary::jwl_binary;
use jwl_e2e::{LineItem, NewOrder, OrderStatus, Point, System, SystemOptions, with_system};

/// How long one saga may take on a busy 2-core machine.
const SAGA_TIMEOUT: Duration = Duration::from_secs(60);
/// A refused start-up must end well within this (a hang or a retry loop would not).
const REFUSED_START_BOUND: Duration = Duration::from_secs(20);

fn secured() -> SystemOptions {
    SystemOptions {
        secure_bus: true,
        ..SystemOptions::default()
    }
}

/// `jwl <args>` as the operator on the system's secured bus.
fn operator_command(system: &System, args: &[&str]) -> anyhow::Result<Command> {
    let nats = system
        .secure_nats()
        .ok_or_else(|| anyhow::anyhow!("not a secured bus"))?;
    let mut command = Command::new(jwl_binary()?);
    command
        .args(args)
        .env_clear()
        .envs(nats.env("operator")?)
        .env("JWL_DATABASE_URL", system.database().url())
        .env("RUST_LOG", "warn");
    Ok(command)
}

/// Runs `jwl <args>` as the operator; its stdout, or an error with its stderr.
fn operator(system: &System, args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::task::block_in_place(|| -> anyhow::Result<_> {
        Ok(operator_command(system, args)?.output()?)
    })?;
    anyhow::ensure!(
        output.status.success(),
        "jwl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_runs_to_delivery_with_a_user_per_service_over_tls() -> anyhow::Result<()> {
    let started = Instant::now();
    with_system(secured(), async |system| {
        system.set_stock("TEA", 5).await?;
        let pickup = Point::JIANGWAN;
        system
            .move_courier("courier-1", pickup.offset_km(0.5, 0.5))
            .await?;
        let placed = system
            .place_order(
                "alice",
                NewOrder {
                    items: vec![LineItem {
                        sku: "TEA".to_owned(),
                        qty: 2,
                        unit_price_cents: 1250,
                    }],
                    pickup,
                    dropoff: pickup.offset_km(2.0, 0.0),
                    payment_token: "tok_ok".to_owned(),
                },
            )
            .await?;
        let view = system.wait_terminal(&placed.order_id, SAGA_TIMEOUT).await?;
        assert_eq!(view.status, OrderStatus::Dispatched, "{view:?}");
        let waybill_id = view
            .waybill_id
            .clone()
            .expect("a dispatched order has a waybill");
        let courier = system.tokens().courier("courier-1")?;
        let confirmed = system
            .api()
            .confirm_delivery(&courier, "courier-1", &waybill_id)
            .await?;
        assert!(confirmed.status.is_success(), "{confirmed:?}");
        system
            .wait_for_order(&placed.order_id, "delivered", SAGA_TIMEOUT, |v| {
                v.status == OrderStatus::Delivered
            })
            .await?;
        // the operator reads the saga from the broker over the same secured bus, re-delivers
        // its order.created to payment's replay channel (payment's inbox skips it) and lists
        // the dead letters
        let saga = operator(system, &["saga", "show", &placed.order_id, "--json"])?;
        assert!(saga.contains("jwl.dispatch.delivered"), "{saga}");
        let replayed = operator(
            system,
            &[
                "replay",
                "--order",
                &placed.order_id,
                "--type",
                "order.created",
                "--to",
                "payment",
            ],
        )?;
        assert!(
            replayed.contains("sent 1 to jwl.replay.payment.>"),
            "{replayed}"
        );
        operator(system, &["dlq", "ls", "--json"])?;
        let outcomes = system
            .check_invariants(std::slice::from_ref(&placed))
            .await?;

        // and nothing a service published was refused on the way
        let logs = system.logs_tail(usize::MAX);
        assert!(
            !logs.to_ascii_lowercase().contains("permissions violation"),
            "a service was denied a subject it needs:\n{logs}"
        );
        println!(
            "e2e secure_bus: 1 order, outcomes [{outcomes}], wall {:.1}s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_with_a_wrong_password_stops_at_start_up_and_says_why() -> anyhow::Result<()> {
    let nats = jwl_testkit::secure_nats().await?;
    let wrong_password = "wrong-Pa55word-that-must-not-leak";
    let mut env = nats.env("payment")?;
    for (name, value) in &mut env {
        if name == "JWL_NATS_PASSWORD" {
            *value = wrong_password.to_owned();
        }
    }
    let binary = jwl_binary()?;
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(binary)
            .args(["serve", "payment"])
            .env_clear()
            .envs(env)
            .env("JWL_DATABASE_URL", "postgres://jwl@127.0.0.1:1/jwl")
            .env("JWL_JWT_SECRET", "a-secret-of-at-least-thirty-two-bytes!!")
            .env("JWL_HTTP_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .output()
    })
    .await??;
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started with a wrong password");
    assert!(took < REFUSED_START_BOUND, "took {took:?}: {stderr}");
    assert!(stderr.contains("authorization violation"), "{stderr}");
    assert!(stderr.contains("jwl-payment"), "{stderr}");
    assert!(!stderr.contains(wrong_password), "{stderr}");
    println!(
        "e2e secure_bus: jwl serve with a wrong password exited after {:.2}s",
        took.as_secs_f64()
    );
    Ok(())
}
