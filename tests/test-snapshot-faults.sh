#!/usr/bin/env bash
# Snapshot filter, fault-injection sweep (issue 10): a short workload
# (writes, FUA writes, zero, trim, flush, create, revert, delete and its
# merge) on the snapshot filter over the file plugin, with the fault shim
# (tests/faultinject.c) failing one call: first the Nth of the pwrite,
# write, fdatasync, fsync, rename, open, ftruncate and fallocate calls on
# snapshot-dir, then the Nth allocation made by the filter (ENOMEM).
# Each sweep counts the calls of a run without faults, then tries every
# fault point (about 130 I/O and 80 allocation points, a minute or so);
# tests/sweep-snapshot.py says what is checked after each (no crash, no
# silent fault, no flush that succeeds after a failed one, reads go on,
# and after a restart the state loads and the disk and the snapshots
# match a model of what was acknowledged and made durable).
# CHECK_LONG=1 adds two I/O sweeps: a disk that stays broken from the Nth
# call on (FI_COUNT=0), and ENOSPC instead of EIO (another minute or two).
# SWEEP_POINTS=N (SWEEP_ALLOC_POINTS=N) tries N points spread evenly.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

require_built FAULTINJECT
export FAULTINJECT F tmpdir

io=pwrite,write,fdatasync,fsync,rename,open,ftruncate,fallocate
sweep ()
{
    timeout 1200 $PYTHON "$testsdir/sweep-snapshot.py" "$@" ||
        fail "fault sweep $* (above)"
}
sweep --calls "$io" --points "${SWEEP_POINTS:-all}"
sweep --calls malloc --obj nbdkit-snapshot-filter \
    --points "${SWEEP_ALLOC_POINTS:-all}"
if [ -n "$CHECK_LONG" ]; then
    sweep --calls "$io" --count 0 --points "${SWEEP_POINTS:-all}"
    sweep --calls "$io" --errno ENOSPC --points "${SWEEP_POINTS:-all}"
fi

# The filter's first allocation is the copy of snapshot-revert-on-close
# (given first): out of memory there is a refused start, not a server
# that silently runs without the parameter.
LD_PRELOAD=$FAULTINJECT FI_CALLS=malloc FI_OBJ=nbdkit-snapshot-filter \
FI_ERRNO=ENOMEM FI_NTH=1 \
    expect_start_fails "$tmpdir/roc.log" 'strdup|memory' --filter="$F" \
        memory 1M snapshot-revert-on-close=clean snapshot-dir="$tmpdir/roc"
echo "out of memory for snapshot-revert-on-close: refused"
