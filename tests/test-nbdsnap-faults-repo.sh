#!/usr/bin/env bash
# nbdsnap merge and delete under injected faults (tests/nbdsnap-faults.sh):
# the n-th write, pwrite, fsync, fdatasync, sync_file_range, rename,
# open, ftruncate, fallocate, mkdir or unlink of the tool on the
# repository fails, for every n (and, for a disk that stays broken, every
# call from the n-th on), in
#   - merge of I1 into F1 (F1 is removed: I1 was its only child),
#   - merge of I2 into I1 while I1 has another child (I1 is kept),
#   - delete of the newest point.
# After each fault: the command exits non-zero with a message; the
# repository verifies (verify removes what the failed run left) and has
# no temporary entry left; every point it lists restores to the disk it
# was taken from (cmp): a merge either happened or did not, and a point
# is never half deleted.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/nbdsnap-functions.sh"
# Cheap runs: every fault point (the persistent faults are sampled).
: "${FAULT_POINTS:=100}"
. "$testsdir/nbdsnap-faults.sh"
requires nbdcopy --version

K=65536
repo=$tmpdir/repo
start_server srv --filter="$FREEZE_FILTER" --filter="$CBT_FILTER" \
    memory 4M freeze-dir="$tmpdir" cbt-dir="$tmpdir/cbt"
U=$(uri srv)

# backup NAME SEED [ARGS]: change some blocks, back up, keep the image.
backup ()
{
    local name=$1 seed=$2; shift 2
    nbd_op srv "" "
import random
r = random.Random($seed)
for b in range($seed % 3, 64, 4):
    h.pwrite(r.randbytes(3000 + $seed * 100), b * $K + 100 * $seed)
h.flush()"
    dump srv "" "$tmpdir/exp-$name.img"
    "$N" backup "$U" "$repo" --name "$name" --no-progress "$@" > /dev/null
}
backup F1 1 --full
backup I1 2 --compress
backup I2 3
backup J2 4 --since I1
# F1 <- I1 <- I2, and I1 <- J2.
cp -a "$repo" "$tmpdir/base"
base_sum=$(dirsum "$repo")

reset () { rm -rf "$repo"; cp -a "$tmpdir/base" "$repo"; }
check ()
{
    "$N" verify "$repo" > "$tmpdir/verify.out" 2>&1 ||
        { cat "$tmpdir/verify.out" >&2; fail "verify failed"; }
    no_tmp "$repo"
    [ "$(dirsum "$repo")" = "$base_sum" ] || restore_all "$repo"
}

run_merge_f1 () { $FI_RUN "$N" merge "$repo" I2; }
run_merge_kept () { $FI_RUN "$N" merge "$repo" J2; }
run_delete () { $FI_RUN "$N" delete "$repo" J2; }

# First: merge I1 into F1 in a repository where I1 is F1's only child.
"$N" delete "$repo" J2 > /dev/null
"$N" delete "$repo" I2 > /dev/null
cp -a "$repo" "$tmpdir/base1"
reset1 () { rm -rf "$repo"; cp -a "$tmpdir/base1" "$repo"; }
base1_sum=$(dirsum "$repo")
check1 ()
{
    "$N" verify "$repo" > "$tmpdir/verify.out" 2>&1 ||
        { cat "$tmpdir/verify.out" >&2; fail "verify failed"; }
    no_tmp "$repo"
    [ "$(dirsum "$repo")" = "$base1_sum" ] || restore_all "$repo"
}
run_merge_i1 () { $FI_RUN "$N" merge "$repo" I1; }

echo "== merge I1 into F1 (F1 removed)"
sweep "merge (parent removed)" $IO "$repo" "" run_merge_i1 check1 reset1
echo "== ... on a disk that stays broken from the n-th call"
FI_COUNT=0 FAULT_POINTS=20 \
    sweep "merge (parent removed)" $IO "$repo" "" run_merge_i1 check1 reset1

echo "== merge J2 into I1 (I1 kept for I2)"
sweep "merge (parent kept)" $IO "$repo" "" run_merge_kept check reset

echo "== delete J2"
sweep "delete" $IO "$repo" "" run_delete check reset
echo "== ... on a disk that stays broken from the n-th call"
FI_COUNT=0 sweep "delete" $IO "$repo" "" run_delete check reset

echo "$testname: OK"
