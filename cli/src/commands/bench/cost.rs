//! What the system under test spends on the sagas of a step: the CPU time of its processes
//! (from `/proc/<pid>/stat`, with their descendants) and PostgreSQL's counters (commits from
//! `pg_stat_database`, transaction ids assigned, statements from `pg_stat_statements`), each
//! sampled before and after the measured window. The arithmetic is in [`super::figures`].

use std::time::Duration;

use anyhow::Context;
use sqlx::{Connection, PgConnection};

use super::figures::{
    CpuSample, PgCost, ProcInfo, auto_roots, counted_processes, parse_proc_stat, per_saga,
};
use crate::commands::redact_userinfo;

/// Bound on connecting to Postgres for the counters.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The processes whose CPU time counts, chosen once for the run.
pub struct SystemProcesses {
    roots: Vec<u32>,
    /// Automatic selection: only the server processes below the `jwl` roots.
    servers_only: bool,
    /// How they were chosen, for the report.
    pub selection: String,
    pub ticks_per_second: u64,
}

impl SystemProcesses {
    /// `explicit` pids (with all their descendants), or the `jwl up` / `jwl serve` processes
    /// (with the `postgres`, `nats-server` and `tansu` processes below them). An error says why
    /// CPU time cannot be measured.
    pub fn resolve(explicit: &[u32]) -> Result<Self, String> {
        let ticks_per_second = clock_ticks()?;
        let processes = scan_proc()?;
        if !explicit.is_empty() {
            let missing: Vec<String> = explicit
                .iter()
                .filter(|pid| !processes.iter().any(|p| p.stat.pid == **pid))
                .map(u32::to_string)
                .collect();
            if !missing.is_empty() {
                return Err(format!("no process {} in /proc", missing.join(", ")));
            }
            let list: Vec<String> = explicit.iter().map(u32::to_string).collect();
            return Ok(Self {
                roots: explicit.to_vec(),
                servers_only: false,
                selection: format!("--system-pid {} and their descendants", list.join(", ")),
                ticks_per_second,
            });
        }
        let roots = auto_roots(&processes, std::process::id());
        if roots.is_empty() {
            return Err(
                "no `jwl up` / `jwl serve` process found (name the system's processes with \
                 --system-pid)"
                    .to_owned(),
            );
        }
        let list: Vec<String> = roots.iter().map(u32::to_string).collect();
        Ok(Self {
            roots,
            servers_only: true,
            selection: format!(
                "automatic: jwl up/serve {} and the postgres, nats-server and tansu processes below them",
                list.join(", ")
            ),
            ticks_per_second,
        })
    }

    /// The CPU ticks of the counted processes now; an error if /proc cannot be read or a
    /// named process is gone.
    pub fn sample(&self) -> Result<CpuSample, String> {
        let processes = scan_proc()?;
        if let Some(gone) = self
            .roots
            .iter()
            .find(|pid| !processes.iter().any(|p| p.stat.pid == **pid))
        {
            return Err(format!("process {gone} exited during the run"));
        }
        Ok(CpuSample::of(&counted_processes(
            &processes,
            &self.roots,
            self.servers_only,
        )))
    }
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
fn clock_ticks() -> Result<u64, String> {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks)
        .ok()
        .filter(|t| *t > 0)
        .ok_or_else(|| "sysconf(_SC_CLK_TCK) gave no clock tick rate".to_owned())
}

/// Every process in /proc (those that vanish while being read are skipped).
fn scan_proc() -> Result<Vec<ProcInfo>, String> {
    let entries =
        std::fs::read_dir("/proc").map_err(|error| format!("cannot read /proc: {error}"))?;
    let mut processes = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(stat) = parse_proc_stat(&text) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|bytes| {
                bytes
                    .split(|b| *b == 0)
                    .filter(|part| !part.is_empty())
                    .map(|part| String::from_utf8_lossy(part).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        processes.push(ProcInfo { stat, cmdline });
    }
    if processes.is_empty() {
        return Err("no process readable in /proc".to_owned());
    }
    Ok(processes)
}

/// PostgreSQL's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgSample {
    /// `sum(xact_commit)` over every database of `pg_stat_database`.
    pub commits: i64,
    /// The next transaction id to be assigned.
    pub next_xid: i64,
    /// `sum(calls)` of `pg_stat_statements`, when available.
    pub statements: Option<i64>,
}

/// One connection that reads the counters, counting its own queries.
pub struct PgCounters {
    conn: PgConnection,
    /// Why statements cannot be counted, if they cannot.
    statements_unavailable: Option<String>,
    /// Sampling queries run so far (each is one transaction and one statement).
    queries: u64,
}

impl PgCounters {
    /// Connects and finds out whether `pg_stat_statements` can be read.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(url))
            .await
            .context("timed out connecting")?
            .with_context(|| format!("connecting to {}", redact_userinfo(url)))?;
        let installed: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements')",
        )
        .fetch_one(&mut conn)
        .await
        .context("looking for pg_stat_statements")?;
        let statements_unavailable = if installed {
            match sqlx::query_scalar::<_, Option<i64>>(
                "SELECT sum(calls)::bigint FROM pg_stat_statements",
            )
            .fetch_one(&mut conn)
            .await
            {
                Ok(_) => None,
                Err(error) => Some(format!("pg_stat_statements cannot be read: {error}")),
            }
        } else {
            Some(
                "the pg_stat_statements extension is not installed in this database (it needs \
                 shared_preload_libraries = pg_stat_statements and CREATE EXTENSION)"
                    .to_owned(),
            )
        };
        Ok(Self {
            conn,
            statements_unavailable,
            queries: 0,
        })
    }

    /// The counters now (one query: one transaction, one statement).
    pub async fn sample(&mut self) -> anyhow::Result<PgSample> {
        let sql = if self.statements_unavailable.is_none() {
            "SELECT (SELECT sum(xact_commit) FROM pg_stat_database)::bigint, \
             pg_snapshot_xmax(pg_current_snapshot())::text::bigint, \
             (SELECT sum(calls) FROM pg_stat_statements)::bigint"
        } else {
            "SELECT (SELECT sum(xact_commit) FROM pg_stat_database)::bigint, \
             pg_snapshot_xmax(pg_current_snapshot())::text::bigint, NULL::bigint"
        };
        self.queries += 1;
        let (commits, next_xid, statements): (Option<i64>, i64, Option<i64>) = sqlx::query_as(sql)
            .fetch_one(&mut self.conn)
            .await
            .context("reading pg_stat_database")?;
        Ok(PgSample {
            commits: commits.unwrap_or(0),
            next_xid,
            statements,
        })
    }

    /// Sampling queries run so far.
    pub fn queries(&self) -> u64 {
        self.queries
    }

    pub fn statements_unavailable(&self) -> Option<&str> {
        self.statements_unavailable.as_deref()
    }

    pub async fn close(self) {
        let _ = self.conn.close().await;
    }
}

/// The samples of one window: at its start, at its end, and after the statistics wait.
pub struct PgWindow {
    pub start: PgSample,
    /// Queries run up to and including the start sample.
    pub queries_at_start: u64,
    pub end: PgSample,
    /// Taken `stats_wait` after `end`, for the commits.
    pub flushed: PgSample,
    pub queries_before_flushed: u64,
    pub stats_wait: Duration,
}

impl PgWindow {
    /// The window's figures per saga. The start sample's own query is counted after it (its
    /// commit and statement end after it read the counters), as is every later sampling
    /// query before the one whose figure is used.
    pub fn cost(&self, sagas: u64, statements_unavailable: Option<&str>) -> PgCost {
        let queries_at_start = self.queries_at_start.saturating_sub(1);
        let own_commits = self.queries_before_flushed - queries_at_start;
        // The end sample comes right after the start's; only the start's statement is ours.
        let own_statements = 1;
        let commits = self.flushed.commits - self.start.commits - own_commits as i64;
        let xids_assigned = self.end.next_xid - self.start.next_xid;
        let statements = match (self.start.statements, self.end.statements) {
            (Some(start), Some(end)) => Some(end - start - own_statements),
            _ => None,
        };
        PgCost::Measured {
            commits,
            commits_per_saga: per_saga(commits as f64, sagas),
            xids_assigned,
            xids_per_saga: per_saga(xids_assigned as f64, sagas),
            statements,
            statements_per_saga: statements.and_then(|s| per_saga(s as f64, sagas)),
            statements_unavailable: statements.is_none().then(|| {
                statements_unavailable
                    .unwrap_or("pg_stat_statements could not be read")
                    .to_owned()
            }),
            own_queries_subtracted: own_commits,
            stats_wait_seconds: self.stats_wait.as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_subtracts_the_bench_s_own_queries() {
        let window = PgWindow {
            start: PgSample {
                commits: 1000,
                next_xid: 500,
                statements: Some(10_000),
            },
            queries_at_start: 1,
            end: PgSample {
                commits: 1500,
                next_xid: 700,
                statements: Some(10_801),
            },
            flushed: PgSample {
                commits: 1602,
                next_xid: 700,
                statements: Some(10_802),
            },
            queries_before_flushed: 2,
            stats_wait: Duration::from_secs(11),
        };
        let PgCost::Measured {
            commits,
            commits_per_saga,
            xids_assigned,
            statements,
            statements_per_saga,
            own_queries_subtracted,
            ..
        } = window.cost(20, None)
        else {
            panic!("not measured");
        };
        assert_eq!(commits, 600);
        assert_eq!(commits_per_saga, Some(30.0));
        assert_eq!(xids_assigned, 200);
        assert_eq!(statements, Some(800));
        assert_eq!(statements_per_saga, Some(40.0));
        assert_eq!(own_queries_subtracted, 2);

        let without = PgWindow {
            start: PgSample {
                statements: None,
                ..window.start
            },
            ..window
        };
        let PgCost::Measured {
            statements,
            statements_unavailable,
            ..
        } = without.cost(20, Some("not installed"))
        else {
            panic!("not measured");
        };
        assert_eq!(statements, None);
        assert_eq!(statements_unavailable.as_deref(), Some("not installed"));
    }
}
