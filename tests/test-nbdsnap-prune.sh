#!/usr/bin/env bash
# nbdsnap checkpoint retention.  30 nightly rounds (random writes, then an
# incremental backup; one full now and then, a differential --since an
# older point, a point deleted from the repository) against
# freeze + cbt over memory:
#   - the server keeps a bounded number of checkpoints and bitmap files
#     in cbt-dir (the default keeps the newest 2 points' checkpoints, plus
#     the base of a differential, with --keep-checkpoints 2), where it
#     would keep 30 without;
#   - a checkpoint the repository did not make (another name) is never
#     deleted;
#   - deleting the newest point of the repository leaves the next
#     incremental possible;
#   - every point restores byte-exact to the disk at its instant (cmp);
#   - nbdsnap prune: --dry-run changes nothing, --keep-checkpoints 1
#     keeps only the newest (and a point a backup in progress holds), nothing is deleted while a frozen point is
#     held, --keep-checkpoints 0 on backup keeps all; --json output.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/nbdsnap-functions.sh"
requires nbdsh --version

repo=$tmpdir/repo
start_server srv --filter="$FREEZE_FILTER" --filter="$CBT_FILTER" \
    memory 2M freeze-dir="$tmpdir" cbt-dir="$tmpdir/cbt" \
    cbt-granularity=16K
U=$(uri srv)

# night I: random writes, and the disk as it is after them (exp-NAME.img)
night ()
{
    nbd_op srv "" "
import random
r = random.Random($1)
size = h.get_size()
for i in range(r.randrange(1, 12)):
    n = r.choice([512, 4096, 65536, 200000])
    off = r.randrange(0, size - n)
    if r.random() < 0.15:
        h.zero(n, off)
    else:
        h.pwrite(r.randbytes(n), off)
h.flush()
open('$tmpdir/exp-$2.img', 'wb').write(h.pread(size, 0))"
}
nbitmaps () { ls "$tmpdir/cbt" | grep -c '^bitmap-.*\.bits$' || true; }

"$N" checkpoint create "$U" manual > /dev/null     # not the repository's
maxcp=0 maxbm=0
for ((i = 1; i <= 30; i++)); do
    name=n$(printf %02d $i)
    night "$i" "$name"
    opts=()
    case $i in
        1|15) opts=(--full) ;;
        3) opts=(--json) ;;
        20) opts=(--since n18) ;;                     # a differential
    esac
    "$N" backup "$U" "$repo" --name "$name" --no-progress "${opts[@]}" \
        --keep-checkpoints 2 \
        > "$tmpdir/out" 2> "$tmpdir/err" || { cat "$tmpdir/err"; fail "backup $name"; }
    cps=$(checkpoints "$U")
    case $i in
        3) json_check "$(cat "$tmpdir/out")" 'j["ok"] is True' \
               'j["pruned_checkpoints"] == ["n01"]' ;;
        20) [ "$cps" = "manual n18 n19 n20" ] ||
                fail "after the differential n20: checkpoints $cps" ;;
        21) # n20, a differential, is still among the newest 2: its base too
            [ "$cps" = "manual n18 n20 n21" ] || fail "after n21: checkpoints $cps" ;;
        22) [ "$cps" = "manual n21 n22" ] || fail "after n22: checkpoints $cps" ;;
        25)
            # The newest point goes from the repository; the next
            # incremental is based on n24, whose checkpoint is there.
            "$N" delete "$repo" n25 > /dev/null
            rm "$tmpdir/exp-n25.img" ;;
        26) grep -q "incremental since n24" "$tmpdir/out" ||
                fail "n26: $(cat "$tmpdir/out")" ;;
    esac
    n=$(wc -w <<< "$cps"); b=$(nbitmaps)
    (( n > maxcp )) && maxcp=$n
    (( b > maxbm )) && maxbm=$b
done
echo "most checkpoints at once: $maxcp, bitmap files: $maxbm"
(( maxcp <= 4 )) || fail "checkpoints pile up: $maxcp"
(( maxbm <= 4 )) || fail "bitmap files pile up: $maxbm"
cps=$(checkpoints "$U")
# n25 was deleted from the repository: not its checkpoint any more, kept
[ "$cps" = "manual n25 n29 n30" ] || fail "at the end: checkpoints $cps"
[ "$(nbitmaps)" -eq 4 ] || fail "bitmap files: $(ls "$tmpdir/cbt")"

# Every point restores to the disk at its instant.
restore_all "$repo"
[ "$(wc -w <<< "$(points "$repo")")" -eq 29 ] || fail "points: $(points "$repo")"
"$N" verify "$repo" > /dev/null || fail "verify"

# prune: --dry-run, --keep-checkpoints 1, JSON.
"$N" prune "$U" "$repo" --keep-checkpoints 2 > "$tmpdir/out"
grep -q 'no checkpoint to delete' "$tmpdir/out" || fail "prune with nothing to do"
# The default keeps 7: nothing to do either.
out=$("$N" --json prune "$U" "$repo")
json_check "$out" 'j["keep_checkpoints"] == 7' 'j["deleted"] == []' 
# A point a backup in progress is based on (its hold: a shared flock on
# the point's directory, here taken by this shell) keeps its checkpoint.
exec {fd}< "$repo/points/n29"
flock -s "$fd"
"$N" -v prune "$U" "$repo" --keep-checkpoints 1 > "$tmpdir/out" 2> "$tmpdir/err"
grep -q "keeping checkpoint 'n29': a backup in progress" "$tmpdir/err" ||
    fail "held n29: $(cat "$tmpdir/err")"
grep -q 'no checkpoint to delete' "$tmpdir/out" || fail "held n29 was pruned"
exec {fd}<&-
"$N" prune "$U" "$repo" --keep-checkpoints 1 --dry-run > "$tmpdir/out"
grep -qx "would delete checkpoint 'n29'" "$tmpdir/out" || fail "dry run: $(cat "$tmpdir/out")"
[ "$(checkpoints "$U")" = "manual n25 n29 n30" ] || fail "--dry-run deleted"
out=$("$N" --json prune "$U" "$repo" --keep-checkpoints=1)
json_check "$out" 'j["ok"] is True' 'j["deleted"] == ["n29"]' \
    'j["keep_checkpoints"] == 1'
[ "$(checkpoints "$U")" = "manual n25 n30" ] || fail "keep 1: $(checkpoints "$U")"

# Nothing goes while a frozen point is held (a backup may need its base).
night 31 n31
"$N" backup "$U" "$repo" --name n31 --keep-checkpoints 0 --no-progress > /dev/null
night 32 n32
"$N" backup "$U" "$repo" --name n32 --keep-checkpoints 0 --no-progress > /dev/null
[ "$(checkpoints "$U")" = "manual n25 n30 n31 n32" ] || fail "--keep-checkpoints 0 pruned"
"$N" freeze begin "$U" held > /dev/null
"$N" prune "$U" "$repo" --keep-checkpoints 2 > "$tmpdir/out" 2> "$tmpdir/err"
grep -q "not pruning checkpoints: the server holds frozen point(s) 'held'" "$tmpdir/err" ||
    fail "prune with a frozen point held: $(cat "$tmpdir/err")"
[ "$(checkpoints "$U")" = "manual n25 n30 n31 n32 held" ] || fail "pruned while held"
"$N" freeze end "$U" held > /dev/null
"$N" checkpoint delete "$U" held > /dev/null
"$N" prune "$U" "$repo" --keep-checkpoints 2 > "$tmpdir/out"
[ "$(checkpoints "$U")" = "manual n25 n31 n32" ] || fail "after prune: $(checkpoints "$U")"
grep -qx "deleted checkpoint 'n30'" "$tmpdir/out" || fail "prune output"
restore_all "$repo"

# Errors.
expect_exit 2 "at least 1" "$N" prune "$U" "$repo" --keep-checkpoints 0
expect_exit 2 "must be a number" "$N" prune "$U" "$repo" --keep-checkpoints x
expect_exit 2 "usage" "$N" prune "$U"
expect_exit 1 "" "$N" prune "$U" "$tmpdir/nothing"
echo "$testname: ok"
