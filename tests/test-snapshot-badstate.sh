#!/usr/bin/env bash
# Snapshot filter, bad state at startup: nbdkit refuses to start, with a
# message saying what is wrong, and leaves the snapshot directory
# byte-identical (sha256 of every file, and the file names), when: the
# state file is truncated, empty, has a flipped byte, or is a foreign file;
# a well-formed state or map (valid checksum) says something impossible
# (unknown version, a bad data-segment-size, other disk size, missing parent, no active layer,
# duplicate or invalid name, block state 3, another layer's ID);
# a layer map is corrupt (flipped byte, bad magic), truncated or missing; a
# layer data file is missing; the state file is missing but layers exist;
# the plugin's disk has another size, or is another disk of the same size
# (first or last block differ); the block size differs; the directory is
# locked by a running nbdkit.  The untouched directory still starts and
# reads right.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires nbdcopy --version
requires truncate --version

B=65536
size=$((64 * B))
base=$tmpdir/base.img
mkdata "$base" $size 15
d=$tmpdir/snap
pristine=$tmpdir/pristine

# A directory with two snapshots and a live layer.
start_server srv --filter="$F" file "$base" snapshot-dir="$d"
nbd_op srv "" "h.pwrite(b'1' * 200000, 0)"
snap_ok srv @snapshot:create/s1 >/dev/null
nbd_op srv "" "h.pwrite(b'2' * 200000, $((10 * B)))"
snap_ok srv @snapshot:create/s2 >/dev/null
nbd_op srv "" "h.pwrite(b'3' * 200000, $((20 * B))); h.zero($B, $((40 * B)))"
dump srv "" "$tmpdir/live"
dump srv @snapshot/s1 "$tmpdir/s1"
dump srv @snapshot/s2 "$tmpdir/s2"
stop_server srv
cp -a "$d" "$pristine"
ls "$d"
[ -f "$d/state" ] || fail "no state file in $d"
maps=$(cd "$d" && ls layer-*.map)
datas=$(cd "$d" && ls layer-*.data)
# The first map (not "echo | head": bash writes line by line, and the
# echo can die of SIGPIPE once head has its line; pipefail then fails
# the test).
m1=${maps%%$'\n'*}
[ "$(echo "$maps" | wc -l)" -ge 3 ] || fail "expected >= 3 layer maps, got: $maps"

fresh () { rm -rf "$d"; cp -a "$pristine" "$d"; }

n=0
# refused REGEX [PLUGIN-AND-ARGS...]: the start fails with a message
# matching REGEX, the dir is unchanged.  Default: the right plugin.
refused ()
{
    local re=$1 sum; shift
    [ $# -gt 0 ] || set -- file "$base" snapshot-dir="$d"
    n=$((n + 1))
    sum=$(dirsum "$d")
    expect_start_fails "$tmpdir/case$n.out" "$re" --filter="$F" "$@"
    same_dir "$sum" "$d"
    echo "case $n refused as expected: $(grep -Ei -m1 -- "$re" "$tmpdir/case$n.out")"
}

# flip FILE OFFSET: invert one byte.
flip ()
{
    $PYTHON -c '
import sys
f, off = sys.argv[1], int(sys.argv[2])
b = bytearray(open(f, "rb").read())
b[off] ^= 0xff
open(f, "wb").write(b)' "$1" "$2"
}

ssize=$(stat -c %s "$pristine/state")

# The state file.
fresh; truncate -s $((ssize / 2)) "$d/state";    refused 'state'
fresh; truncate -s $((ssize - 1)) "$d/state";    refused 'state'
fresh; : > "$d/state";                            refused 'state'
for off in 0 5 $((ssize / 3)) $((ssize / 2)) $((ssize - 3)); do
    fresh; flip "$d/state" $off;                  refused 'state'
done
fresh; cp /etc/os-release "$d/state";             refused 'state'
fresh; mkdata "$d/state" 4096 99;                 refused 'state'
fresh; cp "$d/$m1" "$d/state"; refused 'state'
fresh; rm "$d/state";                             refused 'state'

# Well-formed files (valid checksums, per docs/snapshot-format.md) that
# say something impossible.  restate EXPR: rewrite the state's lines
# (python list L, without the checksum line) and recompute the checksum.
restate ()
{
    $PYTHON - "$d/state" "$1" <<'EOF'
import sys, hashlib
f, expr = sys.argv[1:3]
lines = open(f, "rb").read().decode().splitlines()
assert lines[-1].startswith("sha256 ")
body = "".join(l + "\n" for l in lines[:-1])
assert hashlib.sha256(body.encode()).hexdigest() == lines[-1][7:], \
    "the state checksum is not as docs/snapshot-format.md describes"
L = lines[:-1]
exec(expr)
body = "".join(l + "\n" for l in L)
open(f, "wb").write((body + "sha256 " + hashlib.sha256(body.encode()).hexdigest() + "\n").encode())
EOF
}
# remap FILE EXPR: edit a map (bytearray b) and recompute its checksum.
remap ()
{
    $PYTHON - "$1" "$2" <<'EOF'
import sys, hashlib, struct
f, expr = sys.argv[1:3]
b = bytearray(open(f, "rb").read())
z = bytearray(b); z[48:80] = bytes(32)
assert hashlib.sha256(z).digest() == bytes(b[48:80]), \
    "the map checksum is not as docs/snapshot-format.md describes"
exec(expr)
b[48:80] = bytes(32)
b[48:80] = hashlib.sha256(b).digest()
open(f, "wb").write(b)
EOF
}
# The helpers reproduce the files exactly when they change nothing.
fresh; restate 'pass'; remap "$d/$m1" 'pass'
[ "$(dirsum "$d")" = "$(dirsum "$pristine")" ] || fail "restate/remap do not round-trip"

fresh; restate 'L[1] = "version 3"';                                refused 'version'
# Version 2 (data in segments) needs a data-segment-size line: a power of
# two, at least the block size.
fresh; restate 'L[1] = "version 2"';                                refused 'data-segment-size'
fresh; restate 'L[1] = "version 2"; L.insert(4, "data-segment-size 3000000")'
                                                                     refused 'data-segment-size'
fresh; restate 'L[1] = "version 2"; L.insert(4, "data-segment-size 4096")'
                                                                     refused 'data-segment-size'
fresh; restate 'L[2] = "disk-size %d" % (int(L[2].split()[1]) * 2)'; refused "$((size * 2))"
fresh; restate 'L[:] = [" ".join(l.split()[:2] + ["999"] + l.split()[3:]) if l.endswith(" frozen s2") else l for l in L]'
                                                                     refused 'parent|layer'
fresh; restate 'L[:] = [l for l in L if " active " not in l]';       refused 'active'
fresh; restate 'L[:] = [l.replace(" frozen s2", " frozen s1") for l in L]'; refused 'name|s1'
fresh; restate 'L[:] = [l.replace(" frozen s2", " frozen a..b") for l in L]'; refused 'name|a\.\.b'
fresh; remap "$d/$m1" 'b[8:12] = struct.pack("<I", 2)';              refused 'version'
fresh; remap "$d/$m1" 'b[80] |= 3';                                  refused 'map|layer|leaf|corrupt'
# Partial blocks (format 4): the first map has one (200000 bytes written
# at 0 end in sector 0 of block 3): its leaf entry is flagged (bit 63 of
# the index) and followed by 4096 u16 masks, at 1112.  A state 3 with
# mask 0, masks without the flag, a mask of a block that is not partial,
# an empty or full mask, the flag without a partial block, cut short.
fresh
$PYTHON - "$d/$m1" <<'EOF' || fail "the first map has no partial block as expected"
import sys, struct
b = open(sys.argv[1], "rb").read()
assert struct.unpack_from("<Q", b, 80)[0] == 1 << 63, "flag"
assert struct.unpack_from("<4H", b, 1112) == (0, 0, 0, 1), "masks"
EOF
fresh; remap "$d/$m1" 'b[88] |= 3';                                  refused 'invalid sector mask 0 of block 0'
fresh; remap "$d/$m1" 'b[87] &= 0x7f';                               refused 'partial blocks but no sector masks'
fresh; remap "$d/$m1" 'b[1112] = 1';                                 refused 'sector mask of block 0 that is not partial'
fresh; remap "$d/$m1" 'b[1118] = 0';                                 refused 'invalid sector mask 0 of block 3'
fresh; remap "$d/$m1" 'b[1118:1120] = b"\xff\xff"';                  refused 'invalid sector mask 0xffff of block 3'
fresh; remap "$d/$m1" 'b[88] &= 0x7f';                               refused 'sector masks but no partial block'
fresh; remap "$d/$m1" 'del b[-100:]; b[40:48] = struct.pack("<Q", len(b) - 80)'
                                                                     refused 'truncated or wrong length'
fresh; remap "$d/$m1" 'b[16:24] = struct.pack("<Q", 77)';            refused 'map|layer|another'

# Layer maps and data files.
for m in $maps; do
    msize=$(stat -c %s "$d/$m")
    fresh; flip "$d/$m" $((msize - 1));           refused 'map|layer|corrupt|checksum'
    fresh; flip "$d/$m" $((msize / 2));           refused 'map|layer|corrupt|checksum'
    fresh; flip "$d/$m" 0;                        refused 'map|layer|magic'
    fresh; truncate -s $((msize - 8)) "$d/$m";    refused 'map|layer|truncat|length'
    fresh; rm "$d/$m";                            refused 'map|layer|missing|No such'
done
for x in $datas; do
    fresh; rm "$d/$x";                            refused 'data|layer|missing|No such'
done

# The plugin's disk: other size (larger, smaller), other disk of the same
# size (everything, only the first block, only the last block differs).
fresh
cp "$base" "$tmpdir/bigger";  truncate -s $((size + B)) "$tmpdir/bigger"
refused "$size" file "$tmpdir/bigger" snapshot-dir="$d"
grep -q "$((size + B))" "$tmpdir/case$n.out" || fail "message does not give the new size $((size + B))"
cp "$base" "$tmpdir/smaller"; truncate -s $((size / 2)) "$tmpdir/smaller"
refused "$size" file "$tmpdir/smaller" snapshot-dir="$d"
refused "$size" memory $((size * 2)) snapshot-dir="$d"
mkdata "$tmpdir/other" $size 16
refused 'disk|fingerprint|differ' file "$tmpdir/other" snapshot-dir="$d"
cp "$base" "$tmpdir/first"; flip "$tmpdir/first" 100
refused 'disk|fingerprint|differ' file "$tmpdir/first" snapshot-dir="$d"
cp "$base" "$tmpdir/last"; flip "$tmpdir/last" $((size - 1))
refused 'disk|fingerprint|differ' file "$tmpdir/last" snapshot-dir="$d"

# Block size differs (dir made with the default 64K).
for bs in 4K 128K; do
    refused 'block.?size' file "$base" snapshot-dir="$d" snapshot-block-size=$bs
done

# Locked by a running nbdkit: a second one is refused; the first goes on.
fresh
start_server srv --filter="$F" file "$base" snapshot-dir="$d"
same_content srv "" "$tmpdir/live"
refused 'lock|in use|another|running'
refused 'lock|in use|another|running' memory $size snapshot-dir="$d"
same_content srv "" "$tmpdir/live"
same_content srv @snapshot/s1 "$tmpdir/s1"
stop_server srv

# The untouched directory starts and reads right.
fresh
start_server srv --filter="$F" file "$base" snapshot-dir="$d"
same_content srv "" "$tmpdir/live"
same_content srv @snapshot/s1 "$tmpdir/s1"
same_content srv @snapshot/s2 "$tmpdir/s2"
stop_server srv
