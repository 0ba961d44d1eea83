#!/usr/bin/env bash
# cbt filter, one disk (issue 10, item 12): the bitmaps hold the history
# of one disk.  Over a plugin that serves a different disk per export
# name (an eval plugin: export "" is file disk-x, export "a" is disk-xa),
# the filter probes the default export at start and binds to it: the
# live export "" works and is tracked; opening the live export "a" is
# refused with a message naming both exports, so no write of disk "a"
# ever reaches the bitmaps or disk-xa; views read the bound disk.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"

ev=$tmpdir/ev
mkdir "$ev"
mkdata "$ev/disk-x" $((1 << 20)) 1
mkdata "$ev/disk-xa" $((1 << 20)) 2
cp "$ev/disk-xa" "$tmpdir/xa.orig"
export EVDIR=$ev
start_server srv --filter="$C" eval \
    list_exports='echo ""; echo a' \
    open='echo "x$3"' \
    get_size='stat -L -c %s "$EVDIR/disk-$2"' \
    pread='dd if="$EVDIR/disk-$2" skip=$4 count=$3 iflag=skip_bytes,count_bytes status=none' \
    pwrite='dd of="$EVDIR/disk-$2" seek=$4 oflag=seek_bytes conv=notrunc status=none' \
    can_write='exit 0' \
    cbt-dir="$tmpdir/cbt" cbt-granularity=64K cbt-sync=strict

cbt_ok srv @cbt:create/C1 >/dev/null
nbd_op srv "" "h.pwrite(b'L' * 4096, 65536)"

# The second disk is refused, and says why.
open_fails srv a
grep -q 'export "a" is refused.*export ""' "$tmpdir/srv.log" ||
    fail "no clear message for the refused export"
# Refused every time, also after the first refusal.
if nbd_op srv a "h.pwrite(b'A' * 4096, 3 * 65536)" 2>/dev/null; then
    fail "a write to export a was accepted"
fi
cmp "$ev/disk-xa" "$tmpdir/xa.orig" || fail "disk of export a was changed"

# Only the write to the bound disk is in the change map, and the view
# reads the bound disk.
[ "$(changed_blocks srv @cbt/C1 65536)" = 1 ] ||
    fail "change map: $(changed_blocks srv @cbt/C1 65536), expected block 1"
dump srv @cbt/C1 "$tmpdir/view"
cmp "$tmpdir/view" "$ev/disk-x" || fail "the view does not read disk x"
stop_server srv
