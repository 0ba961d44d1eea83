#!/usr/bin/env bash
# freeze filter over a plugin that serves several disks (file dir=): it
# keeps frozen points of one disk and never mixes (issue 10, item 12).
#
# - the first live export used ("a") binds the filter; "b" is refused;
# - a frozen point's view reads disk "a", not the default export;
# - @freeze:begin with no cbt filter below asks for no checkpoint, and
#   an @name for a filter that is not below is refused at once: neither
#   reaches the plugin (a shared context with an @name made the file
#   plugin serving a directory crash nbdkit).
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

require_built FREEZE_FILTER

mkdir "$tmpdir/d" "$tmpdir/fz"
mkdata "$tmpdir/d/a" 1048576 1
mkdata "$tmpdir/d/b" 1048576 2
cp "$tmpdir/d/a" "$tmpdir/a.orig"
start_server srv --filter="$FREEZE_FILTER" file dir="$tmpdir/d" \
    freeze-dir="$tmpdir/fz"

same_content srv a "$tmpdir/a.orig"
open_fails srv b
grep -q 'export "b" is refused.*one disk, export "a"' "$tmpdir/srv.log" ||
    fail "no clear message for the second disk"

out=$(snapcmd srv @freeze:begin/P1)
json_check "$out" 'j["ok"] is True' 'j["point"]["checkpoint"] is False'
mkdata "$tmpdir/new" 65536 3
nbd_pwrite srv a 0 "$tmpdir/new"
same_content srv @freeze/P1 "$tmpdir/a.orig"
open_fails srv @cbt:list
grep -q "no filter below the freeze filter understands the export name '@cbt:list'" \
    "$tmpdir/srv.log" || fail "no clear message for @cbt:list"
server_alive srv || fail "nbdkit died"
json_check "$(snapcmd srv @freeze:end/P1)" 'j["ok"] is True'
stop_server srv
cmp "$tmpdir/d/b" <(head -c 1048576 /dev/null; $PYTHON -c '
import sys, random
sys.stdout.buffer.write(random.Random(2).randbytes(1048576))') ||
    fail "disk b was changed"
