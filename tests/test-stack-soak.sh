#!/usr/bin/env bash
# Soak: fio with --verify=crc32c through the whole stack (--filter=freeze
# --filter=cbt --filter=snapshot over the file plugin) on several
# connections (multi-conn, which the stack advertises for the live disk),
# while, in a loop, snapshots are made and deleted (background merges),
# standalone checkpoints made and deleted, and nbdsnap backup (full, then
# incremental, 2 connections) runs.  Meanwhile nbdkit's resident memory
# (VmRSS) and open file descriptors (/proc/PID/fd) are sampled.
#
# Checks: fio reports no verify error and no I/O error; the server never
# dies; every backup restores to exactly the disk at its instant (checked
# right after it, while fio writes on, and again at the end).  fio
# never stops writing, so the instant is pinned: fio is stopped (SIGSTOP;
# its requests in flight drain), snapshot S is made, the backup is
# started and, once its frozen point exists (@freeze:list), fio continues.
# The frozen point and S then hold the same bytes, and the restore must
# equal @snapshot/S (cmp); S is then deleted.  At the end every point
# restores to the same bytes again, the repository verifies, no frozen
# point is left, the fd count never rose more than 8 over its level after
# the second backup in the second half and is back to it at the end, and RSS grew less than SOAK_RSS_SLACK_KB (default 64 MiB) from
# that level (long form: and less than 16 MiB over its second half).
#
# Short form (make check): SOAK_SECONDS=30.  Long form: CHECK_LONG=1
# (30 minutes).
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
if [ -z "$SOAK_SECONDS" ]; then
    if [ -n "$CHECK_LONG" ]; then SOAK_SECONDS=1800; else SOAK_SECONDS=30; fi
fi
: "${TEST_TIMEOUT:=$((SOAK_SECONDS * 2 + 300))}"
export TEST_TIMEOUT
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

: "${CBT_FILTER:=$top_builddir/filters/cbt/.libs/nbdkit-cbt-filter.so}"
: "${FREEZE_FILTER:=$top_builddir/filters/freeze/.libs/nbdkit-freeze-filter.so}"
: "${NBDSNAP:=$top_builddir/tools/nbdsnap}"
: "${SOAK_RSS_SLACK_KB:=65536}"
# Under AddressSanitizer freed memory waits in its quarantine (256 MiB by
# default) before it is reused, so RSS climbs by up to that much without
# a leak; LeakSanitizer checks for real leaks when nbdkit exits.
if [ "$NBDSNAP_SANITIZER" = asan ]; then
    SOAK_RSS_SLACK_KB=$((SOAK_RSS_SLACK_KB + 262144))
fi
for f in "$CBT_FILTER" "$FREEZE_FILTER" "$NBDSNAP"; do
    [ -f "$f" ] || { echo "$testname: ERROR: not built: $f" >&2; exit 99; }
done
requires fio --version
fio --enghelp 2>/dev/null | grep -qw nbd || skip "fio has no nbd engine"
requires nbdcopy --version
requires nbdkit file --dump-plugin

SIZE=$((128 * 1024 * 1024))
JOBS=4
truncate -s $SIZE "$tmpdir/disk.img"
repo=$tmpdir/repo
start_server srv --filter="$FREEZE_FILTER" --filter="$CBT_FILTER" \
    --filter="$F" file "$tmpdir/disk.img" \
    freeze-dir="$tmpdir" cbt-dir="$tmpdir/cbt" snapshot-dir="$tmpdir/snap"
U=$(uri srv)
pid=$(server_pid srv)
mc=$(nbdinfo --json "$U" | $PYTHON -c 'import json,sys; print(json.load(sys.stdin)["exports"][0].get("can_multi_conn", False))')
echo "$testname: $SOAK_SECONDS s, $JOBS fio connections (multi-conn advertised: $mc)"

tool ()
{
    if ! "$NBDSNAP" "$@" > "$tmpdir/tool.out" 2>&1; then
        cat "$tmpdir/tool.out" >&2
        server_alive srv || fail "the server died (during: nbdsnap $*)"
        fail "nbdsnap $* failed"
    fi
}

# fio: each job its own connection and its own quarter of the disk,
# random writes of 4K..64K, every written block read back and checked
# (verify_backlog) while it runs.  --thread: see nbdkit-1.32 notes (its
# nbd engine outlives a dead server; we end it by pid).
fio --name=soak --thread --ioengine=nbd --uri="$U" --rw=randwrite \
    --bsrange=4k-64k --iodepth=8 --numjobs=$JOBS --size=$((SIZE / JOBS)) \
    --offset_increment=$((SIZE / JOBS)) --verify=crc32c --verify_backlog=64 \
    --verify_fatal=1 --verify_state_save=0 --time_based --runtime="$SOAK_SECONDS" \
    --group_reporting --output-format=json --output="$tmpdir/fio.json" \
    > "$tmpdir/fio.out" 2>&1 &
fio=$!
bg_register "$fio"

# sample: append "seconds rss_kb fds" to $tmpdir/samples.
sample ()
{
    local rss fds
    rss=$(awk '/^VmRSS:/ {print $2}' /proc/$pid/status) ||
        fail "nbdkit is gone"
    fds=$(ls /proc/$pid/fd | wc -l)
    echo "$SECONDS $rss $fds" >> "$tmpdir/samples"
}

# A backup whose instant equals snapshot s$n (see the header).
backup_pinned ()
{
    local n=$1 kind=$2 i
    kill -STOP "$fio"
    sleep 0.5                   # the requests already sent complete
    tool snapshot create "$U" "s$n"
    "$NBDSNAP" backup "$U" "$repo" --name "b$n" $kind --connections 2 \
        --no-progress > "$tmpdir/backup.out" 2>&1 &
    local b=$!
    for ((i = 0; i < 300; i++)); do
        "$NBDSNAP" --json freeze list "$U" 2>/dev/null | grep -q "\"b$n\"" && break
        kill -0 $b 2>/dev/null || break
        sleep 0.05
    done
    kill -CONT "$fio"
    wait $b || { cat "$tmpdir/backup.out" >&2; fail "backup b$n failed"; }
}

# check_backup N: restore bN, compare with @snapshot/sN (the same
# instant), keep its sha256 for the end, delete sN.
check_backup ()
{
    local n=$1
    tool restore "$repo" "b$n" -o "$tmpdir/r.img" --connections 2 --no-progress
    dump srv "@snapshot/s$n" "$tmpdir/s.img"
    cmp "$tmpdir/r.img" "$tmpdir/s.img" ||
        fail "backup b$n does not restore to the disk at its instant"
    sha256sum < "$tmpdir/r.img" > "$tmpdir/b$n.sum"
    rm -f "$tmpdir/r.img" "$tmpdir/s.img"
    tool snapshot delete "$U" "s$n"
}

start=$SECONDS
end=$((SECONDS + SOAK_SECONDS - 5))
n=0 snaps=0 cps=0
while [ $SECONDS -lt $end ]; do
    kill -0 "$fio" 2>/dev/null || break
    n=$((n + 1))
    if [ $n = 1 ]; then backup_pinned $n --full; else backup_pinned $n --incremental; fi
    # The backup against its pinning snapshot, while fio writes on.
    check_backup $n
    # Extra snapshot and checkpoint churn.
    tool snapshot create "$U" "x$n"
    tool checkpoint create "$U" "c$n"
    snaps=$((snaps + 1)) cps=$((cps + 1))
    [ $n -gt 1 ] && tool snapshot delete "$U" "x$((n - 1))"
    [ $n -gt 1 ] && tool checkpoint delete "$U" "c$((n - 1))"
    [ $n -gt 2 ] && tool checkpoint delete "$U" "b$((n - 2))"
    sample
    sleep 1
done
wait "$fio"; st=$?
server_alive srv || fail "the server died"
$PYTHON - "$tmpdir/fio.json" <<'PY' || { cat "$tmpdir/fio.out" >&2; fail "fio reported errors"; }
import json, sys
t = open(sys.argv[1]).read()
j = json.loads(t[t.index("{"):])     # after fio's "connected" lines
errs = sum(job.get("error", 0) for job in j["jobs"])
w = sum(job["write"]["io_bytes"] for job in j["jobs"])
ios = sum(job["write"]["total_ios"] for job in j["jobs"])
vr = sum(job["read"]["io_bytes"] for job in j["jobs"])
print("fio: %d writes (%.0f MiB), %.0f MiB read back and verified (crc32c), errors %d"
      % (ios, w / 2**20, vr / 2**20, errs))
sys.exit(1 if errs else 0)
PY
[ $st = 0 ] || { cat "$tmpdir/fio.out" >&2; fail "fio exited with status $st"; }

# Backups once more, now that the chain is complete: all of them, or 20
# (the last 10 and 10 others at random) after a long run.
picks=$(seq 1 $n)
[ $n -gt 20 ] && picks="$(seq 1 $((n - 10)) | shuf -n 10) $(seq $((n - 9)) $n)"
for i in $picks; do
    tool restore "$repo" "b$i" -o "$tmpdir/r.img" --connections 2 --no-progress
    [ "$(sha256sum < "$tmpdir/r.img")" = "$(cat "$tmpdir/b$i.sum")" ] ||
        fail "backup b$i restores differently at the end"
    rm -f "$tmpdir/r.img"
done
tool verify "$repo"
out=$(snapcmd srv @freeze:list)
json_check "$out" 'j["ok"] is True' 'j["points"] == []'

# Memory and descriptors.
sleep 1
sample
$PYTHON - "$tmpdir/samples" "$SOAK_RSS_SLACK_KB" "$SOAK_SECONDS" <<'PY' || fail "nbdkit's memory or descriptors grew"
import sys
s = [tuple(map(int, l.split())) for l in open(sys.argv[1])]
slack, secs = int(sys.argv[2]), int(sys.argv[3])
# The level once everything is in use (the second iteration).
t0, rss0, fd0 = s[1] if len(s) > 2 else s[0]
_, rss1, fd1 = s[-1]
peak = max(r for (_, r, _) in s)
fdpeak = max(f for (_, _, f) in s)
print("nbdkit: RSS %d KiB after the second backup, %d KiB at the end (peak %d); "
      "fds %d -> %d (peak %d); %d samples" % (rss0, rss1, peak, fd0, fd1, fdpeak, len(s)))
bad = []
if fd1 > fd0:
    bad.append("descriptors %d -> %d" % (fd0, fd1))
late = s[len(s) // 2:]
if len(s) > 4 and max(f for (_, _, f) in late) > fd0 + 8:
    bad.append("descriptors up to %d in the second half (%d after the "
               "second backup)" % (max(f for (_, _, f) in late), fd0))
if rss1 - rss0 > slack:
    bad.append("RSS grew %d KiB" % (rss1 - rss0))
if secs >= 600:
    mid = s[len(s) // 2][1]
    if rss1 - mid > 16384:
        bad.append("RSS grew %d KiB over the second half" % (rss1 - mid))
if bad:
    sys.exit("; ".join(bad))
PY
echo "$testname: $n backups (1 full, $((n - 1)) incremental) each restored and compared, $snaps snapshots and $cps checkpoints made and deleted under load"
stop_server srv
echo "$testname: OK"
