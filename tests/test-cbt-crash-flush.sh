#!/usr/bin/env bash
# cbt filter, unclean stop in cbt-sync=flush: after kill -9 the newest
# checkpoint's bitmap may miss writes, so every change map that needs it
# is refused (the open fails, the server says a full backup is needed)
# and @cbt:list shows "consistent":false for every checkpoint whose
# "since" includes it; change maps between two older checkpoints still
# work and are exact; a checkpoint created after the restart tracks
# exactly; all of this survives a further clean restart.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"

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
# refused EXPORT: opening the change map fails, the log explains.
refused ()
{
    local n
    n=$(grep -ci 'full backup' "$tmpdir/srv.log" || true)
    open_fails srv "$1"
    [ "$(grep -ci 'full backup' "$tmpdir/srv.log")" -gt "$n" ] ||
        fail "opening $1 failed without a message mentioning a full backup"
}
consistent ()
{
    json_check "$(cbt_list srv)" "[c['name'] for c in j['checkpoints']] == $1" \
        "[c['consistent'] for c in j['checkpoints']] == $2"
}

img=$tmpdir/disk.img
truncate -s 1M "$img"
start_server srv --filter="$C" file "$img" cbt-dir="$tmpdir/cbt" cbt-sync=flush

cbt_ok srv @cbt:create/C1 >/dev/null; wr 1
cbt_ok srv @cbt:create/C2 >/dev/null; wr 2
cbt_ok srv @cbt:create/C3 >/dev/null
nbd_op srv "" "h.pwrite(b'x' * 10, 3 * $K); h.flush(); h.pwrite(b'y', 4 * $K)"
consistent '["C1", "C2", "C3"]' '[True, True, True]'
restart_server srv kill9

consistent '["C1", "C2", "C3"]' '[False, False, False]'
refused @cbt/C3
refused @cbt/C2
refused @cbt/C1
# Frozen bitmaps are intact.
expect @cbt:diff/C1/C2 "1"
expect @cbt:diff/C2/C3 "2"
expect @cbt:diff/C1/C3 "1 2"

# A new checkpoint after the restart works; maps reaching C3's bitmap don't.
cbt_ok srv @cbt:create/C4 >/dev/null
wr 6
expect @cbt/C4 "6"
refused @cbt:diff/C3/C4
refused @cbt/C3
consistent '["C1", "C2", "C3", "C4"]' '[False, False, False, True]'
expect @cbt:diff/C1/C3 "1 2"

# The inconsistency is remembered across a clean restart.
restart_server srv
consistent '["C1", "C2", "C3", "C4"]' '[False, False, False, True]'
refused @cbt/C1
expect @cbt/C4 "6"
expect @cbt:diff/C1/C3 "1 2"
stop_server srv
