//! Benchmark workloads, each measured against a baseline run in the same process.
//!
//! Used by `hearth bench` and `cargo bench -p hearth --bench store`. Every workload verifies its
//! results: a run that returns wrong data fails instead of reporting a figure.
//!
//! The dataset is generated lazily from a fixed seed: record `i` is a pure function of the seed
//! and `i` ([`record`]), so no workload holds the whole dataset in memory and the peak-memory
//! figures are the library's, not the benchmark's. Generation is kept out of the timed spans
//! (each batch is generated, then written under the clock).
//!
//! The sync workloads (W3 to W6) run the real sync server (`sync-server`, the library behind
//! `hearth serve`) in this process on `127.0.0.1:0` with an SQLite database in the benchmark's
//! directory, and devices that talk to it over HTTP (`transport-http`). Bytes on the wire are
//! the push request and pull response bodies as the server counts them (HTTP headers excluded;
//! the request counts are reported alongside).

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::store::WallClock;
use crate::sync_server::RunningServer;
use crate::transport_http::HttpTransport;
use crate::{
    Error, ErrorKind, KdfCost, OpenOptions, Result, SpaceRef, Store, SyncConfig, SyncEngine,
    SyncReport, Transport, WriteBatch,
};

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
    /// The sync workloads' `SyncConfig::pull_page` and `push_batch`.
    pub sync_page: usize,
    /// The sync workloads' `SyncConfig::apply_bytes`.
    pub sync_apply_bytes: usize,
    /// The registered cipher both devices of the sync workloads use (default `orion`).
    pub sync_cipher: &'static str,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            n: 100_000,
            value_size: 1024,
            batch: 1000,
            seed: 42,
            sync_page: SyncConfig::default().pull_page,
            sync_apply_bytes: SyncConfig::default().apply_bytes,
            sync_cipher: "orion",
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
    /// Bytes: stored (W1, W2) or on the wire (W3 to W6).
    pub bytes: u64,
    /// Peak resident memory during this workload (Linux: the high-water mark is reset before
    /// the workload starts; 0 elsewhere).
    pub peak_rss_bytes: u64,
    /// Wall time of the baseline (0 where the workload has no time baseline).
    pub baseline_seconds: f64,
    /// `seconds / baseline_seconds`: how many times slower than the floor (W6: see
    /// [`LongOffline`]).
    pub ratio: f64,
}

const WORDS: [&str; 16] = [
    "hearth", "sync", "offline", "device", "garden", "river", "note", "field", "sample", "ledger",
    "window", "kettle", "morning", "station", "orbit", "lantern",
];

/// The key of record `i`.
pub fn key(i: usize) -> String {
    format!("doc-{i:08}")
}

fn index_of(key: &str) -> Option<usize> {
    key.strip_prefix("doc-")?.parse().ok()
}

/// Record `i` of the dataset: a JSON document of about `value_size` bytes (id, title, body,
/// three tags, an integer and a nested object), a pure function of the seed and `i`.
pub fn record(opts: &BenchOptions, i: usize) -> (String, serde_json::Value) {
    let mut rng =
        fastrand::Rng::with_seed(opts.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let body_len = opts.value_size.saturating_sub(124).max(16);
    let mut body = String::with_capacity(body_len + 10);
    while body.len() < body_len {
        body.push_str(WORDS[rng.usize(..WORDS.len())]);
        body.push(' ');
    }
    body.truncate(body_len);
    let key = key(i);
    let value = json!({
        "id": key,
        "title": format!("{} {}", WORDS[rng.usize(..WORDS.len())], i),
        "body": body,
        "tags": [WORDS[rng.usize(..WORDS.len())], WORDS[rng.usize(..WORDS.len())], WORDS[rng.usize(..WORDS.len())]],
        "count": rng.i64(0..1_000_000),
        "meta": {"lat": rng.f64() * 180.0 - 90.0, "lon": rng.f64() * 360.0 - 180.0, "ok": rng.bool()}
    });
    (key, value)
}

/// Records `range` of the dataset, generated on demand.
pub fn records(
    opts: &BenchOptions,
    range: std::ops::Range<usize>,
) -> impl Iterator<Item = (String, serde_json::Value)> + '_ {
    range.map(move |i| record(opts, i))
}

/// Resets this process's peak-memory high-water mark (Linux: writes `5` to
/// `/proc/self/clear_refs`), so the next [`peak_rss_bytes`] covers only what runs after it.
/// Returns false where that is not possible (the figure then covers the process so far).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
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

/// Bytes this process has caused to be written to storage so far (`write_bytes` of
/// `/proc/self/io`: what reached the block layer, WAL and checkpoints included), or None where
/// the kernel does not say. Differences of it give a workload's write amplification.
pub fn disk_written_bytes() -> Option<u64> {
    std::fs::read_to_string("/proc/self/io").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("write_bytes:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
    })
}

/// Samples how many bytes the C allocator has handed out and not taken back (glibc's
/// `mallinfo2`: arena chunks in use plus mmapped chunks), every 250 ms on a thread of its own,
/// and keeps the most seen. (`mallinfo2` walks every arena's free lists holding the arena's
/// lock: sampled every 20 ms it took ~5 % of W3's CPU time in a profile and made the
/// allocations it measures wait.) That is the heap the process holds (Rust's allocations and
/// SQLite's alike go through `malloc`), without the free memory the allocator keeps mapped in
/// its per-thread arenas, which peak RSS counts too. None off glibc.
struct HeapSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl HeapSampler {
    fn start() -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = heap_in_use().map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut peak = 0;
                while !stop.load(Ordering::Relaxed) {
                    peak = peak.max(heap_in_use().unwrap_or(0));
                    std::thread::sleep(std::time::Duration::from_millis(250));
                }
                peak
            })
        });
        Self { stop, thread }
    }

    /// The most bytes in use seen, or None where it cannot be read (off glibc, or glibc's
    /// allocator replaced, for example by `LD_PRELOAD`ing another: it then reports nothing).
    fn finish(mut self) -> Option<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .filter(|&peak| peak > 0)
    }
}

impl Drop for HeapSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Bytes glibc's allocator has handed out and not taken back, now.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // One FFI call without arguments; see SAFETY.
fn heap_in_use() -> Option<u64> {
    // SAFETY: `mallinfo2` takes no arguments and returns a plain struct by value; glibc locks
    // each arena while it sums it, so it may be called from any thread at any time.
    let info = unsafe { libc::mallinfo2() };
    Some((info.uordblks + info.hblkhd) as u64)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap_in_use() -> Option<u64> {
    None
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

fn encode(v: &serde_json::Value) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::internal("encode").with_source(e))
}

/// Encoded records `range`, generated before a timed span.
fn encoded(opts: &BenchOptions, range: std::ops::Range<usize>) -> Result<Vec<(String, Vec<u8>)>> {
    records(opts, range)
        .map(|(k, v)| Ok((k, encode(&v)?)))
        .collect()
}

/// `range` split into batches of `opts.batch`.
fn batches(
    opts: &BenchOptions,
    range: std::ops::Range<usize>,
) -> impl Iterator<Item = std::ops::Range<usize>> {
    let batch = opts.batch.max(1);
    let end = range.end;
    (range.start..end)
        .step_by(batch)
        .map(move |s| s..(s + batch).min(end))
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
    for table in ["kv", "kv2"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {table} (id TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL)"
        )))
        .execute(&pool)
        .await
        .map_err(bench_err("baseline schema"))?;
    }
    Ok(pool)
}

/// Raw prepared-statement upserts of `rows` in one transaction: the floor for putting these
/// plaintext bytes into SQLite. Returns the seconds taken.
async fn raw_insert(pool: &sqlx::SqlitePool, rows: &[(String, Vec<u8>)]) -> Result<f64> {
    let t = Instant::now();
    let mut tx = pool.begin().await.map_err(bench_err("baseline begin"))?;
    for (k, v) in rows {
        sqlx::query("INSERT OR REPLACE INTO kv (id, value) VALUES (?, ?)")
            .bind(k.as_str())
            .bind(&v[..])
            .execute(&mut *tx)
            .await
            .map_err(bench_err("baseline insert"))?;
    }
    tx.commit().await.map_err(bench_err("baseline commit"))?;
    Ok(t.elapsed().as_secs_f64())
}

/// Raw multi-row inserts (128 rows a statement, as backend-sqlite writes) into `kv2`, in one
/// transaction; returns the seconds taken. The floor without sqlx's per-statement round trip
/// to its worker thread, which the per-row baseline pays once a row.
async fn raw_insert_multi(pool: &sqlx::SqlitePool, rows: &[(String, Vec<u8>)]) -> Result<f64> {
    let t = Instant::now();
    let mut tx = pool.begin().await.map_err(bench_err("baseline begin"))?;
    for chunk in rows.chunks(128) {
        let sql = format!(
            "INSERT OR REPLACE INTO kv2 (id, value) VALUES {}",
            vec!["(?, ?)"; chunk.len()].join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (k, v) in chunk {
            q = q.bind(k.as_str()).bind(&v[..]);
        }
        q.execute(&mut *tx)
            .await
            .map_err(bench_err("baseline insert"))?;
    }
    tx.commit().await.map_err(bench_err("baseline commit"))?;
    Ok(t.elapsed().as_secs_f64())
}

/// Writes records `range` into `store` in batches; returns the seconds spent writing.
async fn fill(store: &Store, opts: &BenchOptions, range: std::ops::Range<usize>) -> Result<f64> {
    let mut secs = 0.0;
    for r in batches(opts, range) {
        let mut wb = WriteBatch::new();
        for (k, v) in encoded(opts, r)? {
            wb.put_json("docs", k, v)?;
        }
        let t = Instant::now();
        store.write(wb).await?;
        secs += t.elapsed().as_secs_f64();
    }
    Ok(secs)
}

/// W1 put and W2 get on the given storage and cipher, against raw SQLite inserts and selects of
/// the same plaintext bytes in the same run.
pub async fn store_put_get(
    dir: &Path,
    storage: &str,
    cipher: &str,
    opts: &BenchOptions,
) -> Result<Vec<BenchResult>> {
    // Baseline W1: raw inserts, prepared statement, same batching.
    let raw_path = dir.join(format!("raw-{storage}-{cipher}.db"));
    let pool = raw_pool(&raw_path).await?;
    let mut raw_put = 0.0;
    for r in batches(opts, 0..opts.n) {
        raw_put += raw_insert(&pool, &encoded(opts, r)?).await?;
    }

    // Second baseline: raw multi-row inserts (128 rows a statement, as backend-sqlite writes),
    // so the ratio is not flattered by hearth batching statements and the naive baseline not.
    let mut raw_put_multi = 0.0;
    for r in batches(opts, 0..opts.n) {
        raw_put_multi += raw_insert_multi(&pool, &encoded(opts, r)?).await?;
    }

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
    reset_peak_rss();
    let put = fill(&store, opts, 0..opts.n).await?;
    let put_rss = peak_rss_bytes();
    if store.info().await?.pending != opts.n as u64 {
        return Err(Error::internal("put benchmark: record count mismatch"));
    }

    // W2: every record by key, in random order; both sides compared with the expected bytes.
    let mut order: Vec<usize> = (0..opts.n).collect();
    fastrand::Rng::with_seed(opts.seed ^ 0x9e37).shuffle(&mut order);
    let mut raw_get = 0.0;
    for chunk in order.chunks(opts.batch.max(1)) {
        let expected: Vec<(String, Vec<u8>)> = chunk
            .iter()
            .map(|&i| {
                let (k, v) = record(opts, i);
                Ok((k, encode(&v)?))
            })
            .collect::<Result<_>>()?;
        let t = Instant::now();
        let mut got = Vec::with_capacity(expected.len());
        for (k, _) in &expected {
            let v: Option<Vec<u8>> = sqlx::query_scalar("SELECT value FROM kv WHERE id = ?")
                .bind(k.as_str())
                .fetch_optional(&pool)
                .await
                .map_err(bench_err("baseline select"))?;
            got.push(v);
        }
        raw_get += t.elapsed().as_secs_f64();
        if got
            .iter()
            .zip(&expected)
            .any(|(g, (_, e))| g.as_deref() != Some(&e[..]))
        {
            return Err(Error::internal("baseline get returned wrong data"));
        }
    }
    reset_peak_rss();
    let mut get = 0.0;
    for chunk in order.chunks(opts.batch.max(1)) {
        let expected: Vec<(String, serde_json::Value)> =
            chunk.iter().map(|&i| record(opts, i)).collect();
        let t = Instant::now();
        let mut got = Vec::with_capacity(expected.len());
        for (k, _) in &expected {
            got.push(store.get("docs", k).await?);
        }
        get += t.elapsed().as_secs_f64();
        if got
            .iter()
            .zip(&expected)
            .any(|(g, (_, e))| g.as_ref() != Some(e))
        {
            return Err(Error::internal("get benchmark returned wrong data"));
        }
    }
    let get_rss = peak_rss_bytes();
    store.close().await?;
    pool.close().await;

    let label = format!("{storage}+{cipher}");
    let bytes = file_bytes(&db);
    let n = opts.n;
    let result = |w: &str, s: f64, base: f64, rss: u64| BenchResult {
        workload: format!("{w} ({label})"),
        n,
        seconds: s,
        records_per_s: n as f64 / s,
        bytes,
        peak_rss_bytes: rss,
        baseline_seconds: base,
        ratio: s / base,
    };
    Ok(vec![
        result("W1 put", put, raw_put, put_rss),
        result("W1 put vs multi-row", put, raw_put_multi, put_rss),
        result("W2 get", get, raw_get, get_rss),
    ])
}

/// The sync server in this process, on a free loopback port, with an SQLite database.
struct Rig {
    server: RunningServer,
    token: String,
}

impl Rig {
    async fn start(dir: &Path, clock: WallClock) -> Result<Self> {
        let server = crate::sync_server::Server::builder()
            .listen(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .database(format!("sqlite:{}", dir.join("server.db").display()))
            .clock(clock)
            .build()
            .await?
            .spawn();
        let token = HttpTransport::register_account(&server.url()).await?.token;
        Ok(Self { server, token })
    }

    fn http(&self) -> Result<HttpTransport> {
        HttpTransport::new(&self.server.url(), self.token.clone())
    }

    fn engine(&self, store: &Store, opts: &BenchOptions) -> Result<SyncEngine> {
        Ok(SyncEngine::new(
            store.clone(),
            Arc::new(self.http()?.retrying()),
            SyncConfig {
                pull_page: opts.sync_page.max(1),
                push_batch: opts.sync_page.max(2),
                apply_bytes: opts.sync_apply_bytes,
                ..SyncConfig::default()
            },
        ))
    }

    /// Bytes of push request bodies plus pull response bodies so far, and requests answered.
    fn traffic(&self) -> Wire {
        let text = self.server.metrics().render();
        let get = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Wire {
            up: get("hearth_push_bytes_total "),
            down: get("hearth_pull_bytes_total "),
            requests: self.server.metrics().requests(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Wire {
    up: u64,
    down: u64,
    requests: u64,
}

impl Wire {
    fn since(self, before: Wire) -> Wire {
        Wire {
            up: self.up - before.up,
            down: self.down - before.down,
            requests: self.requests - before.requests,
        }
    }
    fn bytes(self) -> u64 {
        self.up + self.down
    }
}

/// Bytes of the sync workloads against their bounds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct SyncBytes {
    /// W3: push and pull bodies.
    pub initial: u64,
    /// W3: HTTP requests.
    pub initial_requests: u64,
    /// W3: seconds of device A's push (the rest of W3's time is device B's pull).
    pub initial_push_seconds: f64,
    /// W3: seconds the server spent answering pushes and pulls (from each request's arrival
    /// to its response, body included), against which the devices' own share can be told.
    pub initial_server_seconds: (f64, f64),
    /// W3: the most heap SQLite held at once (page caches and statements of the server's and
    /// both devices' databases), for telling the caches apart from the rest of the peak RSS.
    pub initial_sqlite_peak: u64,
    /// W3: the most of that heap SQLite's page caches held at once (bounded by the caches'
    /// configured sizes; the rest of SQLite's heap is statements, schemas and scratch).
    pub initial_sqlite_cache_peak: u64,
    /// W3: the most heap the process had in use at once (sampled every 250 ms; Rust's and
    /// SQLite's allocations alike), without the free memory the allocator keeps, which peak RSS
    /// includes. None where the allocator cannot tell (off glibc).
    pub initial_heap_peak: Option<u64>,
    /// W3: bytes written to disk by A's push (server and A) and by B's pull (server and B),
    /// WAL and checkpoints included; None where the kernel does not say (off Linux).
    pub initial_disk_written: Option<(u64, u64)>,
    /// Sum of A's sealed envelope sizes, twice (up once, down once): what any end-to-end
    /// encrypted sync through a server must move.
    pub sealed_lower_bound: u64,
    /// W4: push and pull bodies of the 1 % delta.
    pub delta: u64,
    /// Bytes of a sync round with nothing to sync (both devices): the fixed overhead.
    pub idle_round: u64,
    /// The W4 aim: `1.1 × (changed / n) × initial + idle_round`.
    pub delta_bound: u64,
}

/// Details of the long-offline workload.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct LongOffline {
    /// Edits the offline device made while away (10 % deletes).
    pub offline_edits: u64,
    /// Edits the online device made and synced meanwhile (10 % deletes).
    pub online_edits: u64,
    /// Distinct records either device changed.
    pub distinct_changed: u64,
    /// Envelopes moved when the offline device came back (pushed plus pulled, both devices).
    pub envelopes_moved: u64,
    /// The least that must move: each record the offline device changed up and down once
    /// (current state only), each the online device changed down once. The W6 ratio is
    /// `envelopes_moved / envelopes_floor` (1.0 = no history moves).
    pub envelopes_floor: u64,
    /// Records deleted on either side, none of which came back.
    pub deleted_checked: u64,
}

/// What the sync workloads report.
#[derive(Clone, Debug, Default)]
pub struct SyncBench {
    /// One row per workload run.
    pub results: Vec<BenchResult>,
    /// W3 and W4 bytes.
    pub bytes: SyncBytes,
    /// W6 details, when W6 ran.
    pub long_offline: Option<LongOffline>,
}

/// Which sync workloads to run (W3 always runs: it sets up the devices for the others).
#[derive(Clone, Copy, Debug, Default)]
pub struct SyncWorkloads {
    /// W4 delta sync.
    pub delta: bool,
    /// W5 conflicts.
    pub conflicts: bool,
    /// W6 long offline.
    pub long_offline: bool,
}

/// A digest of a store's live `docs` records: key → hash of value. Panics never; decrypts
/// every record.
async fn digest(store: &Store) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    let mut after = None;
    loop {
        let page = store.scan_page("docs", after, 1000).await?;
        for r in page.records {
            if let Some(v) = r.value {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                v.to_string().hash(&mut h);
                out.insert(r.key, h.finish());
            }
        }
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    Ok(out)
}

/// Syncs both engines, in turn, until a round moves nothing (at most 8 rounds).
async fn settle(ea: &SyncEngine, eb: &SyncEngine) -> Result<Vec<SyncReport>> {
    let mut reports = Vec::new();
    for _ in 0..8 {
        let a = ea.sync().await?;
        let b = eb.sync().await?;
        let quiet = [&a, &b].iter().all(|r| r.pushed == 0 && r.pulled == 0);
        reports.push(a);
        reports.push(b);
        if quiet {
            return Ok(reports);
        }
    }
    Err(Error::internal(
        "sync benchmark: the devices did not settle",
    ))
}

fn opts_with(clock: &WallClock, create: bool) -> OpenOptions {
    OpenOptions::new("benchmark passphrase")
        .create(create)
        .kdf_cost(KdfCost::INSECURE_FOR_TESTS)
        .clock(clock.clone())
}

async fn sqlite_at(path: std::path::PathBuf) -> Result<Arc<dyn crate::Storage>> {
    (crate::registry::storage("sqlite")?.open)(crate::StorageOptions::at(path).create(true)).await
}

/// The server's push and pull routes, as its metrics name them.
const PUSH_ROUTE: &str = "/v1/spaces/{space}/push";
const PULL_ROUTE: &str = "/v1/spaces/{space}/pull";

/// W3 to W6 through the real server over HTTP on loopback.
///
/// - W3: device A (SQLite, orion) holding N records pushes to the server; a fresh device B
///   (joined with the passphrase and the account's key backup) pulls them. Every record on B is
///   decrypted and compared with the dataset. Baseline: raw SQLite inserts of the same plaintext
///   (the receiving side's floor). `bytes` is the wire; [`SyncBytes::sealed_lower_bound`] the
///   floor for bytes.
/// - W4: 1 % of the records change on A; A → server → B. Baseline: raw SQLite upserts of the
///   changed plaintext. Bytes against [`SyncBytes::delta_bound`].
/// - W5: A and B change the same 10 % of records offline, then sync until settled; every record
///   is compared on both. Baseline: another 10 % changed on A only, synced the same way.
/// - W6: B goes offline for 30 simulated days and makes 1,000 edits a day (10 % deletes) while
///   A edits as much and syncs daily; then B comes back and both sync until settled. Verified:
///   A and B hold the same records and no deleted record came back. Ratio: envelopes moved per
///   distinct changed record (1.0 = only current state moves, never history).
pub async fn sync_workloads(
    dir: &Path,
    opts: &BenchOptions,
    which: SyncWorkloads,
) -> Result<SyncBench> {
    let n = opts.n;
    let now = Arc::new(AtomicU64::new(crate::store::system_millis()));
    let clock: WallClock = {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    let rig = Rig::start(dir, clock.clone()).await?;
    let cipher = crate::registry::cipher(opts.sync_cipher)?;
    // Workloads are named by their transport, and by their cipher where it is not the default.
    let via = match opts.sync_cipher {
        "orion" => "http".to_owned(),
        other => format!("http, {other}"),
    };
    let a = Store::open(
        sqlite_at(dir.join("sync-a.db")).await?,
        (cipher.make)(),
        opts_with(&clock, true),
    )
    .await?;
    let http = rig.http()?;
    http.register_space(a.space(), a.key_fingerprint()).await?;
    http.put_key_backup(a.space(), a.key_backup()?).await?;
    fill(&a, opts, 0..n).await?;
    let mut sealed = 0u64;
    let mut after = None;
    loop {
        let rows = a.storage().scan_all(after.as_ref(), 1000).await?;
        let Some(last) = rows.last() else { break };
        after = Some(last.id);
        sealed += rows.iter().map(|r| r.envelope.len() as u64).sum::<u64>();
    }
    // B joins with the passphrase and what the server holds (the account's key backup).
    let space = http
        .spaces()
        .await?
        .first()
        .map(|s| s.space)
        .ok_or_else(|| Error::internal("sync benchmark: no space on the server"))?;
    let backup = http
        .get_key_backup(space)
        .await?
        .ok_or_else(|| Error::internal("sync benchmark: no key backup on the server"))?;
    let b = Store::join(
        sqlite_at(dir.join("sync-b.db")).await?,
        (cipher.make)(),
        opts_with(&clock, false),
        &backup,
    )
    .await?;
    http.register_device(&SpaceRef {
        space: b.space(),
        device: b.device(),
        fingerprint: b.key_fingerprint(),
    })
    .await?;
    let ea = rig.engine(&a, opts)?;
    let eb = rig.engine(&b, opts)?;

    // Baseline for W3: the receiving side's floor.
    // Each baseline into a file of its own, so neither pays for the other's pages.
    let raw = raw_pool(&dir.join("sync-raw.db")).await?;
    let raw_multi = raw_pool(&dir.join("sync-raw-multi.db")).await?;
    let mut raw_s = 0.0;
    let mut raw_multi_s = 0.0;
    for r in batches(opts, 0..n) {
        let rows = encoded(opts, r)?;
        raw_s += raw_insert(&raw, &rows).await?;
        raw_multi_s += raw_insert_multi(&raw_multi, &rows).await?;
    }
    raw_multi.close().await;

    // W3.
    let w0 = rig.traffic();
    let handled = |route: &str| rig.server.metrics().request_seconds(route).0;
    let (push0, pull0) = (handled(PUSH_ROUTE), handled(PULL_ROUTE));
    reset_peak_rss();
    crate::backend_sqlite::sqlite_memory_highwater(true);
    crate::backend_sqlite::sqlite_page_cache_highwater(true);
    let heap = HeapSampler::start();
    let io0 = disk_written_bytes();
    let t = Instant::now();
    ea.sync().await?;
    let push_s = t.elapsed().as_secs_f64();
    let io1 = disk_written_bytes();
    let pulled = eb.sync().await?;
    let initial = t.elapsed().as_secs_f64();
    let io2 = disk_written_bytes();
    let rss = peak_rss_bytes();
    let sqlite_peak = crate::backend_sqlite::sqlite_memory_highwater(false);
    let sqlite_cache_peak = crate::backend_sqlite::sqlite_page_cache_highwater(false);
    let heap_peak = heap.finish();
    let w3 = rig.traffic().since(w0);
    let mut seen = vec![false; n];
    let mut after = None;
    loop {
        let page = b.scan_page("docs", after, 1000).await?;
        for r in page.records {
            let i = index_of(&r.key)
                .filter(|&i| i < n && !seen[i])
                .ok_or_else(|| Error::internal("initial sync benchmark: unexpected key on B"))?;
            seen[i] = true;
            if r.value.as_ref() != Some(&record(opts, i).1) {
                return Err(Error::internal(
                    "initial sync benchmark: a record on B differs from A's",
                ));
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    if pulled.applied != n as u64 || seen.iter().any(|s| !s) || b.info().await?.pending != 0 {
        return Err(Error::internal(
            "initial sync benchmark: B does not hold exactly A's data",
        ));
    }
    drop(seen);
    let mut out = SyncBench::default();
    out.bytes.initial = w3.bytes();
    out.bytes.initial_requests = w3.requests;
    out.bytes.initial_push_seconds = push_s;
    out.bytes.initial_server_seconds = (handled(PUSH_ROUTE) - push0, handled(PULL_ROUTE) - pull0);
    out.bytes.initial_sqlite_peak = sqlite_peak;
    out.bytes.initial_sqlite_cache_peak = sqlite_cache_peak;
    out.bytes.initial_heap_peak = heap_peak;
    out.bytes.initial_disk_written = match (io0, io1, io2) {
        (Some(a), Some(b), Some(c)) => Some((b.saturating_sub(a), c.saturating_sub(b))),
        _ => None,
    };
    out.bytes.sealed_lower_bound = 2 * sealed;
    let w3_row = BenchResult {
        workload: format!("W3 initial sync ({via})"),
        n,
        seconds: initial,
        records_per_s: n as f64 / initial,
        bytes: w3.bytes(),
        peak_rss_bytes: rss,
        baseline_seconds: raw_s,
        ratio: initial / raw_s,
    };
    // The same against raw multi-row inserts: the floor without a statement per row.
    let w3_multi = BenchResult {
        workload: format!("W3 initial sync vs multi-row ({via})"),
        baseline_seconds: raw_multi_s,
        ratio: initial / raw_multi_s,
        ..w3_row.clone()
    };
    out.results.push(w3_row);
    out.results.push(w3_multi);

    if which.delta {
        // The fixed overhead: a round with nothing to sync.
        let w0 = rig.traffic();
        ea.sync().await?;
        eb.sync().await?;
        let idle = rig.traffic().since(w0).bytes();
        let delta_n = (n / 100).max(1);
        let changed: Vec<(String, serde_json::Value)> = (0..n)
            .step_by(n / delta_n)
            .take(delta_n)
            .map(|i| {
                let (k, mut v) = record(opts, i);
                v["count"] = json!(-1);
                (k, v)
            })
            .collect();
        let mut wb = WriteBatch::new();
        for (k, v) in &changed {
            wb.put("docs", k.as_str(), v)?;
        }
        a.write(wb).await?;
        let plain: Vec<(String, Vec<u8>)> = changed
            .iter()
            .map(|(k, v)| Ok((k.clone(), encode(v)?)))
            .collect::<Result<_>>()?;
        let base = raw_insert(&raw, &plain).await?;
        let w0 = rig.traffic();
        reset_peak_rss();
        let t = Instant::now();
        ea.sync().await?;
        let r = eb.sync().await?;
        let secs = t.elapsed().as_secs_f64();
        let rss = peak_rss_bytes();
        let w4 = rig.traffic().since(w0);
        if r.applied != delta_n as u64 {
            return Err(Error::internal(
                "delta sync benchmark: B applied a different number of changes",
            ));
        }
        for (k, v) in &changed {
            if b.get("docs", k).await?.as_ref() != Some(v) {
                return Err(Error::internal(
                    "delta sync benchmark: a change did not arrive",
                ));
            }
        }
        out.bytes.delta = w4.bytes();
        out.bytes.idle_round = idle;
        out.bytes.delta_bound =
            (1.1 * (delta_n as f64 / n as f64) * w3.bytes() as f64) as u64 + idle;
        out.results.push(BenchResult {
            workload: format!("W4 1% delta ({via})"),
            n: delta_n,
            seconds: secs,
            records_per_s: delta_n as f64 / secs,
            bytes: w4.bytes(),
            peak_rss_bytes: rss,
            baseline_seconds: base,
            ratio: secs / base,
        });
    }
    raw.close().await;

    if which.conflicts {
        let edit = |range: std::iter::StepBy<std::ops::Range<usize>>, who: &str| {
            let mut wb = WriteBatch::new();
            let mut count = 0;
            for i in range {
                let (k, mut v) = record(opts, i);
                v["title"] = json!(format!("edited by {who}"));
                wb.put("docs", k, &v)?;
                count += 1;
            }
            Ok::<_, Error>((wb, count))
        };
        // Baseline: one-sided changes of another tenth (i % 10 == 1), synced the same way.
        let (wb, _) = edit((1.min(n - 1)..n).step_by(10), "a")?;
        a.write(wb).await?;
        let t = Instant::now();
        settle(&ea, &eb).await?;
        let base = t.elapsed().as_secs_f64();
        // Conflicts: both change every tenth record (i % 10 == 0) offline.
        let (wa, tenth) = edit((0..n).step_by(10), "a")?;
        let (wbb, _) = edit((0..n).step_by(10), "b")?;
        a.write(wa).await?;
        b.write(wbb).await?;
        let w0 = rig.traffic();
        reset_peak_rss();
        let t = Instant::now();
        let reports = settle(&ea, &eb).await?;
        let secs = t.elapsed().as_secs_f64();
        let rss = peak_rss_bytes();
        let w5 = rig.traffic().since(w0);
        let resolved: u64 = reports.iter().map(|r| r.conflicts_resolved).sum();
        if resolved < tenth {
            return Err(Error::internal(
                "conflict benchmark: fewer conflicts resolved than made",
            ));
        }
        if digest(&a).await? != digest(&b).await? {
            return Err(Error::internal(
                "conflict benchmark: devices did not converge",
            ));
        }
        for i in (0..n).step_by(10) {
            let k = key(i);
            let ra = a
                .get_record("docs", &k)
                .await?
                .map(|r| (r.value, r.version));
            if ra.is_none()
                || ra
                    != b.get_record("docs", &k)
                        .await?
                        .map(|r| (r.value, r.version))
            {
                return Err(Error::internal(
                    "conflict benchmark: devices did not converge",
                ));
            }
        }
        out.results.push(BenchResult {
            workload: format!("W5 conflicts 10% ({via})"),
            n: tenth as usize,
            seconds: secs,
            records_per_s: tenth as f64 / secs,
            bytes: w5.bytes(),
            peak_rss_bytes: rss,
            baseline_seconds: base,
            ratio: secs / base,
        });
    }

    if which.long_offline {
        // B (offline) edits even records, A (online) odd ones: disjoint, so "no deleted record
        // came back" has one right answer whatever the conflict strategy.
        let mut rng = fastrand::Rng::with_seed(opts.seed ^ 0x66);
        let evens = n.div_ceil(2);
        let odds = n / 2;
        let mut deleted: BTreeSet<usize> = BTreeSet::new();
        let mut touched: BTreeSet<usize> = BTreeSet::new();
        let (mut offline_edits, mut online_edits) = (0u64, 0u64);
        let mut day_edits = |store: &Store, parity: usize, count: usize| {
            let mut wb = WriteBatch::new();
            for j in 0..1000 {
                let i = 2 * rng.usize(..count) + parity;
                touched.insert(i);
                if j % 10 == 0 {
                    wb.delete("docs", key(i));
                    deleted.insert(i);
                } else {
                    let (k, mut v) = record(opts, i);
                    v["count"] = json!(rng.i64(..));
                    wb.put("docs", k, &v)?;
                    deleted.remove(&i);
                }
            }
            let store = store.clone();
            Ok::<_, Error>(async move { store.write(wb).await })
        };
        for _day in 0..30 {
            day_edits(&b, 0, evens)?.await?;
            offline_edits += 1000;
            if odds > 0 {
                day_edits(&a, 1, odds)?.await?;
                online_edits += 1000;
            }
            ea.sync().await?;
            now.fetch_add(24 * 3600 * 1000, Ordering::SeqCst);
        }
        let w0 = rig.traffic();
        reset_peak_rss();
        let t = Instant::now();
        // B comes back; both sync until nothing moves.
        let mut reports = vec![eb.sync().await?];
        reports.extend(settle(&ea, &eb).await?);
        let secs = t.elapsed().as_secs_f64();
        let rss = peak_rss_bytes();
        let w6 = rig.traffic().since(w0);
        let da = digest(&a).await?;
        if da != digest(&b).await? {
            return Err(Error::internal(
                "long-offline benchmark: the devices did not converge",
            ));
        }
        for &i in &deleted {
            let k = key(i);
            if da.contains_key(&k) || b.get("docs", &k).await?.is_some() {
                return Err(Error::internal(
                    "long-offline benchmark: a deleted record came back",
                ));
            }
        }
        if da.len() != n - deleted.len() {
            return Err(Error::internal(
                "long-offline benchmark: records went missing",
            ));
        }
        let moved: u64 = reports.iter().map(|r| r.pushed + r.pulled).sum();
        let distinct = touched.len() as u64;
        let offline_distinct = touched.iter().filter(|&&i| i % 2 == 0).count() as u64;
        // The least that must move: B's changes up and down again to A, A's down to B.
        let floor = 2 * offline_distinct + (distinct - offline_distinct);
        out.results.push(BenchResult {
            workload: format!("W6 30 days offline ({via})"),
            n: offline_edits as usize,
            seconds: secs,
            records_per_s: moved as f64 / secs.max(1e-9),
            bytes: w6.bytes(),
            peak_rss_bytes: rss,
            baseline_seconds: 0.0,
            ratio: moved as f64 / floor.max(1) as f64,
        });
        out.long_offline = Some(LongOffline {
            offline_edits,
            online_edits,
            distinct_changed: distinct,
            envelopes_moved: moved,
            envelopes_floor: floor,
            deleted_checked: deleted.len() as u64,
        });
    }
    a.close().await?;
    b.close().await?;
    rig.server.stop().await?;
    Ok(out)
}
