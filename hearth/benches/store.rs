//! Store benchmark: W1 put and W2 get of N ~1 KiB records through hearth, against raw SQLite
//! inserts and selects of the same bytes in the same run, for every storage × cipher
//! combination compiled in (sqlite / sqlcipher × orion / sodium).
//!
//! `cargo bench -p hearth --features bench,sqlcipher,sodium --bench store`
//! (N from `HEARTH_BENCH_N`, default 100,000; without `sqlcipher`/`sodium` only the combinations
//! compiled in run).

use hearth::bench::{BenchOptions, store_put_get};
use hearth::registry;

#[tokio::main]
async fn main() -> hearth::Result<()> {
    let n = std::env::var("HEARTH_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let opts = BenchOptions {
        n,
        ..BenchOptions::default()
    };
    let dir = tempfile::tempdir()
        .map_err(|e| hearth::Error::new(hearth::ErrorKind::Io, "tempdir").with_source(e))?;
    let storages = registry::storage_names();
    let ciphers = registry::cipher_names();
    let combos: Vec<(&str, &str)> = ["sqlite", "sqlcipher"]
        .into_iter()
        .flat_map(|s| ["orion", "sodium"].into_iter().map(move |c| (s, c)))
        .filter(|(s, c)| storages.contains(s) && ciphers.contains(c))
        .collect();
    println!(
        "{:<40} {:>9} {:>10} {:>12} {:>10} {:>7} {:>12}",
        "workload", "n", "seconds", "records/s", "baseline s", "ratio", "file bytes"
    );
    for (storage, cipher) in combos {
        // Each combination gets its own files and its own baselines, measured in the same run.
        let sub = dir.path().join(format!("{storage}-{cipher}"));
        std::fs::create_dir(&sub)
            .map_err(|e| hearth::Error::new(hearth::ErrorKind::Io, "bench dir").with_source(e))?;
        for r in store_put_get(&sub, storage, cipher, &opts).await? {
            println!(
                "{:<40} {:>9} {:>10.3} {:>12.0} {:>10.3} {:>7.2} {:>12}",
                r.workload, r.n, r.seconds, r.records_per_s, r.baseline_seconds, r.ratio, r.bytes
            );
        }
        std::fs::remove_dir_all(&sub).map_err(|e| {
            hearth::Error::new(hearth::ErrorKind::Io, "bench cleanup").with_source(e)
        })?;
    }
    Ok(())
}
