#!/usr/bin/env bash
# nbdsnap: failed syncs are never "ok" (the fault shim on the tool).
#   - writeback (sync_file_range) of the repository's data file fails:
#     the backup fails, the repository and the server are as before;
#   - writeback or fsync of a restored file fails: the restore fails, the
#     target is unchanged; the fsync of its directory after the rename
#     fails: the restore fails and says the file may not survive a crash;
#   - the fsync of points/ after a commit's rename fails: the commit is
#     undone (the backup fails, its checkpoint is deleted); if the undo
#     fails too, the point stays, complete, and the backup fails saying
#     so;
#   - the same fsync fails in delete (the point is put back), in merge
#     (the merge is undone) and while merge removes the old parent (it is
#     put back, the merged point stays);
#   - init: the repository file is in place but its directory cannot be
#     synced: init fails and says so.
# After each: verify passes and every listed point restores right.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/nbdsnap-functions.sh"
requires nbdcopy --version

K=65536
repo=$tmpdir/repo
start_server srv --filter="$FREEZE_FILTER" --filter="$CBT_FILTER" \
    memory 24M freeze-dir="$tmpdir" cbt-dir="$tmpdir/cbt"
U=$(uri srv)

# fi_count LOG CMD...: run CMD with the shim counting FI_CALLS (no fault) into
# LOG.  fi_nth LOG CALL PATH: the number of the last CALL on exactly
# PATH in LOG.
fi_count () { local log=$1; shift; rm -f "$log"; LD_PRELOAD=$FAULTINJECT FI_LOG=$log "$@"; }
fi_nth ()
{
    local n
    n=$(awk -v c="$2" -v p="$3" '$2 == c && $3 == p { n = $1 } END { print n }' "$1")
    [ -n "$n" ] || { cat "$1" >&2; fail "no $2 of $3 in $1"; }
    echo "$n"
}
# inject NTH COUNT CMD...: CMD with the FI_NTH'th call (and COUNT-1 more)
# failing.
inject () { local n=$1 c=$2; shift 2; LD_PRELOAD=$FAULTINJECT FI_NTH=$n FI_COUNT=$c "$@"; }

nbd_op srv "" "
import random
r = random.Random(1)
h.pwrite(r.randbytes(20 << 20), 0)
h.flush()"
dump srv "" "$tmpdir/exp-F1.img"
"$N" backup "$U" "$repo" --full --name F1 --no-progress > /dev/null
change () { nbd_op srv "" "h.pwrite(bytes([$1]) * (3 * $K), $2 * $K); h.flush()"; }
change 7 3
dump srv "" "$tmpdir/exp-I1.img"
"$N" backup "$U" "$repo" --name I1 --no-progress > /dev/null
change 8 40
dump srv "" "$tmpdir/exp-B.img"
good=$(dirsum "$repo")
cps=$(checkpoints "$U")

# unchanged: the repository and the server are as before.
unchanged ()
{
    same_dir "$good" "$repo"
    nothing_held "$U"
    [ "$(checkpoints "$U")" = "$cps" ] || fail "checkpoints: $(checkpoints "$U")"
}

echo "== writeback of the data file fails during a backup"
FI_CALLS=sync_file_range FI_PATH=$repo \
    expect_exit 1 "backup 'B' failed: .*cannot write back .*data: Input/output error" \
    inject 1 1 "$N" backup "$U" "$repo" --full --compress --name B --no-progress
unchanged

echo "== writeback of a restored file fails"
mkdir "$tmpdir/rdir"
echo old > "$tmpdir/rdir/r.img"
FI_CALLS=sync_file_range FI_PATH=$tmpdir/rdir \
    expect_exit 1 "restore of 'F1' failed: .*writeback.*Input/output error.*unchanged" \
    inject 1 1 "$N" restore "$repo" F1 -o "$tmpdir/rdir/r.img" --no-progress
[ "$(cat "$tmpdir/rdir/r.img")" = old ] || fail "the target was changed"
[ "$(ls "$tmpdir/rdir")" = r.img ] || fail "files left: $(ls "$tmpdir/rdir")"

echo "== fsync of a restored file fails"
FI_CALLS=fsync FI_PATH=$tmpdir/rdir \
    expect_exit 1 "restore of 'F1' failed: fsync .*Input/output error; the target is unchanged" \
    inject 1 1 "$N" restore "$repo" F1 -o "$tmpdir/rdir/r.img" --no-progress
[ "$(cat "$tmpdir/rdir/r.img")" = old ] || fail "the target was changed"
[ "$(ls "$tmpdir/rdir")" = r.img ] || fail "files left: $(ls "$tmpdir/rdir")"

echo "== fsync of the restored file's directory fails"
FI_CALLS=fsync FI_PATH=$tmpdir/rdir \
    fi_count "$tmpdir/fi.log" "$N" restore "$repo" F1 -o "$tmpdir/rdir/r.img" --no-progress > /dev/null
n=$(fi_nth "$tmpdir/fi.log" fsync "$tmpdir/rdir")
echo old > "$tmpdir/rdir/r.img"
FI_CALLS=fsync FI_PATH=$tmpdir/rdir \
    expect_exit 1 "restore of 'F1': .*r.img is in place, but its directory could not be synced \(Input/output error\): it may not survive a crash" \
    inject "$n" 1 "$N" restore "$repo" F1 -o "$tmpdir/rdir/r.img" --no-progress
cmp "$tmpdir/rdir/r.img" "$tmpdir/exp-F1.img" || fail "the file in place is wrong"

echo "== fsync of points/ after a commit's rename fails: undone"
FI_CALLS=fsync FI_PATH=$repo fi_count "$tmpdir/fi.log" \
    "$N" backup "$U" "$repo" --name B --no-progress > /dev/null
n=$(fi_nth "$tmpdir/fi.log" fsync "$repo/points")
"$N" delete "$repo" B > /dev/null
"$N" checkpoint delete "$U" B > /dev/null
good=$(dirsum "$repo")
FI_CALLS=fsync FI_PATH=$repo \
    expect_exit 1 "backup 'B' failed: cannot sync .*points after putting point B in place: Input/output error; the commit was undone.*; the repository is unchanged" \
    inject "$n" 1 "$N" backup "$U" "$repo" --name B --no-progress
# The undone point is left as a temporary directory (removing its files
# could reach the disk before the renames): the next verify removes it.
compgen -G "$repo/points/.tmp-B-*" > /dev/null || fail "the undone point is not left for the cleanup"
"$N" verify "$repo" > /dev/null || fail "verify failed"
unchanged
restore_all "$repo"

echo "== ... and the undo fails too: the point stays, the backup fails"
# The calls: ... rename (into place), fsync (points/), rename (undo).
FI_CALLS=fsync,rename FI_PATH=$repo fi_count "$tmpdir/fi.log" \
    "$N" backup "$U" "$repo" --name B --no-progress > /dev/null
n=$(fi_nth "$tmpdir/fi.log" fsync "$repo/points")
"$N" delete "$repo" B > /dev/null
"$N" checkpoint delete "$U" B > /dev/null
FI_CALLS=fsync,rename FI_PATH=$repo \
    expect_exit 1 "backup 'B' failed: point B is in .*points, but that directory cannot be synced \(Input/output error\): the point may not survive a crash, and it could not be taken out again" \
    inject "$n" 2 "$N" backup "$U" "$repo" --name B --no-progress
grep -q 'repository is unchanged' "$tmpdir/err" && fail "it says the repository is unchanged"
[ "$(points "$repo")" = "F1 I1 B" ] || fail "points: $(points "$repo")"
nothing_held "$U"
[ "$(checkpoints "$U")" = "$cps" ] || fail "the failed backup left its checkpoint"
"$N" verify "$repo" > /dev/null || fail "verify failed"
restore_all "$repo"
"$N" delete "$repo" B > /dev/null
good=$(dirsum "$repo")

echo "== delete: fsync of points/ fails: the point is put back"
FI_CALLS=fsync FI_PATH=$repo \
    expect_exit 1 "cannot sync .*points after taking point I1 out: Input/output error; it was put back" \
    inject 1 1 "$N" delete "$repo" I1
same_dir "$good" "$repo"

echo "== merge: fsync of points/ after the exchange fails: undone"
cp -a "$repo" "$tmpdir/repo.copy"
FI_CALLS=fsync FI_PATH=$repo fi_count "$tmpdir/fi.log" "$N" merge "$repo" I1 > /dev/null
rm -rf "$repo"; cp -a "$tmpdir/repo.copy" "$repo"
# The fsyncs of points/: after the exchange, after removing the parent.
n=$(awk -v p="$repo/points" '$2 == "fsync" && $3 == p { print $1; exit }' "$tmpdir/fi.log")
FI_CALLS=fsync FI_PATH=$repo \
    expect_exit 1 "cannot sync .*points after putting point I1 in place: Input/output error; the merge was undone" \
    inject "$n" 1 "$N" merge "$repo" I1
"$N" verify "$repo" > /dev/null || fail "verify failed"
same_dir "$good" "$repo"

echo "== merge: fsync of points/ fails while removing the old parent"
n=$(fi_nth "$tmpdir/fi.log" fsync "$repo/points")
FI_CALLS=fsync FI_PATH=$repo \
    expect_exit 1 "point I1 is merged \(restoring it gives the same disk\), but removing its old parent F1 failed: cannot sync .*points after taking point F1 out: Input/output error; it was put back" \
    inject "$n" 1 "$N" merge "$repo" I1
"$N" verify "$repo" > /dev/null || fail "verify failed"
[ "$(points "$repo")" = "F1 I1" ] || fail "points: $(points "$repo")"
restore_all "$repo"
[ "$(json_get "$("$N" --json list "$repo")" 'j["points"][1]["kind"]')" = full ] ||
    fail "I1 is not the merged (full) point"

echo "== init: the repository file is in place, its directory not synced"
FI_CALLS=fsync fi_count "$tmpdir/fi.log" "$N" init "$tmpdir/r2" > /dev/null
n=$(fi_nth "$tmpdir/fi.log" fsync "$tmpdir/r2")
rm -rf "$tmpdir/r2"
FI_CALLS=fsync \
    expect_exit 1 "r2/repository is written, but .*r2 could not be synced \(Input/output error\): the repository may not survive a crash" \
    inject "$n" 1 "$N" init "$tmpdir/r2"

echo "$testname: OK"
