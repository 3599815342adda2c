//! The relay's own cost, layer by layer, on SQLite files: N envelopes of 1100 B pushed by one
//! device in batches of 4000 and pulled back by fresh devices in pages of 4000.
//!
//! 1. **raw**: the floor for this driver. The same rows, multi-row `INSERT`s into a plain table
//!    keyed like the relay's (sqlx, WAL, `synchronous = FULL`, one transaction a batch), read
//!    back in pages by key.
//! 2. **store**: `SqliteStore` called directly: the relay's indexes, dropping what a push
//!    supersedes, recording each device's cursor, cutting pages by count and bytes.
//! 3. **http**: the same through the in-process server on 127.0.0.1 and `HttpTransport`: the
//!    wire format, authentication, body limits, loopback TCP.
//!
//! No device is involved (no sealing, opening or applying), so the figures are much steadier
//! than W3's (`hearth bench`), whose device work shares the same cores; use this to see a
//! change to the server's paths. Each pull runs three times, each time as a new device; the
//! median is reported.
//!
//! `cargo bench -p sync-server --bench relay_layers` (N from `HEARTH_BENCH_N`, default
//! 300,000).

use std::sync::Arc;
use std::time::Instant;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite};
use sync_core::{
    DeviceId, OutgoingEnvelope, PullPage, PullRequest, PushRequest, RecordId, RelayConfig, SpaceId,
    SpaceRef, Transport,
};
use sync_server::{AccountId, Server, ServerStore, SqliteStore};
use transport_http::{HttpOptions, HttpTransport};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const BATCH: u64 = 4000;
const SIZE: usize = 1100;
const RUNS: usize = 3;

fn from(device: u8) -> SpaceRef {
    SpaceRef {
        space: SpaceId([2; 16]),
        device: DeviceId([device; 16]),
        fingerprint: [4; 32],
    }
}

/// Batch `b` of the dataset, generated when needed.
fn batch(b: u64) -> Vec<OutgoingEnvelope> {
    (b * BATCH + 1..=(b + 1) * BATCH)
        .map(|seq| {
            let mut record = [0u8; 32];
            record[..8].copy_from_slice(&seq.to_be_bytes());
            OutgoingEnvelope {
                record: RecordId(record),
                seq,
                supersedes: Vec::new(),
                tombstone: false,
                envelope: vec![(seq % 251) as u8; SIZE],
            }
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Pulls everything as a new device `device` through `pull`; checks the count.
async fn pull_all<F, Fut>(n: u64, device: u8, pull: F) -> Res<f64>
where
    F: Fn(PullRequest) -> Fut,
    Fut: std::future::Future<Output = sync_core::Result<PullPage>>,
{
    let t = Instant::now();
    let (mut cursor, mut seen) = (0, 0u64);
    loop {
        let page = pull(PullRequest {
            from: from(device),
            cursor,
            limit: BATCH as usize,
            include_own: false,
        })
        .await?;
        seen += page.envelopes.len() as u64;
        cursor = page.next_cursor;
        if !page.more {
            break;
        }
    }
    if seen != n {
        return Err(format!("pulled {seen} envelopes of {n}").into());
    }
    Ok(t.elapsed().as_secs_f64())
}

async fn raw(dir: &std::path::Path, n: u64) -> Res<(f64, f64)> {
    let pool = SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(dir.join("raw.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full),
    )
    .await?;
    sqlx::query(
        "CREATE TABLE raw (space BLOB NOT NULL, server_seq INTEGER NOT NULL, record BLOB NOT NULL, device BLOB NOT NULL, seq INTEGER NOT NULL, envelope BLOB NOT NULL, PRIMARY KEY (space, server_seq))",
    )
    .execute(&pool)
    .await?;
    let f = from(1);
    let t = Instant::now();
    for b in 0..n / BATCH {
        let rows = batch(b);
        let mut tx = pool.begin().await?;
        // 6 parameters a row, under SQLite's default limit of 32766.
        for chunk in rows.chunks(1000) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO raw (space, server_seq, record, device, seq, envelope) ",
            );
            q.push_values(chunk, |mut r, e| {
                r.push_bind(&f.space.0[..])
                    .push_bind(e.seq as i64)
                    .push_bind(&e.record.0[..])
                    .push_bind(&f.device.0[..])
                    .push_bind(e.seq as i64)
                    .push_bind(&e.envelope[..]);
            });
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
    }
    let write = t.elapsed().as_secs_f64();
    let mut reads = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let (mut after, mut seen) = (0i64, 0u64);
        loop {
            let rows = sqlx::query(
                "SELECT server_seq, record, device, seq, envelope FROM raw WHERE space = ? AND server_seq > ? ORDER BY server_seq LIMIT ?",
            )
            .bind(&f.space.0[..])
            .bind(after)
            .bind(BATCH as i64)
            .fetch_all(&pool)
            .await?;
            let Some(last) = rows.last() else { break };
            after = last.try_get(0)?;
            for r in &rows {
                // Owned, as the relay hands them on.
                let envelope: Vec<u8> = r.try_get(4)?;
                let record: Vec<u8> = r.try_get(1)?;
                seen += u64::from(envelope.len() == SIZE && record.len() == 32);
            }
        }
        if seen != n {
            return Err("the raw read missed rows".into());
        }
        reads.push(t.elapsed().as_secs_f64());
    }
    pool.close().await;
    Ok((write, median(reads)))
}

async fn store(dir: &std::path::Path, n: u64) -> Res<(f64, f64)> {
    let clock: sync_core::store::WallClock = Arc::new(|| 1_700_000_000_000);
    let store = SqliteStore::open(&dir.join("store.db"), RelayConfig::default(), clock).await?;
    let account = AccountId([7; 16]);
    store.create_account(account, [1; 32]).await?;
    store
        .register_space(account, from(1).space, from(1).fingerprint)
        .await?;
    store.register_device(account, &from(1)).await?;
    let t = Instant::now();
    for b in 0..n / BATCH {
        store
            .push(account, &PushRequest::new(from(1), batch(b)))
            .await?;
    }
    let push = t.elapsed().as_secs_f64();
    let mut pulls = Vec::new();
    for run in 0..RUNS {
        let device = 10 + run as u8;
        store.register_device(account, &from(device)).await?;
        let store = &store;
        pulls.push(pull_all(n, device, |r| async move { store.pull(account, &r).await }).await?);
    }
    store.close().await;
    Ok((push, median(pulls)))
}

async fn http(dir: &std::path::Path, n: u64) -> Res<(f64, f64)> {
    let server = Server::builder()
        .listen("127.0.0.1:0".parse()?)
        .database(format!("sqlite:{}", dir.join("http.db").display()))
        .build()
        .await?
        .spawn();
    let url = format!("http://{}", server.local_addr());
    let account = HttpTransport::register_account(&url).await?;
    let t = HttpTransport::with_options(&url, &account.token, HttpOptions::default())?;
    t.register_space(from(1).space, from(1).fingerprint).await?;
    t.register_device(&from(1)).await?;
    let start = Instant::now();
    for b in 0..n / BATCH {
        t.push(PushRequest::new(from(1), batch(b))).await?;
    }
    let push = start.elapsed().as_secs_f64();
    let mut pulls = Vec::new();
    for run in 0..RUNS {
        let device = 10 + run as u8;
        t.register_device(&from(device)).await?;
        let t = &t;
        pulls.push(pull_all(n, device, |r| async move { t.pull(r).await }).await?);
    }
    server.stop().await?;
    Ok((push, median(pulls)))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Res<()> {
    let n: u64 = std::env::var("HEARTH_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let n = (n / BATCH).max(1) * BATCH;
    let dir = tempfile::tempdir()?;
    let (raw_w, raw_r) = raw(dir.path(), n).await?;
    let (store_w, store_r) = store(dir.path(), n).await?;
    let (http_w, http_r) = http(dir.path(), n).await?;
    println!("relay layers: {n} envelopes of {SIZE} B, batches and pages of {BATCH}, SQLite files");
    println!(
        "| layer | push s | µs/envelope | × raw | pull s (median of {RUNS}) | µs/envelope | × raw |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, w, r) in [
        ("raw multi-row SQL", raw_w, raw_r),
        ("SqliteStore", store_w, store_r),
        ("HTTP + SqliteStore", http_w, http_r),
    ] {
        println!(
            "| {name} | {w:.2} | {:.1} | {:.2} | {r:.2} | {:.1} | {:.2} |",
            w * 1e6 / n as f64,
            w / raw_w,
            r * 1e6 / n as f64,
            r / raw_r
        );
    }
    Ok(())
}
