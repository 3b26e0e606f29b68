//! The city `jwl bench` loads: a step's plan (every order's SKUs, pickup, dropoff and card,
//! drawn from a seeded random source; the stock each SKU needs; where each courier lives), its
//! preparation through the admin and courier APIs, and the couriers moving during the run
//! (`PUT /v1/couriers/{id}/location` at a steady rate). The geometry and the popularity law are
//! in [`super::figures`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use jwl_events::GeoPoint;
use jwl_service_kit::auth::{JwtKeys, Scope};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::Api;
use super::expect_success;
use super::figures::{
    CITY_RADIUS_KM, COURIER_STEP_KM, OutcomeMix, PICKUP_NEAR_COURIER_KM, PlannedOutcomes, Zipf,
    city_centre, courier_home, courier_step, default_courier_updates_per_second, default_couriers,
    dropoff_from, outside_city, point_in_disc,
};

/// Most lines of one order (each a different SKU, quantity 1).
const MAX_LINES: usize = 3;
/// Requests in flight while preparing stock and couriers.
const SETUP_CONCURRENCY: usize = 32;
/// Location updates in flight at most; past that the rate achieved falls behind the target.
const UPDATE_CONCURRENCY: usize = 64;

/// The load model's flags.
#[derive(Debug, Clone)]
pub struct CityOptions {
    pub skus: u32,
    pub sku_skew: f64,
    pub couriers: Option<u64>,
    pub courier_updates_per_second: Option<f64>,
    pub mix: OutcomeMix,
    pub seed: u64,
}

impl CityOptions {
    /// SKUs stocked at 0 for the out-of-stock orders: one per 20 SKUs, at least one.
    pub fn out_of_stock_skus(&self) -> u32 {
        (self.skus / 20).max(1)
    }
}

/// A courier of the step.
pub struct Courier {
    pub id: String,
    pub home: GeoPoint,
}

/// Everything a step sends, decided before it starts.
pub struct Plan {
    /// Prefix of the step's SKU and courier names.
    pub prefix: String,
    /// The body of every order, in sending order.
    pub orders: Vec<serde_json::Value>,
    pub outcomes: PlannedOutcomes,
    /// Every SKU with the units to stock (0 for the out-of-stock ones).
    pub stock: Vec<(String, u64)>,
    pub couriers: Vec<Courier>,
    pub updates_per_second: f64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dispatched,
    Rejected,
    OutOfStock,
    NoCourier,
}

/// The plan of `planned` orders for step `step` (the seed is varied by step).
pub fn plan(options: &CityOptions, prefix: &str, step: u64, planned: u64) -> anyhow::Result<Plan> {
    let outcomes = options
        .mix
        .split(planned)
        .map_err(|message| anyhow::anyhow!(message))?;
    let mut rng = StdRng::seed_from_u64(options.seed.wrapping_add(step.wrapping_mul(7919)));
    let mut kinds: Vec<Kind> = std::iter::empty()
        .chain(std::iter::repeat_n(
            Kind::Dispatched,
            outcomes.dispatched as usize,
        ))
        .chain(std::iter::repeat_n(
            Kind::Rejected,
            outcomes.rejected as usize,
        ))
        .chain(std::iter::repeat_n(
            Kind::OutOfStock,
            outcomes.out_of_stock as usize,
        ))
        .chain(std::iter::repeat_n(
            Kind::NoCourier,
            outcomes.no_courier as usize,
        ))
        .collect();
    kinds.shuffle(&mut rng);

    let courier_count = options
        .couriers
        .unwrap_or_else(|| default_couriers(outcomes.dispatched));
    let couriers = (0..courier_count)
        .map(|index| {
            Ok(Courier {
                id: format!("{prefix}c{index}"),
                home: courier_home(index, courier_count)?,
            })
        })
        .collect::<Result<Vec<_>, jwl_events::GeoError>>()
        .context("placing the couriers")?;
    // Homes are a spiral from the centre out: visit them in a shuffled order so that the
    // orders' pickups are spread over the city from the start.
    let mut courier_order: Vec<usize> = (0..couriers.len()).collect();
    courier_order.shuffle(&mut rng);

    let skus = options.skus as usize;
    let popularity = Zipf::new(skus, options.sku_skew);
    let out_of_stock_skus = options.out_of_stock_skus() as usize;
    let unpopularity = Zipf::new(out_of_stock_skus, options.sku_skew);
    let centre = city_centre()?;
    let mut demand = vec![0u64; skus];
    let mut dispatched = 0usize;
    let mut orders = Vec::with_capacity(kinds.len());
    for kind in kinds {
        let lines = rng.random_range(1..=MAX_LINES.min(skus));
        let mut ranks: Vec<usize> = Vec::with_capacity(lines);
        while ranks.len() < lines {
            let rank = popularity.sample(rng.random());
            if !ranks.contains(&rank) {
                ranks.push(rank);
            }
        }
        let mut items: Vec<serde_json::Value> = ranks
            .iter()
            .map(|&rank| {
                demand[rank] += 1;
                json!({ "sku": format!("{prefix}s{rank}"), "qty": 1, "unit_price_cents": unit_price(rank) })
            })
            .collect();
        if kind == Kind::OutOfStock {
            let rank = unpopularity.sample(rng.random());
            items[0] =
                json!({ "sku": format!("{prefix}x{rank}"), "qty": 1, "unit_price_cents": 990 });
        }
        let pickup = match kind {
            Kind::Dispatched if !couriers.is_empty() => {
                let courier = &couriers[courier_order[dispatched % couriers.len()]];
                dispatched += 1;
                point_in_disc(
                    &courier.home,
                    PICKUP_NEAR_COURIER_KM,
                    rng.random(),
                    rng.random(),
                )?
            }
            Kind::NoCourier => outside_city(rng.random(), rng.random())?,
            _ => point_in_disc(&centre, CITY_RADIUS_KM, rng.random(), rng.random())?,
        };
        let dropoff = dropoff_from(&pickup, rng.random(), rng.random())?;
        let payment_token = if kind == Kind::Rejected {
            "tok_decline"
        } else {
            "tok_ok"
        };
        orders.push(json!({
            "items": items,
            "pickup": pickup,
            "dropoff": dropoff,
            "payment_token": payment_token,
        }));
    }
    let stock = demand
        .iter()
        .enumerate()
        .map(|(rank, units)| (format!("{prefix}s{rank}"), *units))
        .chain((0..out_of_stock_skus).map(|rank| (format!("{prefix}x{rank}"), 0)))
        .collect();
    let updates_per_second = options
        .courier_updates_per_second
        .unwrap_or_else(|| default_courier_updates_per_second(courier_count));
    Ok(Plan {
        prefix: prefix.to_owned(),
        orders,
        outcomes,
        stock,
        couriers,
        updates_per_second,
    })
}

/// A price per SKU, between 5 and 55 yuan.
fn unit_price(rank: usize) -> u64 {
    500 + (rank as u64 * 7919) % 5000
}

/// A courier with its token, where it is now.
pub struct Fleet {
    pub ids: Vec<String>,
    pub tokens: Vec<String>,
    pub positions: Vec<GeoPoint>,
}

/// Stocks every SKU of the plan and registers every courier at its home; returns the fleet.
pub async fn prepare(
    api: &Api,
    keys: &JwtKeys,
    plan: &Plan,
    token_ttl: Duration,
) -> anyhow::Result<Fleet> {
    let base = &api.inventory;
    let mut stocking = futures::stream::iter(&plan.stock)
        .map(|(sku, on_hand)| async move {
            let response = api
                .client
                .put(format!("{base}/v1/stock/{sku}"))
                .bearer_auth(&api.admin_token)
                .json(&json!({ "on_hand": on_hand }))
                .send()
                .await
                .with_context(|| format!("PUT {base}/v1/stock/{sku} (is the system running?)"))?;
            expect_success(response, "setting the stock").await
        })
        .buffer_unordered(SETUP_CONCURRENCY);
    while let Some(stocked) = stocking.next().await {
        stocked?;
    }

    let tokens = plan
        .couriers
        .iter()
        .map(|courier| {
            keys.issue(&courier.id, &[Scope::CouriersWrite], token_ttl)
                .context("issuing a courier token")
        })
        .collect::<anyhow::Result<Vec<String>>>()?;
    let base = &api.dispatch;
    let mut registrations = futures::stream::iter(plan.couriers.iter().zip(&tokens))
        .map(|(courier, token)| async move {
            let id = &courier.id;
            let response = api
                .client
                .put(format!("{base}/v1/couriers/{id}/location"))
                .bearer_auth(token)
                .json(&courier.home)
                .send()
                .await
                .with_context(|| format!("PUT /v1/couriers/{id}/location"))?;
            expect_success(response, "registering a courier").await
        })
        .buffer_unordered(SETUP_CONCURRENCY);
    while let Some(registered) = registrations.next().await {
        registered?;
    }
    drop(registrations);
    Ok(Fleet {
        ids: plan.couriers.iter().map(|c| c.id.clone()).collect(),
        tokens,
        positions: plan.couriers.iter().map(|c| c.home).collect(),
    })
}

/// What the moving couriers sent.
#[derive(Debug, Default)]
pub struct Movement {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub latencies: Vec<Duration>,
    pub length: Duration,
}

/// Moves the couriers round robin, `per_second` updates a second, until `stop`; each update
/// moves one courier up to [`COURIER_STEP_KM`] in a random direction, staying in the city.
pub fn start_moving(
    client: reqwest::Client,
    base: String,
    mut fleet: Fleet,
    per_second: f64,
    seed: u64,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Movement> {
    tokio::spawn(async move {
        let mut movement = Movement::default();
        let started = Instant::now();
        if per_second <= 0.0 || fleet.ids.is_empty() {
            stop.cancelled().await;
            movement.length = started.elapsed();
            return movement;
        }
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_c0c0);
        let in_flight = Arc::new(Semaphore::new(UPDATE_CONCURRENCY));
        let mut requests: JoinSet<(Duration, bool)> = JoinSet::new();
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut next = 0usize;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = ticks.tick() => {}
            }
            while let Some(joined) = requests.try_join_next() {
                record(&mut movement, joined);
            }
            let permit = tokio::select! {
                () = stop.cancelled() => break,
                permit = in_flight.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let index = next % fleet.ids.len();
            next += 1;
            let bearing = rng.random::<f64>() * std::f64::consts::TAU;
            let distance = COURIER_STEP_KM * rng.random::<f64>();
            if let Ok(moved) = courier_step(&fleet.positions[index], distance, bearing) {
                fleet.positions[index] = moved;
            }
            let request = client
                .put(format!("{base}/v1/couriers/{}/location", fleet.ids[index]))
                .bearer_auth(&fleet.tokens[index])
                .json(&fleet.positions[index]);
            movement.sent += 1;
            requests.spawn(async move {
                let sent = Instant::now();
                let ok =
                    matches!(request.send().await, Ok(response) if response.status().is_success());
                drop(permit);
                (sent.elapsed(), ok)
            });
        }
        movement.length = started.elapsed();
        while let Some(joined) = requests.join_next().await {
            record(&mut movement, joined);
        }
        movement
    })
}

fn record(movement: &mut Movement, joined: Result<(Duration, bool), tokio::task::JoinError>) {
    match joined {
        Ok((latency, true)) => {
            movement.ok += 1;
            movement.latencies.push(latency);
        }
        Ok((_, false)) | Err(_) => movement.failed += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> CityOptions {
        CityOptions {
            skus: 100,
            sku_skew: 1.0,
            couriers: None,
            courier_updates_per_second: None,
            mix: OutcomeMix {
                decline: 0.1,
                out_of_stock: 0.2,
                no_courier: 0.1,
            },
            seed: 7,
        }
    }

    #[test]
    fn the_plan_has_the_outcome_mix_the_stock_and_the_couriers_it_needs() {
        let plan = plan(&options(), "b1-0-", 0, 50).unwrap();
        assert_eq!(plan.orders.len(), 50);
        assert_eq!(
            (
                plan.outcomes.dispatched,
                plan.outcomes.rejected,
                plan.outcomes.out_of_stock,
                plan.outcomes.no_courier
            ),
            (30, 5, 10, 5)
        );
        let declined = plan
            .orders
            .iter()
            .filter(|o| o["payment_token"] == "tok_decline")
            .count();
        assert_eq!(declined, 5);
        let out_of_stock = plan
            .orders
            .iter()
            .filter(|o| {
                o["items"][0]["sku"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("b1-0-x"))
            })
            .count();
        assert_eq!(out_of_stock, 10);
        assert_eq!(plan.couriers.len(), 30 + 3 + 10);
        assert_eq!(plan.updates_per_second, 43.0 / 5.0);
        // Stock covers every line of an in-stock SKU; out-of-stock SKUs have none.
        let mut needed: std::collections::BTreeMap<String, u64> = Default::default();
        for order in &plan.orders {
            for item in order["items"].as_array().unwrap() {
                *needed
                    .entry(item["sku"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
        }
        for (sku, units) in &plan.stock {
            if sku.starts_with("b1-0-x") {
                assert_eq!(*units, 0);
            } else {
                assert!(*units >= needed.get(sku).copied().unwrap_or(0), "{sku}");
            }
        }
        assert_eq!(plan.stock.len(), 100 + 5);
        // The same seed and step give the same plan; another step another one.
        let again = super::plan(&options(), "b1-0-", 0, 50).unwrap();
        assert_eq!(again.orders, plan.orders);
        let other = super::plan(&options(), "b1-0-", 1, 50).unwrap();
        assert_ne!(other.orders, plan.orders);
    }
}
