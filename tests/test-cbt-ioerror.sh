#!/usr/bin/env bash
# cbt filter, I/O errors in cbt-dir (issue 10, items 4, 6, 7), with the
# fault shim (tests/faultinject.c):
#  A. strict, group commit: the fdatasync of a round fails while a
#     second writer waits for that round.  Both writes fail and neither
#     reaches the disk (the old code let the waiter run an empty round
#     whose fdatasync returned 0: its write passed down with its bit not
#     on disk); every later write, flush and create fails with EIO;
#     list and reads go on; the checkpoint is inconsistent, and stays so
#     after a restart (the state file says so).
#  B. flush mode: a flush whose fdatasync fails is followed by a flush
#     that must fail too (the old code answered ok over the lost pages);
#     writes fail from then on; inconsistent after the restart.
#  C. a create whose rollback fails (every rename from the second on
#     fails: the new bitmap cannot be written, nor the old one made open
#     again): the failed state with a message naming the rollback; after
#     the disk heals, writes and commands still fail until restart (the
#     old code went on with no open bitmap file).
#  D. cbt-reset-on-shrink whose state write fails: the start is refused
#     and the bitmaps are still there, so with the disk grown back the
#     checkpoint is intact (the old code removed them first).
#  E. a create whose state file is renamed in place but whose directory
#     fsync fails (statefile_write -2): the command fails with EIO (the
#     old code said ok), the filter is failed, and after a restart the
#     new checkpoint exists but is inconsistent.
# PARTS="A C" runs only those parts.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"

require_built FAULTINJECT

G=65536
img=$tmpdir/disk.img
part () { [[ " ${PARTS:-A B C D E} " == *" $1 "* ]]; }

# write_fails TARGET OFFSET: one NBD write of a block must fail.
write_fails ()
{
    if nbd_op "$1" "" "h.pwrite(b'F' * $G, $2)" 2>/dev/null; then
        fail "a write at $2 succeeded in the failed state"
    fi
}
# flush_fails TARGET
flush_fails ()
{
    if nbd_op "$1" "" "h.flush()" 2>/dev/null; then
        fail "a flush succeeded in the failed state"
    fi
}
# consistent TARGET NAME: print true/false from @cbt:list.
consistent ()
{
    json_get "$(cbt_list "$1")" \
        "[c['consistent'] for c in j['checkpoints'] if c['name'] == '$2'][0]"
}
# failed_after TARGET: the usual checks of the failed state.
failed_after ()
{
    local out
    write_fails "$1" $((7 * G))
    flush_fails "$1"
    out=$(cbt_err "$1" @cbt:create/LATER EIO)
    grep -q "restart" <<<"$out" || fail "create: no hint to restart: $out"
    cbt_list "$1" >/dev/null           # list goes on
    dump "$1" "" "$tmpdir/live.dump"   # reads go on
}

# ---------------------------------------------------------------- A
if part A; then
truncate -s 4M "$img"
d=$tmpdir/cbt-a
start_server a --filter="$C" file "$img" cbt-dir="$d" cbt-sync=strict
cbt_ok a @cbt:create/C1 >/dev/null
stop_server a
LD_PRELOAD=$FAULTINJECT FI_CALLS=fdatasync FI_PATH="$d" FI_NTH=1 \
    FI_DELAY=500 FI_ERRNO=EIO FI_LOG="$tmpdir/fi-a.log" \
    start_server a --filter="$C" file "$img" cbt-dir="$d" cbt-sync=strict
SOCK=$(sock a) G=$G timeout 60 $PYTHON - <<'PY' || fail "A: writers (above)"
import os, threading, time
import nbd
sock, G = os.environ["SOCK"], int(os.environ["G"])
res = {}
def writer(name, off, wait):
    time.sleep(wait)
    h = nbd.NBD()
    h.connect_uri("nbd+unix:///?socket=%s" % sock)
    try:
        h.pwrite(b"W" * G, off)
        res[name] = "ok"
    except nbd.Error as e:
        res[name] = "error %s" % e.errno
    h.shutdown()
# A starts the round (its fdatasync sleeps 0.5 s, then fails); B comes
# 0.15 s later and waits for that round.
ts = [threading.Thread(target=writer, args=("A", 0, 0)),
      threading.Thread(target=writer, args=("B", G, 0.15))]
for t in ts: t.start()
for t in ts: t.join()
print("writes:", res)
assert res["A"].startswith("error"), res
assert res["B"].startswith("error"), "the waiter's write was acknowledged: %r" % res
PY
grep -q "^1 fdatasync " "$tmpdir/fi-a.log" &&
    grep -q "cannot write the dirty bitmap of checkpoint 'C1'" "$tmpdir/a.log" ||
    fail "A: no fault injected"
failed_after a
[ "$(consistent a C1)" = false ] || fail "A: C1 still consistent"
open_fails a @cbt/C1
grep -q "checkpoint 'C1' is now inconsistent (recorded" "$tmpdir/a.log" ||
    fail "A: no message about the inconsistent checkpoint"
# Nothing reached the disk.
cmp -n $((2 * G)) "$img" /dev/zero || fail "A: a failed write reached the disk"
stop_server a
grep -q '^status running$' "$d/state" || fail "A: the stop marked the state clean"
start_server a --filter="$C" file "$img" cbt-dir="$d" cbt-sync=strict
[ "$(consistent a C1)" = false ] || fail "A: C1 consistent after restart"
stop_server a

fi
# ---------------------------------------------------------------- B
if part B; then
truncate -s 4M "$img"
d=$tmpdir/cbt-b
start_server b --filter="$C" file "$img" cbt-dir="$d"
cbt_ok b @cbt:create/C1 >/dev/null
stop_server b
LD_PRELOAD=$FAULTINJECT FI_CALLS=fdatasync FI_PATH="$d" FI_NTH=1 \
    start_server b --filter="$C" file "$img" cbt-dir="$d"
nbd_op b "" "h.pwrite(b'x' * $G, 0)"
flush_fails b
flush_fails b                      # the second one too
failed_after b
[ "$(consistent b C1)" = false ] || fail "B: C1 still consistent"
stop_server b
start_server b --filter="$C" file "$img" cbt-dir="$d"
[ "$(consistent b C1)" = false ] || fail "B: C1 consistent after restart"
stop_server b

fi
# ---------------------------------------------------------------- C
if part C; then
truncate -s 4M "$img"
d=$tmpdir/cbt-c
arm=$tmpdir/arm-c
start_server c --filter="$C" file "$img" cbt-dir="$d"
cbt_ok c @cbt:create/C1 >/dev/null
stop_server c
LD_PRELOAD=$FAULTINJECT FI_CALLS=rename FI_PATH="$d" FI_NTH=2 FI_COUNT=0 \
    FI_ARM="$arm" FI_LOG="$tmpdir/fi-c.log" \
    start_server c --filter="$C" file "$img" cbt-dir="$d"
nbd_op c "" "h.pwrite(b'c' * $G, 2 * $G)"
touch "$arm"
cbt_err c @cbt:create/C2 EIO >/dev/null
rm "$arm"                          # the disk heals
[ "$(grep -c FAILED "$tmpdir/fi-c.log")" -ge 2 ] ||
    fail "C: the rollback was not made to fail"
failed_after c
grep -q "cannot make the bitmap of checkpoint 'C1' active again" \
    "$tmpdir/c.log" || fail "C: no message about the failed rollback"
[ "$(cbt_names c)" = C1 ] || fail "C: checkpoints: $(cbt_names c)"
stop_server c
start_server c --filter="$C" file "$img" cbt-dir="$d"
[ "$(cbt_names c)" = C1 ] || fail "C: checkpoints after restart: $(cbt_names c)"
# Flush mode, not stopped cleanly: C1 may miss writes.
[ "$(consistent c C1)" = false ] || fail "C: C1 consistent after restart"
stop_server c

fi
# ---------------------------------------------------------------- D
if part D; then
d=$tmpdir/cbt-d
truncate -s 2M "$img"
start_server d --filter="$C" file "$img" cbt-dir="$d"
cbt_ok d @cbt:create/C1 >/dev/null
nbd_op d "" "h.pwrite(b'd' * $G, 3 * $G)"
stop_server d
truncate -s 1M "$img"
LD_PRELOAD=$FAULTINJECT FI_CALLS=rename FI_PATH="$d/state" FI_NTH=1 \
    expect_start_fails "$tmpdir/d-shrink.log" "cannot write the state" \
        --filter="$C" file "$img" cbt-dir="$d" cbt-reset-on-shrink=true
[ -f "$d/bitmap-1.bits" ] || fail "D: the bitmap was removed before the state"
grep -q ' consistent C1$' "$d/state" || fail "D: the state changed"
truncate -s 2M "$img"
start_server d --filter="$C" file "$img" cbt-dir="$d"
[ "$(changed_blocks d @cbt/C1 $G)" = 3 ] || fail "D: change map of C1 lost"
stop_server d
# And with the save allowed, the reset happens and the files go.
truncate -s 1M "$img"
start_server d --filter="$C" file "$img" cbt-dir="$d" cbt-reset-on-shrink=true
[ -z "$(cbt_names d)" ] || fail "D: checkpoints left after the reset"
[ ! -e "$d/bitmap-1.bits" ] || fail "D: bitmap left after the reset"
stop_server d

fi
# ---------------------------------------------------------------- E
if part E; then
d=$tmpdir/cbt-e
arm=$tmpdir/arm-e
truncate -s 4M "$img"
start_server e --filter="$C" file "$img" cbt-dir="$d"
cbt_ok e @cbt:create/C1 >/dev/null
stop_server e
# Find the directory fsync of the state write of a create: the last
# fsync of the directory itself during the command.
LD_PRELOAD=$FAULTINJECT FI_CALLS=fsync FI_PATH="$d" FI_ARM="$arm" \
    FI_LOG="$tmpdir/fi-e0.log" \
    start_server e --filter="$C" file "$img" cbt-dir="$d"
# A first connection finishes the start (its writes are not counted).
cbt_names e >/dev/null
touch "$arm"; cbt_ok e @cbt:create/C2 >/dev/null; rm "$arm"
cbt_ok e @cbt:delete/C2 >/dev/null
stop_server e
nth=$(awk -v d="$d" '$2 == "fsync" && $3 == d { n = $1 } END { print n }' \
          "$tmpdir/fi-e0.log")
[ -n "$nth" ] || fail "E: no directory fsync seen"
LD_PRELOAD=$FAULTINJECT FI_CALLS=fsync FI_PATH="$d" FI_ARM="$arm" \
    FI_NTH=$nth \
    start_server e --filter="$C" file "$img" cbt-dir="$d"
# A first connection finishes the start (its writes are not counted).
cbt_names e >/dev/null
touch "$arm"; cbt_err e @cbt:create/C2 EIO >/dev/null; rm "$arm"
failed_after e
stop_server e
start_server e --filter="$C" file "$img" cbt-dir="$d"
[ "$(cbt_names e | tr '\n' ' ')" = "C1 C2 " ] ||
    fail "E: checkpoints after restart: $(cbt_names e)"
[ "$(consistent e C2)" = false ] || fail "E: C2 consistent after restart"
stop_server e
fi
