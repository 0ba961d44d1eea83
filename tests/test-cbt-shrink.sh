#!/usr/bin/env bash
# cbt filter, disk shrink between runs: nbdkit refuses to start with a
# message that says the disk shrank and names cbt-reset-on-shrink=true,
# leaving cbt-dir byte-identical; with cbt-reset-on-shrink=true every
# checkpoint is dropped and tracking starts again; the option does
# nothing when the disk did not shrink.
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

img=$tmpdir/disk.img
d=$tmpdir/cbt
truncate -s 2M "$img"
start_server srv --filter="$C" file "$img" cbt-dir="$d"
cbt_ok srv @cbt:create/C1 >/dev/null; wr 1 20
cbt_ok srv @cbt:create/C2 >/dev/null; wr 2
stop_server srv

# The option alone changes nothing.
start_server srv --filter="$C" file "$img" cbt-dir="$d" cbt-reset-on-shrink=true
json_check "$(cbt_list srv)" '[c["name"] for c in j["checkpoints"]] == ["C1", "C2"]'
expect @cbt/C1 "1 2 20"
stop_server srv

sum=$(dirsum "$d")
truncate -s 1M "$img"
expect_start_fails "$tmpdir/shrink.err" 'shrank' --filter="$C" file "$img" cbt-dir="$d"
grep -q 'cbt-reset-on-shrink=true' "$tmpdir/shrink.err" ||
    fail "the refusal does not name cbt-reset-on-shrink=true: $(cat "$tmpdir/shrink.err")"
same_dir "$sum" "$d"
expect_start_fails "$tmpdir/shrink2.err" 'shrank' --filter="$C" file "$img" \
    cbt-dir="$d" cbt-reset-on-shrink=false
same_dir "$sum" "$d"

start_server srv --filter="$C" file "$img" cbt-dir="$d" cbt-reset-on-shrink=true
json_check "$(cbt_list srv)" 'j["checkpoints"] == []' 'j["disk_size"] == 1048576'
open_fails srv @cbt/C1
open_fails srv @cbt/C2
cbt_ok srv @cbt:create/C1 >/dev/null; wr 3
expect @cbt/C1 "3"
stop_server srv
# The old bitmaps are gone: only the new checkpoint's remains.
[ "$(cd "$d" && ls bitmap-* | wc -l)" = 1 ] || fail "stale bitmaps left: $(ls "$d")"
start_server srv --filter="$C" file "$img" cbt-dir="$d"
expect @cbt/C1 "3"
stop_server srv
