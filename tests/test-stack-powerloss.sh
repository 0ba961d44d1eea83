#!/usr/bin/env bash
# Power loss at flush boundaries, for the whole stack (freeze + cbt +
# snapshot over the file plugin).  tests/writelog.c, preloaded into
# nbdkit, logs every change the filters make to their state directories
# (writes, truncations, punched holes, creations, renames, unlinks, fsync,
# fdatasync) while one client runs writes, FUA writes, zeroes, trims,
# flushes and snapshot/checkpoint commands; tests/powerloss.py then
# rebuilds the directories as a power cut after each fsync/fdatasync
# leaves them in the worst case (unsynced file data and unsynced
# directory entries lost), starts nbdkit on each and checks the model:
# acknowledged flushed writes present, acknowledged snapshots and
# checkpoints there and exact, every consistent checkpoint's map
# complete.  Both cbt-sync modes.
#
# Short form (make check): 60 cut points per mode.  CHECK_LONG=1 (or
# POWER_POINTS=0): every sync point of a longer run.  POWER_SEED=N
# replays a run.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
if [ -z "$POWER_POINTS" ]; then
    if [ -n "$CHECK_LONG" ]; then POWER_POINTS=0; POWER_OPS=400; else POWER_POINTS=60; fi
fi
: "${POWER_OPS:=150}"
: "${TEST_TIMEOUT:=3600}"
export TEST_TIMEOUT
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

: "${CBT_FILTER:=$top_builddir/filters/cbt/.libs/nbdkit-cbt-filter.so}"
: "${FREEZE_FILTER:=$top_builddir/filters/freeze/.libs/nbdkit-freeze-filter.so}"
: "${WRITELOG:=$top_builddir/tests/.libs/libwritelog.so}"
for f in "$CBT_FILTER" "$FREEZE_FILTER" "$WRITELOG"; do
    [ -f "$f" ] || { echo "$testname: ERROR: not built: $f (make check builds it)" >&2; exit 99; }
done
requires nbdkit file --dump-plugin

seed=${POWER_SEED:-$RANDOM}
for sync in strict flush; do
    rm -rf "$tmpdir/$sync"; mkdir "$tmpdir/$sync"
    $PYTHON "$testsdir/powerloss.py" --workdir "$tmpdir/$sync" \
        --freeze "$FREEZE_FILTER" --cbt "$CBT_FILTER" --snapshot "$F" \
        --writelog "$WRITELOG" --sync $sync --ops "$POWER_OPS" \
        --points "$POWER_POINTS" --seed "$seed" ||
        fail "power loss replay failed (cbt-sync=$sync)"
done
echo "$testname: OK"
