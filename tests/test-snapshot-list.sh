#!/usr/bin/env bash
# Snapshot filter, @snapshot:list and the command results: every documented
# JSON field with the expected value, snapshots' parents, "bytes" in whole
# blocks, "created" as an ISO 8601 UTC time, and the live layer.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

size=$((4 * 1024 * 1024))
d=$tmpdir/snap
bs=4096
start_server srv --filter="$F" memory $size snapshot-dir="$d" snapshot-block-size=4K

iso='re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", S["created"])'

# Empty directory: no snapshots, an empty live layer on the plugin's disk.
out=$(snap_list srv)
json_check "$out" 'j["block_size"] == 4096' "j['disk_size'] == $size" \
    'j["snapshots"] == []' 'j["live"]["parent"] is None' 'j["live"]["bytes"] == 0'

# Write 1 byte in block 0 and 10 bytes across blocks 1-2: 3 blocks.
nbd_op srv "" "h.pwrite(b'x', 0); h.pwrite(b'y' * 10, 2 * $bs - 5)"
json_check "$(snap_list srv)" "j['live']['bytes'] == 3 * $bs"

before=$(date -u +%s)
out=$(snap_ok srv @snapshot:create/a)
after=$(date -u +%s)
S='j["snapshot"]'
json_check "$out" 'j["snapshot"]["name"] == "a"' 'j["snapshot"]["parent"] is None' \
    "j['snapshot']['bytes'] == 3 * $bs" \
    "${iso//S/$S}"
# "created" is the current time (UTC).
created=$(json_get "$out" 'j["snapshot"]["created"]')
t=$(date -u -d "$created" +%s)
[ "$t" -ge $((before - 1)) ] && [ "$t" -le $((after + 1)) ] ||
    fail "created=$created is not the time of the create ($before..$after)"

# A new empty live layer on top of a.
json_check "$(snap_list srv)" 'j["live"]["parent"] == "a"' 'j["live"]["bytes"] == 0'

# Write 4 whole blocks, create b.
nbd_op srv "" "h.pwrite(b'z' * 4 * $bs, 10 * $bs)"
out=$(snap_ok srv @snapshot:create/b)
json_check "$out" 'j["snapshot"]["name"] == "b"' 'j["snapshot"]["parent"] == "a"' \
    "j['snapshot']['bytes'] == 4 * $bs"
nbd_op srv "" "h.pwrite(b'w', 100 * $bs + 1)"

out=$(snap_list srv)
S='j["snapshots"][0]'
json_check "$out" 'j["filter"] == "snapshot"' 'j["command"] == "list"' 'j["ok"] is True' \
    'j["block_size"] == 4096' "j['disk_size'] == $size" \
    'len(j["snapshots"]) == 2' \
    'sorted(s["name"] for s in j["snapshots"]) == ["a", "b"]'
for n in a b; do
    S="[s for s in j['snapshots'] if s['name'] == '$n'][0]"
    json_check "$out" "${iso//S/$S}" "$S['merging'] is False" \
        "isinstance($S['bytes'], int)"
done
json_check "$out" \
    '[s for s in j["snapshots"] if s["name"] == "a"][0]["parent"] is None' \
    '[s for s in j["snapshots"] if s["name"] == "a"][0]["bytes"] == 3 * 4096' \
    '[s for s in j["snapshots"] if s["name"] == "b"][0]["parent"] == "a"' \
    '[s for s in j["snapshots"] if s["name"] == "b"][0]["bytes"] == 4 * 4096' \
    'j["live"]["parent"] == "b"' 'j["live"]["bytes"] == 4096'

# Revert to a: result fields, live layer now on a and empty.
out=$(snap_ok srv @snapshot:revert/a)
json_check "$out" 'j["snapshot"] == "a"' 'j["discarded_bytes"] == 4096'
json_check "$(snap_list srv)" 'j["live"]["parent"] == "a"' 'j["live"]["bytes"] == 0' \
    'len(j["snapshots"]) == 2'

# Delete b (no children): result fields; b is gone.
out=$(snap_ok srv @snapshot:delete/b)
json_check "$out" 'j["snapshot"] == "b"' 'j["merged_into"] == []'
wait_merged srv
json_check "$(snap_list srv)" '[s["name"] for s in j["snapshots"]] == ["a"]'

# list is not a disk the client can write, and is not multi-conn.
nbd_op srv @snapshot:list '
assert h.is_read_only()
assert not h.can_multi_conn()'
stop_server srv
