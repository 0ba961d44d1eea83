#!/bin/bash
# nbdsnap freeze filter benchmark (not a test: it never fails on a missed
# target, only on a broken setup).
#
#   bash bench/bench-freeze.sh
#
# Everything runs on nbdkit's memory plugin, filled with data first, so
# that the numbers measure the filter, not a disk.  fio --ioengine=nbd
# (libnbd, one connection, iodepth 16), 4K random writes; each write pass
# covers a region of BENCH_REGION bytes once, in random order (fio's random
# map: every 4K block exactly once), and reports IOPS and the nbdkit
# server's CPU time per request (robust when the host is shared):
#   (a) nbdkit memory, no filter
#   (b) --filter=freeze, no frozen point
#   (c) --filter=freeze right after @freeze:begin: the first overwrite of
#       frozen blocks (each freeze block is saved on its first write)
#   (d) the same pass again with the point still held (nothing to save)
#   (a') control: nbdkit memory with one pass-through filter (noextents)
# and reads, with the point held (so BENCH_REGION of it is in scratch):
#   nbdcopy of @freeze/NAME vs of the live disk to null:, MB/s
#   fio 4K random read of @freeze/NAME vs of the live disk, timed, IOPS.
# Two freeze servers: freeze-block-size=64K (the default) and 4K (every
# write of (c) saves a block: the worst case).  The machine may be shared:
# every freeze write pass is paired with plain passes just before and
# after it, and every view read with live reads next to it; the reported
# percentages are medians over BENCH_REPS rounds of those ratios.
# Environment overrides:
#   BENCH_SIZE=1G        memory plugin size
#   BENCH_REGION=256M    bytes covered by each write pass
#   BENCH_REPS=5         rounds
#   BENCH_SECONDS=1      duration of each timed random-read run
#   BENCH_TMPDIR=/var/tmp  where freeze-dir (the scratch files) lives
#   BENCH_OUT=FILE       also write the markdown table to FILE
#   FREEZE_FILTER=...    filter .so (default: the one built in this tree)

set -euo pipefail

top=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
FILTER=${FREEZE_FILTER:-$top/filters/freeze/.libs/nbdkit-freeze-filter.so}
SIZE=${BENCH_SIZE:-1G}
REGION=${BENCH_REGION:-256M}
REPS=${BENCH_REPS:-5}
SECS=${BENCH_SECONDS:-1}
BASEDIR=${BENCH_TMPDIR:-/var/tmp}
OUT=${BENCH_OUT:-}

[ -f "$FILTER" ] || { echo "bench: $FILTER not built; run make first" >&2; exit 1; }
for p in nbdkit fio nbdcopy; do
    command -v $p >/dev/null || { echo "bench: $p is not installed" >&2; exit 1; }
done
export PATH=/usr/bin:$PATH
PY=/usr/bin/python3

tmp=$(mktemp -d "$BASEDIR/nbdsnap-bench-freeze.XXXXXX")
declare -A PIDS
cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
uri() { echo "nbd+unix:///${2:-}?socket=$tmp/$1.sock"; }

start_server() {
    local name=$1; shift
    nbdkit -f -U "$tmp/$name.sock" -P "$tmp/$name.pid" "$@" 2>>"$tmp/nbdkit.log" &
    PIDS[$name]=$!
    for _ in $(seq 200); do
        [ -s "$tmp/$name.pid" ] && return 0
        if ! kill -0 "${PIDS[$name]}" 2>/dev/null; then
            echo "bench: nbdkit $* failed to start:" >&2
            cat "$tmp/nbdkit.log" >&2
            exit 1
        fi
        sleep 0.05
    done
    echo "bench: nbdkit did not start" >&2; exit 1
}

# cmd SERVER EXPORT: run a freeze command, fail unless "ok":true.
cmd() {
    $PY - "$(uri "$1" "$2")" <<'EOF'
import json, sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
r = json.loads(h.pread(h.get_size(), 0).decode()); h.shutdown()
if not r.get("ok"):
    sys.exit("bench: %s failed: %s" % (sys.argv[1], r))
EOF
}

# cpu_ticks SERVER: utime+stime of the nbdkit process (all threads).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/${PIDS[$1]}/stat"; }
HZ=$(getconf CLK_TCK)

# fio_run SERVER EXPORT RW SIZE [timed]: 4K I/O with fio; prints
# "IOPS CPU-US-PER-IO" (the server's CPU time, user+system, per request).
fio_run() {
    local srv=$1 u rw=$3 size=$4 args=() c0 c1
    u=$(uri "$1" "$2")
    [ "${5:-}" = timed ] && args=(--time_based --runtime="$SECS" --norandommap --randrepeat=0)
    c0=$(cpu_ticks "$srv")
    fio --name=bench --ioengine=nbd --uri="$u" --rw="$rw" --bs=4k \
        --iodepth=16 --size="$size" "${args[@]}" \
        --output-format=json --output="$tmp/fio.json" >/dev/null
    c1=$(cpu_ticks "$srv")
    $PY - "$tmp/fio.json" "$rw" "$((c1 - c0))" "$HZ" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
if j.get("error"):
    sys.exit("fio error %s" % j["error"])
k = j["read" if "read" in sys.argv[2] else "write"]
n = k["total_ios"]
print("%.0f %.2f" % (k["iops"], int(sys.argv[3]) / int(sys.argv[4]) * 1e6 / max(n, 1)))
EOF
}

# copy_mbs SERVER EXPORT: nbdcopy to null:, print MB/s (10^6 B/s).
copy_mbs() {
    local t0 t1
    t0=$(date +%s.%N)
    nbdcopy "$(uri "$1" "$2")" null:
    t1=$(date +%s.%N)
    awk -v b="$BYTES" -v a="$t0" -v z="$t1" 'BEGIN { printf "%.0f\n", b / (z - a) / 1e6 }'
}

median() { tr ' ' '\n' | grep . | sort -g | awk '{ a[NR] = $1 } END { printf "%.0f\n", (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
declare -A R
add() { R[$1]="${R[$1]:-}${R[$1]:+ }$2"; }

start_server plain memory "$SIZE"
# A control: one pass-through nbdkit filter (noextents changes extents
# only), to tell the cost of a filter layer from the freeze filter's own.
start_server nox --filter=noextents memory "$SIZE"
mkdir "$tmp/f64" "$tmp/f4"
start_server f64 --filter="$FILTER" memory "$SIZE" freeze-dir="$tmp/f64"
start_server f4 --filter="$FILTER" memory "$SIZE" freeze-dir="$tmp/f4" \
    freeze-block-size=4K
BYTES=$($PY -c "import nbd,sys; h=nbd.NBD(); h.connect_uri(sys.argv[1]); print(h.get_size())" "$(uri plain)")
for s in plain nox f64 f4; do
    log "$s: filling the disk"
    fio --name=fill --ioengine=nbd --uri="$(uri "$s")" --rw=write --bs=1M \
        --iodepth=16 --size="$SIZE" --output="$tmp/fill.out" >/dev/null
done

t_start=$(date +%s)
load0=$(cut -d' ' -f1-3 /proc/loadavg)
# The machine may be shared: each freeze pass is compared with the plain
# passes just before and after it, (a) = their mean; each view read with
# the live reads next to it.  Reported: medians over the rounds.
ratio() { awk -v x="$1" -v a="$2" -v b="$3" 'BEGIN { printf "%.3f\n", 2 * x / (a + b) }'; }
# pass NAME SERVER [EXPORT RW SIZE timed]: run fio, record IOPS and CPU.
declare -A IOPS CPU
pass() {
    local r
    r=$(fio_run "$2" "${3:-}" "${4:-randwrite}" "${5:-$REGION}" "${6:-}")
    IOPS[$1]=${r% *}; CPU[$1]=${r#* }
}
for ((round = 1; round <= REPS; round++)); do
    for s in f64 f4; do
        log "round $round, $s: write passes (a) (a') (b) (c) (d) (a)"
        pass a1 plain; pass n nox; pass b "$s"
        cmd "$s" "@freeze:begin/P$round"
        pass c "$s"; pass d "$s"; pass a2 plain
        add a "${IOPS[a1]} ${IOPS[a2]}"; add cpu,a "${CPU[a1]} ${CPU[a2]}"
        add nox "${IOPS[n]}"; add cpu,nox "${CPU[n]}"
        add "$s,nox/a" "$(ratio "${IOPS[n]}" "${IOPS[a1]}" "${IOPS[a2]}")"
        add "$s,cpu,nox/a" "$(ratio "${CPU[n]}" "${CPU[a1]}" "${CPU[a2]}")"
        for x in b c d; do
            add "$s,$x" "${IOPS[$x]}"; add "$s,cpu,$x" "${CPU[$x]}"
            add "$s,$x/a" "$(ratio "${IOPS[$x]}" "${IOPS[a1]}" "${IOPS[a2]}")"
            add "$s,cpu,$x/a" "$(ratio "${CPU[$x]}" "${CPU[a1]}" "${CPU[a2]}")"
        done
        log "round $round, $s: reads, view vs live"
        v1=$(copy_mbs "$s" "@freeze/P$round"); l=$(copy_mbs "$s" ""); v2=$(copy_mbs "$s" "@freeze/P$round")
        add "$s,copyview" "$v1 $v2"; add "$s,copylive" "$l"
        add "$s,copy_v/l" "$(awk -v a="$v1" -v b="$v2" -v l="$l" 'BEGIN { printf "%.3f\n", (a + b) / 2 / l }')"
        pass v1 "$s" "@freeze/P$round" randread "$SIZE" timed
        pass l "$s" "" randread "$SIZE" timed
        pass v2 "$s" "@freeze/P$round" randread "$SIZE" timed
        add "$s,rrview" "${IOPS[v1]} ${IOPS[v2]}"; add "$s,rrlive" "${IOPS[l]}"
        add "$s,rr_v/l" "$(awk -v a="${IOPS[v1]}" -v b="${IOPS[v2]}" -v l="${IOPS[l]}" 'BEGIN { printf "%.3f\n", (a + b) / 2 / l }')"
        add "$s,cpu,rrview" "${CPU[v1]} ${CPU[v2]}"; add "$s,cpu,rrlive" "${CPU[l]}"
        cmd "$s" "@freeze:end/P$round"
    done
done
t_end=$(date +%s)
load1=$(cut -d' ' -f1-3 /proc/loadavg)

declare -A M
for k in "${!R[@]}"; do M[$k]=$(median <<<"${R[$k]}"); done
# pct KEY: median of the ratios recorded under KEY, in percent.
pct() { tr ' ' '\n' <<<"${R[$1]}" | grep . | sort -g | awk '{ a[NR] = $1 } END { printf "%.0f%%", 100 * ((NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
# med KEY: median of the raw values, one decimal.
med() { tr ' ' '\n' <<<"${R[$1]}" | grep . | sort -g | awk '{ a[NR] = $1 } END { printf "%.1f", (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
row() { # LABEL KEY (b, c or d)
    echo "| $1 | ${M[f64,$2]} | $(pct "f64,$2/a") | $(med "f64,cpu,$2") | $(pct "f64,cpu,$2/a") | ${M[f4,$2]} | $(pct "f4,$2/a") | $(med "f4,cpu,$2") | $(pct "f4,cpu,$2/a") |"
}
{
echo "freeze filter, memory plugin $SIZE (filled), fio nbd 1 connection iodepth 16,"
echo "write passes of 4K random writes over $REGION (each 4K block once, random order);"
echo "$REPS rounds ($((t_end - t_start)) s); $(nproc) CPUs, load average $load0 before, $load1 after;"
echo "freeze-dir on $(df --output=fstype "$tmp" | tail -1).  IOPS and CPU: medians.  \"vs (a)\": median over"
echo "rounds of the ratio to the mean of the plain passes just before and after."
echo "CPU = nbdkit server CPU time (user+system) per request, in microseconds."
echo
echo "| 4K random write | 64K: IOPS | vs (a) | CPU us/IO | vs (a) | 4K: IOPS | vs (a) | CPU us/IO | vs (a) |"
echo "|---|---|---|---|---|---|---|---|---|"
echo "| (a) no freeze filter | ${M[a]} | 100% | $(med cpu,a) | 100% | ${M[a]} | 100% | $(med cpu,a) | 100% |"
echo "| (a') noextents filter (control) | ${M[nox]} | $(pct f64,nox/a) | $(med cpu,nox) | $(pct f64,cpu,nox/a) | ${M[nox]} | $(pct f4,nox/a) | $(med cpu,nox) | $(pct f4,cpu,nox/a) |"
row "(b) freeze, no point" b
row "(c) point held, first overwrite" c
row "(d) point held, same blocks again" d
echo
echo "| reads, point held ($REGION saved) | 64K: view | live | view/live | 4K: view | live | view/live |"
echo "|---|---|---|---|---|---|---|"
echo "| nbdcopy to null:, MB/s | ${M[f64,copyview]} | ${M[f64,copylive]} | $(pct f64,copy_v/l) | ${M[f4,copyview]} | ${M[f4,copylive]} | $(pct f4,copy_v/l) |"
echo "| fio 4K random read, IOPS (${SECS}s) | ${M[f64,rrview]} | ${M[f64,rrlive]} | $(pct f64,rr_v/l) | ${M[f4,rrview]} | ${M[f4,rrlive]} | $(pct f4,rr_v/l) |"
echo "| fio 4K random read, CPU us/IO | $(med f64,cpu,rrview) | $(med f64,cpu,rrlive) | | $(med f4,cpu,rrview) | $(med f4,cpu,rrlive) | |"
echo
echo "Targets: (b) ~ (a): $(pct f64,b/a) (64K), $(pct f4,b/a) (4K);" \
     "(c)/(a) >= 60%: $(pct f64,c/a) (64K), $(pct f4,c/a) (4K)."
echo
echo "Raw values per round:"
printf '%s\n' "${!R[@]}" | sort | while IFS= read -r k; do echo "    $k: ${R[$k]}"; done
} | tee "${OUT:-/dev/null}"
