#!/usr/bin/env bash
# Bitmap migration (docs/migration.md):
# 1. shared storage: server A stops, server B (another nbdkit, another
#    working directory) starts on the same disk file and state dirs; the
#    next incremental backup restores to exactly B's disk (cmp).
# 2. storage copied over NBD while a writer runs on the source:
#    nbdsnap migrate SRC DST copies the disk frozen at checkpoint m1 and
#    carries c1 c2 m1 (the destination has another granularity); every
#    block not written on SRC since m1 equals DST; the cut-over (writer
#    stopped) migrate --since m1 makes DST equal SRC (cmp); then after
#    writes on DST an incremental backup from DST since c2 (made on SRC)
#    restores to exactly DST's bytes (cmp).  Refusals: a destination with
#    checkpoints (without --replace), another size, a --since that is
#    not the destination's newest checkpoint; a copy that fails leaves
#    SRC as it was and DST without checkpoints.  3. Neither side has a
#    cbt filter: the disk alone is copied.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/nbdsnap-functions.sh"
requires nbdcopy --version

SIZE=$((24 * 1024 * 1024 + 4096))
repo=$tmpdir/repo
F="--filter=$FREEZE_FILTER --filter=$CBT_FILTER"

# writes TARGET SEED COUNT: random writes and zeroes, then flush.
writes ()
{
    nbd_op "$1" "" "
import random
r = random.Random($2)
size = h.get_size()
for i in range($3):
    n = r.choice([4096, 65536, 300000, 1048576])
    off = r.randrange(0, size - n) // 512 * 512
    if r.random() < 0.15: h.zero(n, off)
    else: h.pwrite(r.randbytes(n), off)
h.flush()"
}
backup () { "$N" backup "$@" --no-progress > /dev/null || fail "backup $* failed"; }
restore_cmp ()   # POINT IMAGE
{
    "$N" restore "$repo" "$1" -o "$tmpdir/r.img" --no-progress > /dev/null ||
        fail "restore $1 failed"
    cmp "$tmpdir/r.img" "$2" || fail "point $1 restores to the wrong bytes"
}

# ---- 1. shared storage -------------------------------------------------
truncate -s $SIZE "$tmpdir/a.img"
mkdir -p "$tmpdir/wa" "$tmpdir/wb"
cd "$tmpdir/wa"
start_server a $F file "$tmpdir/a.img" cbt-dir="$tmpdir/a-cbt" freeze-dir="$tmpdir"
[ "$(readlink /proc/$(server_pid a)/cwd)" = "$tmpdir/wa" ] || fail "A's cwd"
writes a 1 40
backup "$(uri a)" "$repo" --full --name s1
writes a 2 30
stop_server a
cd "$tmpdir/wb"
start_server b $F file "$tmpdir/a.img" cbt-dir="$tmpdir/a-cbt" freeze-dir="$tmpdir/wb"
[ "$(readlink /proc/$(server_pid b)/cwd)" = "$tmpdir/wb" ] || fail "B's cwd"
cd "$tmpdir"
writes b 3 30
backup "$(uri b)" "$repo" --incremental --name s2
dump b "" "$tmpdir/b-s2.img"
restore_cmp s2 "$tmpdir/b-s2.img"
stop_server b
rm -rf "$repo"
echo "shared storage: ok"

# ---- 2. over NBD -------------------------------------------------------
truncate -s $SIZE "$tmpdir/src.img" "$tmpdir/dst.img"
head -c $SIZE /dev/urandom > "$tmpdir/dst.img"        # garbage to overwrite
start_server src $F --filter=delay file "$tmpdir/src.img" \
    cbt-dir="$tmpdir/src-cbt" freeze-dir="$tmpdir" delay-read=5ms
start_server dst $F file "$tmpdir/dst.img" cbt-dir="$tmpdir/dst-cbt" \
    freeze-dir="$tmpdir" cbt-granularity=16K
S=$(uri src) D=$(uri dst)
writes src 10 40
backup "$S" "$repo" --full --name c1
writes src 11 30
backup "$S" "$repo" --incremental --name c2
writes src 12 30

# Refusals change nothing.
truncate -s $((SIZE + 65536)) "$tmpdir/big.img"
start_server big --filter="$CBT_FILTER" file "$tmpdir/big.img" cbt-dir="$tmpdir/big-cbt"
expect_exit 1 'same size' "$N" migrate "$S" "$(uri big)" --no-progress
stop_server big
"$N" checkpoint create "$D" junk > /dev/null
expect_exit 1 'already has 1 checkpoint.*--replace' "$N" migrate "$S" "$D" --no-progress
[ "$(checkpoints "$S")" = "c1 c2" ] || fail "a refused migrate changed SRC: $(checkpoints "$S")"

# A copy that fails (every write of DST fails): SRC is left as it was
# (no frozen point, no new checkpoint), DST gets no checkpoint.
truncate -s $SIZE "$tmpdir/bad.img"
start_server bad --filter="$CBT_FILTER" --filter=error file "$tmpdir/bad.img" \
    cbt-dir="$tmpdir/bad-cbt" error-pwrite=EIO error-pwrite-rate=1 \
    error-zero=EIO error-zero-rate=1
expect_exit 1 'writing the destination' "$N" migrate "$S" "$(uri bad)" --name x1 --no-progress
[ "$(checkpoints "$S")" = "c1 c2" ] || fail "a failed migrate left: $(checkpoints "$S")"
nothing_held "$S"
[ "$(checkpoints "$(uri bad)")" = "" ] || fail "a failed migrate installed checkpoints"
stop_server bad

# A writer runs during the migration.
nbd_op src "" "
import random, time
r = random.Random(99)
t = time.time() + 4
while time.time() < t:
    h.pwrite(r.randbytes(65536), r.randrange(0, 8 << 20) // 4096 * 4096)
    time.sleep(0.01)
h.flush()" &
wpid=$!
sleep 0.3
"$N" migrate "$S" "$D" --name m1 --replace --connections 3 --no-progress ||
    fail "migrate failed"
kill -0 $wpid 2>/dev/null || echo "note: the writer ended before the migration did"
wait $wpid || fail "writer failed"
nothing_held "$S"
[ "$(checkpoints "$D")" = "c1 c2 m1" ] || fail "DST has: $(checkpoints "$D")"
[ "$(checkpoints "$S")" = "c1 c2 m1" ] || fail "SRC has: $(checkpoints "$S")"

# DST = SRC as of m1: every block SRC's @cbt/m1 says unchanged is equal.
dump src "" "$tmpdir/src-now.img"
dump dst "" "$tmpdir/dst-now.img"
NBDSNAP_URI=$(uri src @cbt/m1) A=$tmpdir/src-now.img B=$tmpdir/dst-now.img \
$PYTHON -c '
import os, nbd, sys
h = nbd.NBD(); h.add_meta_context("base:allocation")
h.connect_uri(os.environ["NBDSNAP_URI"])
size = h.get_size(); ext = []
def cb(ctx, off, e, err):
    o = off
    for i in range(0, len(e), 2):
        ext.append((o, e[i], e[i + 1])); o += e[i]
off = 0
while off < size:
    h.block_status(min(size - off, 1 << 30), off, cb)
    off = ext[-1][0] + ext[-1][1]
a = open(os.environ["A"], "rb").read(); b = open(os.environ["B"], "rb").read()
same = changed = 0
for o, l, t in ext:
    if t == 1:
        if a[o:o + l] != b[o:o + l]: sys.exit("DST differs from SRC in a block not written since m1 at %d" % o)
        same += l
    else: changed += l
print("unchanged since m1: %d bytes equal; written since m1: %d bytes" % (same, changed))
if changed == 0: print("note: the writer wrote nothing after m1")
' || fail "DST is not SRC as of m1"

# Cut-over: the writer has stopped; copy what changed since m1.
out=$("$N" --json migrate "$S" "$D" --since m1 --name m2 --no-progress) ||
    fail "migrate --since failed"
json_check "$out" 'j["checkpoints"] == ["c1", "c2", "m1", "m2"]' 'j["since"] == "m1"'
dump src "" "$tmpdir/src-now.img"
dump dst "" "$tmpdir/dst-now.img"
cmp "$tmpdir/src-now.img" "$tmpdir/dst-now.img" || fail "after the cut-over DST != SRC"
expect_exit 1 "newest checkpoint is 'm2', not 'm1'" "$N" migrate "$S" "$D" --since m1 --no-progress
nbd_op dst "" "h.pwrite(b'y' * 512, 4096)"
expect_exit 1 "written since 'm2'" "$N" migrate "$S" "$D" --since m2 --no-progress
[ "$(checkpoints "$S")" = "c1 c2 m1 m2" ] || fail "refused --since changed SRC: $(checkpoints "$S")"
stop_server src

# On DST now: writes, then an incremental backup since c2 (made on SRC).
writes dst 20 30
backup "$D" "$repo" --incremental --name d3
dump dst "" "$tmpdir/dst-d3.img"
restore_cmp d3 "$tmpdir/dst-d3.img"
# No cbt filter on either side: the disk alone is copied.
start_server plain --filter="$FREEZE_FILTER" file "$tmpdir/dst.img" freeze-dir="$tmpdir"
truncate -s 0 "$tmpdir/big.img"; truncate -s $SIZE "$tmpdir/big.img"
start_server plain2 file "$tmpdir/big.img"
out=$("$N" --json migrate "$(uri plain)" "$(uri plain2)" --no-progress) ||
    fail "migrate without cbt failed"
json_check "$out" 'j["checkpoints"] == []'
cmp "$tmpdir/dst.img" "$tmpdir/big.img" || fail "migrate without cbt: bytes differ"
echo "$testname: ok"
