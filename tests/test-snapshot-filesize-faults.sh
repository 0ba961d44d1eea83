#!/usr/bin/env bash
# Snapshot filter with its data in segments (see test-snapshot-filesize):
# a failed fdatasync of a segment other than the first fails the flush
# with EIO and the error names that segment, so that an operator knows
# which file to look at.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

require_built FAULTINJECT
fsize_limit_nbdkit

# An 8 MiB disk in files of at most 2 MiB: four segments per layer.
export NBDKIT_FSIZE_KB=2048
M=$((1024 * 1024))
fi=$tmpdir/fi
start_server fi --filter="$F" memory $((8 * M)) snapshot-dir="$fi"
stop_server fi
grep -qx "data-segment-size $((2 * M))" "$fi/state" ||
    fail "not in segments of 2 MiB: $(cat "$fi/state")"
# Every fdatasync of the third segment (layer-1.data.2) fails.
LD_PRELOAD=$FAULTINJECT FI_CALLS=fdatasync FI_PATH="$fi/layer-1.data.2" \
FI_NTH=1 FI_COUNT=0 \
    start_server fi --filter="$F" memory $((8 * M)) snapshot-dir="$fi"
nbd_op fi "" "
import errno
h.pwrite(b'S' * 4096, 4 * $M + 4096)
try:
    h.flush()
    raise SystemExit('a flush succeeded over a failed fdatasync')
except nbd.Error as e:
    assert e.errnum == errno.EIO, e" || fail "segment fdatasync failure"
grep -q 'fdatasync layer-1.data.2' "$tmpdir/fi.log" ||
    { cat "$tmpdir/fi.log" >&2; fail "the error does not name layer-1.data.2"; }
stop_server fi
