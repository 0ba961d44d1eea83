#!/usr/bin/env bash
# nbdsnap: a backup and delete / merge / verify of the same repository at
# the same time.  A backup in progress holds its parent point: deleting it,
# or merging in a way that replaces or removes it, is refused with "the
# parent of a backup in progress (pid N)" naming the backup's pid, and the
# backup commits a point whose chain is whole.  Operations that touch
# other points go ahead.  verify during a backup passes and leaves its
# temporary directory alone.  If something that ignores the hold removes
# the parent anyway (here: mv), the commit refuses, the backup exits 1 and
# deletes the checkpoint it made.  verify (slowed down) while a merge
# replaces a point and a delete removes one reports no damage.  After
# each case the repository verifies and every point restores to the disk
# it was taken from (cmp).
#
# The backups are slowed down by nbdkit's delay filter below the stack
# (every read of the disk sleeps), so that they are surely still running.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/nbdsnap-functions.sh"
requires nbdcopy --version
requires nbdkit --filter=delay null --dump-plugin

K=65536
repo=$tmpdir/repo
truncate -s 8M "$tmpdir/disk.img"
start_server srv --filter="$FREEZE_FILTER" --filter="$CBT_FILTER" \
    --filter=delay file "$tmpdir/disk.img" freeze-dir="$tmpdir" \
    cbt-dir="$tmpdir/cbt" delay-read=60ms
U=$(uri srv)

# change SEED: new bytes in every other block of the first 5M (40 separate
# reads for the next incremental: 2.4s with the delay).
change ()
{
    nbd_op srv "" "
import random
r = random.Random($1)
for b in range(0, 80, 2):
    h.pwrite(r.randbytes(4096), b * $K + 512)
h.flush()"
}

# backup_bg NAME [ARGS]: start a backup in the background (pid in $bpid,
# output in $tmpdir/NAME.out) once the disk is dumped to exp-NAME.img;
# wait until it writes its temporary point.
backup_bg ()
{
    local name=$1; shift
    dump srv "" "$tmpdir/exp-$name.img"
    "$N" backup "$U" "$repo" --name "$name" --connections 1 --no-progress \
        "$@" > "$tmpdir/$name.out" 2>&1 &
    bpid=$!
    bg_register "$bpid"
    wait_tmp "$repo" "$name" "$bpid"
}

# backup_done [CODE]: wait for the background backup, expect CODE (0).
backup_done ()
{
    local st=0
    wait "$bpid" || st=$?
    [ "$st" -eq "${1:-0}" ] || {
        cat "$tmpdir/"*.out >&2
        fail "backup: expected exit ${1:-0}, got $st"
    }
}

# all_good: the repository verifies, has no leftovers, every point
# restores right, the server holds no frozen point.
all_good ()
{
    "$N" verify "$repo" > /dev/null || fail "verify failed"
    no_tmp "$repo"
    restore_all "$repo"
    nothing_held "$U"
}

change 1
dump srv "" "$tmpdir/exp-F1.img"
"$N" backup "$U" "$repo" --full --name F1 --no-progress >/dev/null
change 2
dump srv "" "$tmpdir/exp-I1.img"
"$N" backup "$U" "$repo" --name I1 --no-progress >/dev/null

echo "== backup I2 (on I1) vs delete I1, delete F1, delete X1"
dump srv "" "$tmpdir/exp-X1.img"
"$N" backup "$U" "$repo" --full --name X1 --no-progress >/dev/null
change 3
backup_bg I2 --since I1
expect_exit 1 "restore point I1 is the parent of a backup in progress \(pid $bpid\)" \
    "$N" delete "$repo" I1
expect_exit 1 'I1' "$N" delete "$repo" F1
expect_exit 0 '' "$N" delete "$repo" X1
kill -0 "$bpid" 2>/dev/null || fail "backup I2 ended too early for this test"
backup_done 0
[ "$(points "$repo")" = "F1 I1 I2" ] || fail "points: $(points "$repo")"
all_good
[ "$(checkpoints "$U")" = "F1 I1 X1 I2" ] || fail "checkpoints: $(checkpoints "$U")"
"$N" checkpoint delete "$U" X1 >/dev/null

echo "== backup I3 (on I2) vs merge I2 (would replace it), merge I1 (may)"
change 4
backup_bg I3
expect_exit 1 "restore point I2 is the parent of a backup in progress \(pid $bpid\): merging would replace it" \
    "$N" merge "$repo" I2
expect_exit 0 '' "$N" merge "$repo" I1
kill -0 "$bpid" 2>/dev/null || fail "backup I3 ended too early for this test"
backup_done 0
[ "$(points "$repo")" = "I1 I2 I3" ] || fail "points: $(points "$repo")"
all_good

echo "== backup I4 (on I2, not the newest) vs merge I3 (would remove I2)"
change 5
backup_bg I4 --since I2
expect_exit 1 "restore point I2 is the parent of a backup in progress \(pid $bpid\): merging would remove it" \
    "$N" merge "$repo" I3
kill -0 "$bpid" 2>/dev/null || fail "backup I4 ended too early for this test"
backup_done 0
[ "$(points "$repo")" = "I1 I2 I3 I4" ] || fail "points: $(points "$repo")"
all_good
# Now I2 has two children: merging I3 keeps I2 for I4.
"$N" merge "$repo" I3 >/dev/null
[ "$(points "$repo")" = "I1 I2 I3 I4" ] || fail "points: $(points "$repo")"
all_good

echo "== backup I5 vs verify"
change 6
backup_bg I5
expect_exit 0 '' "$N" verify "$repo"
compgen -G "$repo/points/.tmp-I5-*" >/dev/null ||
    fail "verify removed the temporary point of a running backup"
backup_done 0
all_good

echo "== backup I6: its parent I5 removed by something that ignores the hold"
change 7
before=$(checkpoints "$U")
backup_bg I6
mv "$repo/points/I5" "$tmpdir/I5.away"
backup_done 1
cat "$tmpdir/I6.out"
grep -q "parent point I5 of point I6 was removed or replaced" "$tmpdir/I6.out" ||
    fail "the backup does not say why it could not commit"
grep -q "backup 'I6' failed" "$tmpdir/I6.out" || fail "no failure message"
[ "$(checkpoints "$U")" = "$before" ] ||
    fail "the failed backup left its checkpoint: $(checkpoints "$U")"
mv "$tmpdir/I5.away" "$repo/points/I5"
[ "$(points "$repo")" = "I1 I2 I3 I4 I5" ] || fail "points: $(points "$repo")"
all_good

echo "== verify (slowed down) vs merge and delete"
# verify takes no lock: a point replaced by a merge or removed by a
# delete while verify loads it must not be reported as damaged.  Each
# close of verify sleeps (the fault shim's FI_DELAY, no fault), which
# holds it between reading a manifest and opening the index.
for round in 1 2 3; do
    cp -a "$repo" "$tmpdir/repo.before"
    LD_PRELOAD=$FAULTINJECT FI_CALLS=close FI_DELAY=40 \
        "$N" verify "$repo" > "$tmpdir/v.out" 2>&1 &
    vpid=$!
    sleep 0.$((round * 2))
    "$N" merge "$repo" I4 > /dev/null
    "$N" delete "$repo" I5 > /dev/null
    st=0; wait "$vpid" || st=$?
    [ "$st" = 0 ] || { cat "$tmpdir/v.out"; fail "verify during merge/delete: exit $st"; }
    rm -rf "$repo"; mv "$tmpdir/repo.before" "$repo"
done
all_good

echo "$testname: OK"
