#!/usr/bin/env bash
# Snapshot filter, disk sizes that are not a multiple of the block size
# (the last block is partial) and a large sparse disk: writes, zeroes and
# trims reaching the very last byte, snapshots, views, revert, the change
# map's last extent (ending at the end of the disk) and a restart.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires nbdcopy --version
requires nbdinfo --version

# 1. 1000000 bytes (not even a multiple of 512) with 64K blocks: 15 whole
#    blocks and a last block of 16960 bytes.
size=1000000
base=$tmpdir/base.img
mkdata "$base" $size 25
d=$tmpdir/snap
start_server srv --filter="$F" file "$base" snapshot-dir="$d"
json_check "$(snap_list srv)" "j['disk_size'] == $size"
same_content srv "" "$base"

cp "$base" "$tmpdir/m"
mkdata "$tmpdir/tail" 20000 26
nbd_pwrite srv "" $((size - 20000)) "$tmpdir/tail"
file_pwrite "$tmpdir/m" $((size - 20000)) "$tmpdir/tail"
same_content srv "" "$tmpdir/m"
snap_ok srv @snapshot:create/a >/dev/null
cp "$tmpdir/m" "$tmpdir/a"

nbd_op srv "" "
h.pwrite(b'Z', $size - 1)
h.zero(100, $size - 1000)
try:
    h.pwrite(b'x', $size)
    raise AssertionError('a write past the end succeeded')
except nbd.Error:
    pass"
printf Z | file_pwrite "$tmpdir/m" $((size - 1)) /dev/stdin
file_zero "$tmpdir/m" $((size - 1000)) 100
same_content srv "" "$tmpdir/m"
same_content srv @snapshot/a "$tmpdir/a"

# The change map ends at the end of the disk: only the last block changed.
same_text "\
0 983040 1 hole
983040 16960 0 data" "$(map srv @snapshot:diff/a)" "map of @snapshot:diff/a"

# Trim the whole partial last block: it reads as zeroes, and is "zero".
nbd_op srv "" "h.trim(16960, 983040)"
file_zero "$tmpdir/m" 983040 16960
same_content srv "" "$tmpdir/m"
same_text "\
0 983040 1 hole
983040 16960 2 zero" "$(map srv @snapshot:diff/a)" "map after trimming the last block"

restart_server srv
same_content srv "" "$tmpdir/m"
same_content srv @snapshot/a "$tmpdir/a"
snap_ok srv @snapshot:revert/a >/dev/null
same_content srv "" "$tmpdir/a"
stop_server srv

# 2. A large sparse disk (memory plugin, 64G): write at both ends, create,
#    restart, read back; start and restart stay quick.
big=$((64 * 1024 * 1024 * 1024))
db=$tmpdir/snap-big
start_server big --filter="$F" memory $big snapshot-dir="$db"
nbd_op big "" "
h.pwrite(b'first', 0)
h.pwrite(b'last!', $big - 5)
h.flush()"
snap_ok big @snapshot:create/ends >/dev/null
nbd_op big "" "h.pwrite(b'later', $big - 5)"
restart_server big
nbd_op big "" "
assert h.get_size() == $big
assert h.pread(5, 0) == b'first'
assert h.pread(5, $big - 5) == b'later'"
nbd_op big @snapshot/ends "
assert h.pread(5, $big - 5) == b'last!'
assert h.pread(65536, $big // 2) == bytes(65536)"
same_text "\
0 68719411200 1 hole
68719411200 65536 0 data" "$(map big @snapshot:diff/ends)" "map of the large disk"
stop_server big
