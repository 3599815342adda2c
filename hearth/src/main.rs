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
//! | 4 | not found (no store at the path, no such record) |
//! | 5 | invalid input (bad JSON, bad name, bad value) |
//! | 6 | unavailable (server unreachable, offline, busy): try again later |
//! | 7 | not authorised (missing or expired account token) |
//! | 8 | configuration (unknown strategy or backend, store made by another backend, conflict) |
//! | 9 | corrupt or tampered data, unsupported format |
//! | 10 | consent denied |
//! | 11 | file system (permissions, disk full, missing directory) |

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
