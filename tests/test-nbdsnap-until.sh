#!/usr/bin/env bash
# nbdsnap backup --until: incremental backups of past intervals, the seed
# thread's T1..T4 case (libvirt-checkpoint-thread: "if you NEED to grab an
# incremental snapshot whose history is NOT bounded by the current moment
# in time").  At T1..T4 only `nbdsnap snapshot create URI Bi --checkpoint`
# runs (snapshot Bi + checkpoint Bi at one instant); the guest keeps
# writing; nothing is backed up until after T4.  Then:
#   --until B1                 the full base point B1 (the disk at T1)
#   --since B1 --until B2      "S1 using B1": the interval T1..T2, point B2
#   --since B2 --until B3      "S2 using B2": the interval T2..T3, point B3
# and the chains B1 <- B2, B1 <- B2 <- B3 restore to the images saved at
# T2 and T3 (cmp).  Each incremental stores exactly the blocks of its
# interval.  Then the refusals, and the chain goes on: --until B4, and a
# backup of now (freeze filter) on top of it.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/nbdsnap-functions.sh"
requires nbdcopy --version

K=4096
pic () { $PYTHON "$testsdir/freeze-pic.py" "$@"; }
guest () { nbd_op srv "" "$(pic write "$1" $K)"; }

start_server srv --filter="$FREEZE_FILTER" --filter="$CBT_FILTER" \
    --filter="$F" memory 32K freeze-dir="$tmpdir" cbt-dir="$tmpdir/cbt" \
    snapshot-dir="$tmpdir/snap" freeze-block-size=4K cbt-granularity=4K \
    snapshot-block-size=4K
U=$(uri srv)
R=$tmpdir/repo

# instant NAME: snapshot + checkpoint NAME at one instant; the live disk
# at that instant is saved as exp-NAME.img (the guest is quiet here).
instant ()
{
    out=$("$N" --json snapshot create "$U" "$1" --checkpoint) ||
        fail "snapshot create $1 --checkpoint failed"
    json_check "$out" 'j["ok"] is True' "j['checkpoint']['name'] == '$1'" \
        "j['snapshot']['name'] == '$1'"
    dump srv "" "$tmpdir/exp-$1.img"
}

# T1 .. T4, the guest writing in between (the pictures of the thread).
instant B1
guest "AAAA----"
instant B2
guest "---BBB--"
instant B3
guest "D----DD-"
instant B4
guest "EE-E-E--"
[ "$(checkpoints "$U")" = "B1 B2 B3 B4" ] || fail "checkpoints: $(checkpoints "$U")"

# After T4: the past intervals.
# backup ARGS... : nbdsnap backup --json, the report in $out.
backup () { out=$("$N" --json backup "$U" "$R" --no-progress "$@") || fail "backup $* failed"; }
backup --until B1 --block-size 4K
json_check "$out" 'j["point"] == "B1"' 'j["kind"] == "full"'
backup --since B1 --until B2
json_check "$out" 'j["point"] == "B2"' 'j["parent"] == "B1"' \
    'j["kind"] == "incremental"' 'j["data_blocks"] == 4'
backup --since B2 --until B3
json_check "$out" 'j["point"] == "B3"' 'j["parent"] == "B2"' \
    'j["data_blocks"] == 3'
restore_all "$R"                # B1 = T1, B2 = T2, B3 = T3 images (cmp)
cmp -s "$tmpdir/exp-B2.img" "$tmpdir/exp-B3.img" && fail "T2 and T3 images are the same"
# Nothing on the server changed: no frozen point, no new checkpoint.
nothing_held "$U"
[ "$(checkpoints "$U")" = "B1 B2 B3 B4" ] || fail "checkpoints changed: $(checkpoints "$U")"

# Refusals, each with the repository unchanged.
expect_exit 1 "no checkpoint 'B9'" "$N" backup "$U" "$R" --since B3 --until B9
"$N" checkpoint create "$U" C5 >/dev/null
expect_exit 1 "no snapshot holds the bytes of checkpoint 'C5'" \
    "$N" backup "$U" "$R" --since B3 --until C5
"$N" checkpoint delete "$U" C5 >/dev/null
expect_exit 1 "no restore point 'X'" "$N" backup "$U" "$R" --since X --until B4
expect_exit 1 "point named 'B3' already exists" \
    "$N" backup "$U" "$R" --since B2 --until B3
expect_exit 2 "named after its checkpoint" \
    "$N" backup "$U" "$R" --until B4 --name other
R2=$tmpdir/repo2
"$N" backup "$U" "$R2" --until B3 --block-size 4K --no-progress >/dev/null
expect_exit 1 "'B3' \(--since\) is newer than checkpoint 'B2'" \
    "$N" backup "$U" "$R2" --since B3 --until B2
expect_exit 1 "no repository there" \
    "$N" backup "$U" "$tmpdir/none" --since B1 --until B2
[ ! -e "$tmpdir/none" ] || fail "a refused backup made a repository"
# snapshot create --checkpoint: both or neither.
expect_exit 1 "checkpoint 'B3' already exists" \
    "$N" snapshot create "$U" B3 --checkpoint
"$N" snapshot create "$U" taken >/dev/null
expect_exit 1 "so checkpoint 'taken' was not made either: snapshot 'taken' already exists" \
    "$N" snapshot create "$U" taken --checkpoint
[ "$(checkpoints "$U")" = "B1 B2 B3 B4" ] || fail "checkpoints: $(checkpoints "$U")"
# A server without the cbt filter cannot say which blocks, nor make both.
start_server nocbt --filter="$F" memory 32K snapshot-dir="$tmpdir/snap2"
"$N" snapshot create "$(uri nocbt)" B1 >/dev/null
expect_exit 1 "needs the cbt filter" \
    "$N" backup "$(uri nocbt)" "$tmpdir/repo3" --until B1
expect_exit 1 "" "$N" snapshot create "$(uri nocbt)" B2 --checkpoint
[ ! -e "$tmpdir/repo3" ] || fail "a refused backup made a repository"
[ "$(points "$R")" = "B1 B2 B3" ] || fail "points: $(points "$R")"
no_tmp "$R"

# A checkpoint and a snapshot of one name made by two commands, with a
# write between them, are not one instant: refused, either order.
"$N" checkpoint create "$U" C6 >/dev/null
guest "------G-"
"$N" snapshot create "$U" C6 >/dev/null
expect_exit 1 "written after the checkpoint and before the snapshot" \
    "$N" backup "$U" "$R" --since B3 --until C6
"$N" snapshot create "$U" C7 >/dev/null
guest "-----H--"
"$N" checkpoint create "$U" C7 >/dev/null
expect_exit 1 "written after the snapshot and before the checkpoint" \
    "$N" backup "$U" "$R" --since B3 --until C7
[ "$(points "$R")" = "B1 B2 B3" ] || fail "points: $(points "$R")"

# The chain goes on: the interval T3..T4, then a backup of now.
backup --until B4               # automatic: since the newest point, B3
json_check "$out" 'j["point"] == "B4"' 'j["parent"] == "B3"' \
    'j["data_blocks"] == 3'
guest "------FF"
backup --name now
json_check "$out" 'j["parent"] == "B4"' 'j["data_blocks"] == 6'   # EE-E-E--, G, H, FF: 0 1 3 5 6 7
dump srv "" "$tmpdir/exp-now.img"
restore_all "$R"

# While a writer keeps writing: instants, and backups of them taken a
# moment later (the changes since checkpoint and snapshot are compared
# while they grow: no false refusal), restore to the snapshots' bytes.
start_server busy --filter="$CBT_FILTER" --filter="$F" memory 16M \
    cbt-dir="$tmpdir/cbt5" snapshot-dir="$tmpdir/snap5" cbt-granularity=64K
touch "$tmpdir/writing"
W=$tmpdir/writing NBDSNAP_URI=$(uri busy) $PYTHON -c '
import os, random, nbd
h = nbd.NBD(); h.connect_uri(os.environ["NBDSNAP_URI"])
r = random.Random(5)
while os.path.exists(os.environ["W"]):
    h.pwrite(r.randbytes(4096), r.randrange(4096) * 4096)
h.shutdown()' &
writer=$!
bg_register "$writer"
R5=$tmpdir/repo5
for i in 1 2 3 4; do
    "$N" snapshot create "$(uri busy)" P$i --checkpoint >/dev/null
    sleep 0.3
    "$N" backup "$(uri busy)" "$R5" --until P$i --no-progress >/dev/null ||
        fail "backup --until P$i under writes failed"
    dump busy @snapshot/P$i "$tmpdir/exp-P$i.img"
done
rm -f "$tmpdir/writing"
wait "$writer" || fail "the writer failed"
[ "$(points "$R5")" = "P1 P2 P3 P4" ] || fail "points: $(points "$R5")"
cmp -s "$tmpdir/exp-P3.img" "$tmpdir/exp-P4.img" && fail "the writer did not write"
restore_all "$R5"
echo "$testname: ok"
