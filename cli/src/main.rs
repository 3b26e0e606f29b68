//! `jwl`: the Jiangwanli command-line tool. Parses flags/`JWL_*` variables, runs the chosen
//! subcommand, and turns any error into a message on stderr and a non-zero exit code.

mod args;
mod commands;
mod config;
mod private_servers;
mod secret;
mod services;
mod supervise;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};

/// mimalloc rather than glibc's malloc: at saturation, glibc's allocator (`_int_malloc`,
/// `malloc_consolidate`, `_int_free`, `unlink_chunk`) took about a quarter of the `jwl`
/// process's CPU in a `perf` profile (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: could not start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "jwl failed");
            eprintln!("error: {error:#}");
            // `jwl replay --sandbox` tells a difference (1) from a failure to judge (2)
            if error.is::<commands::replay::SandboxFailed>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up(args) => {
            jwl_service_kit::telemetry::init("jwl");
            commands::up::run(args).await
        }
        Command::Serve(args) => {
            jwl_service_kit::telemetry::init(args.service.as_str());
            commands::serve::run(args).await
        }
        Command::Migrate(args) => {
            jwl_service_kit::telemetry::init("jwl-migrate");
            commands::migrate::run(args).await
        }
        // No telemetry: `jwl token` prints the token on stdout and nothing else.
        Command::Token(args) => commands::token::run(args),
        // No telemetry either: the operator commands print their results on stdout.
        Command::Saga(command) => commands::saga::run(command).await,
        Command::Replay(args) => commands::replay::run(args).await,
        Command::Dlq(command) => commands::dlq::run(command).await,
        Command::Outbox(command) => commands::outbox::run(command).await,
        // No telemetry: the report goes to stdout.
        Command::Bench(args) => commands::bench::run(args).await,
    }
}
