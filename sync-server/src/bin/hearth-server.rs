//! `hearth-server`: the zero-knowledge sync server.
//!
//! ```text
//! hearth-server [--listen ADDR] [--database URL] [--max-body BYTES] [--no-registration]
//! ```
//!
//! `--database` is `sqlite:PATH` (default `sqlite:hearth-server.db`) or `postgres://…`; prefer
//! the `HEARTH_DATABASE` environment variable for URLs with passwords (arguments are visible in
//! the process list). `HEARTH_LISTEN` sets the address, `HEARTH_LOG` the log level (`error`,
//! `warn`, `info` (default), `debug`, `trace`). Logs go to standard error; the first line on
//! standard output is `listening on ADDR`. SIGINT or SIGTERM stop it gracefully.

use std::process::ExitCode;

use sync_server::{Server, ServerBuilder, ServerConfig};

fn usage() -> &'static str {
    "usage: hearth-server [--listen ADDR] [--database sqlite:PATH|postgres://...] [--max-body BYTES] [--no-registration]"
}

fn parse() -> Result<ServerConfig, String> {
    let mut config = ServerConfig::default();
    if let Ok(v) = std::env::var("HEARTH_LISTEN") {
        config.listen = v
            .parse()
            .map_err(|_| format!("HEARTH_LISTEN: not an address: {v}"))?;
    }
    if let Ok(v) = std::env::var("HEARTH_DATABASE") {
        config.database = v;
    }
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--listen" => {
                let v = value("--listen")?;
                config.listen = v
                    .parse()
                    .map_err(|_| format!("--listen: not an address: {v}"))?;
            }
            "--database" => config.database = value("--database")?,
            "--max-body" => {
                let v = value("--max-body")?;
                config.max_body = v
                    .parse()
                    .map_err(|_| format!("--max-body: not a number: {v}"))?;
            }
            "--no-registration" => config.registration = false,
            "-h" | "--help" => return Err(usage().to_owned()),
            other => return Err(format!("unknown argument {other}\n{}", usage())),
        }
    }
    Ok(config)
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
    let config = match parse() {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
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
