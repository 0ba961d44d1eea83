#!/bin/bash
# nbdsnap cbt filter benchmark (not a test: it never fails on a missed
# target, only on a broken setup).
#
#   bash bench/bench-cbt.sh
#
# Everything runs on nbdkit's memory plugin so that the numbers measure
# the filter, not a disk (cbt-dir itself is on BENCH_TMPDIR, a real file
# system, because strict mode's cost is its fdatasync).  Environment:
#   BENCH_SIZE=2G          memory plugin size (three servers: 3x this RAM)
#   BENCH_RAND=512M        region written by a 4K random pass
#   BENCH_SEQ=2G           region written by a 1M sequential pass
#   BENCH_REPS=5           rounds (the table shows medians)
#   BENCH_TMPDIR=/var/tmp  where cbt-dir lives
#   CBT_FILTER=...         filter .so (default: the one built in this tree)
#
# fio --ioengine=nbd (libnbd, one connection, iodepth 16).  Three servers
# run side by side: no filter, cbt-sync=flush, cbt-sync=strict (default
# cbt-granularity 64K).  Each is first filled once, so that the memory
# plugin's own first-write cost is out of the picture.  Then, per round
# and workload, each server in turn (the order rotates every round):
#   first-touch  a fresh checkpoint is created (the previous one deleted),
#                then one pass writes every block of the region exactly
#                once (fio's random map): the bitmap bits are all clear
#                (4K writes: one write in 16 sets a new bit; 1M writes:
#                every write sets 16);
#   re-dirty     the same pass again: every bit is already set.
# The no-filter server runs the same passes (no checkpoint).  Ratios are
# per round against the no-filter pass of the same round and workload;
# the table shows their median and range (the range tells how noisy the
# machine was).

set -euo pipefail

top=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
FILTER=${CBT_FILTER:-$top/filters/cbt/.libs/nbdkit-cbt-filter.so}
SIZE=${BENCH_SIZE:-2G}
RAND=${BENCH_RAND:-512M}
SEQ=${BENCH_SEQ:-2G}
REPS=${BENCH_REPS:-5}
BASEDIR=${BENCH_TMPDIR:-/var/tmp}

[ -f "$FILTER" ] || { echo "bench: $FILTER not built; run make first" >&2; exit 1; }
for p in nbdkit fio nbdsh; do
    command -v $p >/dev/null || { echo "bench: $p is not installed" >&2; exit 1; }
done
export PATH=/usr/bin:$PATH
PY=/usr/bin/python3

tmp=$(mktemp -d "$BASEDIR/nbdsnap-bench-cbt.XXXXXX")
declare -A PIDS=() LAST=()
cleanup() {
    local c
    for c in "${!PIDS[@]}"; do
        kill "${PIDS[$c]}" 2>/dev/null || true
        wait "${PIDS[$c]}" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
sock() { echo "$tmp/$1.sock"; }

# start CONFIG NBDKIT-ARGS...: a server on $tmp/CONFIG.sock.
start() {
    local c=$1; shift
    nbdkit -f -U "$(sock "$c")" -P "$tmp/$c.pid" "$@" 2>>"$tmp/nbdkit.log" &
    PIDS[$c]=$!
    for _ in $(seq 200); do
        [ -s "$tmp/$c.pid" ] && [ -S "$(sock "$c")" ] && return 0
        if ! kill -0 "${PIDS[$c]}" 2>/dev/null; then
            echo "bench: nbdkit $* failed to start:" >&2
            cat "$tmp/nbdkit.log" >&2
            exit 1
        fi
        sleep 0.05
    done
    echo "bench: nbdkit did not start" >&2; exit 1
}

# cmd CONFIG EXPORT: run a cbt command, require ok.
cmd() {
    nbdsh -u "nbd+unix:///$2?socket=$(sock "$1")" \
        -c 'import json; j = json.loads(h.pread(h.get_size(), 0))' \
        -c 'assert j["ok"], j'
}

# cputicks CONFIG: user+system CPU ticks of that nbdkit (all threads,
# including those of finished connections).
cputicks() { awk '{ print $14 + $15 }' "/proc/${PIDS[$1]}/stat"; }

# pass CONFIG RW BS REGION: one fio pass; prints "MB/s IOPS CPU-us/IO"
# (the last is nbdkit's CPU time per write: robust against a busy machine,
# unlike throughput).
pass() {
    local c0
    c0=$(cputicks "$1")
    fio --name=bench --ioengine=nbd --uri="nbd+unix:///?socket=$(sock "$1")" \
        --rw="$2" --bs="$3" --size="$4" --iodepth=16 --randrepeat=0 \
        --output-format=json --output="$tmp/fio.json" >/dev/null
    $PY -c '
import json, sys, os
j = json.load(open(sys.argv[1]))["jobs"][0]
if j.get("error"):
    sys.exit("fio error %s" % j["error"])
ticks = int(sys.argv[3]) - int(sys.argv[2])
us = ticks * 1e6 / os.sysconf("SC_CLK_TCK") / j["write"]["total_ios"]
print("%.1f %.0f %.2f" % (j["write"]["bw_bytes"] / 1e6, j["write"]["iops"], us))' \
        "$tmp/fio.json" "$c0" "$(cputicks "$1")"
}

res=$tmp/results.txt
: > "$res"
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
load0=$(loadavg)
t0=$(date +%s)
log "machine: $(nproc) CPUs, $(uname -r), $(nbdkit --version), load $load0"
log "memory $SIZE, random region $RAND, sequential region $SEQ, $REPS rounds, cbt-dir on $BASEDIR"

start none memory "$SIZE"
start flush --filter="$FILTER" memory "$SIZE" cbt-dir="$tmp/cbt-flush" cbt-sync=flush
start strict --filter="$FILTER" memory "$SIZE" cbt-dir="$tmp/cbt-strict" cbt-sync=strict
for c in none flush strict; do
    log "filling $c"
    pass $c write 1M "$SIZE" >/dev/null
done

configs=(none flush strict)
n=0
for round in $(seq "$REPS"); do
    for w in rw4k sw1m; do
        for k in 0 1 2; do
            c=${configs[(k + round) % 3]}
            n=$((n + 1))
            if [ $c != none ]; then
                cmd $c "@cbt:create/b$n" >/dev/null
                [ -z "${LAST[$c]:-}" ] || cmd $c "@cbt:delete/${LAST[$c]}" >/dev/null
                LAST[$c]=b$n
            fi
            for p in first redirty; do
                if [ $w = rw4k ]; then r=$(pass $c randwrite 4k "$RAND")
                else r=$(pass $c write 1M "$SEQ"); fi
                echo "$round $w $c $p $r" >> "$res"
                log "round $round $w $c $p: $r (MB/s IOPS CPU-us/IO)"
            done
        done
    done
done
t1=$(date +%s)
load1=$(loadavg)

$PY - "$res" <<'EOF'
import sys, statistics as s
rows = [l.split() for l in open(sys.argv[1])]
R = {}
for rnd, w, c, p, mbs, iops, us in rows:
    R.setdefault((w, c, p), {})[int(rnd)] = (float(mbs), float(iops), float(us))
names = {"rw4k": "4K random write", "sw1m": "1M sequential write"}
cname = {"none": "no filter", "flush": "cbt flush", "strict": "cbt strict"}
print("| workload (QD16) | pass | config | MB/s | IOPS | throughput vs no filter: median (min..max) | nbdkit CPU us/write | CPU vs no filter |")
print("|---|---|---|---:|---:|---|---:|---:|")
summary = []
for w in ("rw4k", "sw1m"):
    for p in ("first", "redirty"):
        base = R[(w, "none", p)]
        for c in ("none", "flush", "strict"):
            d = R[(w, c, p)]
            mb = s.median(v[0] for v in d.values())
            io = s.median(v[1] for v in d.values())
            us = s.median(v[2] for v in d.values())
            cr = s.median(d[k][2] / base[k][2] for k in d if k in base and base[k][2] > 0)
            if c == "none":
                rat = "1"
            else:
                rs = [d[k][0] / base[k][0] for k in d if k in base]
                rat = "%.3f (%.3f..%.3f)" % (s.median(rs), min(rs), max(rs))
                if c == "flush":
                    summary.append((w, p, s.median(rs)))
            print("| %s | %s | %s | %.1f | %.0f | %s | %.2f | %s |" % (
                names[w], "first-touch" if p == "first" else "re-dirty",
                cname[c], mb, io, rat, us, "1" if c == "none" else "%.2f" % cr))
print()
print("Target: cbt flush within 3% of no filter (median ratio >= 0.97):")
for w, p, r in summary:
    print("  %s, %s: %.3f %s" % (names[w], "first-touch" if p == "first" else "re-dirty",
                                 r, "met" if r >= 0.97 else "MISSED"))
EOF
echo
echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, $(uname -r)"
echo "$(nbdkit --version), $(fio --version), cbt-dir on $(df -T "$BASEDIR" | awk 'NR==2 {print $2}') ($BASEDIR)"
echo "memory $SIZE, random region $RAND, sequential region $SEQ, $REPS rounds"
echo "load average before $load0, after $load1; $((t1 - t0)) s total"
