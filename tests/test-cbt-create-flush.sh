#!/usr/bin/env bash
# cbt filter: @cbt:create/NAME flushes the disk below first, so a crash
# after a checkpoint cannot take the disk back behind it.  Stack cbt +
# snapshot (the snapshot filter saves its map at flush: an unflushed
# write is lost by kill -9).  A write, not flushed; checkpoint C; kill -9;
# after the restart the write is there (before the fix it was gone while
# @cbt/C, consistent in strict mode, showed no change: an incremental
# backup since C would have kept the lost bytes).  Also through
# @freeze:begin, which creates its checkpoint through the cbt filter,
# and @cbt:create/NAME/snapshot.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"
require_built FREEZE_FILTER

img=$tmpdir/disk.img
truncate -s 1M "$img"
start_server srv --filter="$FREEZE_FILTER" --filter="$C" --filter="$F" file "$img" \
    cbt-dir="$tmpdir/cbt" snapshot-dir="$tmpdir/snap" freeze-dir="$tmpdir" \
    cbt-sync=strict

# round N CREATE-EXPORT: write block N (no flush), create, kill -9,
# restart, the write must be there.
round ()
{
    local n=$1 ex=$2 got
    nbd_op srv "" "h.pwrite(b'$n' * 4096, $n * 65536)"
    cbt_ok srv "$ex" > /dev/null
    restart_server srv kill9
    got=$(nbd_op srv "" "print(h.pread(4096, $n * 65536) == b'$n' * 4096)")
    [ "$got" = True ] || fail "the write acknowledged before $ex was lost by kill -9"
}
round 1 @cbt:create/C1
round 2 @cbt:create/C2
# A checkpoint and a snapshot at one instant: the write survives (the
# flush before the checkpoint covers the moment before the snapshot is
# made, whose creation saves the layer as well).
round 4 @cbt:create/C4/snapshot
# The freeze filter's begin (its answer is the freeze filter's JSON).
nbd_op srv "" "h.pwrite(b'3' * 4096, 3 * 65536)"
out=$(snapcmd srv @freeze:begin/F3)
json_check "$out" 'j["ok"] is True'
restart_server srv kill9
got=$(nbd_op srv "" "print(h.pread(4096, 3 * 65536) == b'3' * 4096)")
[ "$got" = True ] || fail "the write acknowledged before @freeze:begin/F3 was lost by kill -9"
stop_server srv
echo "$testname: OK"
