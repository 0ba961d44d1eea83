#!/usr/bin/env bash
# backup plugin: serve restore points of a repository made by
# `nbdsnap backup` from a live disk (freeze + cbt filters over memory),
# and check every promise of nbdkit-backup-plugin(1):
#   * a full point f1 and incremental points i1 (zstd) and i2 (plain), i2
#     on the chain f1 <- i1 <- i2, read back byte for byte as the live
#     disk was at each backup (cmp, and qemu-img compare when present);
#     the disk size is odd (last block short);
#   * nbdinfo --map: data blocks are data, blocks that read as zero are
#     hole,zero, runs merged; the export is read-only and multi-conn;
#   * after `nbdsnap merge` of i1 the remaining points give the same bytes;
#   * one flipped byte in a point's data file: reading that block fails
#     with EIO and the server log names the point and the block (never
#     wrong data); the other blocks still read; a flipped byte in an index
#     stops nbdkit at startup;
#   * missing repo=/point=, unknown parameter, unknown point, missing or
#     foreign repository: nbdkit refuses to start with a clear message;
#   * instant recovery: --filter=snapshot on top is writable at once, the
#     write reads back, nbdcopy copies the disk out meanwhile, and the
#     repository is unchanged.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

require_built BACKUP_PLUGIN FREEZE_FILTER CBT_FILTER
requires "$NBDSNAP" --version
requires nbdcopy --version
requires nbdinfo --version
P=$BACKUP_PLUGIN
R=$tmpdir/repo
B=65536
SIZE=$((8 * 1024 * 1024 + 12345))       # the last block is short

# ---------------------------------------------------------------- helpers
# backup ARGS...: nbdsnap backup of the live disk into $R.
backup () { "$NBDSNAP" backup "$(uri src)" "$R" --no-progress "$@"; }

# serve_dump POINT FILE: the point served by the plugin, copied to FILE.
serve_dump ()
{
    rm -f "$2"
    timeout 120 nbdkit -U - "$P" repo="$R" point="$1" \
        --run "nbdcopy --no-extents \"\$uri\" '$2'" \
        || fail "serving point $1 failed"
}

# expected_map FILE: the map the plugin must give for an image: per 64K
# block "data" or "hole,zero" (all-zero), merged, "OFFSET LENGTH TYPE DESC".
expected_map ()
{
    $PYTHON - "$1" $B <<'EOF'
import sys
data = open(sys.argv[1], "rb").read()
bs = int(sys.argv[2])
runs = []
for off in range(0, len(data), bs):
    blk = data[off:off + bs]
    t = 3 if blk.count(0) == len(blk) else 0
    if runs and runs[-1][2] == t:
        runs[-1][1] += len(blk)
    else:
        runs.append([off, len(blk), t])
for o, l, t in runs:
    print(o, l, t, "hole,zero" if t == 3 else "data")
EOF
}

# check_point POINT IMAGE: served bytes and map of POINT match IMAGE.
check_point ()
{
    serve_dump "$1" "$tmpdir/$1.served"
    cmp "$tmpdir/$1.served" "$2" || fail "point $1 differs from $(basename "$2")"
    captive check_map_run "$P" repo="$R" point="$1" > "$tmpdir/$1.map"
    same_text "$(expected_map "$2")" "$(cat "$tmpdir/$1.map")" "map of point $1"
}
check_map_run () { map "$uri" ""; }

# flip_byte FILE OFFSET: invert the lowest bit of one byte.
flip_byte ()
{
    $PYTHON -c '
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(int(sys.argv[2])); c = f.read(1)
    f.seek(int(sys.argv[2])); f.write(bytes([c[0] ^ 1]))' "$1" "$2"
}

# ------------------------------------------------- a live disk and backups
mkdir "$tmpdir/cbt"
start_server src --filter="$FREEZE_FILTER" --filter="$CBT_FILTER" \
    memory "$SIZE" freeze-dir="$tmpdir" cbt-dir="$tmpdir/cbt"

# Random data in blocks 1-4, 10, 40-41 and the short last block.
nbd_op src "" '
import os
h.pwrite(os.urandom(4 * 65536), 65536)
h.pwrite(os.urandom(1000), 10 * 65536 + 500)
h.pwrite(os.urandom(2 * 65536), 40 * 65536)
h.pwrite(os.urandom(12345), 128 * 65536)
h.flush()'
backup --full --connections 4 --name f1 > "$tmpdir/f1.out" || fail "full backup failed"
dump src "" "$tmpdir/f1.img"

# Change block 2, zero blocks 3-4 and 40, new data in block 100.
nbd_op src "" '
import os
h.pwrite(os.urandom(100), 2 * 65536 + 7)
h.zero(2 * 65536, 3 * 65536)
h.zero(65536, 40 * 65536)
h.pwrite(b"compressible " * 5041 + b"abc", 100 * 65536)
h.flush()'
backup --incremental --compress --name i1 > "$tmpdir/i1.out" \
    || fail "incremental backup i1 failed"
dump src "" "$tmpdir/i1.img"

# Compressible data in block 3, change the short last block, and
# block 41 becomes zero.
nbd_op src "" '
import os
h.pwrite(b"nbdsnap " * 8192, 3 * 65536)
h.pwrite(os.urandom(10), 128 * 65536 + 12000)
h.zero(65536, 41 * 65536)
h.flush()'
backup --incremental --name i2 > "$tmpdir/i2.out" \
    || fail "incremental backup i2 failed"
dump src "" "$tmpdir/i2.img"
stop_server src

cmp -s "$tmpdir/f1.img" "$tmpdir/i1.img" && fail "test bug: i1 equals f1"
cmp -s "$tmpdir/i1.img" "$tmpdir/i2.img" && fail "test bug: i2 equals i1"

# ------------------------------------------------ serving the three points
check_point f1 "$tmpdir/f1.img"
check_point i1 "$tmpdir/i1.img"
check_point i2 "$tmpdir/i2.img"

if qemu-img --version >/dev/null 2>&1; then
    check_qemu () { qemu-img compare -q -f raw "$tmpdir/i2.img" "$uri"; }
    captive check_qemu "$P" repo="$R" point=i2
fi

# Read-only, multi-conn, the point's size.
check_info ()
{
    nbdinfo --json "$uri" > "$tmpdir/info.json"
}
captive check_info "$P" repo="$R" point=i1
json_check "$(cat "$tmpdir/info.json")" \
    "j['exports'][0]['is_read_only'] is True" \
    "j['exports'][0]['can_multi_conn'] is True" \
    "j['exports'][0]['export-size'] == $SIZE"

# Unaligned reads across block boundaries (through the partial-block path).
check_unaligned ()
{
    nbdsh -u "$uri" -c '
import os
img = open(os.environ["tmpdir"] + "/i2.img", "rb").read()
for off, n in [(1, 65536), (2 * 65536 - 3, 7), (10 * 65536 + 400, 300000),
               (128 * 65536 + 1, 12000), (len(img) - 5, 5)]:
    assert h.pread(n, off) == img[off:off + n], (off, n)
try:
    h.pwrite(b"x", 0)
    raise SystemExit("a write to the backup plugin succeeded")
except nbd.Error:
    pass'
}
export tmpdir
captive check_unaligned "$P" repo="$R" point=i2

# ------------------------------------------------------------ damage: data
# Flip one byte of the first stored block of f1's data file (found through
# the index: the entry whose offset is the first after the 4 KiB header).
cp -a "$R" "$tmpdir/bad"
read -r badblock < <($PYTHON - "$tmpdir/bad/points/f1" <<'EOF'
import struct, sys
d = sys.argv[1]
idx = open(d + "/index", "rb").read()
count = struct.unpack_from("<Q", idx, 16)[0]
for i in range(count):
    block, kind, slen, off = struct.unpack_from("<QBIQ", idx, 32 + 53 * i)
    if kind == 1 and off == 4096:
        with open(d + "/data", "r+b") as f:
            f.seek(off + min(slen - 1, 100))
            c = f.read(1)
            f.seek(off + min(slen - 1, 100))
            f.write(bytes([c[0] ^ 0x01]))
        print(block)
        break
else:
    sys.exit("no stored block at offset 4096")
EOF
)
[ -n "$badblock" ] || fail "could not damage the data file"

start_server bad "$P" repo="$tmpdir/bad" point=f1
nbd_op bad "" "
import errno
try:
    h.pread(65536, $badblock * 65536)
    raise SystemExit('the damaged block $badblock was read without error')
except nbd.Error as e:
    assert e.errno in ('EIO', errno.EIO), e
# A request that only touches the block partly fails too.
try:
    h.pread(10, $badblock * 65536 + 65530)
    raise SystemExit('a part of the damaged block was read without error')
except nbd.Error as e:
    assert e.errno in ('EIO', errno.EIO), e
# The other blocks still read as backed up.
img = open('$tmpdir/f1.img', 'rb').read()
for b in range(0, 129):
    if b != $badblock:
        n = min(65536, len(img) - b * 65536)
        assert h.pread(n, b * 65536) == img[b * 65536:b * 65536 + n], b"
grep -Eq "restore point f1 block $badblock .*SHA-256 mismatch" "$tmpdir/bad.log" \
    || { cat "$tmpdir/bad.log" >&2; fail "the error does not name point f1 and block $badblock"; }
stop_server bad
# nbdcopy of the whole damaged disk fails (no silently wrong copy).
if timeout 120 nbdkit -U - "$P" repo="$tmpdir/bad" point=f1 \
       --run "nbdcopy \"\$uri\" '$tmpdir/bad.img'" 2>/dev/null; then
    fail "nbdcopy of a damaged point succeeded"
fi

# ----------------------------------------------------------- damage: index
rm -rf "$tmpdir/bad"
cp -a "$R" "$tmpdir/bad"
flip_byte "$tmpdir/bad/points/f1/index" 45
expect_start_fails "$tmpdir/e1.log" "restore point f1 is damaged.*index" \
    "$P" repo="$tmpdir/bad" point=f1
expect_start_fails "$tmpdir/e2.log" "restore point f1 is damaged.*needed by restore point i2" \
    "$P" repo="$tmpdir/bad" point=i2

# ------------------------------------------------------------- bad config
expect_start_fails "$tmpdir/e3.log" "repo= missing" "$P" point=f1
expect_start_fails "$tmpdir/e4.log" "point= missing" "$P" repo="$R"
expect_start_fails "$tmpdir/e5.log" "unknown parameter 'colour'" \
    "$P" repo="$R" point=f1 colour=blue
expect_start_fails "$tmpdir/e6.log" "restore point nope does not exist" \
    "$P" repo="$R" point=nope
expect_start_fails "$tmpdir/e7.log" "invalid restore point name" \
    "$P" repo="$R" point=../x
expect_start_fails "$tmpdir/e8.log" "repository .*does not exist" \
    "$P" repo="$tmpdir/nowhere" point=f1
mkdir "$tmpdir/foreign"
echo hello > "$tmpdir/foreign/repository"
expect_start_fails "$tmpdir/e9.log" "not an nbdsnap repository" \
    "$P" repo="$tmpdir/foreign" point=f1
rm -rf "$tmpdir/bad"
cp -a "$R" "$tmpdir/bad"
sed -i 's/^block-size 65536$/block-size 4096/' "$tmpdir/bad/repository"
expect_start_fails "$tmpdir/e10.log" "repository is damaged" \
    "$P" repo="$tmpdir/bad" point=f1
rm -rf "$tmpdir/bad/points/f1"
cp -a "$R/repository" "$tmpdir/bad/repository"
expect_start_fails "$tmpdir/e11.log" "chain of restore point i2 is broken" \
    "$P" repo="$tmpdir/bad" point=i2

# --------------------------------------------------------------- merging
# i1 is folded into f1: the combined point is called i1 and is full, f1
# goes (nothing else depends on it), i1 and i2 give the same bytes.
"$NBDSNAP" merge "$R" i1 > "$tmpdir/merge.out" || fail "nbdsnap merge i1 failed"
[ ! -e "$R/points/f1" ] || fail "f1 still exists after merging i1 into it"
grep -q '^kind full$' "$R/points/i1/manifest" || fail "merged i1 is not full"
check_point i1 "$tmpdir/i1.img"
check_point i2 "$tmpdir/i2.img"
"$NBDSNAP" verify "$R" > "$tmpdir/verify.out" || fail "verify after merge failed"

# -------------------------------------------------------- instant recovery
before=$(dirsum "$R")
mkdir "$tmpdir/ir"
start_server ir --filter="$SNAPSHOT_FILTER" "$P" repo="$R" point=i2 \
    snapshot-dir="$tmpdir/ir"
nbd_op ir "" '
h.pwrite(b"recovered", 5 * 65536 + 3)
h.flush()
assert h.pread(9, 5 * 65536 + 3) == b"recovered"'
# Copy it back while it is served (and written to).
dump ir "" "$tmpdir/ir.img"
$PYTHON - "$tmpdir/i2.img" "$tmpdir/ir.expected" <<'EOF'
import sys
img = bytearray(open(sys.argv[1], "rb").read())
img[5 * 65536 + 3:5 * 65536 + 12] = b"recovered"
open(sys.argv[2], "wb").write(img)
EOF
cmp "$tmpdir/ir.img" "$tmpdir/ir.expected" || fail "instant recovery copy differs"
stop_server ir
same_dir "$before" "$R"
check_point i2 "$tmpdir/i2.img"
