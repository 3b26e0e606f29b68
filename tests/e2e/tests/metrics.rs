//! `/metrics` of every service during one order run to `dispatched`: the metric names and
//! Prometheus types are there, and the counters moved between a scrape before the order and
//! one after it. Every counter the alert rules (`deploy/prometheus/alerts.yml`) use is exported
//! at 0 from start-up, before anything happened (so `increase()` sees its first event), and
//! every `jwl_*` metric the rules and the dashboard query is exported by some service.

use std::collections::HashMap;
use std::time::Duration;

use jwl_e2e::{
    LineItem, NewOrder, OrderStatus, Point, Service, System, SystemOptions, eventually, with_system,
};

const SAGA_TIMEOUT: Duration = Duration::from_secs(60);
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(20);

/// (name, type) present on every service once it has handled and published an event.
const EVERY_SERVICE: &[(&str, &str)] = &[
    ("jwl_http_request_duration_seconds", "histogram"),
    ("jwl_events_handled_total", "counter"),
    ("jwl_handler_duration_seconds", "histogram"),
    ("jwl_outbox_published_total", "counter"),
    ("jwl_outbox_pending", "gauge"),
    ("jwl_outbox_oldest_pending_age_seconds", "gauge"),
    ("jwl_outbox_parked_rows", "gauge"),
    ("jwl_relay_publish_duration_seconds", "histogram"),
    ("jwl_tokio_workers", "gauge"),
    ("jwl_tokio_alive_tasks", "gauge"),
    ("jwl_tokio_global_queue_depth", "gauge"),
    ("jwl_db_pool_connections", "gauge"),
    ("jwl_db_pool_idle_connections", "gauge"),
    ("jwl_consumer_pending_messages", "gauge"),
    ("jwl_consumer_ack_pending_messages", "gauge"),
    ("jwl_consumer_redelivered_messages", "gauge"),
    ("jwl_db_acquire_duration_seconds", "histogram"),
];

/// Counters that must have grown on every service during the run, with a label filter.
const MOVED_EVERYWHERE: &[(&str, &str)] = &[
    ("jwl_events_handled_total", "outcome=\"ok\""),
    ("jwl_outbox_published_total", ""),
];

/// Alert counters only the order service exports (the other services take no orders).
const ORDER_SERVICE_ONLY: &[&str] = &["jwl_ingest_shed_total"];

fn deploy_file(relative: &str) -> Result<String, String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(relative);
    std::fs::read_to_string(&path).map_err(|error| format!("{}: {error}", path.display()))
}

/// The `jwl_*` metric names in `text` (histogram series names as written, e.g. `_bucket`).
fn jwl_metric_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .match_indices("jwl_")
        .filter(|(at, _)| {
            // a name, not the tail of another identifier
            !text[..*at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The metric family a series name belongs to (a histogram's `_bucket`, `_count`, `_sum`).
fn family(series: &str) -> &str {
    ["_bucket", "_count", "_sum"]
        .iter()
        .find_map(|suffix| series.strip_suffix(suffix))
        .unwrap_or(series)
}

/// The counters the alert rules use (`jwl_*_total`).
fn alert_counters() -> Result<Vec<String>, String> {
    Ok(jwl_metric_names(&deploy_file("prometheus/alerts.yml")?)
        .into_iter()
        .filter(|name| name.ends_with("_total"))
        .collect())
}

/// What is missing from a scrape taken at start-up: counters of the alerts not at 0.
fn check_at_start_up(service: Service, scrape: &Scrape) -> Result<(), String> {
    for counter in alert_counters()? {
        if service != Service::Order && ORDER_SERVICE_ONLY.contains(&counter.as_str()) {
            continue;
        }
        if scrape.types.get(&counter).map(String::as_str) != Some("counter") {
            return Err(format!(
                "{}: alert counter {counter} not exported at start-up",
                service.as_str()
            ));
        }
        if scrape.sum(&counter, "") != 0.0 {
            return Err(format!(
                "{}: {counter} is not 0 before anything happened",
                service.as_str()
            ));
        }
    }
    Ok(())
}

/// One scrape: `# TYPE` declarations and the samples, as `name{labels}` → value.
#[derive(Debug, Default)]
struct Scrape {
    types: HashMap<String, String>,
    samples: Vec<(String, String, f64)>,
}

impl Scrape {
    fn parse(text: &str) -> Result<Scrape, String> {
        let mut scrape = Scrape::default();
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            if let Some(declaration) = line.strip_prefix("# TYPE ") {
                let (name, kind) = declaration
                    .split_once(' ')
                    .ok_or_else(|| format!("bad TYPE line {line:?}"))?;
                scrape.types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .ok_or_else(|| format!("bad sample line {line:?}"))?;
            let value: f64 = value
                .parse()
                .map_err(|error| format!("bad value in {line:?}: {error}"))?;
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            scrape
                .samples
                .push((name.to_owned(), labels.to_owned(), value));
        }
        Ok(scrape)
    }

    /// Sum of `name`'s samples whose labels contain `filter`.
    fn sum(&self, name: &str, filter: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(sample, labels, _)| sample == name && labels.contains(filter))
            .map(|(_, _, value)| value)
            .sum()
    }

    fn labels_of(&self, name: &str) -> impl Iterator<Item = &str> {
        self.samples
            .iter()
            .filter(move |(sample, _, _)| sample == name)
            .map(|(_, labels, _)| labels.as_str())
    }
}

async fn scrape(system: &System, service: Service) -> Result<Scrape, String> {
    let url = format!("{}/metrics", system.service(service).base_url());
    let response = reqwest::get(&url)
        .await
        .map_err(|error| format!("GET {url}: {error}"))?;
    if !response.status().is_success() {
        return Err(format!("GET {url}: {}", response.status()));
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if !content_type.starts_with("text/plain") {
        return Err(format!("GET {url}: content type {content_type:?}"));
    }
    let text = response
        .text()
        .await
        .map_err(|error| format!("GET {url}: {error}"))?;
    Scrape::parse(&text)
}

/// What is wrong with `after` for `service`, compared with `before`.
fn check(service: Service, before: &Scrape, after: &Scrape) -> Result<(), String> {
    let name = service.as_str();
    let mut expected: Vec<(&str, &str)> = EVERY_SERVICE.to_vec();
    if service == Service::Order {
        expected.push(("jwl_orders_created_total", "counter"));
        expected.push(("jwl_saga_duration_seconds", "histogram"));
    }
    for (metric, kind) in expected {
        match after.types.get(metric) {
            Some(found) if found == kind => {}
            Some(found) => return Err(format!("{name}: {metric} is a {found}, not a {kind}")),
            None => return Err(format!("{name}: no `# TYPE {metric} {kind}`")),
        }
    }
    let mut moved: Vec<(&str, &str)> = MOVED_EVERYWHERE.to_vec();
    if service == Service::Order {
        moved.push(("jwl_orders_created_total", ""));
        moved.push(("jwl_saga_duration_seconds_count", "outcome=\"dispatched\""));
        moved.push((
            "jwl_http_request_duration_seconds_count",
            "route=\"/v1/orders\"",
        ));
    }
    for (metric, filter) in moved {
        let (was, is) = (before.sum(metric, filter), after.sum(metric, filter));
        if is <= was {
            return Err(format!(
                "{name}: {metric}{{{filter}}} did not grow ({was} → {is})"
            ));
        }
    }
    if after.sum("jwl_tokio_workers", "") < 1.0 {
        return Err(format!("{name}: jwl_tokio_workers below 1"));
    }
    // bounded cardinality: no label carries an order or event id
    for (metric, labels, _) in &after.samples {
        if labels.contains("order_id") || labels.contains("event_id") {
            return Err(format!("{name}: {metric} is labelled by id: {labels}"));
        }
    }
    if after
        .labels_of("jwl_handler_duration_seconds_count")
        .count()
        == 0
    {
        return Err(format!("{name}: no handler durations recorded"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_exports_its_metrics_and_the_counters_move() -> anyhow::Result<()> {
    with_system(SystemOptions::default(), async |system| {
        let mut before = HashMap::new();
        for service in Service::ALL {
            let scraped = eventually("a first scrape", SCRAPE_TIMEOUT, || async move {
                let scraped = scrape(system, service).await?;
                check_at_start_up(service, &scraped)?;
                Ok::<_, String>(scraped)
            })
            .await?;
            before.insert(service, scraped);
        }

        system.set_stock("TEA", 5).await?;
        let pickup = Point::JIANGWAN;
        system
            .move_courier("courier-1", pickup.offset_km(0.5, 0.5))
            .await?;
        let order = NewOrder {
            items: vec![LineItem {
                sku: "TEA".to_owned(),
                qty: 1,
                unit_price_cents: 1250,
            }],
            pickup,
            dropoff: pickup.offset_km(2.0, 0.0),
            payment_token: "tok_ok".to_owned(),
        };
        let placed = system.place_order("alice", order).await?;
        let view = system.wait_terminal(&placed.order_id, SAGA_TIMEOUT).await?;
        assert_eq!(view.status, OrderStatus::Dispatched, "{view:?}");

        let mut exported: Vec<String> = Vec::new();
        for service in Service::ALL {
            let before = &before[&service];
            let after = eventually(
                &format!("{} metrics after the order", service.as_str()),
                SCRAPE_TIMEOUT,
                || async move {
                    let after = scrape(system, service).await?;
                    check(service, before, &after)?;
                    Ok::<_, String>(after)
                },
            )
            .await?;
            println!(
                "e2e metrics: {} exports {} metric families",
                service.as_str(),
                after.types.len()
            );
            exported.extend(after.types.into_keys());
        }
        // every jwl_* metric the alert rules and the dashboard query exists
        let mut queried =
            jwl_metric_names(&deploy_file("prometheus/alerts.yml").map_err(anyhow::Error::msg)?);
        queried.extend(jwl_metric_names(
            &deploy_file("grafana/jiangwanli.json").map_err(anyhow::Error::msg)?,
        ));
        for series in queried {
            let name = family(&series);
            anyhow::ensure!(
                exported.iter().any(|family| family == name),
                "{series} is queried by deploy/ but no service exports {name}"
            );
        }
        Ok(())
    })
    .await
}
