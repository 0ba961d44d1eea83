#!/usr/bin/env bash
# cbt filter, out of memory (issue 10, item 5): an allocation of the cbt
# filter that fails is an error for that start or request, never a crash.
# With the fault shim failing the Nth allocation made by
# nbdkit-cbt-filter.so (FI_OBJ):
#  1. every allocation of a start (config, .get_ready, .after_fork) and
#     of the stop, over a cbt-dir with two checkpoints: nbdkit either
#     refuses to start (exit status 1, a message) or serves and stops;
#     it never dies of a signal (the old code did not check the strdup
#     of cbt-dir: SIGSEGV); and the directory then starts cleanly with
#     both checkpoints consistent (strict mode).
#  2. every allocation of one strict-mode zero request whose blocks lie
#     in two pages of the bitmap (the old code's page round allocated
#     per page and freed its array twice when a realloc succeeded and the
#     next malloc failed): nbdkit stays up, and if the request succeeded
#     its blocks are in the change map after a restart.  The round
#     allocates nothing now; the number of allocations is printed.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"

require_built FAULTINJECT

img=$tmpdir/disk.img
d=$tmpdir/cbt
G=4096
truncate -s 256M "$img"
args=(--filter="$C" file "$img" cbt-dir="$d" cbt-sync=strict
      cbt-granularity=$G)

# serve_or_exit LOG [ENV...]: start nbdkit (args) with ENV in the
# background; r="served" (it is running: $pid, on $sockf) or
# r="exited STATUS".
serve_or_exit ()
{
    local log=$1 i st=0; shift
    sockf=$tmpdir/p.sock
    rm -f "$sockf"
    env "$@" nbdkit -f -U "$sockf" "${args[@]}" > "$log" 2>&1 &
    pid=$!
    bg_register $pid
    for ((i = 0; i < 1200; i++)); do
        kill -0 $pid 2>/dev/null || break
        if [ -S "$sockf" ]; then
            if SOCK=$sockf timeout 60 $PYTHON -c '
import os, nbd
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_unix(os.environ["SOCK"])
h.opt_abort()' >/dev/null 2>&1; then
                r=served
                return 0
            fi
            break
        fi
        sleep 0.05
    done
    wait $pid || st=$?
    rm -f "$tmpdir/bg-$pid.bgpid"
    r="exited $st"
}

# stop_pid: SIGTERM nbdkit ($pid), which must exit (any status below 128).
stop_pid ()
{
    local st=0
    kill -TERM $pid
    timeout 60 tail --pid=$pid -f /dev/null || fail "nbdkit did not stop"
    wait $pid || st=$?
    rm -f "$tmpdir/bg-$pid.bgpid"
    [ "$st" -lt 128 ] || fail "nbdkit died of signal $((st - 128)) at stop"
}

# check_dir: a clean start with both checkpoints consistent.
check_dir ()
{
    start_server chk "${args[@]}"
    json_check "$(cbt_list chk)" \
        '[c["name"] for c in j["checkpoints"]] == ["C1", "C2"]' \
        'all(c["consistent"] for c in j["checkpoints"])'
    stop_server chk
}

start_server srv "${args[@]}"
cbt_ok srv @cbt:create/C1 >/dev/null
nbd_op srv "" "h.pwrite(b'a' * $G, 0)"
cbt_ok srv @cbt:create/C2 >/dev/null
nbd_op srv "" "h.pwrite(b'b' * $G, $G)"
stop_server srv
cp -a "$d" "$tmpdir/pristine"

# ---------------------------------------------------------------- 1
serve_or_exit "$tmpdir/count.log" LD_PRELOAD="$FAULTINJECT" \
    FI_CALLS=malloc FI_OBJ=nbdkit-cbt-filter FI_LOG="$tmpdir/fi-count.log"
[ "$r" = served ] || { cat "$tmpdir/count.log" >&2; fail "counting run: $r"; }
stop_pid
k=$(wc -l < "$tmpdir/fi-count.log")
[ "$k" -gt 0 ] || fail "no allocation counted"
refused=0 served=0
for ((n = 1; n <= k; n++)); do
    rm -rf "$d"; cp -a "$tmpdir/pristine" "$d"
    log=$tmpdir/start-$n.log
    serve_or_exit "$log" LD_PRELOAD="$FAULTINJECT" FI_CALLS=malloc \
        FI_OBJ=nbdkit-cbt-filter FI_NTH=$n FI_ERRNO=ENOMEM
    case "$r" in
        served)
            served=$((served + 1))
            # (The allocation may be this command's: an error is fine.)
            snapcmd "$sockf" @cbt:list >/dev/null 2>&1 || true
            kill -0 $pid 2>/dev/null || fail "allocation $n: nbdkit died"
            stop_pid ;;
        "exited 1")
            refused=$((refused + 1))
            grep -q "error:" "$log" || { cat "$log" >&2; fail "allocation $n: refused without a message"; } ;;
        *)
            cat "$log" >&2
            fail "allocation $n of the start failed: nbdkit $r" ;;
    esac
    check_dir
done
echo "$testname: start and stop: $k allocations failed in turn," \
     "$refused refused to start, $served served"

# ---------------------------------------------------------------- 2
# One zero request over blocks 32767 and 32768: pages 0 and 1 of the
# bitmap (32768 blocks per page).
rm -rf "$d"; cp -a "$tmpdir/pristine" "$d"
arm=$tmpdir/arm
zero_req ()
{
    SOCK=$sockf ARM=$arm G=$G timeout 60 $PYTHON -c '
import os, nbd
G = int(os.environ["G"])
h = nbd.NBD()
h.connect_uri("nbd+unix:///?socket=%s" % os.environ["SOCK"])
open(os.environ["ARM"], "w").close()
try:
    h.zero(2 * G, 32767 * G)
    print("ok")
except nbd.Error as e:
    print("error", e.errno)
os.unlink(os.environ["ARM"])
h.shutdown()'
}
serve_or_exit "$tmpdir/count2.log" LD_PRELOAD="$FAULTINJECT" \
    FI_CALLS=malloc FI_OBJ=nbdkit-cbt-filter FI_ARM="$arm" \
    FI_LOG="$tmpdir/fi-count2.log"
[ "$r" = served ] || fail "counting run 2: $r"
[ "$(zero_req)" = ok ] || fail "zero request failed without a fault"
stop_pid
k2=$(cat "$tmpdir/fi-count2.log" 2>/dev/null | wc -l)
for ((n = 1; n <= k2; n++)); do
    rm -rf "$d"; cp -a "$tmpdir/pristine" "$d"
    serve_or_exit "$tmpdir/zero-$n.log" LD_PRELOAD="$FAULTINJECT" \
        FI_CALLS=malloc FI_OBJ=nbdkit-cbt-filter FI_ARM="$arm" FI_NTH=$n \
        FI_ERRNO=ENOMEM
    [ "$r" = served ] || fail "run $n: $r"
    res=$(zero_req) || true
    kill -0 $pid 2>/dev/null ||
        { cat "$tmpdir/zero-$n.log" >&2; fail "allocation $n of a write round: nbdkit died"; }
    stop_pid
    start_server chk "${args[@]}"
    if [ "$res" = ok ]; then
        blocks=$(changed_blocks chk @cbt/C2 $G)
        [[ " $blocks " == *" 32767 32768 "* ]] ||
            fail "allocation $n: zero acknowledged, blocks not in the map: $blocks"
    fi
    stop_server chk
done
echo "$testname: a two-page write round makes $k2 allocations" \
     "(each failed in turn)"
