#!/usr/bin/env bash
# nbdsnap restore under injected faults (tests/nbdsnap-faults.sh): the
# n-th write, pwrite, fsync, fdatasync, sync_file_range, rename, open,
# ftruncate, fallocate, mkdir or unlink of the tool on the target fails,
# for every n, in
#   - a restore to a file that exists (its directory is the fault path);
#     the restore writes more than one writeback window, so writeback
#     (sync_file_range) is among the calls;
#   - a restore to a loop block device (root only; else skipped).
# After each fault: the restore exits non-zero with a message and no
# result; the old file is untouched and no temporary file is left (or,
# when only the directory fsync after the rename failed, the new file is
# in place and equals the point, and the message says it may not survive
# a crash); a device is simply rewritten by a restore without faults,
# which then equals the point (cmp).  The repository is never written.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/nbdsnap-functions.sh"
. "$testsdir/nbdsnap-faults.sh"
requires nbdcopy --version

K=65536
repo=$tmpdir/repo
start_server srv --filter="$FREEZE_FILTER" --filter="$CBT_FILTER" \
    memory 40M freeze-dir="$tmpdir" cbt-dir="$tmpdir/cbt"
U=$(uri srv)
# 36M of data in runs, holes between: several writeback windows.
nbd_op srv "" "
import random
r = random.Random(5)
for b in range(0, 640, 5):
    h.pwrite(r.randbytes(4 * $K), b * $K)
h.flush()"
dump srv "" "$tmpdir/exp-F1.img"
"$N" backup "$U" "$repo" --full --name F1 --no-progress > /dev/null
repo_sum=$(dirsum "$repo")

echo "== restore to a file"
mkdir "$tmpdir/t"
target=$tmpdir/t/disk.img
reset_file () { echo "old content" > "$target"; rm -f "$tmpdir"/t/disk.img.nbdsnap-*; }
run_file () { $FI_RUN "$N" restore "$repo" F1 -o "$target" --connections 2 --no-progress; }
check_file ()
{
    same_dir "$repo_sum" "$repo"
    if [ "$rc" = 0 ]; then
        cmp "$target" "$tmpdir/exp-F1.img" || fail "the restored file is wrong"
    elif grep -q 'is in place, but its directory could not be synced' "$tmpdir/sweep.err"; then
        cmp "$target" "$tmpdir/exp-F1.img" || fail "the file in place is wrong"
    else
        [ "$(cat "$target")" = "old content" ] || fail "a failed restore changed the target"
    fi
    # A temporary file is left only if the tool says so.
    if compgen -G "$tmpdir/t/disk.img.nbdsnap-*" > /dev/null; then
        grep -q 'could not remove the temporary file' "$tmpdir/sweep.err" ||
            fail "a temporary file was left silently: $(ls "$tmpdir/t")"
    fi
}
sweep "restore to a file" $IO "$tmpdir/t" "" run_file check_file reset_file
echo "== ... on a disk that stays broken from the n-th call"
FI_COUNT=0 FAULT_POINTS=15 sweep "restore to a file" $IO "$tmpdir/t" "" run_file check_file reset_file

echo "== restore to a loop device"
if [ "$(id -u)" != 0 ] || ! losetup --version > /dev/null 2>&1; then
    echo "(skipped: needs root and losetup)"
else
    truncate -s 40M "$tmpdir/backing.img"
    if dev=$(losetup --find --show "$tmpdir/backing.img" 2>/dev/null); then
        cleanup_fn losetup -d "$dev"
        run_dev () { $FI_RUN "$N" restore "$repo" F1 -o "$dev" --connections 2 --no-progress; }
        check_dev ()
        {
            same_dir "$repo_sum" "$repo"
            [ "$rc" != 0 ] || cmp "$dev" "$tmpdir/exp-F1.img" ||
                fail "the restored device is wrong"
        }
        FAULT_POINTS=25 \
            sweep "restore to a block device" $IO "$dev" "" run_dev check_dev :
        "$N" restore "$repo" F1 -o "$dev" --no-progress > /dev/null
        cmp "$dev" "$tmpdir/exp-F1.img" || fail "the device is wrong after the sweep"
    else
        echo "(skipped: no free loop device)"
    fi
fi

echo "$testname: OK"
