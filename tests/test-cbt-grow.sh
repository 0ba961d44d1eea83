#!/usr/bin/env bash
# cbt filter, disk growth between runs (file plugin, file truncated
# larger while nbdkit is stopped): the new area counts as changed since
# every checkpoint (and reads as zero in the change map), the old area
# keeps its exact maps (no old block is added unless the old size ended
# inside it), frozen diffs are unchanged, and tracking goes on in the new
# area; growth from a size that is not a multiple of the granularity
# marks the old partial block too.
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
seqs () { seq -s ' ' "$@"; }

img=$tmpdir/disk.img
truncate -s 1M "$img"
args=(--filter="$C" file "$img" cbt-dir="$tmpdir/cbt")
start_server srv "${args[@]}"
cbt_ok srv @cbt:create/C1 >/dev/null; wr 2
cbt_ok srv @cbt:create/C2 >/dev/null; wr 3
stop_server srv

# 1M -> 2M (16 -> 32 blocks).
truncate -s 2M "$img"
start_server srv "${args[@]}"
json_check "$(cbt_list srv)" 'j["disk_size"] == 2 * 1048576' \
    '[c["dirty_blocks"] for c in j["checkpoints"]] == [18, 17]' \
    'all(c["consistent"] for c in j["checkpoints"])'
expect @cbt/C1 "2 3 $(seqs 16 31)"
expect @cbt/C2 "3 $(seqs 16 31)"
expect @cbt:diff/C1/C2 "2"
last=$(map srv @cbt/C2 | tail -n 1)
same_text "1048576 1048576 2 zero" "$last" "grown area in the change map"
wr 20 4
expect @cbt/C2 "3 4 $(seqs 16 31)"
cbt_ok srv @cbt:create/C3 >/dev/null; wr 25
expect @cbt/C3 "25"
restart_server srv
expect @cbt/C1 "2 3 4 $(seqs 16 31)"
expect @cbt/C3 "25"

# 2M -> 2M+1000 -> 3M: the old size 2M+1000 ends inside block 32, whose
# tail is new space: block 32 counts as changed, block 31 does not.
stop_server srv
truncate -s $((2 * 1048576 + 1000)) "$img"
start_server srv "${args[@]}"
expect @cbt/C3 "25 32"
cbt_ok srv @cbt:create/C4 >/dev/null
stop_server srv
truncate -s 3M "$img"
start_server srv "${args[@]}"
expect @cbt/C4 "$(seqs 32 47)"
expect @cbt/C3 "25 $(seqs 32 47)"
expect @cbt:diff/C2/C3 "3 4 $(seqs 16 31)"
json_check "$(cbt_list srv)" 'j["disk_size"] == 3 * 1048576'
stop_server srv
