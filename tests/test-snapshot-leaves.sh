#!/usr/bin/env bash
# Snapshot filter, extents and change maps of a big thin disk: whole map
# leaves (4096 blocks, 256 MiB at 64K blocks) that no layer of a change
# map's set holds, or that the owner map lacks, are answered in one step
# (filters/snapshot/extents.c).  On 15 TiB (null plugin) with writes in
# leaf 0, in the last leaf, on both sides of a leaf boundary, in far
# leaves, zeroes and a partial write, across two snapshots and the live
# layer: nbdinfo --map of the live disk, a snapshot view and three change
# maps equals the extents computed here from the writes alone; so does a
# REQ_ONE block status (one extent, to the end of its run) at leaf edges;
# a revert under the cbt filter marks exactly the blocks it changes
# (@cbt/NAME).  On 1 TiB of the data plugin, the plugin's own extents
# (nbdinfo --map of the bare plugin) show through every leaf the layers
# do not cover.  Not a timed test (the same answers block by block pass
# too, only slower).
TEST_TIMEOUT=${TEST_TIMEOUT:-300}
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires nbdinfo --version
requires nbdkit null --version
requires nbdkit data --version
C=$CBT_FILTER

B=65536
L=$((4096 * B))                          # one map leaf
# 15 TiB and 37 blocks: the last leaf is a short one.  (Not 16 TiB: the
# layer file of a block at 16 TiB would pass ext4's largest file.)
T=$(((15 << 40) + 37 * B))
LAST=$(((T - 1) / L * L))                # the last leaf's first byte

# The expected extents: model.py EXPECTED-KIND ... prints "offset length
# type" lines, merged as `map` merges them.
cat > "$tmpdir/model.py" <<'PY'
import sys, json
B = 65536
def runs(disk, blocks, default):
    """Extents of a disk whose block b has type blocks.get(b, default)."""
    out = []
    def add(o, l, t):
        if out and out[-1][2] == t and out[-1][0] + out[-1][1] == o:
            out[-1][1] += l
        else:
            out.append([o, l, t])
    pos = 0
    for b in sorted(blocks):
        if b * B > pos:
            add(pos, b * B - pos, default)
        add(b * B, min(B, disk - b * B), blocks[b])
        pos = b * B + min(B, disk - b * B)
    if pos < disk:
        add(pos, disk - pos, default)
    return out
def overlay(plugin, blocks):
    """The plugin's extents with blocks (b -> type) on top."""
    out = []
    def add(o, l, t):
        if l <= 0:
            return
        if out and out[-1][2] == t and out[-1][0] + out[-1][1] == o:
            out[-1][1] += l
        else:
            out.append([o, l, t])
    keys = sorted(blocks)
    k = 0
    for (o, l, t) in plugin:
        pos, end = o, o + l
        while pos < end:
            while k < len(keys) and (keys[k] + 1) * B <= pos:
                k += 1
            if k < len(keys) and keys[k] * B < end:
                bs = max(keys[k] * B, pos)
                add(pos, bs - pos, t)
                be = min((keys[k] + 1) * B, end)
                add(bs, be - bs, blocks[keys[k]])
                pos = be
            else:
                add(pos, end - pos, t)
                pos = end
    return out
PY

# ---------------------------------------------------------------- 15 TiB
d=$tmpdir/snap
start_server srv --filter="$C" --filter="$F" null "$T" \
    snapshot-dir="$d" cbt-dir="$tmpdir/cbt"

# Layer 1 (s1): leaf 0's first block, the disk's last block.
nbd_op srv "" "
h.pwrite(b'\\1' * $B, 0)
h.pwrite(b'\\2' * $B, $T - $B)
h.flush()"
snap_ok srv @snapshot:create/s1 >/dev/null
# Layer 2 (s2): the last block of leaf 5 and the first of leaf 6 (one
# write across the boundary), leaf 0's first block again, a zeroed block
# in leaf 1000, 100 bytes in the middle of leaf 40000 (a data block).
nbd_op srv "" "
h.pwrite(b'\\3' * (2 * $B), 6 * $L - $B)
h.pwrite(b'\\4' * $B, 0)
h.zero($B, 1000 * $L + 7 * $B)
h.pwrite(b'\\5' * 100, 40000 * $L + 12345)
h.flush()"
snap_ok srv @snapshot:create/s2 >/dev/null
out=$(snapcmd srv @cbt:create/c0)
json_check "$out" 'j.get("ok") is True'
# Live layer: the first block of the last leaf, leaf 0's last block, a
# zeroed block at 8 TiB.
nbd_op srv "" "
h.pwrite(b'\\6' * $B, $LAST)
h.pwrite(b'\\7' * $B, $L - $B)
h.zero($B, $T // 2 // $B * $B)
h.flush()"

# The model: each layer's blocks, 'd' data or 'z' zero.
layers="{
 'l1': {0: 'd', $T // $B - 1: 'd'},
 'l2': {6 * $L // $B - 1: 'd', 6 * $L // $B: 'd', 0: 'd',
        (1000 * $L + 7 * $B) // $B: 'z', (40000 * $L + 12345) // $B: 'd'},
 'l3': {$LAST // $B: 'd', $L // $B - 1: 'd', $T // 2 // $B: 'z'},
}"
# expect CHAIN SET: plain extents of CHAIN (null plugin below: hole,zero)
# if SET is empty, else the change map of SET's layers over CHAIN.
expect ()
{
    $PYTHON -c "
import sys; sys.path.insert(0, '$tmpdir'); from model import *
T = $T; layers = $layers
chain = '$1'.split(); diff = '$2'.split()
top = {}
for l in chain:
    top.update(layers[l])
if diff:
    ch = set().union(*(layers[l] for l in diff))
    blocks = {b: 2 if top.get(b) == 'z' else 0 for b in ch}
    r = runs(T, blocks, 1)
else:
    r = runs(T, {b: 3 if s == 'z' else 0 for b, s in top.items()}, 3)
for o, l, t in r:
    print(o, l, t)"
}
strip () { awk '{ print $1, $2, $3 }'; }

same_text "$(expect "l1 l2 l3" "")" "$(map srv "" | strip)" "live extents"
same_text "$(expect "l1" "")" "$(map srv @snapshot/s1 | strip)" "extents of s1"
same_text "$(expect "l1 l2 l3" "l2 l3")" "$(map srv @snapshot:diff/s1 | strip)" \
    "change map @snapshot:diff/s1"
same_text "$(expect "l1 l2" "l2")" "$(map srv @snapshot:diff/s1/s2 | strip)" \
    "change map @snapshot:diff/s1/s2"
same_text "$(expect "l1 l2 l3" "l3")" "$(map srv @snapshot:diff/s2 | strip)" \
    "change map @snapshot:diff/s2"

# REQ_ONE: the first extent only, the whole run (clipped to the request).
timeout 60 $PYTHON -c "
import nbd
h = nbd.NBD()
h.add_meta_context('base:allocation')
h.set_export_name('@snapshot:diff/s1')
h.connect_unix('$(sock srv)')
B, L, T, LAST = $B, $L, $T, $LAST
def first(off, n):
    got = []
    def cb(ctx, o, ents, err):
        got.extend(ents[:2])
    h.block_status(n, off, cb, nbd.CMD_FLAG_REQ_ONE)
    return got[:2]
cases = [
    (B, 2**31, [L - 2 * B, 1]),            # after block 0 up to leaf 0's last block
    (L, 2**31, [5 * L - B, 1]),            # leaves 1-5 minus the last block: one hole
    (6 * L - B, 2**31, [2 * B, 0]),        # across the boundary
    (6 * L + B, 2**31, [2**31, 1]),        # a hole clipped by the request
    (1000 * L + 7 * B, 2**31, [B, 2]),     # the zeroed block
    (LAST, T - LAST, [B, 0]),              # the last leaf's first block
    (LAST + B, T - LAST - B, [T - LAST - B, 1]),  # the rest of it
]
for off, n, want in cases:
    got = first(off, n)
    assert got == want, (off, n, got, want)
h.shutdown()
" || fail "REQ_ONE block status of @snapshot:diff/s1"

# A revert to s1 under the cbt filter changes the blocks of layers 2 and 3
# (those since c0 are all in layer 3): @cbt/c0 is exactly those, data or
# zero as the reverted disk reads them (layer 1's blocks data, the rest
# the null plugin's zeroes).
snap_ok srv @snapshot:revert/s1 >/dev/null
same_text "$(expect "l1" "")" "$(map srv "" | strip)" "live extents after the revert"
want=$($PYTHON -c "
import sys; sys.path.insert(0, '$tmpdir'); from model import *
T = $T; layers = $layers
ch = set(layers['l2']) | set(layers['l3'])
for o, l, t in runs(T, {b: 0 if b in layers['l1'] else 2 for b in ch}, 1):
    print(o, l, t)")
same_text "$want" "$(map srv @cbt/c0 | strip)" "@cbt/c0 after the revert"
stop_server srv

# ------------------------------------------- 1 TiB, the plugin's extents
# data plugin: bytes in leaf 0 (block 5), leaf 3 (no layer there), leaf
# 100 (two blocks: one overwritten by a zero through the filter, one
# not), the disk's last byte.
S=$((1 << 40))
pdata="@$((5 * B + 10)) 1 2 3 @$((3 * L + 4096)) 9 @$((100 * L + 3 * B)) 7 @$((100 * L + 9 * B)) 8 @$((S - 1)) 1"
nbdkit -U - data "$pdata" size=$S --run 'nbdinfo --map "$uri"' |
    awk '{ print $1, $2, $3 }' > "$tmpdir/plugin.map"
[ -s "$tmpdir/plugin.map" ] || fail "no map of the bare data plugin"
start_server srv2 --filter="$F" data "$pdata" size=$S snapshot-dir="$tmpdir/snap2"
nbd_op srv2 "" "
h.pwrite(b'\\1' * $B, 100 * $L + 2 * $B)
h.zero($B, 100 * $L + 3 * $B)
h.pwrite(b'\\2' * 10, $S - $L + 100)
h.flush()"
snap_ok srv2 @snapshot:create/p1 >/dev/null
nbd_op srv2 "" "h.pwrite(b'\\3' * $B, 7 * $L); h.flush()"
want=$($PYTHON -c "
import sys; sys.path.insert(0, '$tmpdir'); from model import *
S, B, L = $S, $B, $L
plugin = [tuple(map(int, x.split())) for x in open('$tmpdir/plugin.map')]
blocks = {(100 * L + 2 * B) // B: 0, (100 * L + 3 * B) // B: 3,
          (S - L + 100) // B: 0, 7 * L // B: 0}
for o, l, t in overlay(plugin, blocks):
    print(o, l, t)")
same_text "$want" "$(map srv2 "" | strip)" "live extents over the data plugin"
want=$($PYTHON -c "
import sys; sys.path.insert(0, '$tmpdir'); from model import *
S, B, L = $S, $B, $L
plugin = [tuple(map(int, x.split())) for x in open('$tmpdir/plugin.map')]
blocks = {(100 * L + 2 * B) // B: 0, (100 * L + 3 * B) // B: 3,
          (S - L + 100) // B: 0}
for o, l, t in overlay(plugin, blocks):
    print(o, l, t)")
same_text "$want" "$(map srv2 @snapshot/p1 | strip)" "extents of p1 over the data plugin"
stop_server srv2
