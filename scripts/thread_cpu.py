#!/usr/bin/env python3
"""Samples the CPU time and the voluntary context switches (times it blocked) of each thread
of a running process until it exits, and prints each thread's share of a core over a window:
what showed, in docs/performance.md, which of B's threads (SQLite writer, engine, opening,
checkpointer) a pull keeps busy, and how often each waits.

Usage:
    python3 scripts/thread_cpu.py PID [INTERVAL_S] [FROM_S TO_S]

Reads /proc/PID/task/*/stat and status every INTERVAL_S (default 0.5) and, once PID has
exited, prints per thread (name, id) the CPU seconds, cores and voluntary context switches
between FROM_S and TO_S after the start of sampling (default: the whole time), busiest
first. Linux only; start it right after the process, e.g.
`hearth bench ... & python3 scripts/thread_cpu.py $!`.
"""
import os
import sys
import time


def snapshot(pid: int, tick: int) -> dict:
    threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="utf-8") as f:
                stat = f.read()
        except OSError:
            continue  # the thread ended between the listing and the read
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        switches = 0
        try:
            with open(f"/proc/{pid}/task/{tid}/status", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        switches = int(line.split()[1])
        except OSError:
            pass
        # utime and stime, fields 14 and 15 of stat(5), counted from the state field here
        threads[tid] = (name, (int(fields[11]) + int(fields[12])) / tick, switches)
    return threads


def main() -> int:
    if len(sys.argv) not in (2, 3, 5):
        print(__doc__, file=sys.stderr)
        return 2
    pid = int(sys.argv[1])
    interval = float(sys.argv[2]) if len(sys.argv) > 2 else 0.5
    window = (float(sys.argv[3]), float(sys.argv[4])) if len(sys.argv) == 5 else None
    tick = os.sysconf("SC_CLK_TCK")
    start = time.monotonic()
    samples = []
    while True:
        try:
            samples.append((time.monotonic() - start, snapshot(pid, tick)))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(interval)
    if len(samples) < 2:
        print("the process ended before two samples", file=sys.stderr)
        return 1
    lo, hi = window or (samples[0][0], samples[-1][0])
    inside = [s for s in samples if lo <= s[0] <= hi]
    if len(inside) < 2:
        print("fewer than two samples in the window", file=sys.stderr)
        return 1
    (t0, first), (t1, last) = inside[0], inside[-1]
    rows = []
    for tid, (name, cpu, switches) in last.items():
        _, cpu0, switches0 = first.get(tid, (name, 0.0, 0))
        rows.append((cpu - cpu0, switches - switches0, name, tid))
    print(f"{t1 - t0:.1f} s window; per thread: CPU seconds, cores, voluntary switches:")
    for used, switches, name, tid in sorted(rows, reverse=True):
        if used > 0 or switches > 0:
            print(f"{name:>16} {tid:>8} {used:8.2f} s {used / (t1 - t0):5.2f} {switches:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
