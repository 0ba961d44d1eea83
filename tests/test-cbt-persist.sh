#!/usr/bin/env bash
# cbt filter, persistence: after a clean stop (SIGTERM) and restart on
# the same cbt-dir (file plugin), checkpoints (names, order, creation
# times), change maps since each checkpoint and between pairs, and the
# list counts are unchanged, and tracking goes on; in cbt-sync=strict and
# cbt-sync=flush (no client flush), and when cbt-sync changes between runs.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"

K=65536
expect ()
{
    same_text "$2" "$(changed_blocks srv "$1" $K)" "changed blocks of $1 ($mode)"
}
wr ()
{
    local b code=""
    for b in "$@"; do code+="h.pwrite(b'w' * 100, $b * $K + 7); "; done
    nbd_op srv "" "$code"
}

for mode in strict flush; do
    img=$tmpdir/$mode.img
    truncate -s 1M "$img"
    d=$tmpdir/cbt-$mode
    start_server srv --filter="$C" file "$img" cbt-dir="$d" cbt-sync=$mode

    cbt_ok srv @cbt:create/C1 >/dev/null
    wr 1 2
    cbt_ok srv @cbt:create/C2 >/dev/null
    wr 3
    before=$(cbt_list srv)
    restart_server srv
    after=$(cbt_list srv)
    [ "$before" = "$after" ] || fail "$mode: list changed across restart:
  before: $before
  after:  $after"
    json_check "$after" "j['sync'] == '$mode'" \
        '[c["name"] for c in j["checkpoints"]] == ["C1", "C2"]' \
        '[c["dirty_blocks"] for c in j["checkpoints"]] == [3, 1]' \
        'all(c["consistent"] for c in j["checkpoints"])'
    expect @cbt/C1 "1 2 3"
    expect @cbt/C2 "3"
    expect @cbt:diff/C1/C2 "1 2"

    # Tracking continues after the restart; a delete and a create persist.
    wr 4
    cbt_ok srv @cbt:create/C3 >/dev/null
    wr 5
    cbt_ok srv @cbt:delete/C2 >/dev/null
    restart_server srv
    json_check "$(cbt_list srv)" '[c["name"] for c in j["checkpoints"]] == ["C1", "C3"]' \
        '[c["dirty_blocks"] for c in j["checkpoints"]] == [5, 1]'
    expect @cbt/C1 "1 2 3 4 5"
    expect @cbt/C3 "5"
    expect @cbt:diff/C1/C3 "1 2 3 4"

    # Restart with the other cbt-sync: nothing lost either way.
    other=$([ $mode = strict ] && echo flush || echo strict)
    stop_server srv
    start_server srv --filter="$C" file "$img" cbt-dir="$d" cbt-sync=$other
    json_check "$(cbt_list srv)" "j['sync'] == '$other'" \
        '[c["name"] for c in j["checkpoints"]] == ["C1", "C3"]' \
        'all(c["consistent"] for c in j["checkpoints"])'
    expect @cbt/C3 "5"
    wr 6
    restart_server srv
    expect @cbt/C1 "1 2 3 4 5 6"
    expect @cbt/C3 "5 6"
    stop_server srv
done
