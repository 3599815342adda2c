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
