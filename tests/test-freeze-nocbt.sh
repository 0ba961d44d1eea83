#!/usr/bin/env bash
# freeze filter without the cbt filter below (freeze alone, and freeze over
# the snapshot filter): @freeze:begin works and says "checkpoint":false,
# the full view @freeze/NAME keeps the frozen disk while the live disk is
# written, and an incremental @freeze:diff/BASE/NAME fails to open (with a
# log message naming the cbt filter), for existing and missing points.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

require_built FREEZE_FILTER
Z=$FREEZE_FILTER
requires nbdcopy --version

frz_ok ()
{
    local out verb
    out=$(snapcmd "$1" "$2") || fail "command $2: open failed"
    verb=${2#@freeze:}; verb=${verb%%/*}
    json_check "$out" 'j.get("filter") == "freeze"' \
        "j.get('command') == '$verb'" 'j.get("ok") is True'
    printf '%s\n' "$out"
}

size=$((1 << 20))
mkdata "$tmpdir/initial" $size 11
mkdata "$tmpdir/more" $((200 * 1024)) 12

# scenario NAME NBDKIT-ARGS...
scenario ()
{
    local s=$1 out; shift
    start_server "$s" "$@"
    nbd_op "$s" "" "h.pwrite(open('$tmpdir/initial', 'rb').read(), 0)"
    out=$(frz_ok "$s" @freeze:begin/B0)
    json_check "$out" 'j["point"]["name"] == "B0"' \
        'j["point"]["checkpoint"] is False' 'j["point"]["aborted"] is False'
    nbd_pwrite "$s" "" 70000 "$tmpdir/more"
    dump "$s" "" "$tmpdir/$s.at-B1"
    out=$(frz_ok "$s" @freeze:begin/B1)
    json_check "$out" 'j["point"]["checkpoint"] is False'
    # Writes after B1 (over and around what "more" wrote).
    nbd_op "$s" "" "h.pwrite(b'after B1' * 40000, 1000); h.zero(65536, 600000)"
    same_content "$s" @freeze/B1 "$tmpdir/$s.at-B1"
    same_content "$s" @freeze/B0 "$tmpdir/initial"
    json_check "$(frz_ok "$s" @freeze:list)" \
        '[p["name"] for p in j["points"]] == ["B0", "B1"]' \
        'all(p["checkpoint"] is False for p in j["points"])'
    # No change map without cbt.
    open_fails "$s" @freeze:diff/B0/B1
    open_fails "$s" @freeze:diff/B1/B1
    open_fails "$s" @freeze:diff/nosuch/B1
    grep -q "cbt filter" "$tmpdir/$s.log" ||
        fail "$s: no log message about the missing cbt filter"
    # The full views still work after the failed opens.
    same_content "$s" @freeze/B1 "$tmpdir/$s.at-B1"
    frz_ok "$s" @freeze:end/B0 >/dev/null
    frz_ok "$s" @freeze:end/B1 >/dev/null
    stop_server "$s"
}

scenario alone --filter="$Z" memory $size freeze-dir="$tmpdir"
scenario oversnap --filter="$Z" --filter="$F" memory $size \
    freeze-dir="$tmpdir" snapshot-dir="$tmpdir/snap"
