//! Store benchmark: W1 put and W2 get of N ~1 KiB records through hearth, against raw SQLite
//! inserts and selects of the same bytes in the same run.
//!
//! `cargo bench -p hearth --features bench --bench store` (N from `HEARTH_BENCH_N`, default 100,000).

use hearth::bench::{BenchOptions, store_put_get, sync_mock};

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
    println!(
        "{:<36} {:>9} {:>10} {:>12} {:>10} {:>7}",
        "workload", "n", "seconds", "records/s", "baseline s", "ratio"
    );
    let mut results = store_put_get(dir.path(), "sqlite", "orion", &opts).await?;
    let (sync, bytes) = sync_mock(dir.path(), &opts).await?;
    results.extend(sync);
    for r in results {
        println!(
            "{:<36} {:>9} {:>10.3} {:>12.0} {:>10.3} {:>7.2}",
            r.workload, r.n, r.seconds, r.records_per_s, r.baseline_seconds, r.ratio
        );
    }
    println!(
        "sync bytes: initial {} (lower bound {}, ratio {:.3}); 1% delta {} ({:.2}% of initial)",
        bytes.initial,
        bytes.sealed_lower_bound,
        bytes.initial as f64 / bytes.sealed_lower_bound as f64,
        bytes.delta,
        100.0 * bytes.delta as f64 / bytes.initial as f64
    );
    Ok(())
}
