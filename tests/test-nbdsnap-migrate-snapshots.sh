#!/usr/bin/env bash
# nbdsnap migrate --snapshots: the source's snapshot tree is recreated on
# the destination (docs/migration.md section 4).  Source tree:
#   s1 (root) <- s2;  s1 <- s3 <- live   (s3 made after a revert to s1)
# Every snapshot of the destination reads exactly as the source's
# (cmp), with the same parent; the live disk too; the checkpoints come
# along and an incremental backup from the destination restores exactly.
# Refused: a destination that has snapshots, --snapshots with --since.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/nbdsnap-functions.sh"
requires nbdcopy --version

SIZE=$((8 * 1024 * 1024 + 4096))
STACK="--filter=$FREEZE_FILTER --filter=$CBT_FILTER --filter=$F"
writes ()
{
    nbd_op "$1" "" "
import random
r = random.Random($2)
size = h.get_size()
for i in range($3):
    n = r.choice([4096, 65536, 300000])
    off = r.randrange(0, size - n) // 512 * 512
    if r.random() < 0.2: h.zero(n, off)
    else: h.pwrite(r.randbytes(n), off)
h.flush()"
}
head -c $SIZE /dev/urandom > "$tmpdir/src.img"     # the source's base
truncate -s $SIZE "$tmpdir/dst.img"                # another base
start_server src $STACK file "$tmpdir/src.img" snapshot-dir="$tmpdir/ss" \
    cbt-dir="$tmpdir/sc" freeze-dir="$tmpdir"
start_server dst $STACK file "$tmpdir/dst.img" snapshot-dir="$tmpdir/ds" \
    cbt-dir="$tmpdir/dc" freeze-dir="$tmpdir" snapshot-block-size=16K
S=$(uri src) D=$(uri dst) repo=$tmpdir/repo

writes src 1 20
"$N" snapshot create "$S" s1 > /dev/null
"$N" backup "$S" "$repo" --full --name c1 --no-progress > /dev/null
writes src 2 20
"$N" snapshot create "$S" s2 > /dev/null
writes src 3 20
"$N" snapshot revert "$S" s1 > /dev/null
writes src 4 20
"$N" snapshot create "$S" s3 > /dev/null
"$N" backup "$S" "$repo" --incremental --name c2 --no-progress > /dev/null
writes src 5 20

expect_exit 2 'do not go together' "$N" migrate "$S" "$D" --snapshots --since c2
"$N" snapshot create "$D" junk > /dev/null
expect_exit 1 'already has 1 snapshot' "$N" migrate "$S" "$D" --snapshots --no-progress
"$N" snapshot delete "$D" junk > /dev/null
for ((i = 0; i < 100; i++)); do
    [ "$(json_get "$("$N" --json snapshot list "$D")" 'len(j["snapshots"])')" = 0 ] && break
    sleep 0.1
done

out=$("$N" --json migrate "$S" "$D" --snapshots --name m1 --no-progress) ||
    fail "migrate --snapshots failed"
json_check "$out" 'j["snapshots"] == ["s1", "s2", "s3"]' \
    'j["checkpoints"] == ["c1", "c2", "m1"]'
tree () { json_get "$("$N" --json snapshot list "$1")" \
    '" ".join("%s<%s" % (s["name"], s["parent"]) for s in j["snapshots"]) + " live<%s" % j["live"]["parent"]'; }
[ "$(tree "$S")" = "$(tree "$D")" ] || fail "trees differ: $(tree "$S") / $(tree "$D")"
echo "tree: $(tree "$D")"
for s in s1 s2 s3; do
    dump src "@snapshot/$s" "$tmpdir/a.img"
    dump dst "@snapshot/$s" "$tmpdir/b.img"
    cmp "$tmpdir/a.img" "$tmpdir/b.img" || fail "snapshot $s differs"
done
dump src "" "$tmpdir/a.img"
dump dst "" "$tmpdir/b.img"
cmp "$tmpdir/a.img" "$tmpdir/b.img" || fail "the live disk differs"

# The destination goes on: writes, an incremental since c2 (made on SRC).
stop_server src
writes dst 6 20
"$N" backup "$D" "$repo" --incremental --name d3 --no-progress > /dev/null ||
    fail "backup from DST failed"
dump dst "" "$tmpdir/b.img"
"$N" restore "$repo" d3 -o "$tmpdir/r.img" --no-progress > /dev/null
cmp "$tmpdir/r.img" "$tmpdir/b.img" || fail "d3 restores to the wrong bytes"
# A revert on DST to a carried snapshot gives its bytes.
"$N" snapshot revert "$D" s2 > /dev/null
dump dst "" "$tmpdir/b.img"
dump dst @snapshot/s2 "$tmpdir/a.img"
cmp "$tmpdir/a.img" "$tmpdir/b.img" || fail "revert to s2 on DST"
echo "$testname: ok"
