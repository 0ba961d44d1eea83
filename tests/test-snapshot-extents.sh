#!/usr/bin/env bash
# Snapshot filter, ordinary extents of the live disk and of @snapshot/NAME
# views: every extent flagged "zero" really reads as zeroes (checked byte by
# byte), written blocks are data, the plugin's holes show through, and
# blocks trimmed or zeroed whole read as zeroes and are reported zero (a
# partial zero is data).  A view's map is frozen at its snapshot.  nbdcopy,
# which skips "zero" extents, copies every export exactly.
# Runs in captive mode (nbdkit -U - ... --run).
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires nbdinfo --version
requires nbdcopy --version
requires truncate --version

B=65536
size=$((64 * B))                       # 4M, 64 blocks
base=$tmpdir/base.img
# A sparse base: data only in blocks 16-23 (1M..1.5M).
truncate -s $size "$base"
mkdata "$tmpdir/data" $((8 * B)) 7
file_pwrite "$base" $((16 * B)) "$tmpdir/data"

# zmap EXPORT: the extents as "OFFSET LENGTH zero|data" (merged); fails if
# an extent flagged zero does not read as zeroes.
zmap ()
{
    $PYTHON - "$unixsocket" "$1" <<'EOF'
import sys, os
sys.path.insert(0, os.environ["testsdir"])
import snaptest as st, nbd
h = st.connect(sys.argv[1], sys.argv[2])
out = []
for (o, n, f) in st.extents(h):
    kind = "zero" if f & nbd.STATE_ZERO else "data"
    if kind == "zero":
        for p in range(o, o + n, 1 << 20):
            k = min(1 << 20, o + n - p)
            if h.pread(k, p) != bytes(k):
                sys.exit("%s: extent at %d length %d is flagged zero but does "
                         "not read as zeroes" % (sys.argv[2], o, n))
    if out and out[-1][2] == kind:
        out[-1][1] += n
    else:
        out.append([o, n, kind])
st.close(h)
for o, n, k in out:
    print(o, n, k)
EOF
}

# zero and trim read as zeroes; nbdcopy (with extents) gives the same bytes
# as nbdcopy --no-extents; the maps are exactly as expected.
checks ()
{
    local B=65536 m
    nbdsh -u "$uri" -c "
B = $B
h.pwrite(b'\\x22' * B, 2 * B)          # block 2 (a plugin hole): data
h.zero(B, 20 * B)                     # block 20 (plugin data): zeroed whole
h.trim(B, 21 * B)                     # block 21: trimmed whole
h.zero(10, 22 * B + 7)                # block 22: partial zero, data
assert h.pread(B, 20 * B) == bytes(B), 'zeroed block does not read as zeroes'
assert h.pread(B, 21 * B) == bytes(B), 'trimmed block does not read as zeroes'
assert h.pread(10, 22 * B + 7) == bytes(10), 'partial zero does not read as zeroes'
"
    m=$(zmap "")
    same_text "\
0 131072 zero
131072 65536 data
196608 851968 zero
1048576 262144 data
1310720 131072 zero
1441792 131072 data
1572864 2621440 zero" "$m" "zero/data map of the live disk"

    snap_ok "$uri" @snapshot:create/s >/dev/null
    nbdsh -u "$uri" -c "
B = $B
h.pwrite(b'\\x01' * 100, 0)           # block 0: data
h.zero(B, 17 * B)                     # block 17: zero
h.trim(2 * B, 62 * B)                 # blocks 62-63: still zero
"
    # The view keeps the map of the moment it was made.
    same_text "$m" "$(zmap @snapshot/s)" "zero/data map of @snapshot/s"
    same_text "\
0 65536 data
65536 65536 zero
131072 65536 data
196608 851968 zero
1048576 65536 data
1114112 65536 zero
1179648 131072 data
1310720 131072 zero
1441792 131072 data
1572864 2621440 zero" "$(zmap "")" "zero/data map of the live disk after create"

    # nbdcopy with extents copies both exactly.
    local e
    for e in "" @snapshot/s; do
        nbdcopy --no-extents "$(_make_uri "$uri" "$e")" "$tmpdir/noext"
        nbdcopy "$(_make_uri "$uri" "$e")" "$tmpdir/ext"
        cmp "$tmpdir/noext" "$tmpdir/ext" ||
            fail "nbdcopy using extents of '$e' gives other bytes than without"
    done
    # The trimmed and zeroed blocks of the plugin's data are zero in the copy.
    cmp -n $B -i $((20 * B)):0 "$tmpdir/noext" /dev/zero ||
        fail "block 20 of the view does not read as zeroes"
    echo "extents: all checks passed"
}
captive checks --filter="$F" file "$base" snapshot-dir="$tmpdir/snap" \
        snapshot-block-size=64K
