#!/usr/bin/env bash
# Security, file modes and symbolic links (the rule: nbdsnap(1) "FILES
# AND PERMISSIONS").
#
# Modes, with umask 022: the directories the filters and nbdsnap create
# (snapshot-dir, cbt-dir, a repository, its points/ and each point) are
# 0700; every file in them (layers, maps, bitmaps, state files, a point's
# data, index and manifest) has no group or other bits; a file `nbdsnap
# restore` creates is 0600 (one it replaces keeps its mode).
#
# Symbolic links: a state directory named on the command line may be a
# symbolic link (the administrator's choice); an entry *inside* a state
# directory or a repository never is followed: a layer, map, bitmap,
# state or lock file replaced by a link to a copy of /etc/passwd makes
# nbdkit refuse to start, a link planted where a temporary file will be
# written (state.tmp, the writability probe) makes that write fail, and a
# point of a repository that is a link to another directory is not read,
# verified or deleted through; the link targets never change.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

: "${CBT_FILTER:=$top_builddir/filters/cbt/.libs/nbdkit-cbt-filter.so}"
: "${FREEZE_FILTER:=$top_builddir/filters/freeze/.libs/nbdkit-freeze-filter.so}"
: "${NBDSNAP:=$top_builddir/tools/nbdsnap}"
N=$NBDSNAP
K=65536
umask 022

d=$tmpdir/st
mkdir -p "$d/frz"
mkdata "$d/disk.img" $((16 * K)) 3
chmod 600 "$d/disk.img"
stack_args=(--filter="$FREEZE_FILTER" --filter="$CBT_FILTER"
            --filter="$SNAPSHOT_FILTER" file "$d/disk.img"
            snapshot-dir="$d/snap" cbt-dir="$d/cbt" freeze-dir="$d/frz")
start_server srv "${stack_args[@]}"
U=$(uri srv)

echo "== modes"
nbd_op srv "" "h.pwrite(b'a' * $K, 0); h.flush()"
"$N" snapshot create "$U" s1 >/dev/null
"$N" checkpoint create "$U" c1 >/dev/null
"$N" backup "$U" "$d/repo" --full --name B1 --no-progress >/dev/null
nbd_op srv "" "h.pwrite(b'b' * $K, 3 * $K); h.flush()"
"$N" backup "$U" "$d/repo" --name B2 --no-progress >/dev/null
"$N" freeze begin "$U" f1 >/dev/null
"$N" restore "$d/repo" B2 -o "$d/restored.img" --no-progress >/dev/null
bad=$(find "$d/snap" "$d/cbt" "$d/repo" "$d/frz" \( -type d ! -perm 0700 \) \
           -o \( -type f -perm /077 \) -printf '%m %p\n')
[ -z "$bad" ] || { echo "$bad" >&2; fail "files or directories open to other users"; }
[ "$(stat -c %a "$d/restored.img")" = 600 ] ||
    fail "a restored file is $(stat -c %a "$d/restored.img"), not 600"
# A file restore replaces keeps its mode.
touch "$d/shared.img"; chmod 640 "$d/shared.img"
"$N" restore "$d/repo" B1 -o "$d/shared.img" --no-progress >/dev/null
[ "$(stat -c %a "$d/shared.img")" = 640 ] || fail "restore changed the mode of the file it replaced"
"$N" freeze end "$U" f1 >/dev/null
stop_server srv

# victim: a copy of /etc/passwd (or any file) that a link points to.
printf 'root:x:0:0:root:/root:/bin/bash\n' > "$tmpdir/passwd-copy"
sum=$(sha256sum < "$tmpdir/passwd-copy")
# refuses_start: nbdkit with the stack must not come up (the filters
# check their state in .after_fork, after nbdkit has written its pid
# file: a start that "succeeds" and dies at once is a refusal too).
refuses_start ()
{
    start_server srv "${stack_args[@]}" 2>/dev/null || return 0
    local i
    for ((i = 0; i < 40; i++)); do
        server_alive srv || { term_server srv; return 0; }
        sleep 0.05
    done
    nbd_op srv "" "h.pwrite(b'c' * $K, 0); h.flush()" >/dev/null 2>&1 || true
    "$N" snapshot create "$U" sX >/dev/null 2>&1 || true
    "$N" checkpoint create "$U" cX >/dev/null 2>&1 || true
    server_alive srv || { term_server srv; return 0; }
    stop_server srv
    return 1
}
victim_intact ()
{
    [ "$(sha256sum < "$tmpdir/passwd-copy")" = "$sum" ] ||
        fail "$1: the link's target was changed"
}
# plant FILE: replace FILE by a link to the victim (keep the original).
plant () { mv "$1" "$1.orig"; ln -s "$tmpdir/passwd-copy" "$1"; }
unplant () { rm "$1"; mv "$1.orig" "$1"; }

echo "== a state file replaced by a symbolic link: nbdkit refuses to start"
for f in snap/layer-1.data snap/layer-1.map snap/state snap/lock \
         cbt/state cbt/lock "cbt/$(cd "$d/cbt" && ls bitmap-*.bits | head -1)"; do
    plant "$d/$f"
    : > "$tmpdir/srv.log"
    if ! refuses_start; then
        victim_intact "$f"
        fail "nbdkit started with $f a symbolic link"
    fi
    grep -Eiq 'symbolic link|ELOOP|too many levels' "$tmpdir/srv.log" ||
        { cat "$tmpdir/srv.log" >&2; fail "$f: the error does not say why"; }
    victim_intact "$f"
    unplant "$d/$f"
done

echo "== links planted where a temporary file will be written"
plant_tmp () { ln -s "$tmpdir/passwd-copy" "$1"; }
plant_tmp "$d/snap/.nbdsnap-probe"
: > "$tmpdir/srv.log"
refuses_start || fail "started with a planted probe link"
victim_intact "probe"
rm "$d/snap/.nbdsnap-probe"
start_server srv "${stack_args[@]}"
# The filters remove stale *.tmp files in .after_fork, which may run
# after the socket appears (slowly under ASan): a served request proves
# it has run, so the links planted next are not swept away by it.
"$N" snapshot list "$U" >/dev/null
plant_tmp "$d/snap/state.tmp"
plant_tmp "$d/cbt/state.tmp"
st=0; "$N" snapshot create "$U" s2 >/dev/null 2>"$tmpdir/err" || st=$?
[ "$st" -ne 0 ] || fail "snapshot create wrote its state through state.tmp"
victim_intact "snap/state.tmp"
st=0; "$N" checkpoint create "$U" c2 >/dev/null 2>"$tmpdir/err" || st=$?
[ "$st" -ne 0 ] || fail "checkpoint create wrote its state through state.tmp"
victim_intact "cbt/state.tmp"
stop_server srv
rm "$d/snap/state.tmp" "$d/cbt/state.tmp"

echo "== the state directory itself a symbolic link (allowed)"
mv "$d/snap" "$d/snap-real"
ln -s "$d/snap-real" "$d/snap"
start_server srv "${stack_args[@]}"
json_check "$("$N" --json snapshot list "$U")" '[s["name"] for s in j["snapshots"]] == ["s1"]'
stop_server srv

echo "== a repository point that is a link to another directory"
mkdir "$tmpdir/elsewhere"
cp -a "$d/repo/points/B1/." "$tmpdir/elsewhere/"
before=$(dirsum "$tmpdir/elsewhere")
ln -s "$tmpdir/elsewhere" "$d/repo/points/EVIL"
st=0; "$N" restore "$d/repo" EVIL -o "$d/evil.img" --no-progress >/dev/null 2>&1 || st=$?
[ "$st" -ne 0 ] || fail "restore read a point through a symbolic link"
"$N" delete "$d/repo" EVIL >/dev/null 2>&1 || true
[ "$(dirsum "$tmpdir/elsewhere")" = "$before" ] || fail "delete removed files through a link"
victim_intact "repo"
echo "$testname: OK"
