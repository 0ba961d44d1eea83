#!/usr/bin/env bash
# cbt filter, delete: deleting a middle, the oldest and the newest
# checkpoint merges its bitmap so that the change map since every
# remaining checkpoint (and between remaining pairs) stays exact, also for
# writes after the delete; "merged_into" names the checkpoint that took
# the bitmap (null for the oldest).
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"

K=65536
# expect EXPORT "BLOCKS": the change map of EXPORT is exactly BLOCKS.
expect ()
{
    same_text "$2" "$(changed_blocks "$uri" "$1" $K)" "changed blocks of $1"
}
# names "A B ...": the checkpoint list, oldest first.
names ()
{
    same_text "$1" "$(cbt_names "$uri" | tr '\n' ' ' | sed 's/ $//')" "checkpoint list"
}
# wr BLOCK...: write each block (one byte in the middle of it).
wr ()
{
    local b code=""
    for b in "$@"; do code+="h.pwrite(b'w', $b * $K + 1000); "; done
    nbd_op "$uri" "" "$code"
}
# deleted NAME MERGED: delete NAME, "merged_into" must be MERGED (or null).
deleted ()
{
    local out
    out=$(cbt_ok "$uri" @cbt:delete/"$1")
    json_check "$out" "j['checkpoint'] == '$1'" "j.get('merged_into', 'absent') == $2"
}

t ()
{
    cbt_ok "$uri" @cbt:create/C1 >/dev/null; wr 1
    cbt_ok "$uri" @cbt:create/C2 >/dev/null; wr 2
    cbt_ok "$uri" @cbt:create/C3 >/dev/null; wr 3
    cbt_ok "$uri" @cbt:create/C4 >/dev/null; wr 4
    cbt_ok "$uri" @cbt:create/C5 >/dev/null; wr 5 1
    expect @cbt/C1 "1 2 3 4 5"
    expect @cbt/C3 "1 3 4 5"
    expect @cbt/C5 "1 5"
    expect @cbt:diff/C2/C4 "2 3"

    # Middle.
    deleted C3 "'C2'"
    names "C1 C2 C4 C5"
    expect @cbt/C1 "1 2 3 4 5"
    expect @cbt/C2 "1 2 3 4 5"
    expect @cbt/C4 "1 4 5"
    expect @cbt/C5 "1 5"
    expect @cbt:diff/C1/C2 "1"
    expect @cbt:diff/C2/C4 "2 3"
    expect @cbt:diff/C4/C5 "4"
    open_fails "$uri" @cbt/C3
    wr 9
    expect @cbt/C2 "1 2 3 4 5 9"
    expect @cbt/C5 "1 5 9"

    # Oldest.
    deleted C1 None
    names "C2 C4 C5"
    expect @cbt/C2 "1 2 3 4 5 9"
    expect @cbt/C4 "1 4 5 9"
    expect @cbt:diff/C2/C5 "2 3 4"

    # Newest (the active bitmap): later writes still count for C4 and C2.
    deleted C5 "'C4'"
    names "C2 C4"
    expect @cbt/C4 "1 4 5 9"
    expect @cbt/C2 "1 2 3 4 5 9"
    wr 7
    expect @cbt/C4 "1 4 5 7 9"
    expect @cbt/C2 "1 2 3 4 5 7 9"
    expect @cbt:diff/C2/C4 "2 3"
    json_check "$(cbt_list "$uri")" \
        '[c["dirty_blocks"] for c in j["checkpoints"]] == [7, 5]'

    # A new newest after that, then delete it again and the rest.
    cbt_ok "$uri" @cbt:create/C6 >/dev/null; wr 8
    expect @cbt/C6 "8"
    expect @cbt:diff/C4/C6 "1 4 5 7 9"
    expect @cbt/C2 "1 2 3 4 5 7 8 9"
    deleted C4 "'C2'"
    expect @cbt:diff/C2/C6 "1 2 3 4 5 7 9"
    expect @cbt/C6 "8"
    deleted C6 "'C2'"
    expect @cbt/C2 "1 2 3 4 5 7 8 9"
    deleted C2 None
    names ""
    open_fails "$uri" @cbt/C2
    # Nothing tracked now; a new checkpoint starts from nothing.
    wr 10
    cbt_ok "$uri" @cbt:create/C7 >/dev/null; wr 11
    expect @cbt/C7 "11"
}
export K
captive t --filter="$C" memory 1M cbt-dir="$tmpdir/d"
