#!/bin/sh
# Reproduces the figures of docs/performance.md on this machine.
#
#   scripts/bench_report.sh [OUT_DIR]      (default: bench-out)
#
# Builds the release `hearth` once, then runs:
#   1. `hearth bench --n 100000` (W1 to W6) three times, JSON lines in all-N.jsonl;
#   2. W3 alone at N = 10,000, 30,000, 100,000, 300,000 and 1,000,000 (w3.jsonl), for the
#      plot and the 1,000,000 figure; the memory ratio is W3 at 1,000,000 against 100,000;
#   3. the plot: scripts/plot_w3.py w3.jsonl docs/w3.png (needs matplotlib).
# Each run's notes (bytes against their bounds, W6 details) go to the .notes files.
set -eu
out=${1:-bench-out}
mkdir -p "$out"
cargo build --release -p hearth --bin hearth
bin=target/release/hearth
for run in 1 2 3; do
    "$bin" --json bench --n 100000 >>"$out/all-100000.jsonl" 2>>"$out/all-100000.notes"
done
for n in 10000 30000 100000 300000 1000000; do
    "$bin" --json bench --workload W3 --n "$n" >>"$out/w3.jsonl" 2>>"$out/w3.notes"
done
python3 scripts/plot_w3.py "$out/w3.jsonl" docs/w3.png
