//! The `hearth` command: an encrypted store on this device, sync through a hearth server,
//! conflicts, consent, backups, the sync server itself, the demo and the benchmarks.
//!
//! Exit codes (stable; scripts may rely on them):
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success |
//! | 1 | internal error (a bug: please report it) |
//! | 2 | usage error (unknown command or flag) |
//! | 3 | wrong passphrase, recovery code or key |
//! | 4 | not found (no store at the path, no such record, grant or conflict) |
//! | 5 | invalid input (bad JSON, bad name, bad value, too large) |
//! | 6 | unavailable (server unreachable, offline, busy; a resync is needed): try again |
//! | 7 | not authorised (the server refuses the account token, or it does not reach the space) |
//! | 8 | configuration (unknown strategy, storage or cipher name, a feature not compiled in, a store that already exists or was made by another backend, no sync server configured, an unresolved conflict) |
//! | 9 | corrupt or tampered data, an unsupported format or operation |
//! | 10 | consent denied (including sync after the sync consent was revoked) |
//! | 11 | file system or storage engine (permissions, disk full, missing directory, database error) |

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
