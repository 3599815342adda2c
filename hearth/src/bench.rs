//! Benchmark workloads, each measured against a baseline run in the same process.
//!
//! Used by `cargo bench -p hearth --bench store`. Every workload verifies its results: a run
//! that returns wrong data fails instead of reporting a figure.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::{Error, ErrorKind, KdfCost, Result, Store, WriteBatch};

/// Sizes of a run.
#[derive(Clone, Copy, Debug)]
pub struct BenchOptions {
    /// Number of records.
    pub n: usize,
    /// Approximate JSON size of each record in bytes.
    pub value_size: usize,
    /// Records per write batch (transaction), for hearth and the baseline alike.
    pub batch: usize,
    /// Seed of the dataset.
    pub seed: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            n: 100_000,
            value_size: 1024,
            batch: 1000,
            seed: 42,
        }
    }
}

/// One measured workload.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    /// Workload name.
    pub workload: String,
    /// Records.
    pub n: usize,
    /// Wall time of the hearth run.
    pub seconds: f64,
    /// Records per second.
    pub records_per_s: f64,
    /// Bytes stored (hearth) for the workload.
    pub bytes: u64,
    /// Peak resident memory of the process so far (Linux; 0 elsewhere).
    pub peak_rss_bytes: u64,
    /// Wall time of the baseline.
    pub baseline_seconds: f64,
    /// `seconds / baseline_seconds`: how many times slower than the floor.
    pub ratio: f64,
}

/// Deterministic JSON documents of about `value_size` bytes: id, title, body, three tags, an
/// integer and a nested object.
pub fn dataset(opts: &BenchOptions) -> Vec<(String, serde_json::Value)> {
    let mut rng = fastrand::Rng::with_seed(opts.seed);
    let words = [
        "hearth", "sync", "offline", "device", "garden", "river", "note", "field", "sample",
        "ledger", "window", "kettle", "morning", "station", "orbit", "lantern",
    ];
    let body_len = opts.value_size.saturating_sub(124).max(16);
    (0..opts.n)
        .map(|i| {
            let mut body = String::with_capacity(body_len + 10);
            while body.len() < body_len {
                body.push_str(words[rng.usize(..words.len())]);
                body.push(' ');
            }
            body.truncate(body_len);
            let key = format!("doc-{i:08}");
            let value = json!({
                "id": key,
                "title": format!("{} {}", words[rng.usize(..words.len())], i),
                "body": body,
                "tags": [words[rng.usize(..words.len())], words[rng.usize(..words.len())], words[rng.usize(..words.len())]],
                "count": rng.i64(0..1_000_000),
                "meta": {"lat": rng.f64() * 180.0 - 90.0, "lon": rng.f64() * 360.0 - 180.0, "ok": rng.bool()}
            });
            (key, value)
        })
        .collect()
}

/// Peak resident set size of this process (`VmHWM`), or 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn file_bytes(db: &Path) -> u64 {
    ["", "-wal"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", db.display())).ok())
        .map(|m| m.len())
        .sum()
}

fn bench_err(what: &'static str) -> impl Fn(sqlx::Error) -> Error {
    move |e| Error::new(ErrorKind::Storage, what).with_source(e)
}

async fn raw_pool(path: &Path) -> Result<sqlx::SqlitePool> {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal);
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await
        .map_err(bench_err("baseline connect"))?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS kv (id TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL)",
    )
    .execute(&pool)
    .await
    .map_err(bench_err("baseline schema"))?;
    Ok(pool)
}

/// W3 initial sync of N records device A → in-process relay (mock transport) → fresh device B
/// (both on SQLite files), then W4: 1 % of the records change on A and travel to B. Each is
/// verified (B holds exactly A's data). Baseline: raw SQLite inserts of the same plaintext on
/// the receiving side. `bytes` counts the wire (envelopes plus fixed per-envelope headers, up
/// and down); [`SyncBenchBytes`] gives the lower bound.
#[cfg(feature = "mock")]
pub async fn sync_mock(
    dir: &Path,
    opts: &BenchOptions,
) -> Result<(Vec<BenchResult>, SyncBenchBytes)> {
    use std::sync::Arc;
    use transport_mock::MockTransport;

    use crate::{MemoryRelay, OpenOptions, SyncConfig, SyncEngine};

    let data = dataset(opts);
    let encoded: Vec<(String, Vec<u8>)> = data
        .iter()
        .map(|(k, v)| {
            Ok((
                k.clone(),
                serde_json::to_vec(v).map_err(|e| Error::internal("encode").with_source(e))?,
            ))
        })
        .collect::<Result<_>>()?;
    let open = |name: &str| {
        Store::builder()
            .path(dir.join(name))
            .passphrase("benchmark passphrase")
            .storage("sqlite")
            .cipher("orion")
            .kdf_cost(KdfCost::INSECURE_FOR_TESTS)
            .open()
    };
    let a = open("sync-a.db").await?;
    let b_storage = (crate::registry::storage("sqlite")?.open)(
        crate::StorageOptions::at(dir.join("sync-b.db")).create(true),
    )
    .await?;
    let b = Store::join(
        b_storage,
        crate::crypto_orion::OrionCipher::shared(),
        OpenOptions::new("benchmark passphrase").kdf_cost(KdfCost::INSECURE_FOR_TESTS),
        &a.key_backup()?,
    )
    .await?;
    for chunk in encoded.chunks(opts.batch.max(1)) {
        let mut wb = WriteBatch::new();
        for (k, v) in chunk {
            wb.put_json("docs", k.as_str(), v.clone())?;
        }
        a.write(wb).await?;
    }
    let sealed: u64 = {
        let mut total = 0u64;
        let mut after = None;
        loop {
            let rows = a.storage().scan_all(after.as_ref(), 1000).await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.id);
            total += rows.iter().map(|r| r.envelope.len() as u64).sum::<u64>();
        }
        total
    };
    let relay = MemoryRelay::default();
    let ta = Arc::new(MockTransport::new(relay.clone()));
    let tb = Arc::new(MockTransport::new(relay));
    let config = SyncConfig::default();
    let ea = SyncEngine::new(a.clone(), ta.clone(), config.clone());
    let eb = SyncEngine::new(b.clone(), tb.clone(), config);

    // Baseline: the receiving side's floor, raw inserts of the same plaintext.
    let raw = raw_pool(&dir.join("sync-raw.db")).await?;
    let t = Instant::now();
    for chunk in encoded.chunks(500) {
        let mut tx = raw.begin().await.map_err(bench_err("baseline begin"))?;
        for (k, v) in chunk {
            sqlx::query("INSERT INTO kv (id, value) VALUES (?, ?)")
                .bind(k.as_str())
                .bind(&v[..])
                .execute(&mut *tx)
                .await
                .map_err(bench_err("baseline insert"))?;
        }
        tx.commit().await.map_err(bench_err("baseline commit"))?;
    }
    let raw_s = t.elapsed().as_secs_f64();
    raw.close().await;

    let t = Instant::now();
    ea.sync().await?;
    eb.sync().await?;
    let initial = t.elapsed().as_secs_f64();
    let initial_bytes = ta.traffic().bytes_up + tb.traffic().bytes_down;
    if b.info().await?.pending != 0 || b.get("docs", &data[0].0).await?.as_ref() != Some(&data[0].1)
    {
        return Err(Error::internal(
            "initial sync benchmark: B does not hold A's data",
        ));
    }
    let rss_initial = peak_rss_bytes();

    // W4: 1 % of records change.
    let delta_n = (opts.n / 100).max(1);
    let mut wb = WriteBatch::new();
    let mut changed = Vec::with_capacity(delta_n);
    for (k, v) in data.iter().step_by(opts.n / delta_n).take(delta_n) {
        let mut v = v.clone();
        v["count"] = serde_json::json!(-1);
        wb.put("docs", k.as_str(), &v)?;
        changed.push((k.clone(), v));
    }
    a.write(wb).await?;
    let up0 = ta.traffic().bytes_up;
    let down0 = tb.traffic().bytes_down;
    let t = Instant::now();
    ea.sync().await?;
    eb.sync().await?;
    let delta = t.elapsed().as_secs_f64();
    let delta_bytes = (ta.traffic().bytes_up - up0) + (tb.traffic().bytes_down - down0);
    for (k, v) in &changed {
        if b.get("docs", k).await?.as_ref() != Some(v) {
            return Err(Error::internal(
                "delta sync benchmark: a change did not arrive",
            ));
        }
    }
    a.close().await?;
    b.close().await?;

    let n = opts.n;
    let results = vec![
        BenchResult {
            workload: "W3 initial sync (mock)".into(),
            n,
            seconds: initial,
            records_per_s: n as f64 / initial,
            bytes: initial_bytes,
            peak_rss_bytes: rss_initial,
            baseline_seconds: raw_s,
            ratio: initial / raw_s,
        },
        BenchResult {
            workload: "W4 1% delta (mock)".into(),
            n: delta_n,
            seconds: delta,
            records_per_s: delta_n as f64 / delta,
            bytes: delta_bytes,
            peak_rss_bytes: peak_rss_bytes(),
            baseline_seconds: initial,
            ratio: delta / initial,
        },
    ];
    Ok((
        results,
        SyncBenchBytes {
            sealed_lower_bound: 2 * sealed,
            initial: initial_bytes,
            delta: delta_bytes,
        },
    ))
}

/// Two synced devices on SQLite files through one in-process relay.
#[cfg(feature = "mock")]
struct Pair {
    a: Store,
    b: Store,
    ea: crate::SyncEngine,
    eb: crate::SyncEngine,
    tb: std::sync::Arc<transport_mock::MockTransport>,
    now: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

#[cfg(feature = "mock")]
async fn pair(
    dir: &Path,
    tag: &str,
    data: &[(String, serde_json::Value)],
    batch: usize,
) -> Result<Pair> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use crate::{MemoryRelay, OpenOptions, RelayConfig, SyncConfig, SyncEngine};
    let now = Arc::new(AtomicU64::new(crate::store::system_millis()));
    let clock = {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst)) as crate::store::WallClock
    };
    let opts = || {
        OpenOptions::new("benchmark passphrase")
            .create(true)
            .kdf_cost(KdfCost::INSECURE_FOR_TESTS)
            .clock(clock.clone())
    };
    let sqlite = crate::registry::storage("sqlite")?;
    let cipher = crate::registry::cipher("orion")?;
    let sa = (sqlite.open)(crate::StorageOptions::at(dir.join(format!("{tag}-a.db"))).create(true))
        .await?;
    let a = Store::open(sa, (cipher.make)(), opts()).await?;
    let sb = (sqlite.open)(crate::StorageOptions::at(dir.join(format!("{tag}-b.db"))).create(true))
        .await?;
    let b = Store::join(sb, (cipher.make)(), opts(), &a.key_backup()?).await?;
    let relay = MemoryRelay::new(RelayConfig::default()).with_clock(clock.clone());
    let ta = Arc::new(transport_mock::MockTransport::new(relay.clone()));
    let tb = Arc::new(transport_mock::MockTransport::new(relay));
    let ea = SyncEngine::new(a.clone(), ta, SyncConfig::default());
    let eb = SyncEngine::new(b.clone(), tb.clone(), SyncConfig::default());
    for chunk in data.chunks(batch.max(1)) {
        let mut wb = WriteBatch::new();
        for (k, v) in chunk {
            wb.put("docs", k.as_str(), v)?;
        }
        a.write(wb).await?;
    }
    ea.sync().await?;
    eb.sync().await?;
    Ok(Pair {
        a,
        b,
        ea,
        eb,
        tb,
        now,
    })
}

/// W5: A and B change the same 10 % of records offline, both sync, both converge (verified).
/// Baseline: the same number of changes made on one side only, synced the same way.
#[cfg(feature = "mock")]
pub async fn conflicts(dir: &Path, opts: &BenchOptions) -> Result<BenchResult> {
    let data = dataset(opts);
    let p = pair(dir, "w5", &data, opts.batch).await?;
    let tenth = (opts.n / 10).max(1);
    let edit = |store: &Store, who: &'static str, range: std::ops::Range<usize>| {
        let mut wb = WriteBatch::new();
        for (k, v) in &data[range] {
            let mut v = v.clone();
            v["title"] = serde_json::json!(format!("edited by {who}"));
            wb.put("docs", k.as_str(), &v)?;
        }
        let store = store.clone();
        Ok::<_, Error>(async move { store.write(wb).await })
    };
    // Baseline: one-sided changes of another tenth.
    edit(&p.a, "a", tenth..2 * tenth)?.await?;
    let t = Instant::now();
    p.ea.sync().await?;
    p.eb.sync().await?;
    let base = t.elapsed().as_secs_f64();
    // Conflicts on the first tenth.
    edit(&p.a, "a", 0..tenth)?.await?;
    edit(&p.b, "b", 0..tenth)?.await?;
    let t = Instant::now();
    let mut resolved = 0;
    for _ in 0..2 {
        resolved += p.ea.sync().await?.conflicts_resolved;
        resolved += p.eb.sync().await?.conflicts_resolved;
    }
    let secs = t.elapsed().as_secs_f64();
    if resolved < tenth as u64 {
        return Err(Error::internal(
            "conflict benchmark: fewer conflicts resolved than made",
        ));
    }
    for (k, _) in data.iter().take(tenth) {
        if p.a
            .get_record("docs", k)
            .await?
            .map(|r| (r.value, r.version))
            != p.b
                .get_record("docs", k)
                .await?
                .map(|r| (r.value, r.version))
        {
            return Err(Error::internal(
                "conflict benchmark: devices did not converge",
            ));
        }
    }
    Ok(BenchResult {
        workload: "W5 conflicts (10%, mock)".into(),
        n: tenth,
        seconds: secs,
        records_per_s: tenth as f64 / secs,
        bytes: p.tb.traffic().bytes_down,
        peak_rss_bytes: peak_rss_bytes(),
        baseline_seconds: base,
        ratio: secs / base,
    })
}

/// W6: 30 simulated days of edits (1,000 a day, 10 % of them deletes) on A, which syncs
/// daily, while B is offline; then B syncs. Verifies B equals A and that no deleted record came
/// back. `bytes` is what B downloaded; the baseline figure is the bytes of A's live changed
/// records (what a perfect delta would move), reported in [`LongOffline`].
#[cfg(feature = "mock")]
pub async fn long_offline(dir: &Path, opts: &BenchOptions) -> Result<(BenchResult, LongOffline)> {
    use std::sync::atomic::Ordering;
    let data = dataset(opts);
    let p = pair(dir, "w6", &data, opts.batch).await?;
    let mut rng = fastrand::Rng::with_seed(opts.seed ^ 0x66);
    let mut deleted = std::collections::BTreeSet::new();
    let mut touched = std::collections::BTreeSet::new();
    let mut edits = 0u64;
    let down0 = p.tb.traffic().bytes_down;
    for _day in 0..30 {
        let mut wb = WriteBatch::new();
        for i in 0..1000 {
            let (k, v) = &data[rng.usize(..data.len())];
            touched.insert(k.clone());
            if i % 10 == 0 {
                wb.delete("docs", k.as_str());
                deleted.insert(k.clone());
            } else {
                let mut v = v.clone();
                v["count"] = serde_json::json!(rng.i64(..));
                wb.put("docs", k.as_str(), &v)?;
                deleted.remove(k);
            }
            edits += 1;
        }
        p.a.write(wb).await?;
        p.ea.sync().await?;
        p.now.fetch_add(24 * 3600 * 1000, Ordering::SeqCst);
    }
    let t = Instant::now();
    let report = p.eb.sync().await?;
    let secs = t.elapsed().as_secs_f64();
    let downloaded = p.tb.traffic().bytes_down - down0;
    for k in &deleted {
        if p.b.get("docs", k).await?.is_some() {
            return Err(Error::internal(
                "long-offline benchmark: a deleted record came back",
            ));
        }
    }
    for (k, _) in data.iter().step_by((data.len() / 500).max(1)) {
        if p.a.get("docs", k).await? != p.b.get("docs", k).await? {
            return Err(Error::internal("long-offline benchmark: B differs from A"));
        }
    }
    let distinct = touched.len() as u64;
    Ok((
        BenchResult {
            workload: "W6 30 days offline (mock)".into(),
            n: edits as usize,
            seconds: secs,
            records_per_s: report.pulled as f64 / secs.max(1e-9),
            bytes: downloaded,
            peak_rss_bytes: peak_rss_bytes(),
            // No time baseline: the ratio is envelopes downloaded per distinct changed record
            // (1.0 = B downloads current state only, never history).
            baseline_seconds: 0.0,
            ratio: report.pulled as f64 / distinct.max(1) as f64,
        },
        LongOffline {
            edits,
            envelopes_pulled: report.pulled,
            distinct_changed: distinct,
        },
    ))
}

/// Details of the long-offline workload.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct LongOffline {
    /// Edits A made while B was away.
    pub edits: u64,
    /// Envelopes B downloaded when it came back (current state of what changed, not history).
    pub envelopes_pulled: u64,
    /// Distinct records those edits touched: the least B must download.
    pub distinct_changed: u64,
}

/// Bytes of a sync benchmark against the lower bound.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SyncBenchBytes {
    /// Sum of sealed envelope sizes, up and down: what any end-to-end encrypted sync must move.
    pub sealed_lower_bound: u64,
    /// Bytes of the initial sync.
    pub initial: u64,
    /// Bytes of the 1 % delta.
    pub delta: u64,
}

/// W1 put and W2 get on the given storage and cipher, against raw SQLite inserts and selects of
/// the same plaintext bytes in the same run.
pub async fn store_put_get(
    dir: &Path,
    storage: &str,
    cipher: &str,
    opts: &BenchOptions,
) -> Result<Vec<BenchResult>> {
    let data = dataset(opts);
    let encoded: Vec<(String, Vec<u8>)> = data
        .iter()
        .map(|(k, v)| {
            Ok((
                k.clone(),
                serde_json::to_vec(v).map_err(|e| Error::internal("encode").with_source(e))?,
            ))
        })
        .collect::<Result<_>>()?;
    let batch = opts.batch.max(1);

    // Baseline W1: raw inserts, prepared statement, same batching.
    let raw_path = dir.join("raw.db");
    let pool = raw_pool(&raw_path).await?;
    let t = Instant::now();
    for chunk in encoded.chunks(batch) {
        let mut tx = pool.begin().await.map_err(bench_err("baseline begin"))?;
        for (k, v) in chunk {
            sqlx::query("INSERT INTO kv (id, value) VALUES (?, ?)")
                .bind(k.as_str())
                .bind(&v[..])
                .execute(&mut *tx)
                .await
                .map_err(bench_err("baseline insert"))?;
        }
        tx.commit().await.map_err(bench_err("baseline commit"))?;
    }
    let raw_put = t.elapsed().as_secs_f64();

    // Second baseline: raw multi-row inserts (128 rows a statement, as backend-sqlite writes),
    // so the ratio is not flattered by hearth batching statements and the naive baseline not.
    sqlx::query("CREATE TABLE kv2 (id TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL)")
        .execute(&pool)
        .await
        .map_err(bench_err("baseline schema"))?;
    let t = Instant::now();
    for chunk in encoded.chunks(batch) {
        let mut tx = pool.begin().await.map_err(bench_err("baseline begin"))?;
        for rows in chunk.chunks(128) {
            let sql = format!(
                "INSERT INTO kv2 (id, value) VALUES {}",
                vec!["(?, ?)"; rows.len()].join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (k, v) in rows {
                q = q.bind(k.as_str()).bind(&v[..]);
            }
            q.execute(&mut *tx)
                .await
                .map_err(bench_err("baseline insert"))?;
        }
        tx.commit().await.map_err(bench_err("baseline commit"))?;
    }
    let raw_put_multi = t.elapsed().as_secs_f64();

    // hearth W1.
    let db = dir.join(format!("hearth-{storage}-{cipher}.db"));
    let store = Store::builder()
        .path(&db)
        .passphrase("benchmark passphrase")
        .storage(storage)
        .cipher(cipher)
        .kdf_cost(KdfCost::INSECURE_FOR_TESTS)
        .open()
        .await?;
    let t = Instant::now();
    for chunk in encoded.chunks(batch) {
        let mut b = WriteBatch::new();
        for (k, v) in chunk {
            b.put_json("docs", k.as_str(), v.clone())?;
        }
        store.write(b).await?;
    }
    let put = t.elapsed().as_secs_f64();
    if store.info().await?.pending != opts.n as u64 {
        return Err(Error::internal("put benchmark: record count mismatch"));
    }

    // W2: every record by key, in random order; hearth decrypts and compares.
    let mut order: Vec<usize> = (0..opts.n).collect();
    fastrand::Rng::with_seed(opts.seed ^ 0x9e37).shuffle(&mut order);
    let t = Instant::now();
    for &i in &order {
        let v: Option<Vec<u8>> = sqlx::query_scalar("SELECT value FROM kv WHERE id = ?")
            .bind(encoded[i].0.as_str())
            .fetch_optional(&pool)
            .await
            .map_err(bench_err("baseline select"))?;
        if v.as_deref() != Some(&encoded[i].1[..]) {
            return Err(Error::internal("baseline get returned wrong data"));
        }
    }
    let raw_get = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for &i in &order {
        let v = store.get("docs", &data[i].0).await?;
        if v.as_ref() != Some(&data[i].1) {
            return Err(Error::internal("get benchmark returned wrong data"));
        }
    }
    let get = t.elapsed().as_secs_f64();
    store.close().await?;
    pool.close().await;

    let label = format!("{storage}+{cipher}");
    let bytes = file_bytes(&db);
    let n = opts.n;
    let result = |w: &str, s: f64, base: f64| BenchResult {
        workload: format!("{w} ({label})"),
        n,
        seconds: s,
        records_per_s: n as f64 / s,
        bytes,
        peak_rss_bytes: peak_rss_bytes(),
        baseline_seconds: base,
        ratio: s / base,
    };
    Ok(vec![
        result("W1 put", put, raw_put),
        result("W1 put vs multi-row", put, raw_put_multi),
        result("W2 get", get, raw_get),
    ])
}
