#!/usr/bin/env bash
# cbt filter, a disk whose size is not a multiple of the granularity
# (1M + 1000 bytes at 64K): a write to the partial last block is tracked,
# the change map's last extent ends at the end of the disk, and the list's
# dirty_bytes counts the bytes that exist (65536 + 1000), not whole
# blocks.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"

requires nbdinfo --version

t ()
{
    cbt_ok "$uri" @cbt:create/a >/dev/null
    nbd_op "$uri" "" "
h.pwrite(b'\x11' * 65536, 65536)
h.pwrite(b'\x22' * 1000, 1048576)"
    same_text "0 65536 1 hole
65536 65536 0 data
131072 917504 1 hole
1048576 1000 0 data" "$(map "$uri" @cbt/a)" "@cbt/a"
    json_check "$(cbt_list "$uri")" 'j["disk_size"] == 1048576 + 1000' \
        'j["checkpoints"][0]["dirty_blocks"] == 2' \
        'j["checkpoints"][0]["dirty_bytes"] == 65536 + 1000'
}
captive t --filter="$C" memory $((1048576 + 1000)) cbt-dir="$tmpdir/d"
