#!/bin/bash
# nbdsnap snapshot filter benchmark (not a test: it never fails on a
# missed target, only on a broken setup).
#
#   bash bench/bench-snapshot.sh            (or: ./setup.sh bench)
#
# Everything runs on nbdkit's memory plugin so that the numbers measure
# the filters, not a disk.  Environment overrides:
#   BENCH_SECONDS=3        duration of each timed fio run (+1 s ramp)
#   BENCH_REPS=3           repetitions; every number reported is the median
#   BENCH_SIZE=2G          memory plugin size
#   BENCH_DEPTH=100        chain depth for the depth test
#   BENCH_REVERT_REPS=5    repetitions of the revert test
#   BENCH_REVERT_MIB=1024  data written before each revert
#   BENCH_TMPDIR=/var/tmp  where snapshot-dir / cow overlay live (local disk)
#   SNAPSHOT_FILTER=...    filter .so (default: the one built in this tree)
#
# Measured with fio --ioengine=nbd (libnbd, one connection, iodepth 16):
#   on a freshly started server: 4K random write, 1M sequential write,
#   then the whole disk is written once, then 4K random read, 1M
#   sequential read; against (a) no filter, (b) nbdkit's cow filter,
#   (c) the snapshot filter.  The three configurations are interleaved,
#   BENCH_REPS rounds.  Then random/sequential read at chain depth
#   BENCH_DEPTH vs depth 1 (both chains hold the same bytes), and the
#   round-trip time of @snapshot:revert/NAME after writing BENCH_REVERT_MIB.

set -euo pipefail

top=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
FILTER=${SNAPSHOT_FILTER:-$top/filters/snapshot/.libs/nbdkit-snapshot-filter.so}
SECS=${BENCH_SECONDS:-3}
REPS=${BENCH_REPS:-3}
SIZE=${BENCH_SIZE:-2G}
DEPTH=${BENCH_DEPTH:-100}
REVERT_REPS=${BENCH_REVERT_REPS:-5}
REVERT_MIB=${BENCH_REVERT_MIB:-1024}
BASEDIR=${BENCH_TMPDIR:-/var/tmp}

[ -f "$FILTER" ] || { echo "bench: $FILTER not built; run ./setup.sh first" >&2; exit 1; }
for p in nbdkit fio; do
    command -v $p >/dev/null || { echo "bench: $p is not installed" >&2; exit 1; }
done
# Debian's python3 has the nbd module; a pyenv python3 does not.
export PATH=/usr/bin:$PATH
PY=/usr/bin/python3

tmp=$(mktemp -d "$BASEDIR/nbdsnap-bench.XXXXXX")
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
sock() { echo "$tmp/$1.sock"; }
uri()  { echo "nbd+unix:///?socket=$tmp/$1.sock"; }

# start_server NAME NBDKIT-ARGS...: start server NAME on $tmp/NAME.sock,
# wait until it is ready.
start_server() {
    local name=$1; shift
    rm -f "$tmp/$name.pid" "$tmp/$name.sock"
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
stop_server() {
    kill "${PIDS[$1]}"; wait "${PIDS[$1]}" 2>/dev/null || true; unset "PIDS[$1]"
}

# fio_mbs URI RW BS [timed]: run fio, print the throughput in MB/s (10^6 B/s).
fio_mbs() {
    local u=$1 rw=$2 bs=$3 timed=${4:-timed} args=()
    [ "$timed" = timed ] && args=(--time_based --runtime="$SECS" --ramp_time=1)
    fio --name=bench --ioengine=nbd --uri="$u" --rw="$rw" --bs="$bs" \
        --iodepth=16 --norandommap --randrepeat=0 "${args[@]}" \
        --output-format=json --output="$tmp/fio.json" >/dev/null
    $PY - "$tmp/fio.json" "$rw" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
j = d["jobs"][0]
if j.get("error"):
    sys.exit("fio error %s" % j["error"])
kind = "read" if "read" in sys.argv[2] else "write"
print("%.1f" % (j[kind]["bw_bytes"] / 1e6))
EOF
}

median() { tr ' ' '\n' | grep . | sort -g | awk '{ a[NR] = $1 } END { printf "%.1f\n", (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# Raw results: R[config,test] = "v1 v2 ..." (one value per round).
declare -A R
add() { R[$1]="${R[$1]:-}${R[$1]:+ }$2"; }

measure() {   # measure CONFIG ROUND: the four numbers on server CONFIG
    local c=$1 u
    u=$(uri "$c")
    log "round $2, $c: 4K random write";    add "$c,rw4k" "$(fio_mbs "$u" randwrite 4k)"
    log "round $2, $c: 1M sequential write"; add "$c,sw1m" "$(fio_mbs "$u" write 1M)"
    log "round $2, $c: filling the disk";    fio_mbs "$u" write 1M untimed >/dev/null
    log "round $2, $c: 4K random read";      add "$c,rr4k" "$(fio_mbs "$u" randread 4k)"
    log "round $2, $c: 1M sequential read";  add "$c,sr1m" "$(fio_mbs "$u" read 1M)"
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
load_start=$(loadavg)
log "machine: $(nproc) CPUs, $(uname -r), $(nbdkit --version), load average $load_start"
log "size $SIZE, $SECS s per run, $REPS rounds, tmp $tmp"

for round in $(seq "$REPS"); do
    start_server base memory "$SIZE"
    measure base "$round"; stop_server base

    rm -rf "$tmp/cow"; mkdir "$tmp/cow"
    TMPDIR=$tmp/cow start_server cow --filter=cow memory "$SIZE"
    measure cow "$round"; stop_server cow

    rm -rf "$tmp/snap"
    start_server snap --filter="$FILTER" memory "$SIZE" snapshot-dir="$tmp/snap"
    measure snap "$round"; stop_server snap
done
rm -rf "$tmp/snap" "$tmp/cow"

# ------------------------------------------------------------ chain depth
# build_chain SOCKET N: write the same bytes (BENCH_SIZE*3/4 as BENCH_DEPTH
# stripes of 1M writes) as N layers: a snapshot is created after every
# BENCH_DEPTH/N stripes.  Depth N and depth 1 hold identical data; a
# quarter of the disk is still read from the plugin through the chain.
build_chain() {
    $PY - "$1" "$2" "$DEPTH" <<'EOF'
import json, sys, nbd
sock, n, stripes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def connect(name=""):
    h = nbd.NBD()
    h.connect_uri("nbd+unix:///%s?socket=%s" % (name, sock))
    return h
def command(name):
    h = connect(name)
    r = json.loads(h.pread(h.get_size(), 0).decode())
    h.shutdown()
    if not r.get("ok"):
        sys.exit("bench: %s failed: %s" % (name, r))
size = connect().get_size()
stripe = (size * 3 // 4 // stripes) >> 20 << 20
buf = bytearray(1 << 20)
per_layer = stripes // n
layer = 0
for i in range(stripes):
    h = connect()
    for off in range(0, stripe, 1 << 20):
        buf[0:16] = b"%6d %8d\n" % (i, off >> 20)
        h.pwrite(buf, i * stripe + off)
    h.flush()
    h.shutdown()
    if (i + 1) % per_layer == 0 or i == stripes - 1:
        command("@snapshot:create/s%d" % layer)
        layer += 1
EOF
}

for n in 1 "$DEPTH"; do
    log "depth $n: building the chain"
    start_server "d$n" --filter="$FILTER" memory "$SIZE" snapshot-dir="$tmp/snap-d$n"
    build_chain "$(sock "d$n")" "$n"
done
for round in $(seq "$REPS"); do
    for n in 1 "$DEPTH"; do
        log "round $round, depth $n: 4K random read";    add "d$n,rr4k" "$(fio_mbs "$(uri "d$n")" randread 4k)"
        log "round $round, depth $n: 1M sequential read"; add "d$n,sr1m" "$(fio_mbs "$(uri "d$n")" read 1M)"
    done
done
stop_server d1; stop_server "d$DEPTH"
rm -rf "$tmp"/snap-d*

# ------------------------------------------------------------ revert time
log "revert: $REVERT_REPS x (write $REVERT_MIB MiB, revert)"
start_server rv --filter="$FILTER" memory "$SIZE" snapshot-dir="$tmp/snap-rv"
revert=$($PY - "$(sock rv)" "$REVERT_MIB" "$REVERT_REPS" <<'EOF'
import json, statistics, sys, time, nbd
sock, mib, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def connect(name=""):
    h = nbd.NBD()
    h.connect_uri("nbd+unix:///%s?socket=%s" % (name, sock))
    return h
def command(name):
    h = connect(name)
    r = json.loads(h.pread(h.get_size(), 0).decode())
    h.shutdown()
    return r
r = command("@snapshot:create/r")
if not r.get("ok"):
    sys.exit("bench: create failed: %s" % r)
buf = b"\xa5" * (1 << 20)
times, busy = [], 0
for rep in range(reps):
    h = connect()
    for i in range(mib):
        h.aio_pwrite(buf, i << 20)
        while h.aio_in_flight() >= 16:
            h.poll(-1)
    while h.aio_in_flight() > 0:
        h.poll(-1)
    h.flush()
    h.shutdown()
    time.sleep(0.3)          # let the server finish closing that connection
    while True:
        t0 = time.monotonic()
        r = command("@snapshot:revert/r")
        t1 = time.monotonic()
        if r.get("ok"):
            break
        if r.get("errno") == "EBUSY" and busy < 20:
            busy += 1
            time.sleep(0.2)
            continue
        sys.exit("bench: revert failed: %s" % r)
    times.append((t1 - t0) * 1000)
print("%.1f %.1f %.1f %d %d" % (statistics.median(times), min(times), max(times), len(times), busy))
EOF
)
stop_server rv
read -r rv_med rv_min rv_max rv_n rv_busy <<<"$revert"

# ----------------------------------------------------------------- report
declare -A M
for k in "${!R[@]}"; do M[$k]=$(median <<<"${R[$k]}"); done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
ge()    { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }
pm()    { if "$@"; then echo PASS; else echo MISS; fi; }
# pm_ge A B: PASS if A >= B, else MISS, noting when A is within 3% of B.
pm_ge() {
    local by
    by=$(awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) * 100 / b }')
    if ge "$1" "$2"; then echo PASS
    elif ge "$1" "$(awk -v b="$2" 'BEGIN { print b * 0.97 }')"; then echo "MISS (by $by%, within noise)"
    else echo "MISS (by $by%)"
    fi
}
tests=(rw4k:"4K random write" sw1m:"1M sequential write" rr4k:"4K random read" sr1m:"1M sequential read")

echo
echo "nbdsnap snapshot filter benchmark"
echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, $(nbdkit --version), memory plugin $SIZE,"
echo "fio nbd engine, 1 connection, iodepth 16, ${SECS}s per run, median of $REPS rounds"
echo "load average at start: $load_start, at end: $(loadavg) (anything else running skews the numbers)"
echo
printf '%-22s %14s %10s %14s %10s %10s\n' test "baseline MB/s" "cow MB/s" "snapshot MB/s" snap/base snap/cow
for t in "${tests[@]}"; do
    k=${t%%:*}; name=${t#*:}
    printf '%-22s %14s %10s %14s %10s %10s\n' "$name" "${M[base,$k]}" "${M[cow,$k]}" "${M[snap,$k]}" \
        "$(ratio "${M[snap,$k]}" "${M[base,$k]}")" "$(ratio "${M[snap,$k]}" "${M[cow,$k]}")"
done
echo
printf '%-22s %14s %15s %10s\n' "chain depth" "depth 1 MB/s" "depth $DEPTH MB/s" ratio
printf '%-22s %14s %15s %10s\n' "4K random read" "${M[d1,rr4k]}" "${M[d$DEPTH,rr4k]}" "$(ratio "${M[d$DEPTH,rr4k]}" "${M[d1,rr4k]}")"
printf '%-22s %14s %15s %10s\n' "1M sequential read" "${M[d1,sr1m]}" "${M[d$DEPTH,sr1m]}" "$(ratio "${M[d$DEPTH,sr1m]}" "${M[d1,sr1m]}")"
echo
echo "revert after writing $REVERT_MIB MiB: median $rv_med ms (min $rv_min, max $rv_max, n=$rv_n, EBUSY retries $rv_busy)"
echo
echo "targets:"
target() { printf '  %-48s %s\n' "$1" "$2"; }
target "4K random write >= cow" "$(pm_ge "${M[snap,rw4k]}" "${M[cow,rw4k]}")"
target "1M sequential write >= cow" "$(pm_ge "${M[snap,sw1m]}" "${M[cow,sw1m]}")"
target "4K random read, depth $DEPTH within 10% of depth 1" \
    "$(pm ge "${M[d$DEPTH,rr4k]}" "$(awk -v a="${M[d1,rr4k]}" 'BEGIN { print a * 0.9 }')")"
target "1M seq read, depth $DEPTH within 10% of depth 1" \
    "$(pm ge "${M[d$DEPTH,sr1m]}" "$(awk -v a="${M[d1,sr1m]}" 'BEGIN { print a * 0.9 }')")"
target "revert after $REVERT_MIB MiB < 100 ms (median)" "$(pm awk -v a="$rv_med" 'BEGIN { exit !(a < 100) }')"
echo
echo "raw MB/s per round:"
for c in base cow snap d1 "d$DEPTH"; do
    for t in "${tests[@]}"; do
        k=${t%%:*}
        [ -n "${R[$c,$k]:-}" ] && printf '  %-6s %-22s %s\n' "$c" "${t#*:}" "${R[$c,$k]}"
    done
done
