#!/usr/bin/env bash
# The whole stack under a guest's load while backups loop (issue 10 item
# 14, "a rare double free": a VM on --filter=freeze --filter=cbt
# --filter=snapshot over the file plugin, one connection of writes, trims
# and flushes, while nbdsnap backup --incremental read over 4
# connections).
#
#   tests/stack-stress.py, the guest: ONE connection, up to 16 requests
#   in flight, random writes (some FUA), trims, zeroes and flushes;
#   meanwhile, in a loop: nbdsnap backup (full, then incremental) over 4
#   connections, and between backups snapshot create + delete of the
#   previous one (a background merge while the guest writes), checkpoint
#   delete of a base no longer needed, nbdsnap verify of the new point.
#
# Then the guest stops (drains, flushes) and:
#   - the live disk equals the guest's model byte for byte (every sector
#     but trimmed ones);
#   - a last incremental backup, restored, equals the live disk byte for
#     byte (so every incremental before it missed nothing);
#   - verify of the whole repository is clean, no frozen point is held;
#   - the server never died and exits cleanly on SIGTERM (a sanitizer
#     build also checks it for leaks then).
#
# Short form (make check): STRESS_SECONDS=40 of load.  Long form:
# CHECK_LONG=1 (10 minutes), or STRESS_SECONDS=N.  STRESS_SEED=N repeats
# a guest's request sequence (timing still differs).
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
if [ -z "$STRESS_SECONDS" ]; then
    if [ -n "$CHECK_LONG" ]; then STRESS_SECONDS=600; else STRESS_SECONDS=40; fi
fi
: "${TEST_TIMEOUT:=$((STRESS_SECONDS + 400))}"
export TEST_TIMEOUT
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

require_built CBT_FILTER FREEZE_FILTER NBDSNAP
requires nbdcopy --version
requires nbdkit file --dump-plugin

seed=${STRESS_SEED:-$RANDOM}
echo "$testname: $STRESS_SECONDS s of load, seed $seed"

SIZE=$((64 * 1024 * 1024))
truncate -s "$SIZE" "$tmpdir/disk.img"
repo=$tmpdir/repo
start_server srv --filter="$FREEZE_FILTER" --filter="$CBT_FILTER" \
    --filter="$F" file "$tmpdir/disk.img" \
    freeze-dir="$tmpdir" cbt-dir="$tmpdir/cbt" snapshot-dir="$tmpdir/snap"
U=$(uri srv)

# nbdsnap ARGS...: run the tool; its output goes to $tmpdir/tool.out
# (last command only); fails the test with that output if it fails.
tool ()
{
    if ! "$NBDSNAP" "$@" > "$tmpdir/tool.out" 2>&1; then
        cat "$tmpdir/tool.out" >&2
        server_alive srv || fail "the server died (during: nbdsnap $*)"
        fail "nbdsnap $* failed"
    fi
}

# The guest.
$PYTHON "$testsdir/stack-stress.py" "$U" "$tmpdir/stop" "$tmpdir/model" \
    "$seed" > "$tmpdir/guest.out" 2>&1 &
guest=$!
bg_register "$guest"

# Backups and commands while it runs.
end=$((SECONDS + STRESS_SECONDS))
n=0 snaps=0 cpdel=0 verified=0
prev= prevsnap=
while [ $SECONDS -lt $end ]; do
    kill -0 "$guest" 2>/dev/null || break
    n=$((n + 1))
    tool backup "$U" "$repo" --name "b$n" --connections 4 --no-progress
    server_alive srv || fail "the server died after backup b$n"
    # The checkpoint of the point before last is no base any more.
    if [ $n -ge 3 ] && [ $((RANDOM % 2)) = 0 ]; then
        tool checkpoint delete "$U" "b$((n - 2))"
        cpdel=$((cpdel + 1))
    fi
    case $((RANDOM % 3)) in
    0)  tool snapshot create "$U" "s$n"
        [ -n "$prevsnap" ] && tool snapshot delete "$U" "$prevsnap"
        prevsnap=s$n
        snaps=$((snaps + 1)) ;;
    1)  tool verify "$repo" "b$n"
        verified=$((verified + 1)) ;;
    esac
    prev=b$n
done
kill -0 "$guest" 2>/dev/null || { cat "$tmpdir/guest.out" >&2; fail "the guest stopped early"; }

touch "$tmpdir/stop"
wait "$guest" || { cat "$tmpdir/guest.out" >&2; fail "the guest failed"; }
cat "$tmpdir/guest.out"
server_alive srv || fail "the server died"
echo "$testname: $n backups (4 connections), $snaps snapshots made and deleted, $cpdel checkpoints deleted, $verified verified during the load"

# The live disk against the model.
dump srv "" "$tmpdir/live.img"
$PYTHON - "$tmpdir/live.img" "$tmpdir/model" <<'PY' || fail "the live disk differs from the guest's model"
import sys
live = open(sys.argv[1], "rb").read()
m = open(sys.argv[2], "rb").read()
size = len(live)
model, known = m[:size], m[size:]
bad = [s for s in range(size // 512)
       if known[s] and live[s * 512:(s + 1) * 512] != model[s * 512:(s + 1) * 512]]
if bad:
    sys.exit("%d sectors differ from the model, first at sector %d" % (len(bad), bad[0]))
print("live disk = model (%d of %d sectors known)" % (sum(known), size // 512))
PY

# A last backup at rest: its restore is the live disk.
tool backup "$U" "$repo" --name last --incremental --connections 4 --no-progress
tool restore "$repo" last -o "$tmpdir/restored.img" --connections 4 --no-progress
cmp "$tmpdir/restored.img" "$tmpdir/live.img" ||
    fail "the restore of the last incremental backup differs from the live disk"
tool verify "$repo"
out=$(snapcmd srv @freeze:list)
json_check "$out" 'j["ok"] is True' 'j["points"] == []'
stop_server srv
echo "$testname: OK"
