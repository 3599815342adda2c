//! How long each commit takes on an encrypted store file: 400 batches (`HEARTH_BENCH_N`) of
//! 1000 puts of ~1.1 KiB under random ids, as a pulled page or a large local write commits
//! them. Prints the total and the distribution of commit times (p50, p90, p99, max): a WAL
//! checkpoint run inside a commit shows in the tail, one run beside the commits in neither.
//!
//! `cargo bench -p backend-sqlcipher --bench commit_latency`

use std::time::Instant;

use backend_sqlcipher::SqlcipherStorage;
use sync_core::{Batch, CollectionId, RecordId, SecretKey, Storage, StoredRecord};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let batches: u32 = std::env::var("HEARTH_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let dir = tempfile::tempdir()?;
    let store = SqlcipherStorage::open(
        dir.path().join("commits.db"),
        true,
        &SecretKey::from_bytes([1; 32]),
    )
    .await?;
    let mut millis = Vec::new();
    let started = Instant::now();
    for b in 0..batches {
        let mut batch = Batch::default();
        for i in 0..1000u32 {
            let n = b * 1000 + i;
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&n.wrapping_mul(2_654_435_761).to_be_bytes());
            id[4..8].copy_from_slice(&n.to_be_bytes());
            batch.puts.push(StoredRecord {
                id: RecordId(id),
                collection: CollectionId([3; 32]),
                envelope: vec![(n % 251) as u8; 1100],
                deleted: false,
                pending_seq: Some(u64::from(n) + 1),
                sync: vec![0; 40],
            });
        }
        let t = Instant::now();
        store.commit(batch).await?;
        millis.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let total = started.elapsed().as_secs_f64();
    store.close().await?;
    millis.sort_by(f64::total_cmp);
    let at = |q: f64| millis[((millis.len() - 1) as f64 * q) as usize];
    println!(
        "{batches} commits of 1000 puts (sqlcipher): {total:.2} s; commit ms p50 {:.1}, p90 {:.1}, p99 {:.1}, max {:.1}",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
    Ok(())
}
