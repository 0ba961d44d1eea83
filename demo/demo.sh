#!/bin/bash
# nbdsnap demo: the whole story on a generated 256 MiB disk, in about a
# minute.  Snapshots, a change map, revert; checkpoints; a full and an
# incremental backup while the disk is in use; verify; restore; and
# instant recovery (a restore point served writable at once).
#
#   ./setup.sh demo          (builds first)   or   bash demo/demo.sh
#
# Every step prints the command a user would type, then checks what it
# did; the demo exits non-zero if a check fails.  DEMO_SIZE=1G for a
# bigger disk.

set -euo pipefail

top=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
lib=filters
SNAP=${SNAPSHOT_FILTER:-$top/$lib/snapshot/.libs/nbdkit-snapshot-filter.so}
CBT=${CBT_FILTER:-$top/$lib/cbt/.libs/nbdkit-cbt-filter.so}
FREEZE=${FREEZE_FILTER:-$top/$lib/freeze/.libs/nbdkit-freeze-filter.so}
BACKUP=${BACKUP_PLUGIN:-$top/plugins/backup/.libs/nbdkit-backup-plugin.so}
NBDSNAP=${NBDSNAP:-$top/tools/nbdsnap}
SIZE=${DEMO_SIZE:-256M}
for f in "$SNAP" "$CBT" "$FREEZE" "$BACKUP" "$NBDSNAP"; do
    [ -e "$f" ] || { echo "demo: $f not built; run ./setup.sh first" >&2; exit 1; }
done

# nbdsh, nbdcopy's python: Debian's python3 (python3-libnbd), not pyenv's.
export PATH=/usr/bin:$PATH

tmp=$(mktemp -d /tmp/nbdsnap-demo.XXXXXX)
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

if [ -t 1 ]; then B=$'\033[1m' G=$'\033[32m' R=$'\033[31m' N=$'\033[0m'
else B= G= R= N=; fi
step=0
summary=()
heading() { step=$((step+1)); printf '\n%s=== %d. %s%s\n' "$B" "$step" "$*" "$N"; }
show()    { printf '$ %s\n' "$*"; }
run()     { show "$*"; "$@"; }
ok()      { printf '    %sOK%s  %s\n' "$G" "$N" "$*"; }
fail()    {
    printf '    %sFAIL%s %s\n' "$R" "$N" "$*" >&2
    for l in "$tmp"/*.log; do
        [ -s "$l" ] && sed "s|^|    $(basename "$l" .log): |" "$l" >&2
    done
    exit 1
}
now()     { date +%s.%N; }
since()   { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f s", b - a }'; }
record()  { summary+=("$(printf '%-34s %14s %10s' "$1" "$2" "$3")"); }
human()   { numfmt --to=iec-i --suffix=B "$1"; }

# start NAME NBDKIT-ARGS...: nbdkit in the background on $tmp/NAME.sock.
start() {
    local name=$1 i; shift
    rm -f "$tmp/$name.sock" "$tmp/$name.pid"
    show "nbdkit -U $tmp/$name.sock $* &"
    nbdkit -f -U "$tmp/$name.sock" -P "$tmp/$name.pid" "$@" \
        2>>"$tmp/$name.log" &
    pids+=($!)
    for ((i = 0; i < 200; i++)); do
        [ -s "$tmp/$name.pid" ] && return 0
        sleep 0.05
    done
    fail "nbdkit ($name) did not start"
}
uri() { printf 'nbd+unix:///%s?socket=%s' "${2:-}" "$tmp/$1.sock"; }

# SHA-256 of an export (or a file).
sum_export() { nbdcopy "$(uri "$@")" - | sha256sum | cut -d' ' -f1; }
sum_file()   { sha256sum "$1" | cut -d' ' -f1; }

# write_mib NAME OFFSET-MIB COUNT-MIB SEED: pseudo-random data at OFFSET.
write_mib() {
    python3 -c '
import random, sys
sys.stdout.buffer.write(random.Random(int(sys.argv[1])).randbytes(int(sys.argv[2]) << 20))' \
        "$4" "$3" > "$tmp/chunk"
    nbdsh -u "$(uri "$1")" -c "h.pwrite(open('$tmp/chunk','rb').read(), $2 << 20)" \
        -c 'h.flush()'
}

# json FIELD-EXPR: read a field of the JSON document on stdin.
json() { python3 -c 'import json, sys; j = json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }

printf '%snbdsnap demo%s: snapshots, checkpoints and backups of any nbdkit disk\n' "$B" "$N"
printf 'working directory %s\n' "$tmp"

# ------------------------------------------------------------------------
heading "A disk, served through the whole stack"
truncate -s "$SIZE" "$tmp/disk.img"
python3 -c '
import random, sys
f = open(sys.argv[1], "r+b")
r = random.Random(1)
size = f.seek(0, 2)
for off in range(0, size, 8 << 20):        # data in every other 4 MiB
    f.seek(off); f.write(r.randbytes(4 << 20))' "$tmp/disk.img"
disk_size=$(stat -c %s "$tmp/disk.img")
echo "    generated $tmp/disk.img ($(human "$disk_size"), half of it data)"
mkdir -p "$tmp/snap" "$tmp/cbt" "$tmp/scratch"
start live --filter="$FREEZE" --filter="$CBT" --filter="$SNAP" \
    file "$tmp/disk.img" snapshot-dir="$tmp/snap" cbt-dir="$tmp/cbt" \
    freeze-dir="$tmp/scratch"
U=$(uri live)
run nbdinfo --size "$U" >/dev/null
[ "$(nbdinfo --size "$U")" = "$disk_size" ] || fail "wrong size"
ok "the live disk is served, $(human "$disk_size")"
orig=$(sum_export live)

# ------------------------------------------------------------------------
heading "Snapshot, write, see what changed, revert"
t=$(now)
run "$NBDSNAP" snapshot create "$U" clean
write_mib live 10 3 2
run "$NBDSNAP" snapshot diff "$U" clean
changed=$(nbdinfo --map "$(uri live @snapshot:diff/clean)" |
          awk '$3 != 1 { n += $2 } END { print n + 0 }')   # type 1 (hole): unchanged
[ "$changed" -eq $((3 << 20)) ] || fail "diff shows $changed bytes, expected 3 MiB"
ok "the change map holds exactly the 3 MiB written"
[ "$(sum_export live @snapshot/clean)" = "$orig" ] || fail "snapshot 'clean' changed"
ok "@snapshot/clean still reads the disk as it was"
run "$NBDSNAP" snapshot revert "$U" clean
[ "$(sum_export live)" = "$orig" ] || fail "revert did not bring the disk back"
ok "after the revert the live disk is byte for byte the original"
record "snapshot, diff, revert" "3 MiB changed" "$(since "$t")"
run "$NBDSNAP" snapshot delete "$U" clean >/dev/null

# ------------------------------------------------------------------------
heading "Full backup (frozen at a checkpoint while the disk stays in use)"
t=$(now)
show "$NBDSNAP backup $U $tmp/repo --full --name mon"
"$NBDSNAP" --json backup "$U" "$tmp/repo" --full --name mon > "$tmp/mon.json" ||
    fail "full backup failed"
full_read=$(json 'j["bytes_read"]' < "$tmp/mon.json")
mon_sum=$(sum_export live)
echo "    read $(human "$full_read"), stored $(human "$(json 'j["stored_bytes"]' < "$tmp/mon.json")")"
record "full backup 'mon'" "$(human "$full_read") read" "$(since "$t")"
run "$NBDSNAP" checkpoint list "$U"
"$NBDSNAP" --json checkpoint list "$U" | json '[c["name"] for c in j["checkpoints"]]' |
    grep -q "'mon'" || fail "no checkpoint 'mon' on the server"
ok "checkpoint 'mon' marks the instant of the backup"

# ------------------------------------------------------------------------
heading "The disk is used: 5 MiB written"
write_mib live 40 2 3
write_mib live 100 3 4
tue_sum=$(sum_export live)
run "$NBDSNAP" checkpoint diff "$U" mon
ok "the cbt filter knows exactly what changed since 'mon'"

# ------------------------------------------------------------------------
heading "Incremental backup: only what changed"
t=$(now)
show "$NBDSNAP backup $U $tmp/repo --incremental --name tue"
"$NBDSNAP" --json backup "$U" "$tmp/repo" --incremental --name tue > "$tmp/tue.json" ||
    fail "incremental backup failed"
inc_read=$(json 'j["bytes_read"]' < "$tmp/tue.json")
[ "$inc_read" -le $((6 << 20)) ] || fail "incremental read $inc_read bytes"
ok "read $(human "$inc_read") instead of $(human "$full_read") ($(awk -v a="$inc_read" -v b="$full_read" 'BEGIN { printf "%.1f%%", 100 * a / b }'))"
record "incremental backup 'tue'" "$(human "$inc_read") read" "$(since "$t")"
run "$NBDSNAP" list "$tmp/repo"

# ------------------------------------------------------------------------
heading "Verify every block of the repository"
t=$(now)
run "$NBDSNAP" verify "$tmp/repo"
ok "SHA-256 of every stored block matches"
record "verify" "2 points" "$(since "$t")"

# ------------------------------------------------------------------------
heading "Restore: the disk as it was at 'mon' and at 'tue'"
t=$(now)
run "$NBDSNAP" restore "$tmp/repo" mon -o "$tmp/mon.img"
[ "$(sum_file "$tmp/mon.img")" = "$mon_sum" ] || fail "restored 'mon' differs"
ok "mon.img is byte for byte the disk at the full backup"
run "$NBDSNAP" restore "$tmp/repo" tue -o "$tmp/tue.img"
[ "$(sum_file "$tmp/tue.img")" = "$tue_sum" ] || fail "restored 'tue' differs"
ok "tue.img is byte for byte the disk at the incremental backup"
record "restore 'mon' and 'tue'" "$(human "$((2 * disk_size))")" "$(since "$t")"

# ------------------------------------------------------------------------
heading "Instant recovery: serve 'tue' writable at once, from the repository"
t=$(now)
mkdir -p "$tmp/recovery"
start rec --filter="$SNAP" "$BACKUP" repo="$tmp/repo" point=tue \
    snapshot-dir="$tmp/recovery"
[ "$(sum_export rec)" = "$tue_sum" ] || fail "the served point differs"
ok "a VM could boot from it now: it reads as the disk at 'tue'"
write_mib rec 0 1 5
ok "writes go to the snapshot filter's overlay..."
run "$NBDSNAP" verify "$tmp/repo" tue >/dev/null
ok "...and the repository is untouched"
record "instant recovery of 'tue'" "served" "$(since "$t")"

# ------------------------------------------------------------------------
printf '\n%s=== Summary%s\n' "$B" "$N"
printf '%-34s %14s %10s\n' "step" "data" "time"
for l in "${summary[@]}"; do printf '%s\n' "$l"; done
printf '\nrepository: %s in %s (2 restore points of a %s disk)\n' \
    "$(du -sh "$tmp/repo" | cut -f1)" "$tmp/repo" "$(human "$disk_size")"
printf '%sAll steps passed.%s\n' "$G" "$N"
