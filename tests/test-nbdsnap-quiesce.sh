#!/usr/bin/env bash
# nbdsnap quiesce hooks: --freeze-cmd runs right before the frozen point
# (snapshot, checkpoint) is made, --thaw-cmd right after the command that
# made it returned, before the copy; the thaw always runs once the freeze
# ran.  Recording hook scripts check, against the server's own lists:
#   - order: freeze (no frozen point yet), begin, thaw (the point is held,
#     nothing copied yet), then the copy; a write made by the freeze hook
#     is in the backup, one made by the thaw hook is not (cmp);
#   - the hooks' environment; their stdout does not spoil --json;
#   - begin refused: thaw runs with NBDSNAP_RESULT=failed, exit 1;
#   - freeze-cmd failing, or timing out (its child is killed): nothing
#     begun, no checkpoint made, thaw runs, exit 1, repository unchanged;
#   - SIGTERM of nbdsnap while the freeze command runs: thaw runs, exit 1;
#   - a failing thaw: exit 1, no "ok", the point and checkpoint undone;
#   - snapshot create and checkpoint create with hooks, and a failing
#     freeze that leaves no snapshot / checkpoint behind;
#   - bad usage (exit 2).
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/nbdsnap-functions.sh"
requires nbdsh --version
requires nbdkit --filter=delay null --dump-plugin

K=65536
repo=$tmpdir/repo
log=$tmpdir/hooks.log
start_server srv --filter="$FREEZE_FILTER" --filter="$CBT_FILTER" \
    --filter="$F" --filter=delay memory 4M freeze-dir="$tmpdir" \
    cbt-dir="$tmpdir/cbt" snapshot-dir="$tmpdir/snap" delay-read=5ms
U=$(uri srv)
export N U log

# The hooks.  freeze: the server holds no frozen point yet; writes FRZ at
# 64K (before the instant: in the backup).  thaw: the point is held and
# the backup has not started writing; writes THW at 128K (after the
# instant: not in the backup).  Each logs a line and prints one on stdout.
cat > "$tmpdir/freeze.sh" <<'EOF'
#!/bin/bash
held=$("$N" --json freeze list "$U" | /usr/bin/python3 -c 'import sys, json; print(len(json.load(sys.stdin)["points"]))')
echo "freeze op=$NBDSNAP_OPERATION point=$NBDSNAP_POINT uri_ok=$([ "$NBDSNAP_URI" = "$U" ] && echo 1) held=$held" >> "$log"
nbdsh -u "$NBDSNAP_URI" -c 'h.pwrite(b"FRZ" * 100, 65536)'
echo "HOOK-STDOUT freeze"
exit ${FREEZE_EXIT:-0}
EOF
cat > "$tmpdir/thaw.sh" <<'EOF'
#!/bin/bash
held=$("$N" --json freeze list "$U" | /usr/bin/python3 -c 'import sys, json; print(" ".join(p["name"] for p in json.load(sys.stdin)["points"]))')
tmp=$(ls -A "$REPO/points" 2>/dev/null | grep -c '^\.tmp-' || true)
echo "thaw op=$NBDSNAP_OPERATION point=$NBDSNAP_POINT result=$NBDSNAP_RESULT held=$held tmp=$tmp" >> "$log"
[ "$NBDSNAP_OPERATION" = backup ] &&
    nbdsh -u "$NBDSNAP_URI" -c 'h.pwrite(b"THW" * 100, 131072)'
echo "HOOK-STDOUT thaw"
exit ${THAW_EXIT:-0}
EOF
chmod +x "$tmpdir/freeze.sh" "$tmpdir/thaw.sh"
export REPO=$repo
H=(--freeze-cmd "$tmpdir/freeze.sh" --thaw-cmd "$tmpdir/thaw.sh")

# ---------------------------------------------- order, data, environment
nbd_op srv "" "h.pwrite(bytes(range(256)) * 4096, 0)"
: > "$log"
"$N" -v --json backup "$U" "$repo" --name B1 --no-progress "${H[@]}" \
    > "$tmpdir/out" 2> "$tmpdir/err" || { cat "$tmpdir/err"; fail "backup B1"; }
cat "$log"
json_check "$(cat "$tmpdir/out")" 'j["ok"] is True' 'j["point"] == "B1"'
grep -q '^freeze op=backup point=B1 uri_ok=1 held=0$' "$log" ||
    fail "freeze hook: wrong environment, or a point was held already"
grep -q '^thaw op=backup point=B1 result=made held=B1 tmp=0$' "$log" ||
    fail "thaw hook: the point was not held, or the copy had begun"
# The order in nbdsnap's own messages (hooks' stdout goes to stderr).
order=$(grep -oE 'HOOK-STDOUT freeze|frozen point .B1. begun|HOOK-STDOUT thaw|change map read|copied [0-9]+ bytes' "$tmpdir/err" |
        sed -E 's/copied [0-9]+ bytes/copied/' | tr '\n' '|')
[ "$order" = "HOOK-STDOUT freeze|frozen point 'B1' begun|HOOK-STDOUT thaw|change map read|copied|" ] ||
    { cat "$tmpdir/err"; fail "wrong order: $order"; }
# Data: FRZ in the backup, THW not.
dump srv "" "$tmpdir/live.img"
"$N" restore "$repo" B1 -o "$tmpdir/b1.img" --no-progress > /dev/null
cp "$tmpdir/live.img" "$tmpdir/exp.img"
dd if="$tmpdir/b1.img" bs=1 skip=131072 count=300 2>/dev/null | grep -aq THW && fail "the thaw hook's write is in the backup"
dd if="$tmpdir/b1.img" bs=1 skip=65536 count=300 2>/dev/null | grep -aq FRZ ||
    fail "the freeze hook's write is not in the backup"
# Everything but the thaw's write equals the live disk.
printf 'THW%.0s' $(seq 100) | cmp -s - <(dd if="$tmpdir/live.img" bs=1 skip=131072 count=300 2>/dev/null) ||
    fail "the thaw hook did not write"
dd if="$tmpdir/b1.img" of="$tmpdir/exp.img" bs=1 skip=131072 seek=131072 \
    count=300 conv=notrunc 2>/dev/null
cmp "$tmpdir/b1.img" "$tmpdir/exp.img" || fail "B1 is not the disk at the freeze"

# Incremental with the hooks as well.
: > "$log"
"$N" backup "$U" "$repo" --name B2 --no-progress "${H[@]}" > /dev/null 2>&1 ||
    fail "backup B2"
[ "$(cut -d' ' -f1 "$log" | tr '\n' ' ')" = "freeze thaw " ] || fail "B2 hooks"

# ---------------------------------------------- begin refused
"$N" freeze begin "$U" X > /dev/null
: > "$log"
expect_exit 1 "refused to begin" "$N" backup "$U" "$repo" --name X "${H[@]}"
grep -q '^thaw .* result=failed' "$log" || fail "no thaw after a refused begin"
"$N" freeze end "$U" X > /dev/null
"$N" checkpoint delete "$U" X > /dev/null
[ "$(points "$repo")" = "B1 B2" ] || fail "repository changed"

# ---------------------------------------------- freeze-cmd fails
cps=$(checkpoints "$U")
: > "$log"
FREEZE_EXIT=3 expect_exit 1 "freeze command failed \(exit status 3\)" \
    "$N" backup "$U" "$repo" --name B3 "${H[@]}"
[ "$(cut -d' ' -f1 "$log" | tr '\n' ' ')" = "freeze thaw " ] ||
    fail "freeze failed: hooks $(cat "$log")"
grep -q 'result=failed' "$log" || fail "thaw result"
nothing_held "$U"
[ "$(checkpoints "$U")" = "$cps" ] || fail "a checkpoint was made"
[ "$(points "$repo")" = "B1 B2" ] || fail "repository changed"
no_tmp "$repo"

# ---------------------------------------------- freeze-cmd times out
: > "$log"
t0=$(date +%s)
expect_exit 1 "did not finish within 1 s" "$N" backup "$U" "$repo" \
    --name B3 --quiesce-timeout 1 \
    --freeze-cmd "sleep 30 & echo \$! > $tmpdir/sleep.pid; wait" \
    --thaw-cmd "echo thaw \$NBDSNAP_RESULT >> $log"
[ $(( $(date +%s) - t0 )) -lt 10 ] || fail "the timeout took too long"
grep -q '^thaw failed$' "$log" || fail "no thaw after the timeout"
# gone (or a zombie waiting for its new parent to reap it)
alive () { [ -e /proc/$1 ] && ! grep -q '^[0-9]* ([^)]*) Z' /proc/$1/stat 2>/dev/null; }
for ((i = 0; i < 100; i++)); do alive "$(cat "$tmpdir/sleep.pid")" || break; sleep 0.02; done
alive "$(cat "$tmpdir/sleep.pid")" && fail "the freeze command's child still runs"
nothing_held "$U"
[ "$(checkpoints "$U")" = "$cps" ] || fail "a checkpoint was made"

# ---------------------------------------------- SIGTERM during the freeze
: > "$log"
rm -f "$tmpdir/started"
"$N" backup "$U" "$repo" --name B3 \
    --freeze-cmd "touch $tmpdir/started; sleep 30" \
    --thaw-cmd "echo thaw \$NBDSNAP_RESULT >> $log" \
    > "$tmpdir/out" 2> "$tmpdir/err" &
pid=$!
for ((i = 0; i < 300; i++)); do [ -e "$tmpdir/started" ] && break; sleep 0.02; done
[ -e "$tmpdir/started" ] || fail "the freeze command did not start"
kill -TERM "$pid"
st=0; wait "$pid" || st=$?
cat "$tmpdir/err"
[ "$st" -eq 1 ] || fail "SIGTERM: exit $st"
grep -q 'interrupted by signal' "$tmpdir/err" || fail "no interrupt message"
grep -q '^thaw failed$' "$log" || fail "no thaw after SIGTERM"
nothing_held "$U"
[ "$(checkpoints "$U")" = "$cps" ] || fail "a checkpoint was made"
[ "$(points "$repo")" = "B1 B2" ] || fail "repository changed"

# ---------------------------------------------- thaw fails
: > "$log"
st=0
THAW_EXIT=4 "$N" --json backup "$U" "$repo" --name B3 "${H[@]}" \
    > "$tmpdir/out" 2> "$tmpdir/err" || st=$?
cat "$tmpdir/err"
[ "$st" -eq 1 ] || fail "failing thaw: exit $st"
json_check "$(cat "$tmpdir/out")" 'j["ok"] is False' \
    '"thaw command failed (exit status 4)" in j["error"]'
nothing_held "$U"
[ "$(checkpoints "$U")" = "$cps" ] || fail "the checkpoint stayed"
[ "$(points "$repo")" = "B1 B2" ] || fail "repository changed"
no_tmp "$repo"

# ---------------------------------------------- snapshot / checkpoint create
: > "$log"
"$N" --json snapshot create "$U" S1 "${H[@]}" > "$tmpdir/out" 2>/dev/null ||
    fail "snapshot create with hooks"
json_check "$(cat "$tmpdir/out")" 'j["ok"] is True'
[ "$(cut -d' ' -f1-3 "$log" | tr '\n' '|')" = "freeze op=snapshot point=S1|thaw op=snapshot point=S1|" ] ||
    fail "snapshot hooks: $(cat "$log")"
grep -q 'result=made' "$log" || fail "snapshot thaw result"
: > "$log"
"$N" checkpoint create "$U" C1 "${H[@]}" > /dev/null 2>&1 ||
    fail "checkpoint create with hooks"
[ "$(cut -d' ' -f1-3 "$log" | tr '\n' '|')" = "freeze op=checkpoint point=C1|thaw op=checkpoint point=C1|" ] ||
    fail "checkpoint hooks: $(cat "$log")"
FREEZE_EXIT=1 expect_exit 1 "freeze command failed" \
    "$N" snapshot create "$U" S2 "${H[@]}"
"$N" --json snapshot list "$U" | grep -q '"S2"' && fail "S2 was created"
FREEZE_EXIT=1 expect_exit 1 "freeze command failed" \
    "$N" checkpoint create "$U" C2 "${H[@]}"
checkpoints "$U" | grep -qw C2 && fail "C2 was created"
THAW_EXIT=1 expect_exit 1 "thaw command failed" \
    "$N" checkpoint create "$U" C3 "${H[@]}"

# ---------------------------------------------- usage
expect_exit 2 "quiesce-timeout" "$N" backup "$U" "$repo" --freeze-cmd true \
    --quiesce-timeout 0
expect_exit 2 "quiesce-timeout" "$N" backup "$U" "$repo" --quiesce-timeout 5
expect_exit 2 "needs a value" "$N" backup "$U" "$repo" --freeze-cmd
expect_exit 2 "empty" "$N" backup "$U" "$repo" --freeze-cmd ""
expect_exit 2 "are for create" "$N" snapshot delete "$U" S1 --freeze-cmd true
expect_exit 2 "are for create" "$N" checkpoint list "$U" --thaw-cmd true
echo "$testname: ok"
