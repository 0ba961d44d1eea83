#!/usr/bin/env bash
# nbdsnap management subcommands (snapshot, checkpoint, freeze) through
# the filters' command exports, and their exit codes: 0 ok, 1 the server
# refused (its error is printed), 2 usage or no connection.  --json prints
# the server's result as it is.  Also --help, --version, a TCP client
# without permission (EPERM), a read-only server (EROFS), a server without
# the filter.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

require_built CBT_FILTER FREEZE_FILTER NBDSNAP
N=$NBDSNAP
K=65536

# run CODE CMD...: CMD must exit with CODE; stdout in $tmpdir/out, stderr
# in $tmpdir/err.
run ()
{
    local code=$1 st=0; shift
    "$@" > "$tmpdir/out" 2> "$tmpdir/err" || st=$?
    if [ "$st" -ne "$code" ]; then
        cat "$tmpdir/out" "$tmpdir/err" >&2
        fail "expected exit $code, got $st: $*"
    fi
}
out_has () { grep -Eq -- "$1" "$tmpdir/out" || { cat "$tmpdir/out" >&2; fail "stdout lacks /$1/"; }; }
err_has () { grep -Eiq -- "$1" "$tmpdir/err" || { cat "$tmpdir/err" >&2; fail "stderr lacks /$1/"; }; }
out_json () { json_check "$(cat "$tmpdir/out")" "$@"; }

# ---------------------------------------------------------------- basics
run 0 "$N" --help
out_has 'backup URI REPO'
run 0 "$N" --version
out_has '^nbdsnap [0-9]'
run 2 "$N"
run 2 "$N" snapshot
run 2 "$N" snapshot frob nbd+unix:///?socket=/x
run 2 "$N" snapshot create nbd+unix:///?socket=/x
run 2 "$N" snapshot create nbd+unix:///?socket=/x a b
run 2 "$N" snapshot create nbd+unix:///?socket=/x 'a..b'
run 2 "$N" snapshot delete nbd+unix:///?socket=/x s --force
run 2 "$N" checkpoint list
run 2 "$N" freeze end nbd+unix:///?socket=/x
run 2 "$N" snapshot list "nbd+unix:///?socket=$tmpdir/nothing.sock"
err_has 'cannot connect'

start_server srv --filter="$FREEZE_FILTER" --filter="$CBT_FILTER" \
    --filter="$F" memory 4M freeze-dir="$tmpdir" cbt-dir="$tmpdir/cbt" \
    snapshot-dir="$tmpdir/snap"
U=$(uri srv)

# ------------------------------------------------------------- snapshots
run 0 "$N" snapshot create "$U" s1
out_has "snapshot 's1' created"
run 1 "$N" snapshot create "$U" s1
err_has "already exists"
run 1 "$N" --json snapshot create "$U" s1
out_json 'j["ok"] is False' 'j["errno"] == "EEXIST"'
run 0 "$N" --json snapshot create "$U" s2
out_json 'j["ok"] is True' 'j["snapshot"]["name"] == "s2"' 'j["snapshot"]["parent"] == "s1"'
run 0 "$N" snapshot list "$U"
out_has '^s1 +- '
out_has '^s2 +s1 '
out_has '^\(live disk\) +s2'
run 0 "$N" snapshot list "$U" --json
out_json 'j["ok"] is True' '[s["name"] for s in j["snapshots"]] == ["s1", "s2"]'

mkdata "$tmpdir/d" $K 1
nbd_pwrite srv "" $((3 * K)) "$tmpdir/d"
run 0 "$N" snapshot diff "$U" s2
out_has "^ +196608 +65536 +0  changed, data"
out_has "changed: 65536 bytes"
run 0 "$N" --json snapshot diff "$U" s1 s2
out_json 'j["ok"] is True' 'j["changed_bytes"] == 0' 'j["disk_size"] == 4 << 20'
run 0 "$N" --json snapshot diff "$U" s2
out_json 'j["changed_bytes"] == 65536' \
    '[e for e in j["extents"] if e["changed"]] == [{"offset": 196608, "length": 65536, "type": 0, "changed": True, "zero": False}]'
run 1 "$N" snapshot diff "$U" nope
err_has "refused"

# revert: refused while another client has the live disk open, unless
# --force.
run 1 "$N" snapshot revert "$U" nope
err_has "does not exist"
nbdsh -u "$U" -c 'import time; time.sleep(4)' &
holder=$!
bg_register "$holder"
sleep 1
run 1 "$N" snapshot revert "$U" s2
err_has "EBUSY"
run 0 "$N" snapshot revert "$U" s2 --force
out_has "reverted to snapshot 's2'"
wait "$holder" || true
dump srv "" "$tmpdir/now.img"
cmp -s -n $K "$tmpdir/now.img" /dev/zero -i $((3 * K)):0 ||
    fail "the revert did not bring block 3 back"
run 0 "$N" snapshot delete "$U" s2
out_has "snapshot 's2' deleted"
run 1 "$N" snapshot delete "$U" s2
run 0 "$N" --json snapshot list "$U"
out_json '[s["name"] for s in j["snapshots"]] == ["s1"]'

# ----------------------------------------------------------- checkpoints
run 0 "$N" checkpoint create "$U" c1
out_has "checkpoint 'c1' created"
run 1 "$N" checkpoint create "$U" c1
err_has "already exists"
nbd_pwrite srv "" $((5 * K)) "$tmpdir/d"
run 0 "$N" checkpoint create "$U" c2
run 0 "$N" checkpoint list "$U"
out_has '^c1 .* yes '
out_has '^c2 .* yes '
run 0 "$N" --json checkpoint list "$U"
out_json '[c["name"] for c in j["checkpoints"]] == ["c1", "c2"]' \
    'j["checkpoints"][0]["dirty_bytes"] == 65536'
run 0 "$N" --json checkpoint diff "$U" c1 c2
out_json 'j["changed_bytes"] == 65536' \
    'any(e["offset"] == 5 * 65536 and e["changed"] for e in j["extents"])'
run 0 "$N" checkpoint diff "$U" c2
out_has "changed: 0 bytes"
run 1 "$N" checkpoint diff "$U" nope
run 0 "$N" checkpoint delete "$U" c2
out_has "checkpoint 'c2' deleted \(its changes now count for 'c1'\)"
run 1 "$N" checkpoint delete "$U" c2
err_has "ENOENT|does not exist|no checkpoint"

# --------------------------------------------------------- frozen points
run 0 "$N" freeze begin "$U" f1
out_has "frozen point 'f1' held \(with checkpoint\)"
nbd_pwrite srv "" 0 "$tmpdir/d"
dump srv @freeze/f1 "$tmpdir/f1.img"
cmp -s -n $K "$tmpdir/f1.img" /dev/zero || fail "the frozen view shows a later write"
run 0 "$N" freeze list "$U"
out_has '^f1 .* yes '
run 1 "$N" freeze begin "$U" f1
run 0 "$N" freeze end "$U" f1
out_has "frozen point 'f1' released"
run 1 "$N" --json freeze end "$U" f1
out_json 'j["ok"] is False' 'j["errno"] == "ENOENT"'
run 0 "$N" --json freeze list "$U"
out_json 'j["points"] == []'

# ------------------------------------- policy, read-only, missing filter
start_server_tcp tcp --filter="$CBT_FILTER" --filter="$F" memory 4M \
    cbt-dir="$tmpdir/cbt2" snapshot-dir="$tmpdir/snap2"
run 1 "$N" snapshot create "$(uri tcp)" t1
err_has "EPERM"
run 0 "$N" snapshot list "$(uri tcp)"
run 1 "$N" checkpoint create "$(uri tcp)" t1
err_has "EPERM"
run 0 "$N" checkpoint list "$(uri tcp)"
run 1 "$N" freeze list "$(uri tcp)"
err_has "freeze filter"

start_server ro -r --filter="$CBT_FILTER" memory 4M cbt-dir="$tmpdir/cbt3"
run 1 "$N" checkpoint create "$(uri ro)" r1
err_has "EROFS|read-only"
run 1 "$N" snapshot list "$(uri ro)"
err_has "snapshot filter"

# ------------------------------------------------ generated point names
# Five backups without --name, a fraction of a second each: two of them
# at least fall in one second and the later one takes a suffix (-2, -3)
# instead of failing; points and server checkpoints match one to one.
start_server dn --filter="$FREEZE_FILTER" --filter="$CBT_FILTER" memory 4M \
    cbt-dir="$tmpdir/cbt4" freeze-dir="$tmpdir"
for i in 1 2 3 4 5; do
    run 0 "$N" backup "$(uri dn)" "$tmpdir/dnrepo" --no-progress
done
run 0 "$N" --json list "$tmpdir/dnrepo"
pts=$(json_get "$(cat "$tmpdir/out")" '" ".join(sorted(p["name"] for p in j["points"]))')
[ "$(wc -w <<< "$pts")" = 5 ] || fail "generated names: $pts"
grep -Eq -- '-[2-5]( |$)' <<< "$pts" || fail "no suffixed name among: $pts"
for p in $pts; do
    [[ $p =~ ^b-[0-9]{8}T[0-9]{6}Z(-[2-9])?$ ]] || fail "bad generated name '$p'"
done
run 0 "$N" --json checkpoint list "$(uri dn)"
cps=$(json_get "$(cat "$tmpdir/out")" '" ".join(sorted(c["name"] for c in j["checkpoints"]))')
[ "$cps" = "$pts" ] || fail "checkpoints '$cps' are not the points '$pts'"

echo "$testname: OK"
