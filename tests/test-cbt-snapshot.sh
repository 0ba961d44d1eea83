#!/usr/bin/env bash
# cbt filter stacked above the snapshot filter (--filter=cbt
# --filter=snapshot): a @snapshot:revert passing through the cbt filter
# changes blocks the cbt filter never sees written; they must be in the
# change map since every checkpoint (and nothing else), while the revert
# itself works (the live disk equals the snapshot).  Also a revert to an
# older snapshot (two generations back), and a revert that changes
# nothing.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"

requires nbdcopy --version

K=65536
expect ()
{
    same_text "$2" "$(changed_blocks srv "$1" $K)" "changed blocks of $1"
}
wr ()
{
    local b code=""
    for b in "$@"; do code+="h.pwrite(b'w' * 100, $b * $K + 7); "; done
    nbd_op srv "" "$code"
}

img=$tmpdir/disk.img
mkdata "$img" $((1 << 20)) 5
start_server srv --filter="$C" --filter="$F" file "$img" \
    cbt-dir="$tmpdir/cbt" snapshot-dir="$tmpdir/snap" snapshot-block-size=64K

# Checkpoint C1, snapshot S, writes, checkpoint C2, more writes, revert.
cbt_ok srv @cbt:create/C1 >/dev/null
wr 1
snap_ok srv @snapshot:create/S >/dev/null
dump srv @snapshot/S "$tmpdir/S"
wr 2 3
cbt_ok srv @cbt:create/C2 >/dev/null
wr 5
expect @cbt/C2 "5"
snap_ok srv @snapshot:revert/S >/dev/null
same_content srv "" "$tmpdir/S"
expect @cbt/C2 "2 3 5"
expect @cbt/C1 "1 2 3 5"
expect @cbt:diff/C1/C2 "1 2 3"

# A revert that changes nothing marks nothing.
cbt_ok srv @cbt:create/C3 >/dev/null
snap_ok srv @snapshot:revert/S >/dev/null
expect @cbt/C3 ""

# Revert two snapshots back: blocks written before and after T change.
wr 7
snap_ok srv @snapshot:create/T >/dev/null
wr 8
cbt_ok srv @cbt:create/C4 >/dev/null
wr 9
snap_ok srv @snapshot:revert/S >/dev/null
same_content srv "" "$tmpdir/S"
expect @cbt/C4 "7 8 9"
expect @cbt/C3 "7 8 9"

# The marks survive a restart.
restart_server srv
expect @cbt/C4 "7 8 9"
expect @cbt/C1 "1 2 3 5 7 8 9"
stop_server srv
