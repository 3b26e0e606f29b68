//! The alert rules and the dashboard shipped in `deploy/`:
//!
//! - `promtool check rules` and the rules' unit tests (`deploy/prometheus/alerts.test.yml`:
//!   each alert fires on a synthetic series of the real metric and label names and stays quiet
//!   on a healthy one), skipped with a message where `promtool` is not installed
//!   (`scripts/install-deps` installs it from Debian's `prometheus` package);
//! - without promtool: no query applies `rate()`/`irate()`/`increase()` to anything but a
//!   counter or a histogram series, and every `stream_name` filter names a stream the services
//!   provision.
//!
//! That the metrics the queries name are exported (counters at 0 from start-up) is checked
//! against the running services in `metrics.rs`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The streams the services provision (`MessagingSettings::default()`).
const STREAMS: &[&str] = &["JWL_EVENTS", "JWL_DLQ", "JWL_REPLAY", "JWL_DLQ_LOG"];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn read(relative: &str) -> anyhow::Result<String> {
    let path = deploy_dir().join(relative);
    std::fs::read_to_string(&path).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))
}

/// `promtool` on `$PATH`, or `None` (after saying why the test is skipped).
fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        // straight to stderr, past the test harness's capture, so that a passing run shows it
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: promtool is not installed, so the alert rules were not unit-tested \
             (scripts/install-deps installs it with apt: prometheus)"
        );
    }
    found.then_some("promtool")
}

fn run_promtool(promtool: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(promtool)
        .args(args)
        .current_dir(deploy_dir().join("prometheus"))
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("promtool {}:\n{text}", args.join(" "));
    anyhow::ensure!(
        output.status.success(),
        "promtool {} failed:\n{text}",
        args.join(" ")
    );
    Ok(())
}

#[test]
fn the_alert_rules_pass_their_promtool_unit_tests() -> anyhow::Result<()> {
    let Some(promtool) = promtool() else {
        return Ok(());
    };
    run_promtool(promtool, &["check", "rules", "alerts.yml"])?;
    run_promtool(promtool, &["test", "rules", "alerts.test.yml"])
}

/// Every alert of `alerts.yml` has a unit test in `alerts.test.yml`.
#[test]
fn every_alert_has_a_unit_test() -> anyhow::Result<()> {
    let rules = read("prometheus/alerts.yml")?;
    let tests = read("prometheus/alerts.test.yml")?;
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    anyhow::ensure!(!alerts.is_empty(), "no alert found in alerts.yml");
    for alert in alerts {
        anyhow::ensure!(
            tests.contains(&format!("alertname: {alert}\n")),
            "alert {alert} has no test in alerts.test.yml"
        );
    }
    Ok(())
}

/// The metric each `rate(`, `irate(` or `increase(` call in `text` applies to.
fn rated_metrics(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for function in ["rate(", "increase("] {
        for (at, _) in text.match_indices(function) {
            // `irate(` is matched by `rate(`; any other identifier character before it is
            // another function
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') && before != Some('i')
            {
                continue;
            }
            let metric: String = text[at + function.len()..]
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            // `rate()` in a comment names no metric
            if !metric.is_empty() {
                found.push(metric);
            }
        }
    }
    found
}

/// The values of `stream_name="…"` filters in `text` (escaped quotes included, for JSON).
fn stream_filters(text: &str) -> Vec<String> {
    text.match_indices("stream_name=")
        .map(|(at, matched)| {
            text[at + matched.len()..]
                .trim_start_matches(['\\', '"'])
                .chars()
                .take_while(|c| *c != '"' && *c != '\\')
                .collect()
        })
        .collect()
}

#[test]
fn queries_rate_only_counters_and_name_real_streams() -> anyhow::Result<()> {
    for file in ["prometheus/alerts.yml", "grafana/jiangwanli.json"] {
        let text = read(file)?;
        let rated = rated_metrics(&text);
        anyhow::ensure!(
            !rated.is_empty(),
            "{file}: no rate() found, is the scan broken?"
        );
        for metric in rated {
            let counter_like = ["_total", "_bucket", "_count", "_sum"]
                .iter()
                .any(|suffix| metric.ends_with(suffix));
            anyhow::ensure!(
                counter_like,
                "{file}: rate()/increase() of {metric:?}, which is not a counter \
                 (compare a gauge, or max_over_time it)"
            );
        }
        for stream in stream_filters(&text) {
            anyhow::ensure!(
                STREAMS.contains(&stream.as_str()),
                "{file}: stream_name={stream:?} is not one of the streams {STREAMS:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn the_scans_find_what_they_look_for() {
    let text = r#"sum(rate(a_total[5m])) + irate( b_gauge[1m]) + increase(c_bucket{x="y"}[1m])
        + max_over_time(d[1m]) # never rate() a gauge
        {stream_name=\"JWL_EVENTS\"} {stream_name="jwl-events"}"#;
    assert_eq!(rated_metrics(text), ["a_total", "b_gauge", "c_bucket"]);
    assert_eq!(stream_filters(text), ["JWL_EVENTS", "jwl-events"]);
}
