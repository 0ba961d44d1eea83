#!/usr/bin/env bash
# freeze filter over cbt and snapshot: a @snapshot:revert passing through
# the freeze filter (plain and /force) is refused (the open fails, with the
# "refused while a frozen point is held" message) while a frozen point is
# held, and changes nothing: the live disk and the frozen view keep their
# bytes.  After @freeze:end the same revert works.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"

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
mkdata "$tmpdir/initial" $size 21
start_server srv --filter="$Z" --filter="$C" --filter="$F" memory $size \
    freeze-dir="$tmpdir" cbt-dir="$tmpdir/cbt" snapshot-dir="$tmpdir/snap"

nbd_op srv "" "h.pwrite(open('$tmpdir/initial', 'rb').read(), 0)"
snap_ok srv @snapshot:create/S >/dev/null
nbd_op srv "" "h.pwrite(b'after S' * 30000, 4096)"
dump srv "" "$tmpdir/at-B1"
frz_ok srv @freeze:begin/B1 >/dev/null
nbd_op srv "" "h.pwrite(b'after B1' * 1000, 300000)"
dump srv "" "$tmpdir/live"

for r in @snapshot:revert/S @snapshot:revert/S/force; do
    open_fails srv "$r"
    same_content srv "" "$tmpdir/live"
    same_content srv @freeze/B1 "$tmpdir/at-B1"
done
grep -q "refused while a frozen point is held" "$tmpdir/srv.log" ||
    fail "no 'refused while a frozen point is held' message in the log"
# Other snapshot commands still pass through.
json_check "$(snap_list srv)" '[s["name"] for s in j["snapshots"]] == ["S"]'

# After the end, the revert works.
frz_ok srv @freeze:end/B1 >/dev/null
snap_ok srv @snapshot:revert/S >/dev/null
same_content srv "" "$tmpdir/initial"
stop_server srv
