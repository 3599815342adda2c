//! The benchmark workloads run end to end at a small N: every workload verifies its own results
//! (B holds every record of A, deltas arrive, conflicts converge, no deleted record returns),
//! so a wrong result fails the run and these tests.

use assert_cmd::Command;
use hearth::bench::{self, BenchOptions, SyncWorkloads};

#[test]
fn the_dataset_is_a_pure_function_of_seed_and_index() {
    let opts = BenchOptions {
        n: 10,
        ..BenchOptions::default()
    };
    let (k, v) = bench::record(&opts, 7);
    assert_eq!(k, "doc-00000007");
    assert_eq!((k.clone(), v.clone()), bench::record(&opts, 7));
    assert_ne!(v, bench::record(&opts, 8).1);
    let other = BenchOptions { seed: 43, ..opts };
    assert_ne!(v, bench::record(&other, 7).1);
    let size = serde_json::to_vec(&v).expect("json").len();
    assert!((900..1200).contains(&size), "record of {size} bytes");
    assert_eq!(bench::records(&opts, 3..6).count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_workloads_run_through_the_server_and_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = BenchOptions {
        n: 300,
        batch: 100,
        ..BenchOptions::default()
    };
    let out = bench::sync_workloads(
        dir.path(),
        &opts,
        SyncWorkloads {
            delta: true,
            conflicts: true,
            long_offline: true,
        },
    )
    .await
    .expect("every workload verifies");
    let names: Vec<&str> = out.results.iter().map(|r| &r.workload[..2]).collect();
    assert_eq!(names, ["W3", "W3", "W4", "W5", "W6"]);
    // W3 against both raw baselines: per-row and multi-row inserts of the same plaintext.
    assert_eq!(
        out.results[1].workload,
        "W3 initial sync vs multi-row (http)"
    );
    assert_eq!(out.results[1].seconds, out.results[0].seconds);
    assert!(out.results[1].baseline_seconds > 0.0 && out.results[0].baseline_seconds > 0.0);
    // Bytes went over real HTTP: at least the sealed envelopes, up and down.
    assert!(out.bytes.initial >= out.bytes.sealed_lower_bound);
    assert!(out.bytes.sealed_lower_bound > 2 * 300 * 1000);
    assert!(out.bytes.delta > 0 && out.bytes.delta < out.bytes.initial / 10);
    let w6 = out.long_offline.expect("W6 details");
    assert_eq!(w6.offline_edits, 30_000);
    assert!(w6.deleted_checked > 0);
    assert!(w6.envelopes_moved >= w6.envelopes_floor);
}

/// Runs `hearth --json bench` with `args`, which must succeed: its rows (one JSON object a
/// line) and its stderr.
fn bench_json(args: &[&str]) -> (Vec<serde_json::Value>, String) {
    let out = Command::cargo_bin("hearth")
        .expect("binary")
        .args(["--json", "bench"])
        .args(args)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "bench failed: {stderr}");
    let rows = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    (rows, stderr)
}

#[test]
fn hearth_bench_prints_one_json_object_per_workload() {
    let (rows, stderr) = bench_json(&["--n", "200", "--memory-ratio"]);
    let names: Vec<String> = rows
        .iter()
        .map(|r| r["workload"].as_str().expect("workload").to_owned())
        .collect();
    for w in ["W1", "W2", "W3", "W4", "W5", "W6"] {
        assert!(
            names.iter().any(|n| n.starts_with(w)),
            "{w} missing: {names:?}"
        );
    }
    assert!(names.iter().any(|n| n.ends_with("10xN")), "{names:?}");
    let big = rows
        .iter()
        .find(|r| r["workload"].as_str().is_some_and(|n| n.ends_with("10xN")));
    assert_eq!(big.expect("10xN row")["n"], 2000);
    for r in &rows {
        for field in [
            "n",
            "seconds",
            "records_per_s",
            "bytes",
            "peak_rss_bytes",
            "baseline_seconds",
            "ratio",
        ] {
            assert!(r[field].is_number(), "{field} in {r}");
        }
    }
    assert!(stderr.contains("lower bound"), "{stderr}");
    assert!(stderr.contains("memory: W3 peak RSS"), "{stderr}");
}

#[test]
fn an_unknown_workload_is_refused() {
    Command::cargo_bin("hearth")
        .expect("binary")
        .args(["bench", "--n", "10", "--workload", "W9"])
        .assert()
        .failure();
}

#[test]
fn the_sync_workloads_run_on_the_cipher_given_and_say_so() {
    let (rows, _) = bench_json(&["--n", "200", "--workload", "W3", "--cipher", "sodium"]);
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["workload"].as_str().expect("workload"))
        .collect();
    assert_eq!(
        names,
        [
            "W3 initial sync (http, sodium)",
            "W3 initial sync vs multi-row (http, sodium)"
        ]
    );
}

#[test]
fn an_unknown_cipher_is_refused_before_anything_runs() {
    let out = Command::cargo_bin("hearth")
        .expect("binary")
        .args([
            "bench",
            "--n",
            "10",
            "--workload",
            "W3",
            "--cipher",
            "rot13",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rot13"), "{stderr}");
}
