#!/usr/bin/env bash
# cbt filter: @cbt:list's per-checkpoint figures (dirty_blocks,
# dirty_bytes) for several checkpoints with overlapping writes, against
# the change map @cbt/C of each one read independently (libnbd block
# status): a wrong union of the later bitmaps would differ.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"

K=65536
size=$((40 * K + 1000))         # 41 blocks, the last one 1000 bytes
start_server s --filter="$CBT_FILTER" memory $size cbt-dir="$tmpdir"
cbt_ok s @cbt:create/C0 >/dev/null
nbd_op s "" "h.pwrite(b'a' * 4 * $K, 2 * $K); h.pwrite(b'b' * 10, 40 * $K)"
cbt_ok s @cbt:create/C1 >/dev/null
nbd_op s "" "h.pwrite(b'c' * 4 * $K, 4 * $K); h.zero(2 * $K, 30 * $K)"
cbt_ok s @cbt:create/C2 >/dev/null
nbd_op s "" "h.pwrite(b'd' * $K, 3 * $K); h.pwrite(b'e' * 3 * $K, 20 * $K)"
cbt_ok s @cbt:create/C3 >/dev/null
nbd_op s "" "h.pwrite(b'f' * $K, 31 * $K)"
cbt_ok s @cbt:create/C4 >/dev/null

list=$(cbt_list s)
for i in 0 1 2 3 4; do
    b=$(changed_blocks s @cbt/C$i $K)
    n=$(wc -w <<< "$b")
    bytes=$((n * K))
    case " $b " in *" 40 "*) bytes=$((bytes - K + 1000)) ;; esac
    json_check "$list" "j['checkpoints'][$i]['name'] == 'C$i'" \
        "j['checkpoints'][$i]['dirty_blocks'] == $n" \
        "j['checkpoints'][$i]['dirty_bytes'] == $bytes"
done
# The figures themselves (blocks from the writes above).
json_check "$list" '[c["dirty_blocks"] for c in j["checkpoints"]] == [12, 10, 5, 1, 0]'
