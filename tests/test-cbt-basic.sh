#!/usr/bin/env bash
# cbt filter, basics: checkpoints, the change maps @cbt/NAME and
# @cbt:diff/A/B (exact nbdinfo --map output: unchanged = hole, changed
# data = data, changed and reads as zero = zero; writes before the first
# checkpoint are not tracked), the @cbt:list document, the views in
# nbdinfo --list, and that a view's bytes are the live disk (read-only).
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"

requires nbdinfo --version
requires nbdcopy --version

K=65536
t1 ()
{
    # No checkpoint yet.
    json_check "$(cbt_list "$uri")" \
        'sorted(j) == ["checkpoints", "command", "disk_size", "filter", "granularity", "ok", "sync"]' \
        'j["granularity"] == 65536 and j["disk_size"] == 1048576' \
        'j["sync"] == "flush" and j["checkpoints"] == []'

    # Untracked: blocks 0..9 written before the first checkpoint.
    nbd_op "$uri" "" "h.pwrite(b'\x55' * 10 * $K, 0)"

    out=$(cbt_ok "$uri" @cbt:create/B1)
    json_check "$out" 'sorted(j["checkpoint"]) == ["consistent", "created", "dirty_blocks", "dirty_bytes", "name"]' \
        'j["checkpoint"]["name"] == "B1"' 'j["checkpoint"]["consistent"] is True' \
        'j["checkpoint"]["dirty_blocks"] == 0 and j["checkpoint"]["dirty_bytes"] == 0' \
        're.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", j["checkpoint"]["created"])'
    same_text "0 1048576 1 hole" "$(map "$uri" @cbt/B1)" "@cbt/B1 right after create"

    # Data in block 2; 20 bytes across the 6|7 boundary; zero block 9
    # (held data before B1); trim block 12 (never written).
    nbd_op "$uri" "" "
h.pwrite(b'\xaa' * $K, 2 * $K)
h.pwrite(b'\xbb' * 20, 7 * $K - 10)
h.zero($K, 9 * $K)
h.trim($K, 12 * $K)"
    m1="0 131072 1 hole
131072 65536 0 data
196608 196608 1 hole
393216 131072 0 data
524288 65536 1 hole
589824 65536 2 zero
655360 131072 1 hole
786432 65536 2 zero
851968 196608 1 hole"
    same_text "$m1" "$(map "$uri" @cbt/B1)" "@cbt/B1 after writes"
    json_check "$(cbt_list "$uri")" 'len(j["checkpoints"]) == 1' \
        'j["checkpoints"][0]["name"] == "B1"' \
        'j["checkpoints"][0]["dirty_blocks"] == 5' \
        'j["checkpoints"][0]["dirty_bytes"] == 5 * 65536'

    # Second checkpoint; re-dirty block 2, write the last block.
    cbt_ok "$uri" @cbt:create/B2 >/dev/null
    nbd_op "$uri" "" "
h.pwrite(b'\xcc' * $K, 2 * $K)
h.pwrite(b'\xdd' * $K, 15 * $K)"
    same_text "0 131072 1 hole
131072 65536 0 data
196608 786432 1 hole
983040 65536 0 data" "$(map "$uri" @cbt/B2)" "@cbt/B2"
    same_text "0 131072 1 hole
131072 65536 0 data
196608 196608 1 hole
393216 131072 0 data
524288 65536 1 hole
589824 65536 2 zero
655360 131072 1 hole
786432 65536 2 zero
851968 131072 1 hole
983040 65536 0 data" "$(map "$uri" @cbt/B1)" "@cbt/B1 after B2"
    same_text "$m1" "$(map "$uri" @cbt:diff/B1/B2)" "@cbt:diff/B1/B2"
    same_text "0 1048576 1 hole" "$(map "$uri" @cbt:diff/B2/B2)" "@cbt:diff/B2/B2"

    out=$(cbt_list "$uri")
    json_check "$out" '[c["name"] for c in j["checkpoints"]] == ["B1", "B2"]' \
        'all(sorted(c) == ["consistent", "created", "dirty_blocks", "dirty_bytes", "name"] for c in j["checkpoints"])' \
        '[c["dirty_blocks"] for c in j["checkpoints"]] == [6, 2]' \
        '[c["dirty_bytes"] for c in j["checkpoints"]] == [6 * 65536, 2 * 65536]' \
        'all(c["consistent"] is True for c in j["checkpoints"])' \
        'j["checkpoints"][0]["created"] <= j["checkpoints"][1]["created"]'

    # Views are listed, carry the live disk's bytes, and are read-only.
    nbdinfo --list "$uri" > "$tmpdir/list.txt"
    grep -q '^export="@cbt/B1":' "$tmpdir/list.txt" || fail "@cbt/B1 not in nbdinfo --list"
    grep -q '^export="@cbt/B2":' "$tmpdir/list.txt" || fail "@cbt/B2 not in nbdinfo --list"
    dump "$uri" "" "$tmpdir/live"
    same_content "$uri" @cbt/B1 "$tmpdir/live"
    same_content "$uri" @cbt:diff/B1/B2 "$tmpdir/live"
    if nbd_op "$uri" @cbt/B1 "h.pwrite(b'x', 0)" 2>/dev/null; then
        fail "a write to the view @cbt/B1 succeeded"
    fi
    same_content "$uri" "" "$tmpdir/live"
}
export K; captive t1 --filter="$C" memory 1M cbt-dir="$tmpdir/d1"

# Granularity 4K: a one-byte write marks exactly its 4K block.
t2 ()
{
    cbt_ok "$uri" @cbt:create/a >/dev/null
    nbd_op "$uri" "" "h.pwrite(b'x', 5000); h.pwrite(b'y' * 4097, 40959)"
    same_text "0 4096 1 hole
4096 4096 0 data
8192 28672 1 hole
36864 8192 0 data
45056 1003520 1 hole" "$(map "$uri" @cbt/a)" "@cbt/a at 4K granularity"
    json_check "$(cbt_list "$uri")" 'j["granularity"] == 4096' \
        'j["sync"] == "strict"' 'j["checkpoints"][0]["dirty_blocks"] == 3'
}
captive t2 --filter="$C" memory 1M cbt-dir="$tmpdir/d2" cbt-granularity=4K cbt-sync=strict
