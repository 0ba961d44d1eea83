#!/bin/bash
# nbdsnap demo: persistent snapshots in front of nbdkit's memory plugin.
#
#   ./setup.sh demo          (builds first)   or   bash demo/demo.sh
#
# Everything goes over NBD: data, views (@snapshot/NAME, @snapshot:diff/BASE)
# and commands (@snapshot:create/NAME, @snapshot:revert/NAME).  Exits
# non-zero if any step's check fails.

set -euo pipefail

top=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
FILTER=${SNAPSHOT_FILTER:-$top/filters/snapshot/.libs/nbdkit-snapshot-filter.so}
if [ ! -f "$FILTER" ]; then
    echo "demo: $FILTER not built; run ./setup.sh first" >&2
    exit 1
fi

# The nbd Python module comes from Debian's python3-libnbd: make sure the
# system python3 (not a pyenv one) runs nbdsh.
export PATH=/usr/bin:$PATH

tmp=$(mktemp -d /tmp/nbdsnap-demo.XXXXXX)
sock=$tmp/sock
pid=

cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

if [ -t 1 ]; then B=$'\033[1m' G=$'\033[32m' R=$'\033[31m' N=$'\033[0m'; else B= G= R= N=; fi
step=0
heading() { step=$((step+1)); printf '\n%s=== %d. %s%s\n' "$B" "$step" "$*" "$N"; }
run()     { printf '$ %s\n' "$*"; "$@"; }
ok()      { printf '    %sOK%s  %s\n' "$G" "$N" "$*"; }
fail()    { printf '    %sFAIL%s %s\n' "$R" "$N" "$*" >&2; [ -f "$tmp/nbdkit.log" ] && sed 's/^/    nbdkit: /' "$tmp/nbdkit.log" >&2; exit 1; }

uri() { printf 'nbd+unix:///%s?socket=%s' "${1:-}" "$sock"; }

start_server() {
    rm -f "$tmp/pid" "$sock"    # nbdkit leaves its socket behind
    printf '$ nbdkit -U %s -P %s --filter=%s memory 64M snapshot-dir=%s &\n' \
        "$sock" "$tmp/pid" "$FILTER" "$tmp/snap"
    nbdkit -f -U "$sock" -P "$tmp/pid" --filter="$FILTER" \
        memory 64M snapshot-dir="$tmp/snap" 2>>"$tmp/nbdkit.log" &
    pid=$!
    for _ in $(seq 100); do
        [ -s "$tmp/pid" ] && return 0
        kill -0 "$pid" 2>/dev/null || fail "nbdkit exited during startup"
        sleep 0.1
    done
    fail "nbdkit did not start within 10 s"
}

stop_server() {
    printf '$ kill %s\n' "$pid"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
}

# SHA-256 of a whole export (the live disk when $1 is empty).
sha256() {
    nbdsh -u "$(uri "${1:-}")" -c '
import hashlib
d = hashlib.sha256()
size = h.get_size()
for off in range(0, size, 4 << 20):
    d.update(h.pread(min(4 << 20, size - off), off))
print(d.hexdigest())
'
}

# Run a command export once, print its JSON, fail unless "ok": true.
snapcmd() {
    printf '$ nbdsh -u %s -c ...   # read the JSON result\n' "'$(uri "$1")'"
    nbdsh -u "$(uri "$1")" -c '
import json, sys
s = h.pread(h.get_size(), 0).decode()
print(s.rstrip())
sys.exit(0 if json.loads(s).get("ok") is True else 1)
' || fail "command $1 did not succeed"
}

# ---------------------------------------------------------------------------
heading "Start nbdkit: memory plugin (64M) behind the snapshot filter"
start_server
ok "server is up on $sock (pid $pid)"

heading "Write a pattern to the live disk (16 MiB at offset 0)"
nbdsh -u "$(uri)" -c '
for i in range(16):
    line = b"nbdsnap demo chunk %02d\n" % i
    h.pwrite((line * (1 + (1 << 20) // len(line)))[:1 << 20], i << 20)
h.flush()
print("wrote 16 MiB, flushed")
'
before=$(sha256)
echo "live disk sha256: $before"

heading "Create snapshot 'clean'"
snapcmd @snapshot:create/clean

heading "Write other data: 1 MiB at 4M, zero 2 MiB at 40M, 64K at 60M"
nbdsh -u "$(uri)" -c '
h.pwrite(b"X" * (1 << 20), 4 << 20)
h.zero(2 << 20, 40 << 20)
h.pwrite(b"Y" * 65536, 60 << 20)
h.flush()
print("done")
'
after=$(sha256)
echo "live disk sha256: $after"
[ "$after" != "$before" ] || fail "the writes did not change the disk"
ok "the live disk changed"

heading "Change map since 'clean' (data = changed, zero = now zeroes, hole = unchanged)"
run nbdinfo --map "$(uri @snapshot:diff/clean)"
map=$(nbdinfo --map "$(uri @snapshot:diff/clean)")
echo "$map" | grep -Eq '^ *4194304 +1048576 +0 +data' || fail "expected 1M data at 4M"
echo "$map" | grep -Eq '^ *41943040 +2097152 +2 +zero' || fail "expected 2M zero at 40M"
echo "$map" | grep -Eq '^ *62914560 +65536 +0 +data'   || fail "expected 64K data at 60M"
[ "$(echo "$map" | grep -Ec ' (data|zero)$')" -eq 3 ] || fail "expected exactly 3 changed extents"
ok "exactly the three written ranges are reported as changed"

heading "Exports the server offers (live disk + one read-only view per snapshot)"
run nbdinfo --list "$(uri)"
nbdinfo --list --json "$(uri)" | grep -q '"export-name": "@snapshot/clean"' \
    || fail "@snapshot/clean not listed"
snapsha=$(sha256 @snapshot/clean)
echo "view @snapshot/clean sha256: $snapsha"
[ "$snapsha" = "$before" ] || fail "the snapshot view does not hold the old data"
ok "the view @snapshot/clean still reads the data from before the writes"

heading "Revert the live disk to 'clean' (no other client is connected now)"
snapcmd @snapshot:revert/clean
reverted=$(sha256)
echo "live disk sha256: $reverted"
[ "$reverted" = "$before" ] || fail "after revert the disk differs from snapshot 'clean'"
ok "the data is back: sha256 equals the one before the writes"

heading "Restart nbdkit with the same snapshot-dir"
stop_server
start_server
restarted=$(sha256)
echo "live disk sha256: $restarted"
[ "$restarted" = "$before" ] || fail "after restart the disk differs"
snapcmd @snapshot:list
ok "the disk and snapshot 'clean' survived the restart (plugin: memory, i.e. volatile!)"

heading "Stop and clean up"
stop_server
echo "snapshot-dir contents were:"; ls -l "$tmp/snap"
printf '\n%sdemo: all steps passed%s\n' "$G" "$N"
