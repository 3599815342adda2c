//! Sync over real HTTP on loopback, the server as a separate process (the built
//! `hearth-server`, SQLite file):
//!
//! 1. initial sync of N ~1 KiB records: device A (SQLite file) → server → fresh device B;
//! 2. a 1 % delta after it;
//! 3. server throughput with 50 concurrent clients (each its own account), bounded.
//!
//! `cargo bench -p sync-server --bench sync_http` (N from `HEARTH_BENCH_N`, default 100,000;
//! `HEARTH_BENCH_CLIENTS` clients, default 50). Reports seconds, bytes on the wire (request
//! and response bodies, from the server's /metrics) per record against the sealed size, and
//! peak memory (VmHWM) of this client process during the sync (reset before it; the dataset is
//! generated lazily, never held whole) and of the server process.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use crypto_orion::OrionCipher;
use hearth::bench::{BenchOptions, peak_rss_bytes, record, records, reset_peak_rss};
use sync_core::{
    DeviceId, KdfCost, OpenOptions, OutgoingEnvelope, PullRequest, PushRequest, RecordId, SpaceId,
    SpaceRef, Store, SyncConfig, SyncEngine, Transport, WriteBatch,
};
use transport_http::{HttpOptions, HttpTransport};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn vm_hwm(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
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

struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn start_server(db: &std::path::Path) -> Res<(ServerProcess, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hearth-server"))
        .args(["--listen", "127.0.0.1:0", "--database"])
        .arg(format!("sqlite:{}", db.display()))
        .env("HEARTH_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or("unexpected first line")?
        .to_owned();
    Ok((ServerProcess(child), format!("http://{addr}")))
}

async fn wire_bytes(url: &str) -> Res<(u64, u64)> {
    let text = reqwest::get(format!("{url}/metrics")).await?.text().await?;
    let get = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((
        get("hearth_push_bytes_total"),
        get("hearth_pull_bytes_total"),
    ))
}

fn http(url: &str, token: &str) -> Res<HttpTransport> {
    Ok(HttpTransport::with_options(
        url,
        token,
        HttpOptions::default(),
    )?)
}

async fn initial_and_delta(dir: &std::path::Path, n: usize) -> Res<()> {
    let (server, url) = start_server(&dir.join("server.db"))?;
    let account = HttpTransport::register_account(&url).await?;
    let opts = || {
        OpenOptions::new("benchmark passphrase")
            .create(true)
            .kdf_cost(KdfCost::INSECURE_FOR_TESTS)
    };
    let a_storage = backend_sqlite::SqliteStorage::open(dir.join("a.db"), true).await?;
    let a = Store::open(Arc::new(a_storage), OrionCipher::shared(), opts()).await?;
    let ta = http(&url, &account.token)?;
    ta.register_space(a.space(), a.key_fingerprint()).await?;
    ta.put_key_backup(a.space(), a.key_backup()?).await?;
    // The dataset is generated lazily, batch by batch: the client's memory figure is the
    // library's, not the benchmark's.
    let bench = BenchOptions {
        n,
        ..BenchOptions::default()
    };
    for start in (0..n).step_by(1000) {
        let mut wb = WriteBatch::new();
        for (k, v) in records(&bench, start..(start + 1000).min(n)) {
            wb.put("docs", k, &v)?;
        }
        a.write(wb).await?;
    }
    let mut sealed = 0u64;
    let mut after = None;
    loop {
        let rows = a.storage().scan_all(after.as_ref(), 1000).await?;
        let Some(last) = rows.last() else { break };
        after = Some(last.id);
        sealed += rows.iter().map(|r| r.envelope.len() as u64).sum::<u64>();
    }
    let ea = SyncEngine::new(
        a.clone(),
        Arc::new(ta.clone().retrying()),
        SyncConfig::default(),
    );

    reset_peak_rss();
    let t = Instant::now();
    ea.sync().await?;
    let push_s = t.elapsed().as_secs_f64();
    // B joins with the passphrase and the token only.
    let tb = http(&url, &account.token)?;
    let space = tb.spaces().await?.first().ok_or("no space")?.space;
    let backup = tb.get_key_backup(space).await?.ok_or("no backup")?;
    let b_storage = backend_sqlite::SqliteStorage::open(dir.join("b.db"), true).await?;
    let b = Store::join(
        Arc::new(b_storage),
        OrionCipher::shared(),
        OpenOptions::new("benchmark passphrase").kdf_cost(KdfCost::INSECURE_FOR_TESTS),
        &backup,
    )
    .await?;
    let eb = SyncEngine::new(b.clone(), Arc::new(tb.retrying()), SyncConfig::default());
    let t = Instant::now();
    let r = eb.sync().await?;
    let pull_s = t.elapsed().as_secs_f64();
    let (mid_key, mid_value) = record(&bench, n / 2);
    if r.applied != n as u64 || b.get("docs", &mid_key).await?.as_ref() != Some(&mid_value) {
        return Err("B does not hold A's data".into());
    }
    let (up, down) = wire_bytes(&url).await?;
    let server_hwm = vm_hwm(server.0.id());
    let client_hwm = peak_rss_bytes();

    // 1 % delta.
    let delta_n = (n / 100).max(1);
    let mut wb = WriteBatch::new();
    for i in (0..n).step_by(n / delta_n).take(delta_n) {
        let (k, mut v) = record(&bench, i);
        v["count"] = serde_json::json!(-1);
        wb.put("docs", k, &v)?;
    }
    a.write(wb).await?;
    let t = Instant::now();
    ea.sync().await?;
    let r = eb.sync().await?;
    let delta_s = t.elapsed().as_secs_f64();
    if r.applied != delta_n as u64 {
        return Err("the delta did not arrive".into());
    }
    let (up2, down2) = wire_bytes(&url).await?;
    let per = |bytes: u64, records: usize| bytes as f64 / records as f64;
    println!("initial sync of {n} records (~1 KiB JSON each), loopback, server = separate process");
    println!("  sealed envelope size per record: {:.0} B", per(sealed, n));
    println!(
        "  push A → server: {push_s:.2} s ({:.0} records/s), {:.0} B/record on the wire ({:.3} × sealed)",
        n as f64 / push_s,
        per(up, n),
        up as f64 / sealed as f64
    );
    println!(
        "  pull server → B: {pull_s:.2} s ({:.0} records/s), {:.0} B/record on the wire ({:.3} × sealed)",
        n as f64 / pull_s,
        per(down, n),
        down as f64 / sealed as f64
    );
    println!("  total: {:.2} s", push_s + pull_s);
    println!(
        "  peak memory during the sync: client process (A and B) {:.0} MiB, server process {:.0} MiB",
        client_hwm as f64 / 1048576.0,
        server_hwm as f64 / 1048576.0
    );
    println!(
        "1 % delta ({delta_n} records): {delta_s:.2} s, {} B up + {} B down = {:.2} % of the initial sync's bytes",
        up2 - up,
        down2 - down,
        100.0 * (up2 - up + down2 - down) as f64 / (up + down) as f64
    );
    drop(server);
    Ok(())
}

async fn concurrent(dir: &std::path::Path, clients: usize) -> Res<()> {
    let (server, url) = start_server(&dir.join("server-concurrent.db"))?;
    const ENVELOPES: u64 = 1000;
    const BATCH: u64 = 250;
    let mut accounts = Vec::new();
    for _ in 0..clients {
        accounts.push(HttpTransport::register_account(&url).await?.token);
    }
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (i, token) in accounts.into_iter().enumerate() {
        let t = http(&url, &token)?;
        tasks.push(tokio::spawn(async move {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let from = |d: u8| SpaceRef {
                space: SpaceId(id),
                device: DeviceId([d; 16]),
                fingerprint: [1; 32],
            };
            for b in 0..ENVELOPES / BATCH {
                let envelopes = (0..BATCH)
                    .map(|j| {
                        let seq = b * BATCH + j + 1;
                        let mut r = [0u8; 32];
                        r[..8].copy_from_slice(&seq.to_be_bytes());
                        OutgoingEnvelope {
                            record: RecordId(r),
                            seq,
                            supersedes: vec![],
                            tombstone: false,
                            envelope: vec![(seq % 251) as u8; 1100],
                        }
                    })
                    .collect();
                t.push(PushRequest {
                    from: from(1),
                    envelopes,
                    settle: None,
                })
                .await?;
            }
            let mut cursor = 0;
            let mut got = 0;
            loop {
                let page = t
                    .pull(PullRequest {
                        from: from(2),
                        cursor,
                        limit: 500,
                        include_own: false,
                    })
                    .await?;
                got += page.envelopes.len() as u64;
                cursor = page.next_cursor;
                if !page.more {
                    break;
                }
            }
            if got != ENVELOPES {
                return Err(sync_core::Error::internal(
                    "a client did not get its envelopes back",
                ));
            }
            Ok::<_, sync_core::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let s = t.elapsed().as_secs_f64();
    let total = clients as u64 * ENVELOPES;
    println!(
        "{clients} concurrent clients, each its own account: {total} envelopes of 1100 B pushed (batches of {BATCH}) and pulled back in {s:.2} s: {:.0} envelopes/s up+down, {:.0} requests/s; server peak memory {:.0} MiB",
        2.0 * total as f64 / s,
        (clients as u64 * (ENVELOPES / BATCH + ENVELOPES / 500 + 1)) as f64 / s,
        vm_hwm(server.0.id()) as f64 / 1048576.0
    );
    drop(server);
    Ok(())
}

#[tokio::main]
async fn main() -> Res<()> {
    let n = std::env::var("HEARTH_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let clients = std::env::var("HEARTH_BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir()?;
    initial_and_delta(dir.path(), n).await?;
    concurrent(dir.path(), clients).await?;
    Ok(())
}
