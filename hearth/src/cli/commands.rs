//! The commands' bodies.

use std::sync::Arc;

use hearth::{Choice, Detached, Error, ErrorKind, KdfCost, Result, Store, SyncConfig, SyncEngine};
use serde_json::{Value, json};

use super::{
    Cli, Command, ConflictAction, ConsentAction, PassphraseAction, StrategyAction, passphrase,
    read_json, say, secret_from, store_path,
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
    Store::builder()
        .path(path)
        .passphrase(pass)
        .create(false)
        .open()
        .await
}

fn engine(store: &Store) -> SyncEngine {
    SyncEngine::new(store.clone(), Arc::new(Detached), SyncConfig::default())
}

fn print_json(v: &Value) {
    println!("{v}");
}

fn parse_json(text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| Error::invalid(format!("not valid JSON: {e}")))
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
        ConsentAction::List => {
            let now = consent.now();
            for g in consent.grants().await? {
                let status = format!("{:?}", g.status(now)).to_lowercase();
                if cli.json {
                    let mut v = serde_json::to_value(&g).unwrap_or(Value::Null);
                    v["status"] = json!(status);
                    print_json(&v);
                } else {
                    println!(
                        "{}  {}  {} for {} to {}",
                        g.id, status, g.data_type, g.purpose, g.destination
                    );
                }
            }
            Ok(())
        }
        ConsentAction::Log => {
            let lines = consent.audit().export_json_lines().await?;
            print!("{lines}");
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
                if let Some(small) = small {
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
                .await?;
            let info = store.info().await?;
            let code = store.create_recovery_code(kdf_cost()).await?;
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
                Some(v) => println!(
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
                    println!("{k}\t{v}");
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
            let info = store.info().await?;
            let engine = engine(&store);
            let last = engine.last_sync().await?;
            let conflicts = engine.conflicts().await?.len();
            store.close().await?;
            if cli.json {
                print_json(&json!({
                    "device": info.device.to_hex(),
                    "space": info.space.to_hex(),
                    "storage": info.storage,
                    "cipher": info.cipher,
                    "key_fingerprint": info.fingerprint,
                    "pending": info.pending,
                    "last_seq": info.last_seq,
                    "conflicts": conflicts,
                    "last_sync": last.as_ref().map(|l| json!({"at": l.at, "error": l.error, "report": l.report})),
                }));
            } else {
                println!("device      {}", info.device);
                println!("space       {}", info.space);
                println!("backends    {} + {}", info.storage, info.cipher);
                println!("pending     {} change(s) not yet synced", info.pending);
                println!("conflicts   {conflicts}");
                match last {
                    Some(l) => println!(
                        "last sync   at {} ms: pushed {}, pulled {}, resolved {}{}",
                        l.at,
                        l.report.pushed,
                        l.report.pulled,
                        l.report.conflicts_resolved,
                        l.error
                            .map(|e| format!(", failed: {e}"))
                            .unwrap_or_default()
                    ),
                    None => println!("last sync   never"),
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
            let tmp = temp_beside(&path);
            let result = async {
                let storage = (hearth::registry::storage("sqlite")?.open)(
                    hearth::StorageOptions::at(&tmp).create(true),
                )
                .await?;
                let (store, summary) = Store::import(
                    &mut r,
                    storage,
                    (hearth::registry::cipher("orion")?.make)(),
                    hearth::OpenOptions::new(pass),
                )
                .await?;
                store.close().await?;
                tokio::fs::rename(&tmp, &path).await.map_err(|e| {
                    Error::new(
                        ErrorKind::Io,
                        format!("cannot move the store to {}", path.display()),
                    )
                    .with_source(e)
                })?;
                Ok::<_, Error>(summary)
            }
            .await;
            if result.is_err() {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = tokio::fs::remove_file(format!("{}{suffix}", tmp.display())).await;
                }
            }
            let summary = result?;
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
            say(cli.quiet, "passphrase changed");
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
            let store = if store.rotation_pending().await? {
                store.finish_rotation().await?;
                store
            } else {
                store.rotate_root_key(&pass, kdf_cost()).await?
            };
            let info = store.info().await?;
            store.close().await?;
            if cli.json {
                print_json(
                    &json!({"key_id": info.key_id, "space": info.space.to_hex(), "pending": info.pending}),
                );
            } else {
                say(
                    cli.quiet,
                    format!(
                        "rotated to key {} in space {}; {} record(s) will upload on the next sync. \
                     Make a new recovery code? It was tied to the old key.",
                        info.key_id, info.space, info.pending
                    ),
                );
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
            let storage = (hearth::registry::storage("sqlite")?.open)(
                hearth::StorageOptions::at(&path).create(false),
            )
            .await?;
            let store = Store::recover(
                storage,
                (hearth::registry::cipher("orion")?.make)(),
                hearth::OpenOptions::new(new).kdf_cost(kdf_cost()),
                &code,
            )
            .await?;
            store.close().await?;
            say(
                cli.quiet,
                "recovered: the store now opens with the new passphrase",
            );
            Ok(())
        }
        Command::Strategy { action } => match action {
            StrategyAction::Set { collection, name } => {
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
                        println!("{n}");
                    }
                }
                Ok(())
            }
        },
        Command::Demo => super::demo::run(cli.quiet).await,
        Command::Register { server } => {
            let store = open(&cli).await?;
            let result = super::remote::register(&store, server).await;
            store.close().await?;
            let token = result?;
            if cli.json {
                print_json(&json!({"server": server, "token": token}));
            } else {
                say(cli.quiet, format!("registered with {server}"));
                println!("account token (other devices join with it; keep it secret): {token}");
            }
            Ok(())
        }
        Command::Join { server, token } => {
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
                let storage = (hearth::registry::storage("sqlite")?.open)(
                    hearth::StorageOptions::at(&tmp).create(true),
                )
                .await?;
                let store = Store::join(
                    storage,
                    (hearth::registry::cipher("orion")?.make)(),
                    hearth::OpenOptions::new(pass).kdf_cost(kdf_cost()),
                    &backup,
                )
                .await?;
                super::remote::register_device(&store, server, token).await?;
                super::remote::save(&store, server, token).await?;
                let info = store.info().await?;
                store.close().await?;
                tokio::fs::rename(&tmp, &path).await.map_err(|e| {
                    Error::new(
                        ErrorKind::Io,
                        format!("cannot move the store to {}", path.display()),
                    )
                    .with_source(e)
                })?;
                Ok::<_, Error>(info)
            }
            .await;
            if result.is_err() {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = tokio::fs::remove_file(format!("{}{suffix}", tmp.display())).await;
                }
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
        Command::Sync => {
            let store = open(&cli).await?;
            let progress =
                !cli.json && !cli.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
            let result = super::remote::sync(&store, progress).await;
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
            }
            Ok(())
        }
        Command::Serve { addr, db, postgres } => {
            let database = match postgres {
                Some(url) => url.clone(),
                None => format!("sqlite:{}", db.display()),
            };
            super::remote::serve(*addr, database, cli.quiet).await
        }
        Command::Bench {
            n,
            value_size,
            workload,
            storage,
            cipher,
            memory_ratio,
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
            let result = match action {
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
                            println!(
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
                            return Err(Error::invalid("give --take local|remote or --value JSON"));
                        }
                    };
                    engine.resolve(collection, key, choice).await
                }
            };
            store.close().await?;
            result
        }
    }
}
