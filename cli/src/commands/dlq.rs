//! `jwl dlq ls|show|discard|redrive`: the dead letters, and resolving them. `redrive` freezes
//! its selection in a state file, re-delivers each dead letter to its consumer's service through
//! the replay channel, records the outcome on `jwl.dlqlog.<seq>`, deletes the dead letter and
//! saves its progress after each, so `--resume` never sends one twice.

use std::path::Path;

use anyhow::{Context, bail};
use governor::{Quota, RateLimiter};
use indicatif::{ProgressBar, ProgressStyle};
use jwl_ops::redelivery::Redriven;
use jwl_ops::{DeadLetterFilter, ReplayMode, dead_letters, redelivery, render};
use jwl_outbox::MessagingSettings;
use jwl_outbox::transport::History;
use serde::{Deserialize, Serialize};

use super::{connect_operator, print_json};
use crate::args::{
    DeadLetterFilterArgs, DlqCommand, DlqDiscardArgs, DlqLsArgs, DlqRedriveArgs, DlqShowArgs, Rate,
};

pub async fn run(command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::Ls(args) => ls(args).await,
        DlqCommand::Show(args) => show(args).await,
        DlqCommand::Discard(args) => discard(args).await,
        DlqCommand::Redrive(args) => redrive(args).await,
    }
}

impl DeadLetterFilterArgs {
    fn to_filter(&self) -> DeadLetterFilter {
        DeadLetterFilter {
            consumer: self.consumer.clone(),
            event_type: self.event_type,
            reason: self.reason,
            order: self.order,
            older_than: self.older_than,
            limit: None,
        }
    }
}

async fn ls(args: DlqLsArgs) -> anyhow::Result<()> {
    let (broker, settings) = connect_operator(&args.broker, "dlq").await?;
    let entries = dead_letters::list(&*broker, &settings, &args.filter.to_filter())
        .await
        .context("listing dead letters")?;
    if args.output.json {
        return print_json(&entries);
    }
    print!("{}", render::dead_letters_table(&entries));
    Ok(())
}

async fn show(args: DlqShowArgs) -> anyhow::Result<()> {
    let (broker, settings) = connect_operator(&args.broker, "dlq").await?;
    let detail = dead_letters::show(&*broker, &settings, args.seq).await?;
    if args.output.json {
        return print_json(&detail);
    }
    print!("{}", render::dead_letter_text(&detail));
    Ok(())
}

async fn discard(args: DlqDiscardArgs) -> anyhow::Result<()> {
    let (broker, settings) = connect_operator(&args.broker, "dlq").await?;
    let history = &*broker;
    let mut failures = 0usize;
    for &seq in &args.seqs {
        match discard_one(history, &settings, seq, &args.reason).await {
            Ok(()) => println!("discarded dead letter {seq}"),
            Err(error) => {
                failures += 1;
                eprintln!("error: dead letter {seq}: {error:#}");
            }
        }
    }
    if failures > 0 {
        bail!(
            "{failures} of {} dead letters not discarded",
            args.seqs.len()
        );
    }
    Ok(())
}

/// See [`redelivery::discard_dead_letter`] (the CLI records no operator).
async fn discard_one(
    history: &dyn History,
    settings: &MessagingSettings,
    seq: u64,
    reason: &str,
) -> anyhow::Result<()> {
    redelivery::discard_dead_letter(history, settings, seq, reason, None).await?;
    Ok(())
}

/// A redrive run: its frozen selection and its progress (the state file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RedriveState {
    run_id: String,
    mode: ReplayMode,
    /// The dead-letter sequences selected when the run started, in order.
    selected: Vec<u64>,
    /// Those re-delivered (or found already resolved), in the order done.
    done: Vec<u64>,
    /// Those that cannot be re-delivered (left in the dead-letter stream), with why.
    skipped: Vec<SkippedDeadLetter>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SkippedDeadLetter {
    seq: u64,
    why: String,
}

impl RedriveState {
    /// The selected sequences not handled yet, in order.
    fn pending(&self) -> Vec<u64> {
        self.selected
            .iter()
            .copied()
            .filter(|seq| !self.done.contains(seq) && !self.skipped.iter().any(|s| s.seq == *seq))
            .collect()
    }

    fn load(path: &Path) -> anyhow::Result<RedriveState> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the redrive state {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a redrive state file", path.display()))
    }

    /// Writes the state atomically (a temporary file renamed over the old one).
    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", temporary.display()))?;
        std::fs::rename(&temporary, path)
            .with_context(|| format!("replacing the redrive state {}", path.display()))
    }
}

async fn redrive(args: DlqRedriveArgs) -> anyhow::Result<()> {
    let (broker, settings) = connect_operator(&args.broker, "dlq").await?;
    let history = &*broker;
    let (mut state, path) = match &args.resume {
        Some(path) => (RedriveState::load(path)?, path.clone()),
        None => {
            let selected = dead_letters::list(history, &settings, &args.filter.to_filter())
                .await
                .context("selecting dead letters")?;
            let run_id = uuid::Uuid::now_v7().simple().to_string();
            let path = args.state_file.clone().unwrap_or_else(|| {
                args.data_dir
                    .data_dir
                    .join(format!("redrive-{run_id}.json"))
            });
            if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let state = RedriveState {
                run_id,
                mode: if args.rerun {
                    ReplayMode::Rerun
                } else {
                    ReplayMode::Inbox
                },
                selected: selected.iter().map(|entry| entry.dlq_seq).collect(),
                done: Vec::new(),
                skipped: Vec::new(),
            };
            state.save(&path)?;
            (state, path)
        }
    };
    let pending = state.pending();
    let now_due: Vec<u64> = pending
        .iter()
        .copied()
        .take(args.max.unwrap_or(usize::MAX))
        .collect();
    let limiter = RateLimiter::direct(quota(args.rate));
    let progress = ProgressBar::new(now_due.len() as u64);
    progress.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} redriven  {per_sec}  eta {eta} {msg}")
            .context("the progress bar template")?,
    );
    for seq in now_due {
        limiter.until_ready().await;
        match redrive_one(history, &settings, &state, seq).await? {
            // gone: handled before an interruption (its outcome may not have been recorded)
            Redriven::Done | Redriven::AlreadyResolved | Redriven::Gone => state.done.push(seq),
            Redriven::Skipped(why) => {
                progress.println(format!("dead letter {seq} skipped: {why}"));
                state.skipped.push(SkippedDeadLetter { seq, why });
            }
        }
        state.save(&path)?;
        progress.inc(1);
    }
    progress.finish_and_clear();
    let remaining = state.pending().len();
    println!(
        "run {}: {} selected, {} redriven, {} skipped, {} remaining; state {}",
        state.run_id,
        state.selected.len(),
        state.done.len(),
        state.skipped.len(),
        remaining,
        path.display()
    );
    if remaining > 0 {
        println!("continue with: jwl dlq redrive --resume {}", path.display());
    }
    Ok(())
}

fn quota(rate: Rate) -> Quota {
    match rate {
        Rate::PerSecond(count) => Quota::per_second(count),
        Rate::PerMinute(count) => Quota::per_minute(count),
    }
}

/// One dead letter of a run (see [`redelivery::redrive_dead_letter`]).
async fn redrive_one(
    history: &dyn History,
    settings: &MessagingSettings,
    state: &RedriveState,
    seq: u64,
) -> anyhow::Result<Redriven> {
    redelivery::redrive_dead_letter(history, settings, seq, state.mode, &state.run_id, None)
        .await
        .with_context(|| format!("redriving dead letter {seq}"))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn pending_is_the_selection_minus_what_was_handled() {
        let state = RedriveState {
            run_id: "r".to_owned(),
            mode: ReplayMode::Inbox,
            selected: vec![3, 5, 8, 9],
            done: vec![5],
            skipped: vec![SkippedDeadLetter {
                seq: 8,
                why: "no order".to_owned(),
            }],
        };
        assert_eq!(state.pending(), vec![3, 9]);
    }

    #[test]
    fn the_state_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path: PathBuf = dir.path().join("redrive-r.json");
        let state = RedriveState {
            run_id: "r".to_owned(),
            mode: ReplayMode::Rerun,
            selected: vec![1, 2],
            done: vec![1],
            skipped: Vec::new(),
        };
        state.save(&path).unwrap();
        assert_eq!(RedriveState::load(&path).unwrap(), state);
    }
}
