#!/usr/bin/env bash
# nbdsnap backup under injected faults (tests/nbdsnap-faults.sh): the
# fault shim on the tool fails the n-th of its write, pwrite, fsync,
# fdatasync, sync_file_range, rename, open, close, ftruncate, fallocate,
# mkdir, unlink calls on the repository, for every n, in
#   - a first full backup into a missing directory (the repository is
#     created, then removed again if the backup fails),
#   - a full backup and a compressed incremental backup into an existing
#     repository.
# After each fault: the backup exits non-zero with a message and no
# result; the repository verifies (verify also removes what a failed run
# left) and has no temporary entry left; every point it lists restores
# to the disk it was taken from (cmp); the server holds no frozen point
# and has no checkpoint of a failed backup.  The number of fault points
# is printed; CHECK_LONG=1 tries every one (FAULT_POINTS caps the rest).
# The full backup and the first backup are also run on a disk that stays
# broken from the n-th call on (FI_COUNT=0): the cleanup after the
# failure fails too, and what it leaves is removed by a later verify.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/nbdsnap-functions.sh"
. "$testsdir/nbdsnap-faults.sh"
requires nbdcopy --version

K=65536
repo=$tmpdir/repo
truncate -s 6M "$tmpdir/disk.img"
start_server srv --filter="$FREEZE_FILTER" --filter="$CBT_FILTER" \
    file "$tmpdir/disk.img" freeze-dir="$tmpdir" cbt-dir="$tmpdir/cbt"
U=$(uri srv)

# Data in separate runs of blocks (several chunks, several writes).
nbd_op srv "" "
import random
r = random.Random(1)
for b in range(0, 96, 3):
    h.pwrite(r.randbytes(2 * $K), b * $K)
h.flush()"
dump srv "" "$tmpdir/exp-F1.img"
"$N" backup "$U" "$repo" --full --name F1 --no-progress > /dev/null
# Changes since F1 for the incremental; X is the disk now.
nbd_op srv "" "
import random
r = random.Random(2)
for b in range(1, 96, 7):
    h.pwrite(r.randbytes(5000), b * $K + 300)
h.pwrite(bytes($K), 3 * $K)
h.flush()"
dump srv "" "$tmpdir/exp-X.img"
base_sum=$(dirsum "$repo")

# The state after a run: the checks every sweep shares.
check_server ()
{
    nothing_held "$U"
    if [ "$rc" = 0 ]; then
        [ "$(checkpoints "$U")" = "F1 X" ] || fail "checkpoints: $(checkpoints "$U")"
    else
        [ "$(checkpoints "$U")" = "F1" ] ||
            fail "a failed backup left its checkpoint: $(checkpoints "$U")"
    fi
}
check_repo ()
{
    local r=$1
    "$N" verify "$r" > "$tmpdir/verify.out" 2>&1 ||
        { cat "$tmpdir/verify.out" >&2; fail "verify failed"; }
    no_tmp "$r"
    if [ "$rc" != 0 ] && ! grep -q 'may not survive a crash' "$tmpdir/sweep.err"; then
        case " $(points "$r") " in *" X "*) fail "a failed backup left point X";; esac
    fi
    # Unchanged bytes restore as they did; anything else is restored.
    [ "$(dirsum "$r")" = "$base_sum" ] || restore_all "$r"
}
# Back to F1 alone (and checkpoint F1 alone on the server).
reset_existing ()
{
    case " $(points "$repo") " in *" X "*) "$N" delete "$repo" X > /dev/null;; esac
    case " $(checkpoints "$U") " in *" X "*) "$N" checkpoint delete "$U" X > /dev/null;; esac
    return 0
}

echo "== full backup into an existing repository"
run_full () { $FI_RUN "$N" backup "$U" "$repo" --full --name X --connections 2 --no-progress; }
check_full () { check_server; check_repo "$repo"; }
sweep "full backup" $IO "$repo" "" run_full check_full reset_existing
echo "== ... on a disk that stays broken from the n-th call"
FI_COUNT=0 FAULT_POINTS=15 \
    sweep "full backup" $IO "$repo" "" run_full check_full reset_existing

echo "== compressed incremental backup"
run_inc () { $FI_RUN "$N" backup "$U" "$repo" --name X --compress --connections 2 --no-progress; }
sweep "incremental backup" $IO "$repo" "" run_inc check_full reset_existing

echo "== first backup into a missing directory"
new=$tmpdir/new
"$N" checkpoint delete "$U" F1 > /dev/null
run_first () { $FI_RUN "$N" backup "$U" "$new" --full --name X --no-progress; }
check_first ()
{
    nothing_held "$U"
    if [ "$rc" = 0 ]; then
        [ "$(checkpoints "$U")" = "X" ] || fail "checkpoints: $(checkpoints "$U")"
        check_repo "$new"
        return
    fi
    [ -z "$(checkpoints "$U")" ] ||
        fail "a failed backup left its checkpoint: $(checkpoints "$U")"
    # The repository it created is gone again, or (if removing it is
    # what failed, and it says so) an empty repository that verifies, or
    # an interrupted init that init takes over.
    if [ -e "$new" ]; then
        grep -Eq 'cannot remove|warning' "$tmpdir/sweep.err" ||
            fail "the failed first backup left $new: $(ls -AR "$new")"
        if ! "$N" verify "$new" > /dev/null 2>&1; then
            "$N" init "$new" > /dev/null ||
                fail "what the failed first backup left is neither a repository nor an interrupted init: $(ls -AR "$new")"
        fi
        # A point only if it says it could not take it out again.
        if [ -n "$(points "$new")" ]; then
            grep -q 'may not survive a crash' "$tmpdir/sweep.err" ||
                fail "the failed first backup left points: $(points "$new")"
            check_repo "$new"
        fi
    fi
}
reset_first ()
{
    rm -rf "$new"
    case " $(checkpoints "$U") " in *" X "*) "$N" checkpoint delete "$U" X > /dev/null;; esac
    return 0
}
sweep "first backup" $IO "$new" "" run_first check_first reset_first
echo "== ... on a disk that stays broken from the n-th call"
FI_COUNT=0 FAULT_POINTS=25 \
    sweep "first backup" $IO "$new" "" run_first check_first reset_first

echo "$testname: OK"
