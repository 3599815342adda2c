#!/usr/bin/env python3
"""Plots W3 (initial sync) time and peak memory against N, from `hearth bench` JSON lines.

Usage (scripts/bench_report.sh runs this):
    for n in 10000 30000 100000 300000 1000000; do
        target/release/hearth --json bench --workload W3 --n $n
    done > w3.jsonl
    python3 scripts/plot_w3.py w3.jsonl docs/w3.png

Where an N was run more than once, the median of its runs is plotted. The memory figure is the
process's peak resident memory during the sync (server, both devices and their SQLite caches:
all in one process), reset before W3 starts.

Needs matplotlib (`pip install matplotlib`). Each input line is one workload object as
`hearth bench --json` prints it; lines of other workloads are ignored.
"""
import json
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    rows = []
    with open(sys.argv[1], encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            if r.get("workload", "").startswith("W3"):
                rows.append(r)
    if not rows:
        print("no W3 rows in the input", file=sys.stderr)
        return 1
    by_n = {}
    for r in rows:
        by_n.setdefault(r["n"], []).append(r)
    n = sorted(by_n)
    secs = [statistics.median(r["seconds"] for r in by_n[k]) for k in n]
    rss = [statistics.median(r["peak_rss_bytes"] for r in by_n[k]) / (1024 * 1024) for k in n]
    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax1.plot(n, secs, "o-", color="tab:blue", label="seconds")
    ax1.set_xlabel("records (N)")
    ax1.set_ylabel("initial sync, seconds", color="tab:blue")
    ax1.set_xscale("log")
    ax2 = ax1.twinx()
    ax2.plot(n, rss, "s--", color="tab:red", label="peak RSS")
    ax2.set_ylabel("peak resident memory, MiB", color="tab:red")
    ax2.set_ylim(bottom=0)
    plt.title("W3 initial sync: time and memory against N")
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
