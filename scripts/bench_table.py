#!/usr/bin/env python3
"""Prints a Markdown table of `hearth --json bench` results (the median of repeated runs per
workload and N), as docs/performance.md shows them.

Usage: python3 scripts/bench_table.py results.jsonl [more.jsonl ...]
"""
import json
import statistics
import sys


def main() -> int:
    rows = {}
    order = []
    for path in sys.argv[1:]:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                r = json.loads(line)
                k = (r["workload"], r["n"])
                if k not in rows:
                    order.append(k)
                rows.setdefault(k, []).append(r)
    print("| workload | n | runs | seconds | records/s | bytes | peak RSS MiB | baseline s | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for k in order:
        rs = rows[k]
        med = lambda f: statistics.median(r[f] for r in rs)  # noqa: E731
        print(
            f"| {k[0]} | {k[1]:,} | {len(rs)} | {med('seconds'):.2f} | {med('records_per_s'):,.0f} "
            f"| {med('bytes'):,.0f} | {med('peak_rss_bytes') / 1048576:.0f} "
            f"| {med('baseline_seconds'):.2f} | **{med('ratio'):.2f}** |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
