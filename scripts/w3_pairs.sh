#!/bin/sh
# Compares release builds of `hearth` on W3 (initial sync over HTTP), run alternated, one
# process per run: the reference machine's speed drifts by 2x by the hour, so only runs next
# to each other compare (docs/performance.md).
#
#   scripts/w3_pairs.sh N ROUNDS BIN [BIN ...]
#
# Each round runs every BIN once, in the order given, with
# `BIN --json bench --workload W3 --n N --sync-page 4000 $W3_ARGS` in a fresh temporary
# directory (set W3_ARGS for more, e.g. W3_ARGS="--sync-apply-mib 32"), under GNU time
# (/usr/bin/time, Debian's `time` package) when it is there. Copy each build aside first
# (`cp target/release/hearth /tmp/hearth-a`): a rebuild while runs go on changes what runs,
# and a build beside a run slows it. One line per run:
#
#   BIN round W3 s | raw baseline s | A's push s | B's pull s | server answering push/pull s | user/sys CPU s | peak RSS MiB
#
# The JSON line and the notes of each run are kept in $W3_OUT (default ./w3-pairs) as
# <bin name>-<round>.json and .err.
set -eu
if [ $# -lt 3 ]; then
    sed -n '2,19p' "$0"
    exit 2
fi
n=$1
rounds=$2
shift 2
out=${W3_OUT:-w3-pairs}
mkdir -p "$out"
out=$(cd "$out" && pwd)
# Runs the command given under GNU time when there is one (CPU and peak RSS in the notes).
timed() {
    if [ -x /usr/bin/time ]; then
        /usr/bin/time -f "TIME %U %S %M" "$@"
    else
        "$@"
    fi
}
round=1
while [ "$round" -le "$rounds" ]; do
    for bin in "$@"; do
        bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
        label=$(basename "$bin")-$round
        dir=$(mktemp -d)
        # shellcheck disable=SC2086 # W3_ARGS is a word list
        (cd "$dir" && timed "$bin" --json bench --workload W3 --n "$n" --sync-page 4000 \
            ${W3_ARGS:-} >"$out/$label.json" 2>"$out/$label.err")
        rm -rf "$dir"
        python3 - "$out/$label.json" "$out/$label.err" "$label" <<'EOF'
import json, re, sys
first = json.loads(open(sys.argv[1], encoding="utf-8").readline())
notes = open(sys.argv[2], encoding="utf-8").read()
push = re.search(r"A's push took ([0-9.]+) s", notes)
server = re.search(r"spent ([0-9.]+) s answering pushes and ([0-9.]+) s answering pulls", notes)
cpu = re.search(r"^TIME ([0-9.]+) ([0-9.]+) ([0-9]+)", notes, re.M)
w3 = first["seconds"]
cols = [sys.argv[3], f"W3 {w3:.2f}", f"raw {first['baseline_seconds']:.2f}"]
if push:
    cols += [f"push {float(push[1]):.2f}", f"pull {w3 - float(push[1]):.2f}"]
if server:
    cols.append(f"server {server[1]}/{server[2]}")
if cpu:
    cols += [f"cpu {cpu[1]}/{cpu[2]}", f"rss {int(cpu[3]) // 1024} MiB"]
else:
    cols.append(f"rss {first['peak_rss_bytes'] // (1024 * 1024)} MiB")
print(" | ".join(cols))
EOF
    done
    round=$((round + 1))
done
