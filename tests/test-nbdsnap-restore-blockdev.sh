#!/usr/bin/env bash
# nbdsnap restore to a block device (a loop device): the restored device
# equals the point (cmp); a failed fsync of the device, a failed write
# and a failed writeback each make the restore fail (exit 1, "partly
# written" / "may not be on the device"), never "restored".  Needs root
# and a free loop device (else skipped).
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/nbdsnap-functions.sh"
requires nbdcopy --version
[ "$(id -u)" = 0 ] || skip "needs root (loop devices)"
requires losetup --version

K=65536
repo=$tmpdir/repo
truncate -s 20M "$tmpdir/backing.img"
dev=$(losetup --find --show "$tmpdir/backing.img" 2>/dev/null) ||
    skip "no free loop device"
cleanup_fn losetup -d "$dev"
[ -b "$dev" ] || skip "$dev is not a block device"

start_server srv --filter="$FREEZE_FILTER" --filter="$CBT_FILTER" \
    memory 20M freeze-dir="$tmpdir" cbt-dir="$tmpdir/cbt"
U=$(uri srv)
nbd_op srv "" "
import random
r = random.Random(3)
for b in range(0, 320, 3):
    h.pwrite(r.randbytes($K), b * $K)
h.flush()"
dump srv "" "$tmpdir/exp-F1.img"
"$N" backup "$U" "$repo" --full --name F1 --no-progress > /dev/null

# inject CALLS NTH CMD...: CMD with the NTH of CALLS on the device failing.
inject ()
{
    local calls=$1 n=$2; shift 2
    LD_PRELOAD=$FAULTINJECT FI_CALLS=$calls FI_PATH=$dev FI_NTH=$n "$@"
}

echo "== a good restore"
head -c 20M /dev/urandom > "$dev"
"$N" restore "$repo" F1 -o "$dev" --no-progress
cmp "$dev" "$tmpdir/exp-F1.img" || fail "the device differs from the point"

echo "== fsync of the device fails"
expect_exit 1 "restore of 'F1' failed: fsync $dev: Input/output error; the data written may not be on the device" \
    inject fsync 1 "$N" restore "$repo" F1 -o "$dev" --no-progress
grep -q "^restored" "$tmpdir/out" && fail "it says restored"

echo "== a write to the device fails"
expect_exit 1 "restore of 'F1' failed: writing $dev .*Input/output error; $dev was partly written" \
    inject pwrite 3 "$N" restore "$repo" F1 -o "$dev" --no-progress

echo "== writeback of the device fails"
expect_exit 1 "restore of 'F1' failed: writing $dev \(writeback .*Input/output error; $dev was partly written" \
    inject sync_file_range 1 "$N" restore "$repo" F1 -o "$dev" --no-progress

echo "== and a restore without faults puts it right"
"$N" restore "$repo" F1 -o "$dev" --no-progress > /dev/null
cmp "$dev" "$tmpdir/exp-F1.img" || fail "the device differs from the point"

echo "$testname: OK"
