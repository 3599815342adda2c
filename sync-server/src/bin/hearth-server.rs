//! `hearth-server`: the zero-knowledge sync server.
//!
//! ```text
//! hearth-server [--listen ADDR] [--database URL] [--max-body BYTES] [--no-registration]
//!               [--request-timeout DURATION] [--drain-timeout DURATION]
//! hearth-server [--database URL] mark-restored
//! ```
//!
//! `mark-restored` is run once after the database was restored from a backup, before the
//! servers start again: it gives every space a new log id, so every device walks its space's
//! log again at its next sync and puts back what the restore lost (docs/security.md).
//!
//! `--database` is `sqlite:PATH` (default `sqlite:hearth-server.db`) or `postgres://…`; prefer
//! the `HEARTH_DATABASE` environment variable for URLs with passwords (arguments are visible in
//! the process list). `HEARTH_LISTEN` sets the address, `HEARTH_LOG` the log level (`error`,
//! `warn`, `info` (default), `debug`, `trace`). Durations are written like `60s` or `2m`. Logs go
//! to standard error; the first line on standard output is `listening on ADDR`. SIGINT or
//! SIGTERM stop it gracefully: no new connections, requests in flight get up to the drain
//! timeout.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sync_server::{Server, ServerBuilder, ServerConfig};

/// hearth's zero-knowledge sync server.
#[derive(Debug, Parser)]
#[command(name = "hearth-server", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "HEARTH_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// `sqlite:PATH` (or a bare path) or `postgres://…`.
    #[arg(
        long,
        env = "HEARTH_DATABASE",
        hide_env_values = true,
        default_value = "sqlite:hearth-server.db"
    )]
    database: String,
    /// Largest request body in bytes (larger is 413). Default: the largest envelope plus 1 MiB.
    #[arg(long)]
    max_body: Option<usize>,
    /// Refuse to create accounts (`POST /v1/accounts` answers 403).
    #[arg(long)]
    no_registration: bool,
    /// Longest a request may take, body upload included (then 503, rolled back).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    request_timeout: Duration,
    /// On shutdown, how long requests in flight may finish before their connections drop.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    drain_timeout: Duration,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Declares the database restored from a backup (run once, before serving again): every
    /// space gets a new log id, so each device walks its log again at its next sync and puts
    /// back what the restore lost.
    MarkRestored,
}

impl Args {
    fn config(self) -> ServerConfig {
        let mut config = ServerConfig {
            listen: self.listen,
            database: self.database,
            registration: !self.no_registration,
            request_timeout: self.request_timeout,
            drain_timeout: self.drain_timeout,
            ..ServerConfig::default()
        };
        if let Some(bytes) = self.max_body {
            config.max_body = bytes;
        }
        config
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let level = match std::env::var("HEARTH_LOG").as_deref() {
        Ok("error") => tracing::Level::ERROR,
        Ok("warn") => tracing::Level::WARN,
        Ok("debug") => tracing::Level::DEBUG,
        Ok("trace") => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let mut args = Args::parse();
    if let Some(Command::MarkRestored) = args.command.take() {
        return mark_restored(&args.database).await;
    }
    let config = args.config();
    let server: Server = match ServerBuilder::from_config(config).build().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hearth-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("listening on {}", server.local_addr());
    match server.run(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hearth-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn mark_restored(database: &str) -> ExitCode {
    match sync_server::mark_restored(database).await {
        Ok(n) => {
            println!(
                "marked restored: {n} spaces have a new log id; their devices put back what the restore lost at their next sync"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hearth-server: {e}");
            ExitCode::FAILURE
        }
    }
}
