#!/usr/bin/env bash
# Snapshot filter, persistence: stop nbdkit cleanly (SIGTERM, no explicit
# flush), start it again on the same snapshot-dir and plugin: the live disk,
# every snapshot view and the snapshot list read exactly as before.  Done
# twice (the second time after a revert, a create and a delete), then once
# more leaving out snapshot-block-size (the size recorded in the dir is used).
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires nbdcopy --version

size=$((16 * 1024 * 1024))
base=$tmpdir/base.img
mkdata "$base" $size 2
d=$tmpdir/snap
args=(--filter="$F" file "$base" snapshot-dir="$d" snapshot-block-size=4K)

start_server srv "${args[@]}"
mkdata "$tmpdir/w" 300000 3
nbd_pwrite srv "" 4000 "$tmpdir/w"
snap_ok srv @snapshot:create/one >/dev/null
nbd_pwrite srv "" $((8 * 1024 * 1024 + 1)) "$tmpdir/w"
nbd_op srv "" "h.zero(65536, 8192); h.trim(4096, $((size - 4096)))"
snap_ok srv @snapshot:create/two >/dev/null
nbd_pwrite srv "" 100 "$tmpdir/w"
nbd_op srv "" "h.zero(1000, 5000000)"

# snapshot-state NAME: save the live disk, the views and the list.
save_state ()
{
    local n
    dump srv "" "$tmpdir/$1.live"
    for n in $(snap_names srv); do
        dump srv "@snapshot/$n" "$tmpdir/$1.view-$n"
    done
    snap_list srv | $PYTHON -c '
import sys, json
j = json.load(sys.stdin)
# "merging" may legitimately differ; everything else must persist.
for s in j["snapshots"]: s.pop("merging", None)
print(json.dumps(j, sort_keys=True))' > "$tmpdir/$1.list"
}

# same_state NAME: the server shows exactly the saved state NAME.
same_state ()
{
    local n
    same_content srv "" "$tmpdir/$1.live"
    for n in $(snap_names srv); do
        same_content srv "@snapshot/$n" "$tmpdir/$1.view-$n"
    done
    snap_list srv | $PYTHON -c '
import sys, json
j = json.load(sys.stdin)
for s in j["snapshots"]: s.pop("merging", None)
print(json.dumps(j, sort_keys=True))' > "$tmpdir/$1.list.now"
    if ! cmp -s "$tmpdir/$1.list" "$tmpdir/$1.list.now"; then
        cat "$tmpdir/$1.list" "$tmpdir/$1.list.now" >&2
        fail "snapshot list changed across the restart"
    fi
}

save_state s1
[ "$(snap_names srv | tr '\n' ' ')" = "one two " ] || fail "expected snapshots one two"
restart_server srv
same_state s1

# Second round: revert, write, delete, restart.
snap_ok srv @snapshot:revert/one >/dev/null
nbd_pwrite srv "" 777777 "$tmpdir/w"
snap_ok srv @snapshot:create/three >/dev/null
nbd_pwrite srv "" 3 "$tmpdir/w"
snap_ok srv @snapshot:delete/one >/dev/null
wait_merged srv
save_state s2
[ "$(snap_names srv | sort | tr '\n' ' ')" = "three two " ] ||
    fail "expected snapshots three two after deleting one"
restart_server srv
same_state s2

# Third: restart without snapshot-block-size: the recorded 4K is used.
stop_server srv
start_server srv --filter="$F" file "$base" snapshot-dir="$d"
same_state s2
json_check "$(snap_list srv)" 'j["block_size"] == 4096'
stop_server srv
