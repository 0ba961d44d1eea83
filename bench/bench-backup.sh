#!/usr/bin/env bash
# nbdsnap backup benchmark (not a test).
#
#   bench/bench-backup.sh [SIZE]        (default 4G; REPEAT=3 runs each)
#
# A memory disk of SIZE full of incompressible data behind
# --filter=freeze --filter=cbt; then, each step REPEAT times, median kept:
#   full backup                  nbdsnap backup --full (fresh repository)
#   incremental backup           after 5% of the 64K blocks changed
#   nbdcopy of the same view     @freeze/X -> null: and -> file --flush
#   restore                      nbdsnap restore -> file and -> NBD (memory);
#                                nbdcopy of the same point served by the
#                                backup plugin (which checks every block's
#                                SHA-256 as restore does) -> file --flush
#                                and -> NBD; nbdcopy file -> NBD (info)
# Targets: incremental < 1/10 of full; backup throughput >= 80% of nbdcopy
# of the same view (to a file, flushed: same work minus hashing); restore
# compared the same way.  Results: /tmp/nbdsnap/bench-backup.md (and stdout).
#
# Every destination is written once before the timed runs (a memory disk's
# first write allocates its pages, which costs several times a copy,
# especially in a virtual machine), so that no side pays for first touch.
#
# Everything durable is fsynced by both sides (nbdsnap always; nbdcopy with
# --flush); `sync` runs before every timed step so that writeback left by
# the previous one is not charged to the next.
set -e
set -o pipefail
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH
export LC_ALL=C

top=$(cd "$(dirname "$0")/.." && pwd)
SIZE=${1:-4G}
REPEAT=${REPEAT:-3}
PCT=5
N=$top/tools/nbdsnap
FZ=$top/filters/freeze/.libs/nbdkit-freeze-filter.so
CBT=$top/filters/cbt/.libs/nbdkit-cbt-filter.so
BP=$top/plugins/backup/.libs/nbdkit-backup-plugin.so
out=/tmp/nbdsnap/bench-backup.md
for f in "$N" "$FZ" "$CBT" "$BP"; do
    [ -f "$f" ] || { echo "bench: not built: $f (run make)" >&2; exit 1; }
done
mkdir -p /tmp/nbdsnap
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/nbdsnap-bench.XXXXXX")
pids=()
cleanup ()
{
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

case "$SIZE" in
    [0-9]*) bytes=$(numfmt --from=iec "$SIZE") ;;
    *) echo "usage: bench/bench-backup.sh [SIZE]   (e.g. 4G; REPEAT=N runs)" >&2; exit 2 ;;
esac

# serve NAME ARGS...: nbdkit in the background on $work/NAME.sock.
serve ()
{
    local name=$1 i; shift
    nbdkit -f -U "$work/$name.sock" "$@" > "$work/$name.log" 2>&1 &
    pids+=($!)
    for ((i = 0; i < 300; i++)); do
        [ -S "$work/$name.sock" ] && return 0
        sleep 0.1
    done
    cat "$work/$name.log" >&2
    exit 1
}
u () { echo "nbd+unix:///${2:-}?socket=$work/$1.sock"; }

# CPU seconds used so far by the nbdkit servers (all of them).
TICK=$(getconf CLK_TCK)
server_cpu ()
{
    local p sum=0 f
    for p in "${pids[@]}"; do
        f=$(cut -d' ' -f14,15 "/proc/$p/stat" 2>/dev/null) || continue
        sum=$((sum + ${f% *} + ${f#* }))
    done
    echo "scale=2; $sum / $TICK" | bc -l
}

# timed SECONDS-VAR CMD...: sync, then run CMD, seconds in SECONDS-VAR;
# the CPU seconds of the command and of the servers in $CPU_CMD, $CPU_SRV.
timed ()
{
    local var=$1 t0 t1 s0 s1; shift
    sync
    s0=$(server_cpu)
    t0=$(date +%s.%N)
    /usr/bin/time -f '%U %S' -o "$work/cmd.cpu" "$@" > "$work/cmd.out" 2>&1 ||
        { cat "$work/cmd.out" >&2; exit 1; }
    t1=$(date +%s.%N)
    s1=$(server_cpu)
    printf -v "$var" '%.3f' "$(echo "$t1 - $t0" | bc -l)"
    CPU_CMD=$(awk '{ printf "%.2f", $1 + $2 }' "$work/cmd.cpu")
    CPU_SRV=$(echo "$s1 - $s0" | bc -l)
}
median () { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
mibs () { echo "scale=1; $1 / 1048576 / $2" | bc -l; }
ratio () { echo "scale=3; $1 / $2" | bc -l; }

echo "bench: $SIZE memory disk, $PCT% changed, $REPEAT runs each, in $work" >&2
serve srv --filter="$FZ" --filter="$CBT" memory "$SIZE" \
    freeze-dir="$work" cbt-dir="$work/cbt"
U=$(u srv)

# Incompressible content (AES-CTR keystream), all of the disk.
{ openssl enc -aes-128-ctr -pass pass:nbdsnap -nosalt -pbkdf2 < /dev/zero \
    2>/dev/null || true; } | head -c "$bytes" | nbdcopy - "$U"

# ---------------------------------------------------------- full backup
full=()
for ((i = 1; i <= REPEAT; i++)); do
    rm -rf "$work/repo"
    timed t "$N" backup "$U" "$work/repo" --full --name F$i --no-progress
    full+=("$t")
    c_full+=("$(echo "$CPU_CMD + $CPU_SRV" | bc -l)")
    [ "$i" -gt 1 ] && "$N" checkpoint delete "$U" F$((i - 1)) >/dev/null
    echo "  full backup $i: ${t}s" >&2
done
T_FULL=$(median "${full[@]}")

# ---------------------------------------------------- incremental backup
change ()
{
    nbdsh -u "$U" -c "
import random
r = random.Random($1)
nb = h.get_size() // 65536
for b in r.sample(range(nb), nb * $PCT // 100):
    h.pwrite(r.randbytes(65536), b * 65536)
h.flush()"
}
inc=()
inc_bytes=0
for ((i = 1; i <= REPEAT; i++)); do
    change "$i"
    timed t "$N" --json backup "$U" "$work/repo" --incremental --name I$i --no-progress
    inc+=("$t")
    c_inc+=("$(echo "$CPU_CMD + $CPU_SRV" | bc -l)")
    inc_bytes=$(sed -n 's/.*"bytes_read":\([0-9]*\).*/\1/p' "$work/cmd.out")
    echo "  incremental backup $i: ${t}s ($inc_bytes bytes read)" >&2
done
T_INC=$(median "${inc[@]}")

# ------------------------------------------ nbdcopy of the same view
"$N" freeze begin "$U" X >/dev/null
VIEW=$(u srv @freeze/X)
cnull=(); cfile=()
for ((i = 1; i <= REPEAT; i++)); do
    timed t nbdcopy "$VIEW" null:
    cnull+=("$t")
    c_cnull+=("$(echo "$CPU_CMD + $CPU_SRV" | bc -l)")
    rm -f "$work/copy.img"
    timed t nbdcopy --flush "$VIEW" "$work/copy.img"
    cfile+=("$t")
    c_cfile+=("$(echo "$CPU_CMD + $CPU_SRV" | bc -l)")
    echo "  nbdcopy view: null ${cnull[-1]}s, file ${cfile[-1]}s" >&2
done
"$N" freeze end "$U" X >/dev/null
T_CNULL=$(median "${cnull[@]}")
T_CFILE=$(median "${cfile[@]}")

# --------------------------------------------------------------- restore
LAST=F$REPEAT
[ "$REPEAT" -gt 0 ] || exit 1
rfile=(); pfile=()
serve bp "$BP" repo="$work/repo" point="$LAST"
for ((i = 1; i <= REPEAT; i++)); do
    rm -f "$work/r.img"
    timed t "$N" restore "$work/repo" "$LAST" -o "$work/r.img" --no-progress
    rfile+=("$t")
    c_rfile+=("$(echo "$CPU_CMD + $CPU_SRV" | bc -l)")
    rm -f "$work/r.img"
    timed t nbdcopy --flush "$(u bp)" "$work/r.img"
    pfile+=("$t")
    c_pfile+=("$(echo "$CPU_CMD + $CPU_SRV" | bc -l)")
    echo "  restore to file ${rfile[-1]}s, nbdcopy plugin->file ${pfile[-1]}s" >&2
done
rm -f "$work/r.img"
T_RFILE=$(median "${rfile[@]}")
T_PFILE=$(median "${pfile[@]}")

serve dst memory "$SIZE"
nbdcopy "$work/copy.img" "$(u dst)"          # first touch, untimed
rnbd=(); pnbd=(); cnbd=()
for ((i = 1; i <= REPEAT; i++)); do
    timed t "$N" restore "$work/repo" "$LAST" -o "$(u dst)" --no-progress
    rnbd+=("$t")
    c_rnbd+=("$(echo "$CPU_CMD + $CPU_SRV" | bc -l)")
    timed t nbdcopy "$(u bp)" "$(u dst)"
    pnbd+=("$t")
    c_pnbd+=("$(echo "$CPU_CMD + $CPU_SRV" | bc -l)")
    timed t nbdcopy "$work/copy.img" "$(u dst)"
    cnbd+=("$t")
    c_cnbd+=("$(echo "$CPU_CMD + $CPU_SRV" | bc -l)")
    echo "  restore to NBD ${rnbd[-1]}s, nbdcopy plugin->NBD ${pnbd[-1]}s, file->NBD ${cnbd[-1]}s" >&2
done
T_RNBD=$(median "${rnbd[@]}")
T_PNBD=$(median "${pnbd[@]}")
T_CNBD=$(median "${cnbd[@]}")

# --------------------------------------------------------------- report
R_INC=$(ratio "$T_INC" "$T_FULL")
R_BF=$(ratio "$T_CFILE" "$T_FULL")
R_BN=$(ratio "$T_CNULL" "$T_FULL")
R_RF=$(ratio "$T_PFILE" "$T_RFILE")
R_RN=$(ratio "$T_PNBD" "$T_RNBD")
R_RC=$(ratio "$T_CNBD" "$T_RNBD")
verdict () { if [ "$(echo "$1 $2" | awk '{ print ($1 '"$3"' $2) }')" = 1 ]; then echo met; else echo "NOT met"; fi; }
{
    echo "# nbdsnap backup benchmark"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, $(uname -r), nbdkit $(nbdkit --version | awk '{print $2}'), $($N --version)."
    echo "Disk: nbdkit memory $SIZE ($bytes bytes) of incompressible data, --filter=freeze --filter=cbt;"
    echo "repository and files on $(df --output=source "$work" | tail -1) ($(df --output=fstype "$work" | tail -1))."
    echo "Median of $REPEAT runs; sync before each timed step; every side fsyncs what it writes."
    echo
    echo "| step | seconds | MiB/s | CPU seconds (client + servers) |"
    echo "|---|---:|---:|---:|"
    echo "| full backup (nbdsnap backup --full) | $T_FULL | $(mibs "$bytes" "$T_FULL") | $(median "${c_full[@]}") |"
    echo "| incremental backup, $PCT% of blocks changed ($inc_bytes bytes read) | $T_INC | $(mibs "$inc_bytes" "$T_INC") | $(median "${c_inc[@]}") |"
    echo "| nbdcopy @freeze/X -> null: | $T_CNULL | $(mibs "$bytes" "$T_CNULL") | $(median "${c_cnull[@]}") |"
    echo "| nbdcopy --flush @freeze/X -> file | $T_CFILE | $(mibs "$bytes" "$T_CFILE") | $(median "${c_cfile[@]}") |"
    echo "| nbdsnap restore -> file | $T_RFILE | $(mibs "$bytes" "$T_RFILE") | $(median "${c_rfile[@]}") |"
    echo "| nbdcopy --flush (backup plugin, same point) -> file | $T_PFILE | $(mibs "$bytes" "$T_PFILE") | $(median "${c_pfile[@]}") |"
    echo "| nbdsnap restore -> NBD (memory) | $T_RNBD | $(mibs "$bytes" "$T_RNBD") | $(median "${c_rnbd[@]}") |"
    echo "| nbdcopy (backup plugin, same point) -> NBD (memory) | $T_PNBD | $(mibs "$bytes" "$T_PNBD") | $(median "${c_pnbd[@]}") |"
    echo "| nbdcopy file -> NBD (memory) | $T_CNBD | $(mibs "$bytes" "$T_CNBD") | $(median "${c_cnbd[@]}") |"
    echo
    echo "| ratio | value | target | |"
    echo "|---|---:|---:|---|"
    echo "| incremental / full time | $R_INC | < 0.1 | $(verdict "$R_INC" 0.1 '<') |"
    echo "| backup throughput / nbdcopy view->file throughput | $R_BF | >= 0.8 | $(verdict "$R_BF" 0.8 '>=') |"
    echo "| backup throughput / nbdcopy view->null: throughput | $R_BN | (info) | |"
    echo "| restore->file / nbdcopy plugin->file throughput | $R_RF | >= 0.8 | $(verdict "$R_RF" 0.8 '>=') |"
    echo "| restore->NBD / nbdcopy plugin->NBD throughput | $R_RN | >= 0.8 | $(verdict "$R_RN" 0.8 '>=') |"
    echo "| restore->NBD / nbdcopy file->NBD throughput | $R_RC | (info) | |"
    echo
    sha=$(openssl speed -evp sha256 -bytes 65536 -seconds 1 2>/dev/null | awk '/^sha256/ { printf "%.0f", $2 / 1024 }')
    if [ -n "$sha" ]; then
        hcpu=$(echo "scale=2; $bytes / 1048576 / $sha" | bc -l)
        hwall=$(echo "scale=2; $hcpu / $(nproc)" | bc -l)
        # CPU time nbdcopy's copy took plus the hashing, spread over
        # every CPU: a bound on how fast a backup can be here.
        c_cf=$(median "${c_cfile[@]}")
        floor=$(echo "($c_cf + $hcpu) / $(nproc)" | bc -l)
        [ "$(echo "$floor < $T_CFILE" | bc -l)" = 1 ] && floor=$T_CFILE
        best=$(ratio "$T_CFILE" "$floor")
    fi
    echo "Context: SHA-256 runs at ${sha:-?} MiB/s per CPU here (openssl speed, 64K blocks; gnutls is"
    echo "as fast); $(nproc) CPUs shared with the nbdkit server; load average at the end:"
    echo "$(cut -d' ' -f1-3 /proc/loadavg).  A backup hashes every byte it stores once (per block,"
    echo "in parallel); a restore hashes every byte once (verification), as the backup plugin does."
    echo "nbdcopy hashes nothing: hashing $SIZE takes ${hcpu:-?} CPU-seconds (${hwall:-?} s on all $(nproc) CPUs)."
    echo "nbdcopy's copy to a file took ${c_cf:-?} CPU-seconds (client + server); a backup that moved"
    echo "the data as cheaply and hashed on every CPU with none idle would take $(printf '%.2f' "${floor:-0}") s:"
    echo "at best ${best:-?} of nbdcopy's throughput on this machine."
    echo
    echo "Runs (seconds): full ${full[*]}; incremental ${inc[*]}; nbdcopy->null ${cnull[*]};"
    echo "nbdcopy->file ${cfile[*]}; restore->file ${rfile[*]}; plugin->file ${pfile[*]};"
    echo "restore->NBD ${rnbd[*]}; plugin->NBD ${pnbd[*]}; file->NBD ${cnbd[*]}."
} | tee "$out"
