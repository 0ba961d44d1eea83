#!/bin/bash
# nbdsnap 4K random write benchmark (issue 14, targets 1 and 2).  Not a
# test: it never fails on a missed target, only on a broken setup.
#
#   bash bench/bench-randwrite.sh
#
# fio --ioengine=nbd over a Unix socket, 4K random write, iodepth 16,
# one connection (numjobs=1) and four (numjobs=4: fio's nbd engine opens
# one connection per job).  Configurations, interleaved, a fresh server
# and fresh state for every run:
#   file-bare   the file plugin on a BENCH_SIZE file in BENCH_TMPDIR
#   file-snap   --filter=snapshot, snapshot-dir on the same file system
#   file-full   --filter=freeze --filter=cbt --filter=snapshot (no point
#               open, cbt-dir and snapshot-dir on the same file system)
#   mem-*       the same three over the memory plugin (no target)
# Ratios are against the bare plugin of the same round.  Environment:
#   BENCH_SECONDS=5  BENCH_REPS=3  BENCH_SIZE=1G  BENCH_TMPDIR=/var/tmp
#   BENCH_CONFIGS="file-bare file-snap ..."  (default: all six)
#   BENCH_JOBS="1 4"
#   BENCH_MODES="fresh warm"  fresh: the timed run starts on a new
#               layer, so many writes are the first of their 64K block;
#               warm: the whole disk is written once (1M sequential)
#               first, so every block is already in the active layer
#   BENCH_BEFORE=DIR  another built tree (e.g. the previous commit): the
#               configurations file-snap0, file-full0, mem-snap0, mem-full0
#               run its filters, for before/after figures from one run
set -euo pipefail

top=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
SNAP=${SNAPSHOT_FILTER:-$top/filters/snapshot/.libs/nbdkit-snapshot-filter.so}
CBT=${CBT_FILTER:-$top/filters/cbt/.libs/nbdkit-cbt-filter.so}
FRZ=${FREEZE_FILTER:-$top/filters/freeze/.libs/nbdkit-freeze-filter.so}
SECS=${BENCH_SECONDS:-5}
REPS=${BENCH_REPS:-3}
SIZE=${BENCH_SIZE:-1G}
BASEDIR=${BENCH_TMPDIR:-/var/tmp}
CONFIGS=${BENCH_CONFIGS:-file-bare file-snap file-full mem-bare mem-snap mem-full}
JOBS=${BENCH_JOBS:-1 4}
MODES=${BENCH_MODES:-fresh warm}
export PATH=/usr/bin:$PATH

for f in "$SNAP" "$CBT" "$FRZ"; do
    [ -f "$f" ] || { echo "bench: $f not built" >&2; exit 1; }
done
tmp=$(mktemp -d "$BASEDIR/nbdsnap-rw.XXXXXX")
pid=
cleanup() {
    [ -n "$pid" ] && { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
    rm -rf "$tmp"
}
trap cleanup EXIT
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

start() {   # start CONFIG
    local c=$1 plugin filters=()
    rm -rf "$tmp/state" "$tmp/disk.img" "$tmp/s.sock" "$tmp/s.pid"
    mkdir -p "$tmp/state/freeze"
    case $c in
        file-*) truncate -s "$SIZE" "$tmp/disk.img"; plugin=(file "$tmp/disk.img") ;;
        mem-*)  plugin=(memory "$SIZE") ;;
    esac
    local s=$SNAP cb=$CBT fz=$FRZ
    case $c in
        *0) b=${BENCH_BEFORE:?BENCH_BEFORE is not set}
            s=$b/filters/snapshot/.libs/nbdkit-snapshot-filter.so
            cb=$b/filters/cbt/.libs/nbdkit-cbt-filter.so
            fz=$b/filters/freeze/.libs/nbdkit-freeze-filter.so ;;
    esac
    case $c in
        *-bare) ;;
        *-snap*) filters=(--filter="$s") ;;
        *-full*) filters=(--filter="$fz" --filter="$cb" --filter="$s") ;;
    esac
    local params=()
    case $c in
        *-snap*) params=(snapshot-dir="$tmp/state/snap") ;;
        *-full*) params=(snapshot-dir="$tmp/state/snap" cbt-dir="$tmp/state/cbt"
                        freeze-dir="$tmp/state/freeze") ;;
    esac
    nbdkit -f -U "$tmp/s.sock" -P "$tmp/s.pid" "${filters[@]}" "${plugin[@]}" \
        "${params[@]}" 2>>"$tmp/nbdkit.log" &
    pid=$!
    for _ in $(seq 200); do
        [ -s "$tmp/s.pid" ] && return 0
        kill -0 "$pid" 2>/dev/null || { cat "$tmp/nbdkit.log" >&2; exit 1; }
        sleep 0.05
    done
    echo "bench: nbdkit did not start" >&2; exit 1
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }

# iops JOBS: 4K random write qd16 with JOBS connections, total IOPS.
iops() {
    fio --name=rw --ioengine=nbd --uri="nbd+unix:///?socket=$tmp/s.sock" \
        --rw=randwrite --bs=4k --iodepth=16 --numjobs="$1" --group_reporting \
        --norandommap --randrepeat=0 --time_based --runtime="$SECS" \
        --ramp_time=1 --output-format=json --output="$tmp/fio.json" >/dev/null
    python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
if j.get("error"): sys.exit("fio error %s" % j["error"])
print("%.0f" % j["write"]["iops"])' "$tmp/fio.json"
}

declare -A R
log "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg); $SIZE, $SECS s, $REPS rounds"
fill() {
    fio --name=fill --ioengine=nbd --uri="nbd+unix:///?socket=$tmp/s.sock" \
        --rw=write --bs=1M --iodepth=16 --output="$tmp/fill.txt" >/dev/null
}
for round in $(seq "$REPS"); do
    for m in $MODES; do
        for j in $JOBS; do
            for c in $CONFIGS; do
                start "$c"
                [ "$m" = warm ] && fill
                v=$(iops "$j")
                stop
                R[$m,$c,$j]="${R[$m,$c,$j]:-} $v"
                log "round $round, $m, $c, $j conn: $v IOPS"
            done
        done
    done
done
log "load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
printf '%-6s %-10s %5s %10s %7s   %s\n' mode config conns "IOPS(med)" ratio "rounds (IOPS / ratio to the bare plugin of the same round)"
for m in $MODES; do
for j in $JOBS; do
    for c in $CONFIGS; do
        base=${c%%-*}-bare
        vals=(${R[$m,$c,$j]}) bvals=(${R[$m,$base,$j]:-})
        ratios=() detail=
        for i in "${!vals[@]}"; do
            if [ -n "${bvals[$i]:-}" ]; then
                r=$(awk -v a="${vals[$i]}" -v b="${bvals[$i]}" 'BEGIN {printf "%.2f", a/b}')
                ratios+=("$r"); detail+=" ${vals[$i]}/$r"
            else detail+=" ${vals[$i]}"; fi
        done
        med=$(echo "${vals[*]}" | median)
        mr=$( [ ${#ratios[@]} -gt 0 ] && echo "${ratios[*]}" | median || echo -)
        printf '%-6s %-10s %5s %10s %7s  %s\n' "$m" "$c" "$j" "$med" "$mr" "$detail"
    done
done
done
