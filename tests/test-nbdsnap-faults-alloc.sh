#!/usr/bin/env bash
# nbdsnap under failed allocations (tests/nbdsnap-faults.sh with the
# shim's malloc, calloc, realloc, strdup made to fail, with ENOMEM, when
# the tool itself calls them, FI_OBJ=nbdsnap; the libraries' own
# allocations are left alone): the n-th allocation fails, for every n
# (or a spread, see FAULT_POINTS and CHECK_LONG), in a full and an
# incremental backup, a restore to a file, a merge, a delete, verify,
# list and init.  After each: exit 1..127 (no crash) with a message and
# no result; the repository verifies; every point restores to its disk
# (cmp); the server holds no frozen point and no checkpoint of a failed
# backup; a failed restore leaves the old file.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/nbdsnap-functions.sh"
. "$testsdir/nbdsnap-faults.sh"
requires nbdcopy --version

K=65536
repo=$tmpdir/repo
start_server srv --filter="$FREEZE_FILTER" --filter="$CBT_FILTER" \
    memory 4M freeze-dir="$tmpdir" cbt-dir="$tmpdir/cbt"
U=$(uri srv)
change ()
{
    nbd_op srv "" "
import random
r = random.Random($1)
for b in range($1 % 2, 64, 3):
    h.pwrite(r.randbytes(9000), b * $K + 77)
h.flush()"
}
change 1
dump srv "" "$tmpdir/exp-F1.img"
"$N" backup "$U" "$repo" --full --name F1 --no-progress > /dev/null
change 2
dump srv "" "$tmpdir/exp-I1.img"
"$N" backup "$U" "$repo" --name I1 --no-progress > /dev/null
change 3
dump srv "" "$tmpdir/exp-X.img"
cp -a "$repo" "$tmpdir/base"
base_sum=$(dirsum "$repo")

reset ()
{
    rm -rf "$repo"; cp -a "$tmpdir/base" "$repo"
    case " $(checkpoints "$U") " in *" X "*) "$N" checkpoint delete "$U" X > /dev/null;; esac
    echo "old content" > "$tmpdir/r.img"
    return 0
}
check ()
{
    nothing_held "$U"
    if [ "$rc" != 0 ]; then
        case " $(checkpoints "$U") " in
            *" X "*) fail "a failed backup left its checkpoint: $(checkpoints "$U")";;
        esac
    fi
    "$N" verify "$repo" > "$tmpdir/verify.out" 2>&1 ||
        { cat "$tmpdir/verify.out" >&2; fail "verify failed"; }
    no_tmp "$repo"
    [ "$(dirsum "$repo")" = "$base_sum" ] || restore_all "$repo"
    if [ "$rc" != 0 ]; then
        [ "$(head -c 11 "$tmpdir/r.img")" = "old content" ] ||
            fail "a failed restore changed its target"
    fi
    ! compgen -G "$tmpdir/r.img.nbdsnap-*" > /dev/null ||
        fail "a temporary file was left"
}

run_full () { $FI_RUN "$N" backup "$U" "$repo" --full --name X --connections 2 --no-progress; }
run_inc () { $FI_RUN "$N" backup "$U" "$repo" --name X --compress --connections 2 --no-progress; }
run_restore () { $FI_RUN "$N" restore "$repo" I1 -o "$tmpdir/r.img" --connections 2 --no-progress; }
run_merge () { $FI_RUN "$N" merge "$repo" I1; }
run_delete () { $FI_RUN "$N" delete "$repo" I1; }
# verify's report goes to stdout: kept apart, it must not say OK.
run_verify () { $FI_RUN "$N" verify "$repo" > "$tmpdir/v.out"; }
check_verify ()
{
    check
    [ "$rc" = 0 ] || ! grep -q ': OK' "$tmpdir/v.out" || fail "verify said OK"
    ! grep -q 'DAMAGED' "$tmpdir/v.out" || fail "verify reported damage: $(cat "$tmpdir/v.out")"
}
run_list () { $FI_RUN "$N" list "$repo"; }
# With --json a failure is a JSON result too: {"ok":false,...}.
run_json_list () { $FI_RUN "$N" --json list "$repo" > "$tmpdir/j.out"; }
check_json ()
{
    check
    if [ "$rc" != 0 ]; then
        json_check "$(cat "$tmpdir/j.out")" 'j["ok"] is False' \
            'isinstance(j["error"], str) and j["error"]'
    else
        json_check "$(cat "$tmpdir/j.out")" 'j["ok"] is True' \
            '[p["name"] for p in j["points"]] == ["F1", "I1"]'
    fi
}
run_init () { $FI_RUN "$N" init "$tmpdir/new"; }
check_init ()
{
    if [ -e "$tmpdir/new" ]; then
        # A whole repository, or what an interrupted init leaves.
        "$N" list "$tmpdir/new" > /dev/null 2>&1 || "$N" init "$tmpdir/new" > /dev/null ||
            fail "init left something init cannot take over: $(ls -AR "$tmpdir/new")"
    fi
}
reset_init () { rm -rf "$tmpdir/new"; }

for op in full inc restore merge delete list; do
    echo "== $op"
    sweep "$op" malloc "" nbdsnap "run_$op" check reset
done
echo "== list --json"
sweep "list --json" malloc "" nbdsnap run_json_list check_json reset
echo "== verify"
sweep verify malloc "" nbdsnap run_verify check_verify reset
echo "== init"
sweep init malloc "" nbdsnap run_init check_init reset_init

# Deleting a parent is refused; with an allocation failing while its
# children's manifests are read, it must still be refused (a child that
# could not be read is not "no child"), and a commit must not number a
# point from a partial list.
echo "== delete of a parent, under allocation faults"
reset
tried=0
for ((n = 1; n <= 12; n++)); do
    st=0
    LD_PRELOAD=$FAULTINJECT FI_CALLS=malloc FI_OBJ=nbdsnap FI_NTH=$n \
        "$N" delete "$repo" F1 > "$tmpdir/out" 2> "$tmpdir/err" || st=$?
    tried=$((tried + 1))
    [ "$st" -ne 0 ] && [ "$st" -lt 128 ] ||
        fail "delete F1 with allocation $n failing: exit $st"
    [ "$(points "$repo")" = "F1 I1" ] ||
        fail "delete F1 with allocation $n failing removed it: $(cat "$tmpdir/err")"
done
"$N" verify "$repo" > /dev/null || fail "verify failed"
echo "delete of a parent: $tried fault points tried, refused every time"

echo "$testname: OK"
