//! Intake under overload: a burst far beyond what the system finishes is partly refused with
//! `503` and `Retry-After` (problem details, counted as `jwl_ingest_shed_total{reason="backlog"}`),
//! every order that was accepted completes, and the refused ones, retried as the answers ask,
//! complete too.

use std::time::{Duration, Instant};

use futures::StreamExt;
use jwl_e2e::{NewOrder, OrderStatus, PlacedOrder, Service, System, SystemOptions, with_system};
use reqwest::StatusCode;

const SAGA_TIMEOUT: Duration = Duration::from_secs(120);
const COURIER_CAPACITY: u32 = 10;

fn order() -> NewOrder {
    NewOrder::one_tea(1250)
}

/// The sum of `jwl_ingest_shed_total{reason="backlog"}` in the order service's `/metrics`.
async fn backlog_shed(system: &System) -> anyhow::Result<f64> {
    let url = format!("{}/metrics", system.service(Service::Order).base_url());
    let text = reqwest::get(&url).await?.error_for_status()?.text().await?;
    Ok(text
        .lines()
        .filter(|line| {
            line.starts_with("jwl_ingest_shed_total{") && line.contains("reason=\"backlog\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// One POST, not retried: the order and the reply's status (and its `Retry-After` when shed).
async fn post_once(
    system: &System,
    customer_id: String,
) -> anyhow::Result<(PlacedOrder, StatusCode, Option<u64>, String)> {
    let token = system.tokens().customer(&customer_id)?;
    let new = order();
    let reply = system.api().post_order_once(&token, &new).await?;
    let retry_after = reply
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let content_type = reply
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let order_id = reply.body["order_id"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_default();
    Ok((
        PlacedOrder {
            order_id,
            customer_id,
            order: new,
        },
        reply.status,
        retry_after,
        content_type,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_what_the_system_finishes_is_shed_and_everything_accepted_completes()
-> anyhow::Result<()> {
    const BURST: usize = 150;
    const MIN_OPEN: u32 = 10;
    let started = Instant::now();
    let options = SystemOptions {
        courier_capacity: COURIER_CAPACITY,
        admission_min_open: MIN_OPEN,
        ..SystemOptions::default()
    };
    with_system(options, async |system| {
        system.set_stock("TEA", 10_000).await?;
        system
            .line_up_couriers(BURST.div_ceil(COURIER_CAPACITY as usize), 0.05)
            .await?;
        let shed_before = backlog_shed(system).await?;

        // the whole burst at once: nothing has finished yet, so the limit is near the floor
        let replies: Vec<_> = futures::stream::iter(0..BURST)
            .map(|n| post_once(system, format!("customer-{n}")))
            .buffer_unordered(BURST)
            .collect()
            .await;
        let mut accepted = Vec::new();
        let mut refused = Vec::new();
        for reply in replies {
            let (placed, status, retry_after, content_type) = reply?;
            match status {
                StatusCode::CREATED => accepted.push(placed),
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert!(
                        retry_after.is_some_and(|secs| (1..=60).contains(&secs)),
                        "a shed order needs Retry-After: {retry_after:?}"
                    );
                    assert_eq!(content_type, "application/problem+json");
                    refused.push(placed);
                }
                other => panic!("unexpected {other} for a valid order"),
            }
        }
        assert!(
            accepted.len() >= MIN_OPEN as usize,
            "the floor is always admitted: {} accepted",
            accepted.len()
        );
        assert!(
            !refused.is_empty(),
            "{BURST} orders at once on an idle system with a floor of {MIN_OPEN}: some are shed"
        );
        let shed = backlog_shed(system).await? - shed_before;
        assert_eq!(
            shed,
            refused.len() as f64,
            "every refusal counted as reason=backlog"
        );

        // an accepted order is an order that completes
        for view in system.wait_all_terminal(&accepted, SAGA_TIMEOUT).await? {
            assert_eq!(view.status, OrderStatus::Dispatched, "{view:?}");
        }
        // the refused ones, retried as Retry-After asks, get in and complete too
        let retried = system
            .place_orders(refused.iter().map(|placed| placed.order.clone()).collect())
            .await?;
        for view in system.wait_all_terminal(&retried, SAGA_TIMEOUT).await? {
            assert_eq!(view.status, OrderStatus::Dispatched, "{view:?}");
        }
        let all: Vec<PlacedOrder> = accepted.iter().cloned().chain(retried).collect();
        let outcomes = system.check_invariants(&all).await?;
        println!(
            "e2e overload: {} accepted, {} shed then placed, outcomes [{outcomes}], wall {:.1}s",
            accepted.len(),
            refused.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    })
    .await
}
