//! Command-line interface of `hearth` (see `main.rs` for the exit codes).

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hearth::{Error, ErrorKind, Result};
use serde_json::json;

mod commands;
mod demo;
mod demo_server;
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
    /// More output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less output.
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
    /// passphrase (HEARTH_NEW_PASSPHRASE or a prompt).
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
        /// Cipher backend for W1/W2.
        #[arg(long, default_value = "orion")]
        cipher: String,
        /// Also run W3 at 10 × N and report its peak memory against W3 at N (aim: flat).
        #[arg(long)]
        memory_ratio: bool,
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
    },
    /// Sync with the server: push local changes, pull and merge remote ones.
    Sync,
    /// Run the sync server.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8787")]
        addr: std::net::SocketAddr,
        /// SQLite database file of the server.
        #[arg(long, conflicts_with = "postgres", default_value = "hearth-server.db")]
        db: PathBuf,
        /// PostgreSQL URL instead (for several server processes).
        #[arg(long)]
        postgres: Option<String>,
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

/// Exit code of an error class.
pub fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::WrongPassphrase | ErrorKind::WrongKey => 3,
        ErrorKind::NotFound => 4,
        ErrorKind::InvalidInput | ErrorKind::TooLarge => 5,
        ErrorKind::Unauthorized | ErrorKind::Forbidden => 7,
        ErrorKind::Unavailable => 6,
        ErrorKind::Config | ErrorKind::NotCompiledIn | ErrorKind::Conflict => 8,
        ErrorKind::Corrupt | ErrorKind::Tampered | ErrorKind::Unsupported => 9,
        ErrorKind::ConsentDenied => 10,
        ErrorKind::Io | ErrorKind::StorageFull => 11,
        _ => 1,
    }
}

/// What to do about an error, in one line.
fn hint(e: &Error) -> &'static str {
    match e.kind() {
        ErrorKind::NotFound if !e.message().contains("store") => {
            "list what exists with `hearth list COLLECTION`"
        }
        ErrorKind::WrongPassphrase => {
            "check the passphrase (HEARTH_PASSPHRASE or the prompt); `hearth recover` uses the recovery code"
        }
        ErrorKind::WrongKey => "this store holds a different key than the data or server expects",
        ErrorKind::NotFound => "check the path (--store) or create a store with `hearth init`",
        ErrorKind::InvalidInput => "fix the input and run the command again",
        ErrorKind::Unavailable => "check the network and the server address, then try again",
        ErrorKind::NotCompiledIn => "rebuild hearth with the cargo feature named above",
        ErrorKind::Config => "see `hearth --help`; the message names what does not match",
        ErrorKind::Corrupt | ErrorKind::Tampered => {
            "the data was damaged or altered; restore from a backup (`hearth import`)"
        }
        ErrorKind::Io | ErrorKind::StorageFull => {
            "check permissions and free space of the store's directory"
        }
        _ => "this is a bug in hearth; please report it with the command you ran",
    }
}

/// Runs the command line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
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
                let line = json!({"error": e.kind().as_str(), "message": e.to_string()});
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
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", line.as_ref());
    }
}
