#!/usr/bin/env bash
# freeze filter: the extents of a frozen view @freeze/P, exactly (nbdinfo
# --map): the disk's map at the point, with every block written after
# the point (saved: data) as data, runs of saved blocks merged and the
# extents below passed through between them; zeroed blocks, holes and
# the last short block.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

require_built FREEZE_FILTER
requires nbdinfo --version

K=65536
size=$((16 * K + 1000))
start_server s --filter="$FREEZE_FILTER" memory $size \
    freeze-dir="$tmpdir"
nbd_op s "" "
h.pwrite(b'\x11' * 3 * $K, $K)
h.pwrite(b'\x22' * $K, 5 * $K)
h.pwrite(b'\x33' * $K, 7 * $K)
h.zero($K, 7 * $K)
h.pwrite(b'\x44' * 1000, 16 * $K)"
at_point="0 65536 3 hole,zero
65536 196608 0 data
262144 65536 3 hole,zero
327680 65536 0 data
393216 655360 3 hole,zero
1048576 1000 0 data"
same_text "$at_point" "$(map s "")" "live map before the point"
out=$(snapcmd s @freeze:begin/P) || fail "@freeze:begin/P"
json_check "$out" 'j.get("ok") is True'
# After the point: data block 2, hole blocks 9 and 10 (one run of saved
# blocks), zero block 7 written, 10 bytes of the last short block.
nbd_op s "" "
h.pwrite(b'\x55' * $K, 2 * $K)
h.pwrite(b'\x66' * 2 * $K, 9 * $K)
h.pwrite(b'\x77' * 100, 7 * $K + 5)
h.pwrite(b'\x88' * 10, 16 * $K + 3)"
same_text "0 65536 3 hole,zero
65536 196608 0 data
262144 65536 3 hole,zero
327680 65536 0 data
393216 65536 3 hole,zero
458752 65536 0 data
524288 65536 3 hole,zero
589824 131072 0 data
720896 327680 3 hole,zero
1048576 1000 0 data" "$(map s @freeze/P)" "@freeze/P map"
