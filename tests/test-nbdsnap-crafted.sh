#!/usr/bin/env bash
# nbdsnap: a crafted (hostile or damaged) repository is "damaged: <what>",
# never a crash.  tests/craft-repo.py writes points byte by byte with
# every checksum right, so only the checks of the numbers read from the
# files stand between the reader and out-of-bounds reads: a block count
# whose index size wraps around, counts larger than the disk, offsets
# past the end of the data file or wrapping around, stored lengths of 0
# or 4 GiB, blocks past the disk, unsorted entries, data-size and
# disk-size at their limits, a zstd frame claiming 16 EiB, a chain that
# loops, the largest sequence number.  For each: verify, restore, list,
# merge and the backup plugin exit with a message (status 1, never a
# signal), a damaged point can still be deleted, and the good point F1
# next to it still restores.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/nbdsnap-functions.sh"
require_built BACKUP_PLUGIN
requires nbdcopy --version

craft () { $PYTHON "$testsdir/craft-repo.py" "$@"; }

# no_crash STATUS WHAT: STATUS is not death by a signal.
no_crash ()
{
    [ "$1" -lt 128 ] || { cat "$tmpdir/err" >&2; fail "$2 crashed (status $1)"; }
}

# damaged CASE RE: X in a repository crafted as CASE is refused as
# damaged with a message matching RE, by every reader.
damaged ()
{
    local case=$1 re=$2 r=$tmpdir/$1 st
    echo "== $case"
    craft "$r" "$case"
    st=$(status "$N" verify "$r"); no_crash "$st" "verify"
    [ "$st" = 1 ] || { cat "$tmpdir/out" "$tmpdir/err"; fail "$case: verify: expected 1, got $st"; }
    grep -Eq -- "$re" "$tmpdir/out" || { cat "$tmpdir/out"; fail "$case: verify does not say /$re/"; }
    sed 's/^/    /' "$tmpdir/out"
    st=$(status "$N" verify "$r" X); no_crash "$st" "verify X"
    [ "$st" = 1 ] || fail "$case: verify X: expected 1, got $st"
    st=$(status "$N" restore "$r" X -o "$tmpdir/x.img" --no-progress)
    no_crash "$st" "restore"
    [ "$st" = 1 ] || fail "$case: restore: expected 1, got $st"
    grep -Eq -- "$re" "$tmpdir/err" || { cat "$tmpdir/err"; fail "$case: restore does not say /$re/"; }
    [ ! -e "$tmpdir/x.img" ] || fail "$case: restore of a damaged point made its output"
    st=$(status "$N" list "$r"); no_crash "$st" "list"
    st=$(status "$N" merge "$r" X); no_crash "$st" "merge"
    [ "$st" = 1 ] || fail "$case: merge: expected 1, got $st"
    st=0
    nbdkit -U - "$BACKUP_PLUGIN" repo="$r" point=X \
        --run 'nbdcopy "$uri" /dev/null' > "$tmpdir/plugin.log" 2>&1 || st=$?
    [ "$st" -ne 0 ] || fail "$case: the backup plugin served a damaged point"
    [ "$st" -lt 128 ] || { cat "$tmpdir/plugin.log"; fail "$case: nbdkit crashed (status $st)"; }
    "$N" restore "$r" F1 -o "$tmpdir/f1.img" --no-progress > /dev/null ||
        fail "$case: the good point F1 does not restore"
    cmp "$tmpdir/f1.img" "$tmpdir/exp-F1.img" || fail "$case: F1 restores wrong"
    expect_exit 0 '' "$N" delete "$r" X
    expect_exit 0 '' "$N" verify "$r"
    rm -rf "$r"
}

craft "$tmpdir/good" good
"$N" verify "$tmpdir/good" > /dev/null || fail "the crafted good repository does not verify"
"$N" restore "$tmpdir/good" F1 -o "$tmpdir/exp-F1.img" --no-progress > /dev/null
$PYTHON -c '
import sys
d = open(sys.argv[1], "rb").read()
blk = lambda s: bytes((s * 7 + i * 13) & 255 for i in range(65536))
assert d == blk(1) + blk(2) + bytes(65536) + blk(3), "F1 restores wrong"
' "$tmpdir/exp-F1.img" || fail "the crafted point F1 does not restore as written"

damaged index_wrap 'points/X/index is not a valid index'
damaged blocks_huge 'points/X/index is not a valid index'
damaged index_short 'points/X/index is not a valid index'
damaged off_past_eof 'entry 0 \(block 0\) of .*points/X/index is invalid'
damaged off_wrap 'entry 0 \(block 0\) of .*points/X/index is invalid'
damaged len_huge 'entry 0 \(block 0\) of .*points/X/index is invalid'
damaged len_zero 'entry 0 \(block 0\) of .*points/X/index is invalid'
damaged block_past_disk 'entry 2 \(block 18446744073709551615\) of .*points/X/index is invalid'
damaged unsorted 'entry 1 \(block 0\) of .*points/X/index is invalid'
damaged data_size_small 'points/X/index is invalid'
damaged data_size_huge 'points/X/data has [0-9]+ bytes, the manifest says 18446744073709551615'
damaged disk_size_huge 'points/X/manifest is not a valid manifest \(invalid disk-size\)'
damaged bad_zstd 'X block 0 is damaged: the compressed data .* does not decompress'
damaged chain_loop 'loops'

echo "== disk_size_max (valid, but too large to read here)"
craft "$tmpdir/big" disk_size_max
st=$(status "$N" restore "$tmpdir/big" X -o "$tmpdir/x.img" --no-progress)
no_crash "$st" restore
[ "$st" = 1 ] || fail "restore of a 2^63-1 byte disk: expected 1, got $st"
grep -q 'out of memory' "$tmpdir/err" || { cat "$tmpdir/err"; fail "no clear message"; }
sed 's/^/    /' "$tmpdir/err"
[ ! -e "$tmpdir/x.img" ] || fail "the refused restore made its output"

echo "== sequence_max: no next sequence number"
craft "$tmpdir/seq" sequence_max
start_server srv --filter="$FREEZE_FILTER" --filter="$CBT_FILTER" \
    memory 256K freeze-dir="$tmpdir" cbt-dir="$tmpdir/cbt"
before=$(dirsum "$tmpdir/seq")
expect_exit 1 'largest sequence number' \
    "$N" backup "$(uri srv)" "$tmpdir/seq" --full --name B1 --no-progress
same_dir "$before" "$tmpdir/seq"
nothing_held "$(uri srv)"
[ -z "$(checkpoints "$(uri srv)")" ] || fail "the failed backup left its checkpoint"

echo "$testname: OK"
