//! Command-line interface of `hearth` (see `main.rs` for the exit codes).

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hearth::{Error, ErrorKind, Result};
use serde_json::json;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// `println!` that cannot panic: see [`emit`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::emit(format_args!($($arg)*))
    };
}

mod commands;
mod demo;
mod demo_server;
mod prompt;
mod remote;

/// Offline-first, end-to-end encrypted storage and sync.
#[derive(Parser, Debug)]
#[command(name = "hearth", version, about, long_about = None)]
pub struct Cli {
    /// The store file (default: the platform data directory, e.g. $XDG_DATA_HOME/hearth/default.db).
    #[arg(long, global = true, env = "HEARTH_STORE")]
    pub store: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    /// More diagnostics on stderr: -v info, -vv debug, -vvv trace (hearth's own crates; other
    /// libraries stay at warnings).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Less output: no progress, no diagnostics, only results and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a store (prints the recovery code once).
    Init {
        /// Storage backend.
        #[arg(long, default_value = "sqlite")]
        storage: String,
        /// Cipher backend.
        #[arg(long, default_value = "orion")]
        cipher: String,
    },
    /// Write a JSON value.
    Put {
        /// Collection.
        collection: String,
        /// Key.
        key: String,
        /// The JSON value (omit with --file).
        #[arg(value_name = "JSON")]
        value: Option<String>,
        /// Read the value from a file (`-` for standard input).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Print a value.
    Get {
        /// Collection.
        collection: String,
        /// Key.
        key: String,
    },
    /// List records of a collection, sorted by key.
    List {
        /// Collection.
        collection: String,
        /// Only keys starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Delete a record (a tombstone that syncs).
    Delete {
        /// Collection.
        collection: String,
        /// Key.
        key: String,
    },
    /// State of the store: device, pending changes, last sync, conflicts.
    Status,
    /// Check the store's integrity.
    Check,
    /// Conflict strategies per collection.
    Strategy {
        /// What to do.
        #[command(subcommand)]
        action: StrategyAction,
    },
    /// Write an encrypted backup of the whole store to FILE (opened with the passphrase).
    Export {
        /// The backup file to write (must not exist).
        file: PathBuf,
    },
    /// Restore a backup into a new store at --store (which must not exist).
    Import {
        /// The backup file.
        file: PathBuf,
    },
    /// Change the passphrase (the new one from HEARTH_NEW_PASSPHRASE or a prompt).
    Passphrase {
        /// What to do.
        #[command(subcommand)]
        action: PassphraseAction,
    },
    /// Rotate the root key: re-encrypt every record under a new key in a new sync space
    /// (resumes an interrupted rotation). Other devices join again afterwards.
    RotateKey,
    /// Unlock with the recovery code (HEARTH_RECOVERY_CODE or a prompt) and set a new
    /// passphrase (HEARTH_NEW_PASSPHRASE or a prompt). Any store's backends, SQLCipher included.
    Recover,
    /// The main job on the embedded defaults: two devices, a server on loopback, offline edits,
    /// conflicts, a delete, a consent-gated share, convergence.
    Demo,
    /// Run the standard benchmark workloads against baselines measured in the same run.
    Bench {
        /// Records per workload.
        #[arg(long, default_value_t = 100_000)]
        n: usize,
        /// Approximate JSON size of each record.
        #[arg(long, default_value_t = 1024)]
        value_size: usize,
        /// Workloads to run (W1 put, W2 get, W3 initial sync, W4 delta, W5 conflicts, W6 long offline).
        #[arg(long, value_delimiter = ',', default_value = "W1,W2,W3,W4,W5,W6")]
        workload: Vec<String>,
        /// Storage backend for W1/W2.
        #[arg(long, default_value = "sqlite")]
        storage: String,
        /// Cipher backend: W1/W2 and both devices of the sync workloads (W3 to W6).
        #[arg(long, default_value = "orion")]
        cipher: String,
        /// Also run W3 at 10 × N and report its peak memory against W3 at N (aim: flat).
        #[arg(long)]
        memory_ratio: bool,
        /// Envelopes per pull page and per push in the sync workloads (`SyncConfig::pull_page`
        /// and `push_batch`; the embedded server accepts up to 4000).
        #[arg(long, default_value_t = 1000)]
        sync_page: usize,
        /// MiB of pulled envelopes applied in one transaction in the sync workloads
        /// (`SyncConfig::apply_bytes`).
        #[arg(long, default_value_t = 8)]
        sync_apply_mib: usize,
    },
    /// Create an account on a sync server for this store (prints the account token other
    /// devices join with).
    Register {
        /// Server URL, e.g. http://127.0.0.1:8787.
        #[arg(long)]
        server: String,
    },
    /// Create a new store that joins an account's space with the passphrase and token.
    Join {
        /// Server URL.
        #[arg(long)]
        server: String,
        /// Account token (from `hearth register`).
        #[arg(long, env = "HEARTH_TOKEN", hide_env_values = true)]
        token: String,
        /// Storage backend of the new store.
        #[arg(long, default_value = "sqlite")]
        storage: String,
        /// Cipher backend of the new store (default: the one that made the account's key).
        #[arg(long)]
        cipher: Option<String>,
    },
    /// Sync with the server: push local changes, pull and merge remote ones.
    Sync {
        /// The server lost data (it was restored from an older backup): walk its whole log
        /// again and upload what this device holds that it lacks, instead of waiting for it.
        /// Only once the server's operator has confirmed the loss, and only for a restore the
        /// operator did not declare with `hearth-server mark-restored` (a declared one is
        /// handled at the next sync by itself); see docs/security.md.
        #[arg(long)]
        reupload: bool,
    },
    /// Run the sync server.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8787")]
        addr: std::net::SocketAddr,
        /// SQLite database file of the server.
        #[arg(long, conflicts_with = "postgres", default_value = "hearth-server.db")]
        db: PathBuf,
        /// PostgreSQL URL instead (for several server processes). Over the network, verify TLS:
        /// `?sslmode=verify-full&sslrootcert=/path/ca.crt`.
        #[arg(long)]
        postgres: Option<String>,
        /// Longest a request may take, body upload included (then 503, rolled back).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
        request_timeout: std::time::Duration,
        /// On Ctrl-C, how long requests in flight may finish before their connections drop.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
        drain_timeout: std::time::Duration,
        /// Do not serve: declare the database restored from a backup and exit. Every space gets
        /// a new log id, so each device walks its log again at its next sync and puts back what
        /// the restore lost. Run once after a restore, before serving again.
        #[arg(long)]
        mark_restored: bool,
    },
    /// Consent for data leaving this device for other purposes (default deny).
    Consent {
        /// What to do.
        #[command(subcommand)]
        action: ConsentAction,
    },
    /// Conflicts waiting for a decision.
    Conflicts {
        /// What to do.
        #[command(subcommand)]
        action: ConflictAction,
    },
}

/// `hearth strategy …`
#[derive(Subcommand, Debug)]
pub enum StrategyAction {
    /// Choose the strategy of a collection (any registered name).
    Set {
        /// Collection.
        collection: String,
        /// Strategy name (`lww`, `priority`, `merge`, `user-choice`, or a plugin's).
        name: String,
    },
    /// List the registered strategies.
    List,
}

/// `hearth consent …`
#[derive(Subcommand, Debug)]
pub enum ConsentAction {
    /// Allow DATA_TYPE to go to DESTINATION for PURPOSE.
    Grant {
        /// Kind of data (e.g. usage-stats).
        data_type: String,
        /// Why it leaves (e.g. improve-model).
        purpose: String,
        /// Where it goes (a configured destination name).
        destination: String,
        /// How long the grant lasts (e.g. 30d, 12h); default until revoked.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Revoke a grant by id, or every grant of DATA_TYPE PURPOSE DESTINATION.
    Revoke {
        /// A grant id, or the data type.
        id_or_data_type: String,
        /// Purpose (with a data type).
        purpose: Option<String>,
        /// Destination (with a data type).
        destination: Option<String>,
    },
    /// Decide whether DATA_TYPE may go to DESTINATION for PURPOSE now (audited): exit 0 if
    /// allowed, 10 if not. With no grant, asks on a terminal (never with --json or -q).
    Check {
        /// Kind of data.
        data_type: String,
        /// Why it would leave.
        purpose: String,
        /// Where it would go.
        destination: String,
    },
    /// List grants and their status.
    List,
    /// Print the audit log of every consent decision (JSON lines).
    Log,
}

/// `hearth passphrase …`
#[derive(Subcommand, Debug)]
pub enum PassphraseAction {
    /// Rewrap the store's key under a new passphrase.
    Change,
}

/// `hearth conflicts …`
#[derive(Subcommand, Debug)]
pub enum ConflictAction {
    /// List unresolved conflicts.
    List,
    /// Resolve one.
    Resolve {
        /// Collection.
        collection: String,
        /// Key.
        key: String,
        /// Keep `local` or take `remote` (the first sibling).
        #[arg(long, value_parser = ["local", "remote"], conflicts_with = "value")]
        take: Option<String>,
        /// Or write this JSON value.
        #[arg(long)]
        value: Option<String>,
    },
}

/// Exit code of an error class (the table in `main.rs` and the README).
pub fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::WrongPassphrase | ErrorKind::WrongKey => 3,
        ErrorKind::NotFound => 4,
        ErrorKind::InvalidInput | ErrorKind::TooLarge => 5,
        ErrorKind::Unavailable | ErrorKind::ResyncRequired => 6,
        ErrorKind::Unauthorized | ErrorKind::Forbidden => 7,
        ErrorKind::Config | ErrorKind::NotCompiledIn | ErrorKind::Conflict => 8,
        ErrorKind::Corrupt | ErrorKind::Tampered | ErrorKind::Unsupported => 9,
        ErrorKind::ConsentDenied => 10,
        ErrorKind::Io | ErrorKind::StorageFull | ErrorKind::Storage => 11,
        _ => 1,
    }
}

/// What to do about an error, in one line.
fn hint(e: &Error) -> &'static str {
    match e.kind() {
        ErrorKind::NotFound if e.message().contains("no store") => {
            "check the path (--store or HEARTH_STORE), or create a store with `hearth init`"
        }
        ErrorKind::NotFound if e.message().contains("grant") => {
            "`hearth consent list` shows the grants and their ids"
        }
        ErrorKind::NotFound if e.message().contains("conflict") => {
            "`hearth conflicts list` shows the conflicts waiting for a decision"
        }
        ErrorKind::NotFound if e.message().starts_with("cannot open") => "check the file's path",
        ErrorKind::NotFound if e.message().contains("account") => {
            "register the first device with `hearth register --server URL`, then join with its token"
        }
        ErrorKind::NotFound => {
            "check the collection and key; `hearth list COLLECTION` shows what exists"
        }
        ErrorKind::WrongPassphrase => {
            "check the passphrase (HEARTH_PASSPHRASE or the prompt); `hearth recover` uses the recovery code"
        }
        ErrorKind::WrongKey if e.message().contains("retired") => {
            "another device rotated this account's key: move this store aside and run `hearth join --server URL --token TOKEN` with the current passphrase (changes not synced from here stay in the old store)"
        }
        ErrorKind::WrongKey => {
            "the data was sealed under another key: join this account again with `hearth join`, or restore a backup made by this store"
        }
        ErrorKind::InvalidInput => "fix the input and run the command again",
        ErrorKind::TooLarge => {
            "the value or request is larger than the other side accepts: split it or store less per record"
        }
        ErrorKind::Unavailable => "check the network and the server address, then try again",
        ErrorKind::ResyncRequired => {
            "run `hearth sync` again: this device was away too long and downloads the space afresh"
        }
        ErrorKind::Unauthorized => {
            "the server does not know this account token (tokens do not expire; was the server's database replaced?): run `hearth register --server URL` again, or `hearth join` with a valid token"
        }
        ErrorKind::Forbidden => {
            "this account token does not reach that space: use the token of the account that registered it (`hearth join --token`)"
        }
        ErrorKind::NotCompiledIn => "rebuild hearth with the cargo feature named above",
        ErrorKind::Config if e.message().contains("available:") => {
            "use one of the available names listed above (`hearth strategy list` for strategies)"
        }
        ErrorKind::Config if e.message().contains("already exists") => {
            "choose another path (hearth never overwrites a store or a backup), or move the existing one away"
        }
        ErrorKind::Config if e.message().contains("no sync server") => {
            "register this store with `hearth register --server URL`, or create it with `hearth join`"
        }
        ErrorKind::Config => "see `hearth --help`; the message names what does not match",
        ErrorKind::Conflict => {
            "resolve it first: `hearth conflicts list`, then `hearth conflicts resolve COLLECTION KEY --take local|remote`"
        }
        ErrorKind::ConsentDenied if e.message().contains("sync consent") => {
            "resume sync with `hearth consent grant hearth.user-data sync own-devices`, or run `hearth register` again"
        }
        ErrorKind::ConsentDenied => {
            "nothing was sent; if you agree, record it with `hearth consent grant DATA_TYPE PURPOSE DESTINATION` (`hearth consent list` shows grants)"
        }
        ErrorKind::Unsupported => {
            "this hearth build does not support that for this store or server; upgrade hearth, or use the default backends (sqlite + orion)"
        }
        ErrorKind::Corrupt | ErrorKind::Tampered => {
            "the data was damaged or altered; restore from a backup (`hearth import`)"
        }
        ErrorKind::Io => "check permissions of the store's directory and that it exists",
        ErrorKind::StorageFull => {
            "free some disk space, then run the command again (nothing was written)"
        }
        ErrorKind::Storage => {
            "the database engine failed: run `hearth check`, and restore from a backup (`hearth import`) if it fails"
        }
        _ => "this is a bug in hearth; please report it with the command you ran",
    }
}

/// Maps an unknown registry name (storage, cipher, strategy) to a configuration error: the
/// user named something that is not there, the message lists what is.
pub fn known_name<T>(found: Result<T>) -> Result<T> {
    found.map_err(|e| match e.kind() {
        ErrorKind::NotFound => Error::new(ErrorKind::Config, e.message().to_owned()),
        _ => e,
    })
}

/// The crates whose diagnostics `-v` turns up. Their events carry ids, sizes and counts, never
/// keys, passphrases, tokens or plaintext.
const OWN_CRATES: &[&str] = &[
    "hearth",
    "sync_core",
    "backend_sqlite",
    "backend_sqlcipher",
    "crypto_orion",
    "crypto_sodium",
    "transport_http",
    "transport_mock",
    "sync_server",
];

/// The diagnostics level of hearth's own crates for `-q` / `-v…` (the server logs its requests
/// by default).
fn log_level(quiet: bool, verbose: u8, serving: bool) -> LevelFilter {
    if quiet {
        return LevelFilter::OFF;
    }
    let base = if serving { 3 } else { 2 };
    match base + u32::from(verbose) {
        2 => LevelFilter::WARN,
        3 => LevelFilter::INFO,
        4 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// Diagnostics on stderr at `level` for hearth's crates; other libraries (HTTP, SQL) at most
/// warnings, so headers and statements never reach the terminal.
fn init_logging(level: LevelFilter) {
    let targets = OWN_CRATES.iter().fold(
        Targets::new().with_default(level.min(LevelFilter::WARN)),
        |t, c| t.with_target(*c, level),
    );
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false),
        )
        .with(targets)
        .try_init();
}

/// A command line clap refused (or `--help`/`--version`): clap's own output, except that a
/// usage error under `--json` is one JSON line on stderr like every other error.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind as Clap;
    let wants_json = std::env::args_os().any(|a| a == "--json");
    let informational = matches!(
        e.kind(),
        Clap::DisplayHelp | Clap::DisplayVersion | Clap::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if wants_json && !informational {
        // clap's text without the usage block, on one line.
        let detail = e.to_string();
        let message = detail
            .lines()
            .map(str::trim)
            .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let message = message.trim_start_matches("error: ");
        eprintln!("{}", json!({"error": "usage", "message": message}));
        return ExitCode::from(2);
    }
    e.exit()
}

/// Runs the command line.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_logging(log_level(
        cli.quiet,
        cli.verbose,
        matches!(cli.command, Command::Serve { .. }),
    ));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hearth: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let json_errors = cli.json;
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json_errors {
                let line =
                    json!({"error": e.kind().as_str(), "message": e.to_string(), "hint": hint(&e)});
                eprintln!("{line}");
            } else {
                eprintln!("hearth: {e}\n  {}", hint(&e));
            }
            ExitCode::from(exit_code(e.kind()))
        }
    }
}

/// The passphrase: `HEARTH_PASSPHRASE`, or a prompt on the terminal (never a flag).
pub fn passphrase(confirm: bool) -> Result<hearth::Passphrase> {
    if let Ok(p) = std::env::var("HEARTH_PASSPHRASE") {
        return Ok(hearth::Passphrase::new(p));
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::invalid(
            "no passphrase: set HEARTH_PASSPHRASE or run on a terminal to be prompted",
        ));
    }
    let first = rpassword::prompt_password("passphrase: ")
        .map_err(|e| Error::new(ErrorKind::Io, "cannot read the passphrase").with_source(e))?;
    if first.is_empty() {
        return Err(Error::invalid("the passphrase must not be empty"));
    }
    if confirm {
        let again = rpassword::prompt_password("again: ")
            .map_err(|e| Error::new(ErrorKind::Io, "cannot read the passphrase").with_source(e))?;
        if again != first {
            return Err(Error::invalid("the passphrases differ"));
        }
    }
    Ok(hearth::Passphrase::new(first))
}

/// A secret from an environment variable, or a prompt on the terminal.
pub fn secret_from(var: &str, prompt: &str, confirm: bool) -> Result<String> {
    if let Ok(v) = std::env::var(var) {
        return Ok(v);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::invalid(format!(
            "set {var} or run on a terminal to be prompted"
        )));
    }
    let first = rpassword::prompt_password(prompt)
        .map_err(|e| Error::new(ErrorKind::Io, "cannot read from the terminal").with_source(e))?;
    if first.is_empty() {
        return Err(Error::invalid("it must not be empty"));
    }
    if confirm {
        let again = rpassword::prompt_password("again: ").map_err(|e| {
            Error::new(ErrorKind::Io, "cannot read from the terminal").with_source(e)
        })?;
        if again != first {
            return Err(Error::invalid("the two entries differ"));
        }
    }
    Ok(first)
}

/// The store path: `--store`, or the platform data directory.
pub fn store_path(cli: &Cli) -> Result<PathBuf> {
    if let Some(p) = &cli.store {
        return Ok(p.clone());
    }
    let dirs = directories::ProjectDirs::from("", "", "hearth").ok_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            "no home directory to put the store in; pass --store PATH",
        )
    })?;
    Ok(dirs.data_dir().join("default.db"))
}

/// Reads a JSON value from an argument, a file, or standard input (`-`).
pub fn read_json(arg: Option<String>, file: Option<PathBuf>) -> Result<String> {
    match (arg, file) {
        (Some(j), None) => Ok(j),
        (None, Some(f)) if f.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).map_err(|e| {
                Error::new(ErrorKind::Io, "cannot read standard input").with_source(e)
            })?;
            Ok(s)
        }
        (None, Some(f)) => std::fs::read_to_string(&f).map_err(|e| {
            Error::new(ErrorKind::Io, format!("cannot read {}", f.display())).with_source(e)
        }),
        (Some(_), Some(_)) => Err(Error::invalid("give the value or --file, not both")),
        (None, None) => Err(Error::invalid("give a JSON value or --file")),
    }
}

/// Prints a line unless quiet.
pub fn say(cli_quiet: bool, line: impl AsRef<str>) {
    if !cli_quiet {
        emit(format_args!("{}", line.as_ref()));
    }
}

/// Writes one line to stdout. When the reader has gone (`hearth list notes | head`), the command
/// ends quietly with success instead of panicking as `println!` does; the store is left as
/// every write left it (each is a committed transaction).
pub fn emit(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(e) = written
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_maps_to_levels_and_quiet_turns_diagnostics_off() {
        assert_eq!(log_level(true, 0, true), LevelFilter::OFF);
        assert_eq!(log_level(false, 0, false), LevelFilter::WARN);
        assert_eq!(log_level(false, 1, false), LevelFilter::INFO);
        assert_eq!(log_level(false, 2, false), LevelFilter::DEBUG);
        assert_eq!(log_level(false, 3, false), LevelFilter::TRACE);
        assert_eq!(log_level(false, 200, false), LevelFilter::TRACE);
        assert_eq!(log_level(false, 0, true), LevelFilter::INFO);
        assert_eq!(log_level(false, 1, true), LevelFilter::DEBUG);
    }

    #[test]
    fn every_error_class_has_a_hint_and_only_internal_blames_hearth() {
        let kinds = [
            ErrorKind::NotFound,
            ErrorKind::WrongPassphrase,
            ErrorKind::WrongKey,
            ErrorKind::Tampered,
            ErrorKind::Corrupt,
            ErrorKind::Unsupported,
            ErrorKind::InvalidInput,
            ErrorKind::NotCompiledIn,
            ErrorKind::Config,
            ErrorKind::Conflict,
            ErrorKind::ConsentDenied,
            ErrorKind::Unavailable,
            ErrorKind::Io,
            ErrorKind::StorageFull,
            ErrorKind::Storage,
            ErrorKind::ResyncRequired,
            ErrorKind::Unauthorized,
            ErrorKind::Forbidden,
            ErrorKind::TooLarge,
        ];
        for kind in kinds {
            let h = hint(&Error::new(kind, "x"));
            assert!(!h.contains("bug"), "{kind:?}: {h}");
            assert_ne!(exit_code(kind), 1, "{kind:?}");
        }
        assert!(hint(&Error::internal("x")).contains("bug"));
        assert_eq!(exit_code(ErrorKind::Internal), 1);
    }
}
