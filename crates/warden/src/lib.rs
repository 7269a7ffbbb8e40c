//! The command-line interface: `cli.rs` defines the arguments, one module per command group
//! under `commands/` runs them, and [`main`] dispatches.

pub mod cli;
pub mod clientconfig;
pub mod commands;
pub mod config_file;
pub mod exit;
pub mod output;
pub mod signal;
pub mod tables;

use clap::Parser;

use crate::cli::{Cli, Command};

/// Parses arguments, runs the command, returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    exit::OK
                }
                _ => exit::USAGE,
            };
        }
    };
    let default_level = if matches!(cli.command, Command::Serve(_) | Command::Worker(_)) {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let json = match &cli.command {
        Command::Serve(a) => a.log_format == cli::LogFormat::Json,
        Command::Worker(a) => a.log_format == cli::LogFormat::Json,
        _ => false,
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        // One JSON object a line; a job's events carry `job` as a field.
        logs.json().with_current_span(false).init();
    } else {
        // Colours for a terminal; plain text for log files and collectors.
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::UNAVAILABLE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => commands::serve::run(args).await,
            Command::Worker(args) => commands::worker::run(args).await,
            Command::Job(args) => commands::job::run(args).await,
            Command::Mcp(args) => commands::mcp::run(args.client).await,
            Command::Tools(args) => commands::tools::run(args).await,
            Command::Config(args) => commands::config::run(args),
            Command::Doctor(args) => commands::doctor::run(args).await,
            Command::Token(args) => commands::token::run(args).await,
            Command::Audit(args) => commands::token::audit(args).await,
            Command::Backup(args) => commands::backup::backup(args),
            Command::Restore(args) => commands::backup::restore(args),
            Command::Gc(args) => commands::gc::run(args).await,
            Command::Events(args) => commands::events::run(args).await,
            Command::Health(args) => commands::gc::health(args).await,
        }
    })
}
