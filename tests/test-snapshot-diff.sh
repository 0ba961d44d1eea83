#!/usr/bin/env bash
# Snapshot filter, change maps: the base:allocation extents of
# @snapshot:diff/BASE (live disk since BASE) and @snapshot:diff/BASE/NAME
# (snapshot NAME since BASE), read with nbdinfo --map, give exactly the
# blocks written since BASE: 0 "data", 2 "zero" (whole block last zeroed or
# trimmed), 1 "hole" = unchanged.  Writing the same bytes again counts as a
# change; a partial zero is "data".  Also: the views' bytes are the full
# disk, deleting a snapshot changes no map, a BASE that is not an ancestor
# counts both branches, and unknown BASE/NAME fail the open.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires nbdinfo --version
requires nbdcopy --version

B=65536
size=$((16 * B))                       # 16 blocks of 64K
base=$tmpdir/base.img
mkdata "$base" $size 6
d=$tmpdir/snap
start_server srv --filter="$F" file "$base" snapshot-dir="$d" snapshot-block-size=64K

# Before s1: block 1.
nbd_op srv "" "h.pwrite(b'\\1' * $B, 1 * $B)"
snap_ok srv @snapshot:create/s1 >/dev/null

# Between s1 and s2.
nbd_op srv "" "
B = $B
h.pwrite(b'\\3' * B, 3 * B)                    # block 3: data
h.zero(B, 5 * B)                               # block 5: zero
h.trim(B, 6 * B)                               # block 6: zero (trim)
h.pwrite(h.pread(B, 7 * B), 7 * B)             # block 7: same bytes, still a change
h.pwrite(b'\\x09' * 10, 9 * B + 100)            # block 9: 10 bytes, data
h.zero(100, 10 * B + 5)                        # block 10: partial zero, data
h.pwrite(b'\\x0c' * B, 12 * B + B // 2)         # blocks 12, 13: data
"
snap_ok srv @snapshot:create/s2 >/dev/null

# After s2, in the live layer.
nbd_op srv "" "
B = $B
h.pwrite(b'\\x0e' * 1000, 14 * B)               # block 14: data
h.pwrite(b'\\x05' * 4096, 5 * B)                # block 5: now data
"

same_text "\
0 196608 1 hole
196608 65536 0 data
262144 65536 1 hole
327680 65536 0 data
393216 65536 2 zero
458752 65536 0 data
524288 65536 1 hole
589824 131072 0 data
720896 65536 1 hole
786432 196608 0 data
983040 65536 1 hole" "$(map srv @snapshot:diff/s1)" "map of @snapshot:diff/s1"

same_text "\
0 196608 1 hole
196608 65536 0 data
262144 65536 1 hole
327680 131072 2 zero
458752 65536 0 data
524288 65536 1 hole
589824 131072 0 data
720896 65536 1 hole
786432 131072 0 data
917504 131072 1 hole" "$(map srv @snapshot:diff/s1/s2)" "map of @snapshot:diff/s1/s2"

same_text "\
0 327680 1 hole
327680 65536 0 data
393216 524288 1 hole
917504 65536 0 data
983040 65536 1 hole" "$(map srv @snapshot:diff/s2)" "map of @snapshot:diff/s2"

# The views' bytes are the whole disk (live, resp. s2); nbdcopy with
# extents (it skips only "zero") copies them right.
dump srv "" "$tmpdir/live"
dump srv @snapshot/s2 "$tmpdir/s2"
same_content srv @snapshot:diff/s1 "$tmpdir/live"
same_content srv @snapshot:diff/s1/s2 "$tmpdir/s2"
nbdcopy "$(uri srv @snapshot:diff/s1)" "$tmpdir/copy"
cmp "$tmpdir/copy" "$tmpdir/live" || fail "nbdcopy of @snapshot:diff/s1 is wrong"

# Unknown names fail the open; change maps are read-only.
open_fails srv @snapshot:diff/nosuch
open_fails srv @snapshot:diff/s1/nosuch
open_fails srv @snapshot:diff/nosuch/s2
nbd_op srv @snapshot:diff/s1 'assert h.is_read_only()'

# Deleting a snapshot changes no change map: s3 on top of live, block 15
# in the new live layer, delete s2 (merged into s3).
snap_ok srv @snapshot:create/s3 >/dev/null
nbd_op srv "" "h.pwrite(b'\\x0f', 15 * $B + $B - 1)"
before=$(map srv @snapshot:diff/s1)
before13=$(map srv @snapshot:diff/s1/s3)
same_text "\
0 196608 1 hole
196608 65536 0 data
262144 65536 1 hole
327680 65536 0 data
393216 65536 2 zero
458752 65536 0 data
524288 65536 1 hole
589824 131072 0 data
720896 65536 1 hole
786432 262144 0 data" "$before" "map of @snapshot:diff/s1 with s3"
snap_ok srv @snapshot:delete/s2 >/dev/null
wait_merged srv
same_text "$before" "$(map srv @snapshot:diff/s1)" "map of @snapshot:diff/s1 after deleting s2"
same_text "$before13" "$(map srv @snapshot:diff/s1/s3)" "map of @snapshot:diff/s1/s3 after deleting s2"
open_fails srv @snapshot:diff/s2

# A BASE on another branch: revert to s1, write block 0: the map since s3
# covers what changed on both branches below s1 (3,5,6,7,9,10,12,13,14 on
# s3's side, 0 on the live side).  The live disk has s1's bytes there: data.
snap_ok srv @snapshot:revert/s1 >/dev/null
nbd_op srv "" "h.pwrite(b'\\x10' * 10, 0)"
same_text "\
0 65536 0 data
65536 131072 1 hole
196608 65536 0 data
262144 65536 1 hole
327680 196608 0 data
524288 65536 1 hole
589824 131072 0 data
720896 65536 1 hole
786432 196608 0 data
983040 65536 1 hole" "$(map srv @snapshot:diff/s3)" "map of @snapshot:diff/s3 from another branch"

# Across a restart, maps are the same.
restart_server srv
same_text "$before13" "$(map srv @snapshot:diff/s1/s3)" "map of @snapshot:diff/s1/s3 after restart"
same_text "\
0 65536 0 data
65536 983040 1 hole" "$(map srv @snapshot:diff/s1)" "map of @snapshot:diff/s1 after revert and restart"
stop_server srv
