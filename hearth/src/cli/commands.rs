//! The commands' bodies.

use std::sync::Arc;

use hearth::{Choice, Detached, Error, ErrorKind, KdfCost, Result, Store, SyncConfig, SyncEngine};
use serde_json::{Value, json};

use super::{
    Cli, Command, ConflictAction, ConsentAction, PassphraseAction, StrategyAction, known_name,
    passphrase, read_json, say, secret_from, store_path,
};

/// Argon2id cost of new stores. `HEARTH_INSECURE_KDF=1` lowers it for test suites only.
fn kdf_cost() -> KdfCost {
    if std::env::var("HEARTH_INSECURE_KDF").is_ok_and(|v| v == "1") {
        KdfCost::INSECURE_FOR_TESTS
    } else {
        KdfCost::DEFAULT
    }
}

async fn open(cli: &Cli) -> Result<Store> {
    let path = store_path(cli)?;
    if !path.exists() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("no store at {}", path.display()),
        ));
    }
    let pass = passphrase(false)?;
    tracing::debug!(store = %path.display(), "opening the store");
    let store = Store::builder()
        .path(path)
        .passphrase(pass)
        .create(false)
        .open()
        .await?;
    tracing::debug!(device = %store.device(), space = %store.space(), "store open");
    Ok(store)
}

fn engine(store: &Store) -> SyncEngine {
    SyncEngine::new(store.clone(), Arc::new(Detached), SyncConfig::default())
}

fn print_json(v: &Value) {
    outln!("{v}");
}

fn parse_json(text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| Error::invalid(format!("not valid JSON: {e}")))
}

/// Records the sync consent unless an active one exists (enabling sync is that consent).
async fn ensure_sync_consent(store: &Store) -> Result<()> {
    let consent = hearth::StoreConsent::new(store);
    let now = consent.now();
    let active = consent
        .grants_for(&hearth::StoreConsent::sync_request())
        .await?
        .iter()
        .any(|g| g.is_active(now));
    if !active {
        consent.grant_sync(hearth::GrantOptions::ongoing()).await?;
    }
    Ok(())
}

/// The store's sync state, as a stable name and a sentence, from what is recorded: whether a
/// server is configured, the sync consent, the last round's error, conflicts, pending changes.
fn sync_state(
    configured: bool,
    consented: bool,
    last_error: Option<&str>,
    conflicts: usize,
    pending: u64,
) -> (&'static str, String) {
    if !configured {
        return ("not_configured", "not set up: no sync server".into());
    }
    if !consented {
        return (
            "consent_revoked",
            "paused: no sync consent (withdrawn or never given; `hearth consent grant hearth.user-data sync own-devices` resumes it)".into(),
        );
    }
    if let Some(e) = last_error {
        return ("error", format!("the last sync failed: {e}"));
    }
    if conflicts > 0 {
        return ("conflicts", format!("{conflicts} conflict(s) wait for you"));
    }
    if pending > 0 {
        return (
            "pending",
            format!("{pending} change(s) wait for the next sync"),
        );
    }
    ("up_to_date", "up to date".into())
}

/// Removes a store's files (the database, its WAL and shared memory, the key sidecar).
fn remove_store_files(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm", "-journal", ".keys", ".keys.lock"] {
        let mut p = path.as_os_str().to_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

/// Moves a closed store from `tmp` to `path`: the database, then its key header file, if it
/// has one (a store encrypted at rest). A database without its key header does not open, so a
/// crash in between never leaves a store that looks complete.
async fn move_store(tmp: &std::path::Path, path: &std::path::Path) -> Result<()> {
    let with = |p: &std::path::Path, suffix: &str| {
        let mut s = p.as_os_str().to_os_string();
        s.push(suffix);
        std::path::PathBuf::from(s)
    };
    for suffix in ["", ".keys"] {
        let from = with(tmp, suffix);
        if suffix.is_empty() || from.exists() {
            let to = with(path, suffix);
            tokio::fs::rename(&from, &to).await.map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!("cannot move the store to {}", to.display()),
                )
                .with_source(e)
            })?;
        }
    }
    Ok(())
}

/// A temporary path next to `path`, so the final rename stays on one file system.
fn temp_beside(path: &std::path::Path) -> std::path::PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".partial-{}", std::process::id()));
    path.with_file_name(name)
}

async fn consent_command(
    cli: &Cli,
    consent: &hearth::StoreConsent,
    action: &ConsentAction,
) -> Result<()> {
    match action {
        ConsentAction::Grant {
            data_type,
            purpose,
            destination,
            expires,
        } => {
            let request = hearth::ConsentRequest::new(
                data_type.as_str(),
                purpose.as_str(),
                destination.as_str(),
            );
            let mut options = hearth::GrantOptions::ongoing();
            if let Some(e) = expires {
                let d = humantime::parse_duration(e).map_err(|err| {
                    Error::invalid(format!("--expires: {err} (use e.g. 30d, 12h)"))
                })?;
                options = options.expires_after(d);
            }
            let grant = consent.grant(&request, options).await?;
            if cli.json {
                print_json(&serde_json::to_value(&grant).unwrap_or(Value::Null));
            } else {
                say(
                    cli.quiet,
                    format!(
                        "granted {}: {data_type} for {purpose} to {destination}",
                        grant.id
                    ),
                );
            }
            Ok(())
        }
        ConsentAction::Revoke {
            id_or_data_type,
            purpose,
            destination,
        } => {
            let n = match (purpose, destination) {
                (Some(p), Some(d)) => {
                    let request = hearth::ConsentRequest::new(
                        id_or_data_type.as_str(),
                        p.as_str(),
                        d.as_str(),
                    );
                    consent.revoke_all(&request).await?
                }
                (None, None) => usize::from(consent.revoke(id_or_data_type).await?),
                _ => {
                    return Err(Error::invalid(
                        "give a grant id, or DATA_TYPE PURPOSE DESTINATION",
                    ));
                }
            };
            if n == 0 {
                return Err(Error::new(ErrorKind::NotFound, "no active grant matched"));
            }
            if cli.json {
                print_json(&json!({"revoked": n}));
            } else {
                say(cli.quiet, format!("revoked {n} grant(s)"));
            }
            Ok(())
        }
        ConsentAction::Check {
            data_type,
            purpose,
            destination,
        } => {
            let request = hearth::ConsentRequest::new(
                data_type.as_str(),
                purpose.as_str(),
                destination.as_str(),
            );
            let prompt = super::prompt::TerminalPrompt::new(!cli.json && !cli.quiet);
            // Ask only where someone can answer (so the audit's `prompted` is true only when a
            // person was asked), and never for the sync consent: enabling sync is explicit.
            let may_prompt = prompt.asks() && request != hearth::StoreConsent::sync_request();
            let decision = consent
                .clone()
                .with_prompt(std::sync::Arc::new(prompt))
                .decide_with(&request, may_prompt)
                .await?;
            match decision {
                hearth::consent::Decision::Allow { grant_id } => {
                    if cli.json {
                        print_json(&json!({"allowed": true, "grant": grant_id}));
                    } else {
                        say(cli.quiet, format!("allowed by grant {grant_id}"));
                    }
                    Ok(())
                }
                hearth::consent::Decision::Deny(reason) => Err(Error::new(
                    ErrorKind::ConsentDenied,
                    format!(
                        "{data_type} for {purpose} to {destination} is not allowed ({})",
                        match reason {
                            hearth::consent::DenyReason::Revoked => "the grant was revoked",
                            hearth::consent::DenyReason::Expired => "the grant expired",
                            _ => "no grant",
                        }
                    ),
                )),
            }
        }
        ConsentAction::List => {
            let now = consent.now();
            for g in consent.grants().await? {
                let status = format!("{:?}", g.status(now)).to_lowercase();
                if cli.json {
                    let mut v = serde_json::to_value(&g).unwrap_or(Value::Null);
                    v["status"] = json!(status);
                    print_json(&v);
                } else {
                    outln!(
                        "{}  {}  {} for {} to {}",
                        g.id,
                        status,
                        g.data_type,
                        g.purpose,
                        g.destination
                    );
                }
            }
            Ok(())
        }
        ConsentAction::Log => {
            let lines = consent.audit().export_json_lines().await?;
            for line in lines.lines() {
                outln!("{line}");
            }
            Ok(())
        }
    }
}

/// `hearth bench` arguments.
struct BenchArgs<'a> {
    n: usize,
    value_size: usize,
    workloads: &'a [String],
    storage: &'a str,
    cipher: &'a str,
    memory_ratio: bool,
    sync_page: usize,
    sync_apply_mib: usize,
}

async fn bench(cli: &Cli, args: BenchArgs<'_>) -> Result<()> {
    use hearth::bench::{self, BenchOptions, BenchResult, SyncWorkloads};
    let BenchArgs {
        n,
        value_size,
        workloads,
        storage,
        cipher,
        memory_ratio,
        sync_page,
        sync_apply_mib,
    } = args;
    let want = |w: &str| workloads.iter().any(|x| x.eq_ignore_ascii_case(w));
    for w in workloads {
        if !["W1", "W2", "W3", "W4", "W5", "W6"]
            .iter()
            .any(|k| k.eq_ignore_ascii_case(w))
        {
            return Err(Error::invalid(format!("unknown workload {w} (W1 to W6)")));
        }
    }
    if n == 0 {
        return Err(Error::invalid("--n must be at least 1"));
    }
    let opts = BenchOptions {
        n,
        value_size,
        sync_page,
        sync_apply_bytes: sync_apply_mib.saturating_mul(1024 * 1024),
        sync_cipher: known_name(hearth::registry::cipher(cipher))?.name,
        ..BenchOptions::default()
    };
    let dir = tempfile_dir()?;
    let mut rows: Vec<BenchResult> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let progress = (!cli.json
        && !cli.quiet
        && std::io::IsTerminal::is_terminal(&std::io::stderr()))
    .then(|| {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.enable_steady_tick(std::time::Duration::from_millis(120));
        pb
    });
    let step = |msg: &str| {
        if let Some(pb) = &progress {
            pb.set_message(msg.to_owned());
        }
    };
    if !bench::reset_peak_rss() {
        notes.push(
            "peak RSS could not be reset per workload here: each figure covers the process so far"
                .into(),
        );
    }
    if want("W1") || want("W2") {
        step("W1/W2: put and get");
        for r in bench::store_put_get(dir.path(), storage, cipher, &opts).await? {
            let keep = (r.workload.starts_with("W1") && want("W1"))
                || (r.workload.starts_with("W2") && want("W2"));
            if keep {
                rows.push(r);
            }
        }
    }
    let which = SyncWorkloads {
        delta: want("W4"),
        conflicts: want("W5"),
        long_offline: want("W6"),
    };
    if want("W3") || which.delta || which.conflicts || which.long_offline {
        step("W3-W6: sync through the server on loopback");
        let sub = dir.path().join("sync");
        std::fs::create_dir(&sub)
            .map_err(|e| Error::new(ErrorKind::Io, "bench dir").with_source(e))?;
        let out = bench::sync_workloads(&sub, &opts, which).await?;
        let _ = std::fs::remove_dir_all(&sub);
        let b = out.bytes;
        for r in out.results {
            if !r.workload.starts_with("W3") || want("W3") {
                rows.push(r);
            }
        }
        if want("W3") {
            notes.push(format!(
                "W3: {} bytes on the wire in {} requests (request and response bodies) vs lower bound {} (sealed envelopes, up and down): {:.3} x",
                b.initial,
                b.initial_requests,
                b.sealed_lower_bound,
                b.initial as f64 / b.sealed_lower_bound.max(1) as f64
            ));
            notes.push(format!(
                "W3: A's push took {:.2} s, B's pull the rest; the server spent {:.2} s answering pushes and {:.2} s answering pulls",
                b.initial_push_seconds, b.initial_server_seconds.0, b.initial_server_seconds.1
            ));
            notes.push(format!(
                "W3: SQLite held at most {:.1} MiB of heap (all three databases), its page caches at most {:.1} MiB",
                b.initial_sqlite_peak as f64 / (1024.0 * 1024.0),
                b.initial_sqlite_cache_peak as f64 / (1024.0 * 1024.0)
            ));
            if let Some((push, pull)) = b.initial_disk_written {
                let sealed = (b.sealed_lower_bound / 2).max(1) as f64;
                notes.push(format!(
                    "W3: wrote {:.0} MB to disk during A's push ({:.1} x the sealed bytes) and {:.0} MB during B's pull ({:.1} x), WAL and checkpoints included",
                    push as f64 / 1e6,
                    push as f64 / sealed,
                    pull as f64 / 1e6,
                    pull as f64 / sealed
                ));
            }
            if let Some(heap) = b.initial_heap_peak {
                notes.push(format!(
                    "W3: the process had at most {:.1} MiB of heap in use (sampled; peak RSS adds what the allocator keeps free)",
                    heap as f64 / (1024.0 * 1024.0)
                ));
            }
        }
        if which.delta {
            notes.push(format!(
                "W4: {} bytes = {:.2}% of W3's; aim <= 1.1 x 1% of W3 + fixed overhead {} (an idle round) = {} bytes: {}",
                b.delta,
                100.0 * b.delta as f64 / b.initial.max(1) as f64,
                b.idle_round,
                b.delta_bound,
                if b.delta <= b.delta_bound { "holds" } else { "MISSED" }
            ));
        }
        if let Some(d) = out.long_offline {
            notes.push(format!(
                "W6: {} edits offline and {} online touched {} records; on return {} envelopes moved (floor {}); all records equal on both devices and none of the {} deleted came back",
                d.offline_edits,
                d.online_edits,
                d.distinct_changed,
                d.envelopes_moved,
                d.envelopes_floor,
                d.deleted_checked
            ));
        }
        if memory_ratio {
            step("W3 at 10 x N: memory ratio");
            let big = BenchOptions {
                n: n.saturating_mul(10),
                ..opts
            };
            let sub = dir.path().join("sync-10n");
            std::fs::create_dir(&sub)
                .map_err(|e| Error::new(ErrorKind::Io, "bench dir").with_source(e))?;
            let out10 = bench::sync_workloads(&sub, &big, SyncWorkloads::default()).await?;
            let _ = std::fs::remove_dir_all(&sub);
            let small = rows
                .iter()
                .find(|r| r.workload.starts_with("W3"))
                .map(|r| r.peak_rss_bytes);
            for mut r in out10.results {
                if let Some(small) = small.filter(|_| !r.workload.contains("multi-row")) {
                    notes.push(format!(
                        "memory: W3 peak RSS at N = {} is {:.1} MiB, at 10 x N {:.1} MiB: ratio {:.2} (aim: flat, 1.0)",
                        n,
                        small as f64 / 1048576.0,
                        r.peak_rss_bytes as f64 / 1048576.0,
                        r.peak_rss_bytes as f64 / small.max(1) as f64
                    ));
                }
                r.workload = format!("{} 10xN", r.workload);
                rows.push(r);
            }
        }
    }
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }
    if cli.json {
        for r in &rows {
            print_json(&serde_json::to_value(r).unwrap_or(Value::Null));
        }
        if !cli.quiet {
            for n in notes {
                eprintln!("{n}");
            }
        }
    } else {
        println!(
            "{:<40} {:>9} {:>9} {:>11} {:>12} {:>10} {:>11} {:>7}",
            "workload", "n", "seconds", "records/s", "bytes", "peak RSS", "baseline s", "ratio"
        );
        for r in &rows {
            println!(
                "{:<40} {:>9} {:>9.3} {:>11.0} {:>12} {:>9}M {:>11.3} {:>7.2}",
                r.workload,
                r.n,
                r.seconds,
                r.records_per_s,
                r.bytes,
                r.peak_rss_bytes / (1024 * 1024),
                r.baseline_seconds,
                r.ratio
            );
        }
        for n in notes {
            println!("{n}");
        }
    }
    Ok(())
}

fn tempfile_dir() -> Result<tempfile::TempDir> {
    tempfile::tempdir().map_err(|e| {
        Error::new(ErrorKind::Io, "cannot create a temporary directory").with_source(e)
    })
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Init { storage, cipher } => {
            known_name(hearth::registry::storage(storage))?;
            known_name(hearth::registry::cipher(cipher))?;
            let path = store_path(&cli)?;
            if path.exists() {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("a store already exists at {}", path.display()),
                ));
            }
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    Error::new(ErrorKind::Io, format!("cannot create {}", dir.display()))
                        .with_source(e)
                })?;
            }
            let pass = passphrase(true)?;
            let store = Store::builder()
                .path(&path)
                .passphrase(pass)
                .storage(storage.as_str())
                .cipher(cipher.as_str())
                .kdf_cost(kdf_cost())
                .create(true)
                .open()
                .await
                .inspect_err(|_| remove_store_files(&path))?;
            let made = async {
                let info = store.info().await?;
                let code = match store.create_recovery_code(kdf_cost()).await {
                    Ok(code) => Some(code),
                    // SQLCipher stores cannot rewrap their key header yet: the store is usable,
                    // it just has no recovery code.
                    Err(e) if e.kind() == ErrorKind::Unsupported => None,
                    Err(e) => return Err(e),
                };
                Ok::<_, Error>((info, code))
            }
            .await;
            let (info, code) = match made {
                Ok(made) => made,
                Err(e) => {
                    // Leave nothing half-made behind: a second `init` must be able to start over.
                    let _ = store.close().await;
                    remove_store_files(&path);
                    return Err(e);
                }
            };
            if cli.json {
                print_json(&json!({
                    "recovery_code": code,
                    "store": path.display().to_string(),
                    "device": info.device.to_hex(),
                    "space": info.space.to_hex(),
                    "storage": info.storage,
                    "cipher": info.cipher,
                }));
            } else {
                say(
                    cli.quiet,
                    format!(
                        "created {} ({} + {})",
                        path.display(),
                        info.storage,
                        info.cipher
                    ),
                );
                say(
                    cli.quiet,
                    format!("device {}  space {}", info.device, info.space),
                );
                // Printed even with -q: it is shown this once and never again.
                match &code {
                    Some(code) => {
                        outln!("recovery code: {code}");
                        outln!(
                            "store it safely, away from this device (on paper, in a password manager): \
                             it is shown only now, and `hearth recover` needs it if the passphrase is lost"
                        );
                    }
                    None => outln!(
                        "no recovery code: recovery codes are not available for {} stores yet; \
                         keep the passphrase safe, and a backup with `hearth export`",
                        info.storage
                    ),
                }
            }
            store.close().await
        }
        Command::Put {
            collection,
            key,
            value,
            file,
        } => {
            let text = read_json(value.clone(), file.clone())?;
            let value = parse_json(&text)?;
            let store = open(&cli).await?;
            let summary = store.put(collection, key, &value).await?;
            if cli.json {
                print_json(&json!({"written": summary.written, "seq": summary.last_seq}));
            }
            store.close().await
        }
        Command::Get { collection, key } => {
            let store = open(&cli).await?;
            let value = store.get(collection, key).await?;
            store.close().await?;
            match value {
                Some(v) if cli.json => {
                    print_json(&json!({"collection": collection, "key": key, "value": v}))
                }
                Some(v) => outln!(
                    "{}",
                    serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
                ),
                None => {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!("no record {collection}/{key}"),
                    ));
                }
            }
            Ok(())
        }
        Command::List {
            collection,
            prefix,
            limit,
        } => {
            let store = open(&cli).await?;
            let rows = store.scan(collection, prefix.as_deref(), *limit).await?;
            store.close().await?;
            if cli.json {
                for (k, v) in rows {
                    print_json(&json!({"key": k, "value": v}));
                }
            } else {
                for (k, v) in rows {
                    outln!("{k}\t{v}");
                }
            }
            Ok(())
        }
        Command::Delete { collection, key } => {
            let store = open(&cli).await?;
            let existed = store.delete(collection, key).await?;
            store.close().await?;
            if !existed {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("no record {collection}/{key}"),
                ));
            }
            if cli.json {
                print_json(&json!({"deleted": true}));
            }
            Ok(())
        }
        Command::Status => {
            let store = open(&cli).await?;
            let facts = async {
                let info = store.info().await?;
                let engine = engine(&store);
                let last = engine.last_sync().await?;
                let conflicts = engine.conflicts().await?.len();
                let remote = super::remote::load(&store).await?;
                // Read the grants rather than decide: a status check is not a sync attempt and
                // leaves no audit entry.
                let consent = hearth::StoreConsent::new(&store);
                let now = consent.now();
                let consented = consent
                    .grants_for(&hearth::StoreConsent::sync_request())
                    .await?
                    .iter()
                    .any(|g| g.is_active(now));
                Ok::<_, Error>((info, last, conflicts, remote, consented, now))
            }
            .await;
            store.close().await?;
            let (info, last, conflicts, remote, consented, now) = facts?;
            let state = sync_state(
                remote.is_some(),
                consented,
                last.as_ref().and_then(|l| l.error.as_deref()),
                conflicts,
                info.pending,
            );
            let at_rfc3339 = |ms: u64| {
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
                )
                .to_string()
            };
            if cli.json {
                print_json(&json!({
                    "state": state.0,
                    "server": remote.as_ref().map(|r| r.url.clone()),
                    "sync_consent": consented,
                    "device": info.device.to_hex(),
                    "space": info.space.to_hex(),
                    "storage": info.storage,
                    "cipher": info.cipher,
                    "key_fingerprint": info.fingerprint,
                    "pending": info.pending,
                    "last_seq": info.last_seq,
                    "conflicts": conflicts,
                    "last_sync": last.as_ref().map(|l| json!({
                        "at": l.at, "at_rfc3339": at_rfc3339(l.at), "error": l.error, "report": l.report,
                    })),
                }));
            } else {
                outln!("sync        {}", state.1);
                match &remote {
                    Some(r) => outln!("server      {}", r.url),
                    None => outln!("server      none (`hearth register --server URL`)"),
                }
                outln!("device      {}", info.device);
                outln!("space       {}", info.space);
                outln!("backends    {} + {}", info.storage, info.cipher);
                outln!("pending     {} change(s) not yet synced", info.pending);
                outln!("conflicts   {conflicts}");
                match last {
                    Some(l) => {
                        let ago = std::time::Duration::from_secs(now.saturating_sub(l.at) / 1000);
                        outln!(
                            "last sync   {} ({} ago): pushed {}, pulled {}, resolved {}{}",
                            at_rfc3339(l.at),
                            humantime::format_duration(ago),
                            l.report.pushed,
                            l.report.pulled,
                            l.report.conflicts_resolved,
                            l.error
                                .map(|e| format!(", failed: {e}"))
                                .unwrap_or_default()
                        );
                    }
                    None => outln!("last sync   never"),
                }
            }
            Ok(())
        }
        Command::Check => {
            let store = open(&cli).await?;
            store.check().await?;
            store.close().await?;
            if cli.json {
                print_json(&json!({"ok": true}));
            } else {
                say(cli.quiet, "ok: the store passed its integrity check");
            }
            Ok(())
        }
        Command::Export { file } => {
            if file.exists() {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("{} already exists", file.display()),
                ));
            }
            let store = open(&cli).await?;
            let tmp = temp_beside(file);
            let result = async {
                let f = tokio::fs::File::create(&tmp).await.map_err(|e| {
                    Error::new(ErrorKind::Io, format!("cannot create {}", tmp.display()))
                        .with_source(e)
                })?;
                let mut w = tokio::io::BufWriter::new(f);
                let summary = store.export(&mut w).await?;
                let f = w.into_inner();
                f.sync_all().await.map_err(|e| {
                    Error::new(ErrorKind::Io, "cannot flush the backup").with_source(e)
                })?;
                tokio::fs::rename(&tmp, file).await.map_err(|e| {
                    Error::new(
                        ErrorKind::Io,
                        format!("cannot move the backup to {}", file.display()),
                    )
                    .with_source(e)
                })?;
                Ok::<_, Error>(summary)
            }
            .await;
            if result.is_err() {
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            store.close().await?;
            let summary = result?;
            if cli.json {
                print_json(
                    &json!({"file": file.display().to_string(), "rows": summary.rows, "bytes": summary.bytes}),
                );
            } else {
                say(
                    cli.quiet,
                    format!(
                        "wrote {} ({} records, {} bytes)",
                        file.display(),
                        summary.rows,
                        summary.bytes
                    ),
                );
            }
            Ok(())
        }
        Command::Import { file } => {
            let path = store_path(&cli)?;
            if path.exists() {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "a store already exists at {}; import into a new path",
                        path.display()
                    ),
                ));
            }
            let pass = passphrase(false)?;
            let f = tokio::fs::File::open(file).await.map_err(|e| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("cannot open {}", file.display()),
                )
                .with_source(e)
            })?;
            let mut r = tokio::io::BufReader::new(f);
            // Into a temporary path, moved into place only on success (the library does it).
            let (store, summary) = Store::builder()
                .path(&path)
                .passphrase(pass)
                .import(&mut r)
                .await?;
            store.close().await?;
            if cli.json {
                print_json(&json!({"store": path.display().to_string(), "rows": summary.rows}));
            } else {
                say(
                    cli.quiet,
                    format!("restored {} records into {}", summary.rows, path.display()),
                );
            }
            Ok(())
        }
        Command::Passphrase {
            action: PassphraseAction::Change,
        } => {
            let store = open(&cli).await?;
            let new = secret_from("HEARTH_NEW_PASSPHRASE", "new passphrase: ", true)?;
            store
                .change_passphrase(&hearth::Passphrase::new(new), kdf_cost())
                .await?;
            store.close().await?;
            if cli.json {
                print_json(&json!({"passphrase_changed": true}));
            } else {
                say(cli.quiet, "passphrase changed");
            }
            Ok(())
        }
        Command::RotateKey => {
            let path = store_path(&cli)?;
            if !path.exists() {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("no store at {}", path.display()),
                ));
            }
            let pass = passphrase(false)?;
            let store = Store::builder()
                .path(&path)
                .passphrase(pass.clone())
                .create(false)
                .open()
                .await?;
            let configured = super::remote::load(&store).await?.is_some();
            let resumed = store.rotation_pending().await?;
            // With a server, the space the rotation replaces is noted first (in the store, so a
            // crash or an unreachable server only delays telling the server, never forgets it).
            let noted = if configured && !resumed {
                super::remote::note_rotation(&store).await
            } else {
                Ok(())
            };
            if let Err(e) = noted {
                let _ = store.close().await;
                return Err(e);
            }
            let store = if resumed {
                store.finish_rotation().await?;
                store
            } else {
                store.rotate_root_key(&pass, kdf_cost()).await?
            };
            let told = async {
                if !configured {
                    return Ok(None);
                }
                // Telling the server uploads the new key backup: under the sync consent.
                if !hearth::StoreConsent::new(&store).sync_allowed().await? {
                    return Ok(Some(Err(Error::new(
                        ErrorKind::ConsentDenied,
                        "this store has no sync consent",
                    ))));
                }
                match super::remote::announce_rotation(&store).await {
                    Ok(retired) => Ok(Some(Ok(retired))),
                    Err(e) if e.is_temporary() || e.kind() == ErrorKind::ConsentDenied => {
                        Ok(Some(Err(e)))
                    }
                    Err(e) => Err(e),
                }
            }
            .await;
            let info = store.info().await;
            store.close().await?;
            let info = info?;
            let told = told.map_err(|e| {
                Error::new(
                    e.kind(),
                    format!(
                        "rotated to key {} locally, but the server refused the new space: {e}; \
                         `hearth sync` tries again",
                        info.key_id
                    ),
                )
            })?;
            let server = match &told {
                None => Value::Null,
                Some(Ok(Some(old))) => json!({"told": true, "retired_space": old.to_hex()}),
                Some(Ok(None)) => json!({"told": false}),
                Some(Err(e)) => json!({"told": false, "deferred": true, "reason": e.to_string()}),
            };
            if cli.json {
                print_json(&json!({
                    "key_id": info.key_id, "space": info.space.to_hex(), "pending": info.pending,
                    "server": server,
                }));
            } else {
                say(
                    cli.quiet,
                    format!(
                        "rotated to key {} in space {}; {} record(s) will upload on the next sync. \
                     Make a new recovery code? It was tied to the old key.",
                        info.key_id, info.space, info.pending
                    ),
                );
                match &told {
                    None | Some(Ok(None)) => {}
                    Some(Ok(Some(old))) => say(
                        cli.quiet,
                        format!(
                            "the server retired space {old} and has the new key backup: other \
                             devices must run `hearth join` again with the passphrase"
                        ),
                    ),
                    Some(Err(e)) => say(
                        cli.quiet,
                        format!(
                            "the server was not told yet ({e}): the next `hearth sync` tells it \
                             (it retires the old space, and other devices must join again)"
                        ),
                    ),
                }
            }
            Ok(())
        }
        Command::Recover => {
            let path = store_path(&cli)?;
            if !path.exists() {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("no store at {}", path.display()),
                ));
            }
            let code = secret_from("HEARTH_RECOVERY_CODE", "recovery code: ", false)?;
            let new = secret_from("HEARTH_NEW_PASSPHRASE", "new passphrase: ", true)?;
            // The builder opens whatever storage and cipher the store records.
            let store = Store::builder()
                .path(&path)
                .passphrase(hearth::Passphrase::new(new))
                .kdf_cost(kdf_cost())
                .recover(&code)
                .await?;
            store.close().await?;
            if cli.json {
                print_json(&json!({"recovered": true, "store": path.display().to_string()}));
            } else {
                say(
                    cli.quiet,
                    "recovered: the store now opens with the new passphrase",
                );
            }
            Ok(())
        }
        Command::Strategy { action } => match action {
            StrategyAction::Set { collection, name } => {
                known_name(hearth::registry::strategy(name))?;
                let store = open(&cli).await?;
                engine(&store).set_strategy(collection, name).await?;
                store.close().await?;
                if cli.json {
                    print_json(&json!({"collection": collection, "strategy": name}));
                }
                Ok(())
            }
            StrategyAction::List => {
                let names = hearth::registry::strategy_names();
                if cli.json {
                    print_json(&json!(names));
                } else {
                    for n in names {
                        outln!("{n}");
                    }
                }
                Ok(())
            }
        },
        Command::Demo => {
            // Under --json the narrative is left out and the outcome is one JSON line.
            super::demo::run(cli.quiet || cli.json).await?;
            if cli.json {
                print_json(&json!({"converged": true}));
            }
            Ok(())
        }
        Command::Register { server } => {
            let store = open(&cli).await?;
            // Running `hearth register` is the user enabling sync: recorded (and audited) as the
            // sync consent before anything is uploaded.
            let result = match ensure_sync_consent(&store).await {
                Ok(()) => super::remote::register(&store, server).await,
                Err(e) => Err(e),
            };
            store.close().await?;
            let token = result?;
            if cli.json {
                print_json(&json!({"server": server, "token": token}));
            } else {
                say(cli.quiet, format!("registered with {server}"));
                outln!("account token (other devices join with it; keep it secret): {token}");
            }
            Ok(())
        }
        Command::Join {
            server,
            token,
            storage,
            cipher,
        } => {
            known_name(hearth::registry::storage(storage))?;
            if let Some(c) = cipher {
                known_name(hearth::registry::cipher(c))?;
            }
            let path = store_path(&cli)?;
            if path.exists() {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("a store already exists at {}", path.display()),
                ));
            }
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    Error::new(ErrorKind::Io, format!("cannot create {}", dir.display()))
                        .with_source(e)
                })?;
            }
            let backup = super::remote::fetch_backup(server, token).await?;
            let pass = passphrase(false)?;
            let tmp = temp_beside(&path);
            let result = async {
                let mut builder = Store::builder()
                    .path(&tmp)
                    .passphrase(pass)
                    .storage(storage.as_str())
                    .kdf_cost(kdf_cost());
                if let Some(c) = cipher {
                    builder = builder.cipher(c.as_str());
                }
                let store = builder.join(&backup).await?;
                ensure_sync_consent(&store).await?;
                super::remote::register_device(&store, server, token).await?;
                super::remote::save(&store, server, token).await?;
                let info = store.info().await?;
                store.close().await?;
                move_store(&tmp, &path).await?;
                Ok::<_, Error>(info)
            }
            .await;
            if result.is_err() {
                remove_store_files(&tmp);
            }
            let info = result?;
            if cli.json {
                print_json(
                    &json!({"store": path.display().to_string(), "device": info.device.to_hex(), "space": info.space.to_hex()}),
                );
            } else {
                say(
                    cli.quiet,
                    format!(
                        "joined space {} as device {}; run `hearth sync`",
                        info.space, info.device
                    ),
                );
            }
            Ok(())
        }
        Command::Sync { reupload } => {
            let store = open(&cli).await?;
            let progress =
                !cli.json && !cli.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
            let result = async {
                // The sync consent is checked here, by the caller, before each round: the engine
                // itself does not know about consent. The decision is audited.
                super::remote::require(&store).await?;
                if !hearth::StoreConsent::new(&store).sync_allowed().await? {
                    return Err(Error::new(
                        ErrorKind::ConsentDenied,
                        "this store has no sync consent (withdrawn, or never given): nothing was sent",
                    ));
                }
                // A key rotation the server was not told about yet (made offline) is announced
                // first: the new space must be registered before anything is uploaded to it.
                if let Some(old) = super::remote::announce_rotation(&store).await? {
                    tracing::info!(retired = %old, "told the server about the key rotation");
                }
                super::remote::sync(&store, progress, *reupload).await
            }
            .await;
            store.close().await?;
            let report = result?;
            if cli.json {
                print_json(&report);
            } else {
                say(
                    cli.quiet,
                    format!(
                        "synced: pushed {}, pulled {}, applied {}, conflicts resolved {}, waiting for you {}",
                        report["pushed"],
                        report["pulled"],
                        report["applied"],
                        report["conflicts_resolved"],
                        report["conflicts_pending"]
                    ),
                );
                if report["log_replaced"].as_bool() == Some(true) {
                    say(
                        cli.quiet,
                        "the server's data was restored from a backup (its log id changed): walked its log again",
                    );
                }
                if report["reuploaded"].as_u64().unwrap_or(0) > 0 {
                    say(
                        cli.quiet,
                        format!(
                            "put back {} records the server had lost",
                            report["reuploaded"]
                        ),
                    );
                }
                if let Some(findings) = report["withheld"].as_array().filter(|w| !w.is_empty()) {
                    // Not quiet: this needs a decision.
                    eprintln!(
                        "warning: the server did not serve writes this device expected ({} finding(s)); \
                         nothing was removed{}. If the server was restored from an older backup, its operator \
                         should run `hearth-server mark-restored` (or else run `hearth sync --reupload` \
                         on every device); see docs/security.md",
                        findings.len(),
                        if report["resynced"].as_bool() == Some(true) {
                            " and nothing was pushed"
                        } else {
                            ""
                        }
                    );
                }
            }
            Ok(())
        }
        Command::Serve {
            addr,
            db,
            postgres,
            request_timeout,
            drain_timeout,
            mark_restored,
        } => {
            let database = match postgres {
                Some(url) => url.clone(),
                None => format!("sqlite:{}", db.display()),
            };
            if *mark_restored {
                let n = hearth::sync_server::mark_restored(&database).await?;
                if cli.json {
                    outln!("{}", json!({"spaces_marked": n}));
                } else {
                    say(
                        cli.quiet,
                        format!(
                            "marked restored: {n} spaces have a new log id; their devices put back what the restore lost at their next sync"
                        ),
                    );
                }
                return Ok(());
            }
            let server = hearth::sync_server::Server::builder()
                .listen(*addr)
                .database(database)
                .request_timeout(*request_timeout)
                .drain_timeout(*drain_timeout);
            super::remote::serve(server, cli.quiet, cli.json).await
        }
        Command::Bench {
            n,
            value_size,
            workload,
            storage,
            cipher,
            memory_ratio,
            sync_page,
            sync_apply_mib,
        } => {
            bench(
                &cli,
                BenchArgs {
                    n: *n,
                    value_size: *value_size,
                    workloads: workload,
                    storage,
                    cipher,
                    memory_ratio: *memory_ratio,
                    sync_page: *sync_page,
                    sync_apply_mib: *sync_apply_mib,
                },
            )
            .await
        }
        Command::Consent { action } => {
            let store = open(&cli).await?;
            let consent = hearth::StoreConsent::new(&store);
            let result = consent_command(&cli, &consent, action).await;
            store.close().await?;
            result
        }
        Command::Conflicts { action } => {
            let store = open(&cli).await?;
            let engine = engine(&store);
            // In a block, so the store is closed whatever happens inside.
            let result = async {
                match action {
                    ConflictAction::List => {
                        let list = engine.conflicts().await?;
                        for c in list {
                            let siblings: Vec<Value> =
                                c.siblings.iter().map(|s| json!(s.value)).collect();
                            if cli.json {
                                print_json(&json!({
                                    "collection": c.local.collection, "key": c.local.key,
                                    "local": c.local.value, "remote": siblings, "since": c.since,
                                }));
                            } else {
                                outln!(
                                    "{}/{}: local {} vs remote {}",
                                    c.local.collection,
                                    c.local.key,
                                    json!(c.local.value),
                                    Value::Array(siblings)
                                );
                            }
                        }
                        Ok(())
                    }
                    ConflictAction::Resolve {
                        collection,
                        key,
                        take,
                        value,
                    } => {
                        let choice = match (take.as_deref(), value) {
                            (Some("local"), None) => Choice::Local,
                            (Some("remote"), None) => Choice::Remote(0),
                            (None, Some(v)) => Choice::Value(Some(parse_json(v)?)),
                            _ => {
                                return Err(Error::invalid(
                                    "give --take local|remote or --value JSON",
                                ));
                            }
                        };
                        engine.resolve(collection, key, choice).await.map_err(|e| {
                            match e.kind() {
                                ErrorKind::NotFound => Error::new(
                                    ErrorKind::NotFound,
                                    format!("no conflict waits on {collection}/{key}"),
                                ),
                                _ => e,
                            }
                        })?;
                        if cli.json {
                            print_json(
                                &json!({"collection": collection, "key": key, "resolved": true}),
                            );
                        } else {
                            say(
                                cli.quiet,
                                format!(
                                    "resolved {collection}/{key}; `hearth sync` shares the decision"
                                ),
                            );
                        }
                        Ok(())
                    }
                }
            }
            .await;
            store.close().await?;
            result
        }
    }
}
