#!/usr/bin/env bash
# Snapshot filter, basic behaviour: the live disk starts as the plugin's
# disk; writes land in it; create freezes a snapshot whose view
# (@snapshot/NAME) keeps its bytes while the live disk changes; revert makes
# the live disk exactly the snapshot; the plugin's disk is never written.
# Checked byte for byte with nbdcopy + cmp and with qemu-img compare.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires qemu-img --version
requires nbdcopy --version
requires nbdinfo --version

size=$((8 * 1024 * 1024))
base=$tmpdir/base.img
mkdata "$base" $size 1
base_sum=$(sha256sum < "$base")
d=$tmpdir/snap

start_server srv --filter="$F" file "$base" snapshot-dir="$d"

# 1. The live disk is the plugin's disk.
same_content srv "" "$base"
qemu-img compare -q -f raw -F raw "$base" "$(uri srv)"

# 2. Writes: a whole block, an unaligned write across several block
#    boundaries, a 7-byte write in the middle of a block, the last byte.
mkdata "$tmpdir/a1" 65536 11
mkdata "$tmpdir/a2" 200000 12
mkdata "$tmpdir/a3" 7 13
mkdata "$tmpdir/a4" 1 14
m1=$tmpdir/model1
cp "$base" "$m1"
for w in "0 a1" "$((5 * 65536 + 1000)) a2" "$((20 * 65536 + 333)) a3" "$((size - 1)) a4"; do
    set -- $w
    nbd_pwrite srv "" "$1" "$tmpdir/$2"
    file_pwrite "$m1" "$1" "$tmpdir/$2"
done
same_content srv "" "$m1"

# 3. Create s1: the result names it, with no parent (the plugin's disk).
out=$(snap_ok srv @snapshot:create/s1)
json_check "$out" 'j["snapshot"]["name"] == "s1"' 'j["snapshot"]["parent"] is None'

# 4. More writes, overlapping s1's, plus zero and trim (read as zeroes).
mkdata "$tmpdir/b1" 131072 21
mkdata "$tmpdir/b2" 5000 22
m2=$tmpdir/model2
cp "$m1" "$m2"
nbd_pwrite srv "" 32768 "$tmpdir/b1";       file_pwrite "$m2" 32768 "$tmpdir/b1"
nbd_pwrite srv "" $((20 * 65536)) "$tmpdir/b2"; file_pwrite "$m2" $((20 * 65536)) "$tmpdir/b2"
nbd_op srv "" "h.zero(100000, $((40 * 65536 + 17)))"; file_zero "$m2" $((40 * 65536 + 17)) 100000
nbd_op srv "" "h.trim(131072, $((50 * 65536)))";      file_zero "$m2" $((50 * 65536)) 131072
same_content srv "" "$m2"

# 5. The view of s1 still has s1's bytes; it is listed and read-only.
same_content srv @snapshot/s1 "$m1"
qemu-img compare -q -f raw -F raw "$m1" "$(uri srv @snapshot/s1)"
nbdinfo --list "$(uri srv)" > "$tmpdir/list"
grep -q 'export="@snapshot/s1"' "$tmpdir/list" ||
    { cat "$tmpdir/list"; fail "nbdinfo --list does not show @snapshot/s1"; }
nbd_op srv @snapshot/s1 '
assert h.is_read_only(), "view is not read-only"
try:
    h.pwrite(b"x", 0)
    raise AssertionError("a write to a view succeeded")
except nbd.Error:
    pass'
same_content srv @snapshot/s1 "$m1"

# 6. Revert: the live disk is exactly s1 again; it discarded the later writes.
out=$(snap_ok srv @snapshot:revert/s1)
json_check "$out" 'j["snapshot"] == "s1"' 'j["discarded_bytes"] > 0'
same_content srv "" "$m1"
qemu-img compare -q -f raw -F raw "$m1" "$(uri srv)"

# 7. Writes after the revert change the live disk only.
m3=$tmpdir/model3
cp "$m1" "$m3"
nbd_pwrite srv "" 12345 "$tmpdir/b2"; file_pwrite "$m3" 12345 "$tmpdir/b2"
same_content srv "" "$m3"
same_content srv @snapshot/s1 "$m1"

# 8. The plugin's disk was never written.
stop_server srv
[ "$(sha256sum < "$base")" = "$base_sum" ] || fail "the plugin's disk was modified"
