#!/usr/bin/env bash
# cbt filter: @cbt:create/NAME/snapshot makes snapshot NAME and checkpoint
# NAME at one instant of the write stream.  Four writers write
# sequence-numbered blocks without pause while instants are taken; every
# write must be in both the snapshot and the checkpoint's interval, or in
# neither (tests/cbt-instant.py says how this is checked), and a create
# whose snapshot is refused leaves no checkpoint.  Run on the full stack
# (freeze above) and on cbt + snapshot alone.  Then the refusals.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"

: "${FREEZE_FILTER:=$top_builddir/filters/freeze/.libs/nbdkit-freeze-filter.so}"
rounds=6
[ -n "$CHECK_LONG" ] && rounds=40

start_server full --filter="$FREEZE_FILTER" --filter="$C" --filter="$F" \
    memory 16M freeze-dir="$tmpdir" cbt-dir="$tmpdir/cbt1" \
    snapshot-dir="$tmpdir/snap1" cbt-granularity=4K snapshot-block-size=4K
$PYTHON "$testsdir/cbt-instant.py" "$(sock full)" $rounds

start_server two --filter="$C" --filter="$F" memory 16M cbt-sync=strict \
    cbt-dir="$tmpdir/cbt2" snapshot-dir="$tmpdir/snap2" \
    cbt-granularity=4K snapshot-block-size=4K
$PYTHON "$testsdir/cbt-instant.py" "$(sock two)" $rounds

# The checker sees the difference: a checkpoint and a snapshot made by two
# commands, a moment apart, are caught (writes land between the two).
start_server apart --filter="$C" --filter="$F" memory 16M \
    cbt-dir="$tmpdir/cbt4" snapshot-dir="$tmpdir/snap4" \
    cbt-granularity=4K snapshot-block-size=4K
if INSTANT_TWO_COMMANDS=1 $PYTHON "$testsdir/cbt-instant.py" "$(sock apart)" \
       $rounds > "$tmpdir/apart.out" 2>&1; then
    fail "two separate commands passed as one instant"
fi
grep -Eq "missing|extra|not one instant" "$tmpdir/apart.out" ||
    { cat "$tmpdir/apart.out" >&2; fail "the two-command run failed otherwise"; }
stop_server apart

# Refusals: bad name, name taken (checkpoint or snapshot), no snapshot
# filter below; none leaves a checkpoint or a snapshot behind.
cbt_err two "@cbt:create/a..b/snapshot" EINVAL >/dev/null
cbt_err two "@cbt:create/S1/snapshot" EEXIST >/dev/null
cbt_err two "@cbt:create/S1/other" EINVAL >/dev/null
out=$(cbt_err two "@cbt:create/X/snapshot" EEXIST)
json_check "$out" '"was not made either" in j["error"]'
before=$(cbt_names two)
cbt_ok two "@cbt:create/Y/snapshot" >/dev/null
[ "$(cbt_names two)" = "$before
Y" ] || fail "checkpoints after Y: $(cbt_names two)"
json_check "$(snap_list two)" '"Y" in [s["name"] for s in j["snapshots"]]'

start_server alone --filter="$C" memory 1M cbt-dir="$tmpdir/cbt3"
out=$(cbt_err alone "@cbt:create/Z/snapshot" EINVAL)
json_check "$out" '"no snapshot filter" in j["error"]'
[ -z "$(cbt_names alone)" ] || fail "a checkpoint was made without a snapshot filter"
echo "$testname: ok"
