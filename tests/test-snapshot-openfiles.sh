#!/usr/bin/env bash
# Snapshot filter, open files: every layer keeps its data file open, so
# under a soft limit of 64 open files (a hard limit well above) a disk
# could hold only ~60 snapshots if the filter kept the soft limit.  The
# filter raises the soft limit to the hard one in .load: 150 snapshots
# are made, survive a restart, and each reads back its own bytes.
# Under a hard limit that is too low, a start is refused saying which
# limit to raise (test-snapshot-filesize covers that wording).
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires prlimit --version
requires $PYTHON -c 'import nbd'

N=150
hard=$(ulimit -H -n)
[ "$hard" = unlimited ] || [ "$hard" -ge $((N + 100)) ] ||
    skip "the hard limit of open files ($hard) is below $((N + 100))"
ulimit -S -n 64 || fail "cannot set the soft limit of open files"

d=$tmpdir/snap
start_server srv --filter="$F" memory 1M snapshot-dir="$d"
pid=$(server_pid srv)
read -r soft hardp < <(prlimit --pid "$pid" --nofile --noheadings \
                           --output SOFT,HARD)
[ "$soft" = "$hardp" ] ||
    fail "nbdkit's soft limit of open files is $soft, not its hard $hardp"

# Block i of the disk holds i before snapshot s<i> (a 512-byte mark in
# the first sector of 64 KiB block i mod 16, so every layer holds data).
snapshots ()
{
    $PYTHON - "$tmpdir/srv.sock" "$1" "$N" <<'PY'
import json, re, sys, nbd
sock, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def cmd(export):
    h = nbd.NBD()
    h.set_export_name(export)
    h.connect_unix(sock)
    out = h.pread(h.get_size(), 0)
    h.shutdown()
    j = json.loads(out)
    if not j.get("ok"):
        sys.exit("%s: %s" % (export, out))
    return j
def mark(i):
    return (b"%08d" % i) * 64
h = nbd.NBD()
h.connect_unix(sock)
for i in range(1, n + 1):
    if mode == "make":
        h.pwrite(mark(i), (i % 16) * 65536)
        h.flush()
        cmd("@snapshot:create/s%d" % i)
h.shutdown()
names = [s["name"] for s in cmd("@snapshot:list")["snapshots"]
         if re.fullmatch(r"s[0-9]+", s["name"])]
want = ["s%d" % i for i in range(1, n + 1)]
if sorted(names) != sorted(want):
    sys.exit("the list has %d snapshots, want %d" % (len(names), n))
for i in range(1, n + 1):
    v = nbd.NBD()
    v.set_export_name("@snapshot/s%d" % i)
    v.connect_unix(sock)
    got = v.pread(512, (i % 16) * 65536)
    v.shutdown()
    if got != mark(i):
        sys.exit("snapshot s%d: block %d reads %r" % (i, i % 16, got[:16]))
print("%d snapshots, each reads back its own mark" % n)
PY
}

snapshots make || fail "making $N snapshots under a soft limit of 64"
restart_server srv
snapshots check || fail "after a restart"

# Descriptors running out at run time, wherever in a create it happens
# (opening the new layer's data file, writing its map, the state file):
# with k = 1..8 spare descriptors a create either works or fails saying
# to raise ulimit -n; either way, with the limit back, nothing is lost,
# the live disk takes writes and the next create works.  Without the
# care for EMFILE a failed map write put the store in its failed state.
pid=$(server_pid srv)
nofile=$(prlimit --pid "$pid" --nofile --noheadings --output SOFT)
failed=0
for k in 1 2 3 4 5 6 7 8; do
    prlimit --pid "$pid" \
        --nofile=$(( $(ls /proc/"$pid"/fd | wc -l) + k )): ||
        fail "prlimit failed"
    out=$(snapcmd srv @snapshot:create/k$k 2>/dev/null) ||
        out='{"ok": null}'      # too few to serve the connection at all
    prlimit --pid "$pid" --nofile="$nofile": || fail "prlimit failed"
    if [ "$(json_get "$out" 'j.get("ok")')" = false ]; then
        failed=$((failed + 1))
        echo "k=$k: $(json_get "$out" 'j["error"]')"
        json_check "$out" \
            're.search(r"Too many open files.*ulimit -n", j["error"])'
    fi
    nbd_op srv "" "h.pwrite(b'k$k', 0); h.flush()" ||
        fail "k=$k: the live disk refuses a write after the create"
    snap_ok srv @snapshot:create/after$k >/dev/null
done
[ $failed -gt 0 ] || fail "no create ran out of descriptors"
echo "$failed of 8 creates ran out of descriptors, nothing lost"
restart_server srv
snapshots check || fail "after the runs out of descriptors"
stop_server srv
echo "test-snapshot-openfiles: OK"
