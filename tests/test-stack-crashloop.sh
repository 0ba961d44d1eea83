#!/usr/bin/env bash
# The whole stack (--filter=freeze --filter=cbt --filter=snapshot over the
# file plugin) killed with SIGKILL at random moments of a mixed workload:
# three clients writing, zeroing, trimming and flushing (cbt-sync strict
# or flush, chosen per round), checkpoint create/delete, nbdsnap backup
# (full and incremental, sometimes killed too), snapshot
# create/revert/delete and nbdsnap merge/delete in the repository.  After
# every restart tests/crashloop.py checks its model: acknowledged and
# flushed writes are there, every state file loads, snapshots read as
# made, every consistent checkpoint's change map holds every change since
# it, the repository verifies and every point restores to the disk as it
# was while its backup ran, no temporary files are left.
#
# Short form (make check): 50 kills.  Long form: CHECK_LONG=1 (1000
# kills) or CRASH_KILLS=N.  CRASH_SEED=N replays a run's choices.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
if [ -z "$CRASH_KILLS" ]; then
    if [ -n "$CHECK_LONG" ]; then CRASH_KILLS=1000; else CRASH_KILLS=50; fi
fi
: "${TEST_TIMEOUT:=$((CRASH_KILLS * 6 + 120))}"
export TEST_TIMEOUT
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

: "${CBT_FILTER:=$top_builddir/filters/cbt/.libs/nbdkit-cbt-filter.so}"
: "${FREEZE_FILTER:=$top_builddir/filters/freeze/.libs/nbdkit-freeze-filter.so}"
: "${NBDSNAP:=$top_builddir/tools/nbdsnap}"
for f in "$CBT_FILTER" "$FREEZE_FILTER" "$NBDSNAP"; do
    [ -f "$f" ] || { echo "$testname: ERROR: not built: $f" >&2; exit 99; }
done
requires nbdkit file --dump-plugin

seed=${CRASH_SEED:+--seed $CRASH_SEED}
$PYTHON "$testsdir/crashloop.py" --workdir "$tmpdir" --freeze "$FREEZE_FILTER" \
    --cbt "$CBT_FILTER" --snapshot "$F" --nbdsnap "$NBDSNAP" \
    --kills "$CRASH_KILLS" $seed || fail "crash loop failed (see above)"
echo "$testname: OK"
