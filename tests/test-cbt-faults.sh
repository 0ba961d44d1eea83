#!/usr/bin/env bash
# cbt filter, fault injection sweep (issue 10): a short workload (several
# checkpoints created and deleted, writes, zeroes, trims, flushes, a list
# and a change map) against the cbt filter over the file plugin, in
# cbt-sync=strict and cbt-sync=flush, with the fault shim failing the Nth
# call among pwrite, write, fsync, fdatasync, rename, open and ftruncate
# in cbt-dir (EIO), and the Nth allocation of nbdkit-cbt-filter.so
# (ENOMEM).  After each fault: the start, op or stop it hit reports an
# error (never "ok"), nothing crashes, and after a restart without
# faults (after a clean stop; in strict mode every other point after
# kill -9) the state loads, acknowledged checkpoints exist, and every
# checkpoint reported consistent has a change map covering every
# acknowledged write since it.  tests/cbt-faults.py has the details.
#
# The calls are counted first, then every fault point is tried when
# CHECK_LONG=1 (about 500 points); otherwise an even spread of 40 points
# per sweep (the first and last included).  The numbers are printed.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"

require_built FAULTINJECT

if [ "${CHECK_LONG:-0}" = 1 ]; then points=all; else points=spread; fi
for mode in strict flush; do
    for kind in io malloc; do
        w=$tmpdir/$mode-$kind
        mkdir "$w"
        timeout 600 $PYTHON "$testsdir/cbt-faults.py" --filter "$C" \
            --shim "$FAULTINJECT" --workdir "$w" --mode $mode --kind $kind \
            --points $points --spread 40 ||
            fail "fault sweep $mode/$kind (above)"
    done
done
