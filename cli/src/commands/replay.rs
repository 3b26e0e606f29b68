//! `jwl replay`: prints a selection of the events stream, re-delivers it (the types the
//! service consumes) to one service's replay channel `jwl.replay.<service>.…` — never to
//! `jwl.evt.>` — or replays the orders it touches against this build's handlers in a scratch
//! database (`--sandbox`, see `jwl_sandbox`).

use std::sync::Arc;

use anyhow::Context;
use chrono::Utc;
use jwl_ops::{ReplayMode, Selection, redelivery, render, replay};
use jwl_service_kit::Settings;
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};

use super::{connect_operator, print_json};
use crate::args::ReplayArgs;

pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    if args.sandbox {
        return sandbox(&args).await;
    }
    let (broker, settings) = connect_operator(&args.broker, "replay").await?;
    let selection = selection(&args)?;
    let history = &*broker;
    let Some(service) = args.to else {
        let entries = replay::read(history, &settings, &selection)
            .await
            .context("reading the selection")?;
        return if args.output.json {
            print_json(&entries)
        } else {
            print!("{}", render::events_table(&entries));
            Ok(())
        };
    };
    let mode = if args.rerun {
        ReplayMode::Rerun
    } else {
        ReplayMode::Inbox
    };
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let messages = redelivery::plan_events(
        history,
        &settings,
        &selection,
        service.entry().service,
        service.subscriptions(),
        mode,
        &run_id,
    )
    .await
    .context("reading the selection")?;
    if !args.dry_run {
        for message in &messages {
            redelivery::publish(history, message)
                .await
                .context("re-delivering the selection")?;
        }
    }
    let report = ReplayReport {
        run_id,
        service: service.as_str(),
        mode,
        dry_run: args.dry_run,
        sent: if args.dry_run { 0 } else { messages.len() },
        messages,
    };
    if args.output.json {
        return print_json(&report);
    }
    print!("{}", render::replay_table(&report.messages));
    if report.dry_run {
        println!(
            "dry run: nothing sent ({} would go to jwl.replay.{}.>, mode {})",
            report.messages.len(),
            report.service,
            mode.as_str()
        );
    } else {
        println!(
            "run {}: sent {} to jwl.replay.{}.>, mode {}",
            report.run_id,
            report.sent,
            report.service,
            mode.as_str()
        );
    }
    Ok(())
}

/// The events the flags select.
fn selection(args: &ReplayArgs) -> anyhow::Result<Selection> {
    let since_ago = args
        .since_ago
        .map(|age| chrono::Duration::from_std(age).map(|age| Utc::now() - age))
        .transpose()
        .context("--since-ago is too long")?;
    Ok(Selection {
        order: args.order,
        types: args.types.clone(),
        since: args.since.or(since_ago),
        until: args.until,
        from_seq: args.from_seq,
        to_seq: args.to_seq,
        limit: args.limit,
    })
}

/// `jwl replay --to … --json`.
#[derive(Debug, Serialize)]
struct ReplayReport {
    run_id: String,
    service: &'static str,
    mode: ReplayMode,
    dry_run: bool,
    sent: usize,
    messages: Vec<jwl_ops::ReplayMessage>,
}

/// `jwl replay --sandbox` found that this build's handlers react differently (exit status 1).
#[derive(Debug, thiserror::Error)]
#[error("the sandbox's handlers differ from the recorded events in {0} place(s)")]
pub struct SandboxDiffers(pub usize);

/// `jwl replay --sandbox` could not run to the end (exit status 2).
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct SandboxFailed(pub anyhow::Error);

/// `jwl replay --sandbox`: reads whole orders, replays them, prints the differences.
async fn sandbox(args: &ReplayArgs) -> anyhow::Result<()> {
    // Ctrl-C or SIGTERM stops the replay, and its scratch database is still dropped. The
    // listeners are registered now, so a signal while the database is being created is kept
    // for then rather than killing the process.
    let signals = [SignalKind::interrupt(), SignalKind::terminate()].map(signal);
    let report = async {
        let database_url = args.database_url.as_deref().context(
            "--sandbox needs a PostgreSQL server for its scratch database: set JWL_DATABASE_URL \
             or --database-url",
        )?;
        let selection = selection(args)?;
        let (broker, settings) = connect_operator(&args.broker, "replay").await?;
        let entries = jwl_sandbox::read_orders(&*broker, &settings, &selection)
            .await
            .context("reading the selected orders")?;
        let sandbox_settings = &args.sandbox_settings;
        let service_settings = Arc::new(Settings {
            dispatch_deadline: sandbox_settings.dispatch_deadline,
            dispatch_radius_km: sandbox_settings.dispatch_radius_km,
            courier_capacity: sandbox_settings.courier_capacity,
            ..Settings::default()
        });
        let handlers = jwl_sandbox::Handlers::current(service_settings.clone());
        let [interrupt, terminate] = signals;
        let (mut interrupt, mut terminate) = (
            interrupt.context("listening for Ctrl-C")?,
            terminate.context("listening for SIGTERM")?,
        );
        let interrupted = async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        };
        jwl_sandbox::replay_until(
            &entries,
            database_url,
            &service_settings,
            &handlers,
            interrupted,
        )
        .await
        .context("replaying in the sandbox")
    }
    .await
    .map_err(SandboxFailed)?;
    if args.output.json {
        print_json(&report)?;
    } else {
        print!("{}", jwl_sandbox::render(&report));
    }
    if report.same() {
        Ok(())
    } else {
        Err(SandboxDiffers(report.differences.len()).into())
    }
}
