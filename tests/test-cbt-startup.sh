#!/usr/bin/env bash
# cbt filter, starting over filters that sleep (issue 10, item 11): the
# disk below is probed in .after_fork, when nbdkit makes the backend
# usable, not in .get_ready (where nbdkit's quit pipe is stdin, so a
# filter below that sleeps, like delay or retry, makes nbdkit abort when
# stdin is /dev/null; and in daemon mode .get_ready runs in the parent,
# before the fork).  With stdin on /dev/null, nbdkit starts and serves:
#   * over the delay filter (delay-read, delay-open), the rate filter,
#     and retry over delay (delay-open);
#   * in daemon mode (no -f, -P pidfile; -v --log=stderr, so that the
#     daemon keeps its stderr): it serves and its log has no "error:",
#     and after SIGTERM the state is clean;
#   * a refusal that needs the disk (the disk shrank) still stops
#     nbdkit with its message, in the foreground and in daemon mode.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"
requires nbdinfo --version

n=0
# serves DIR CKPT NBDKIT-ARGS...: captive nbdkit, stdin /dev/null, must
# start, report the size of the live disk (64K), create checkpoint CKPT
# and read its change map.
serves ()
{
    local dir=$tmpdir/$1 ck=$2 out st=0; shift 2
    n=$((n + 1))
    out=$(timeout 120 nbdkit -U - "$@" cbt-dir="$dir" --run '
        nbdinfo --size "$uri" &&
        nbdcopy "nbd+unix:///@cbt:create/'"$ck"'?socket=$unixsocket" - &&
        nbdinfo --map "nbd+unix:///@cbt/'"$ck"'?socket=$unixsocket" >&2 &&
        nbdinfo --size "$uri"' </dev/null 2>"$tmpdir/serves-$n.log") || st=$?
    if [ "$st" -ne 0 ]; then
        cat "$tmpdir/serves-$n.log" >&2
        fail "nbdkit $* did not start and serve (status $st)"
    fi
    grep -q '"ok":true' <<<"$out" || fail "nbdkit $*: create failed: $out"
    [ "$(head -n 1 <<<"$out")" = 65536 ] &&
        [ "$(tail -n 1 <<<"$out")" = 65536 ] ||
        fail "nbdkit $*: unexpected output: $out"
    grep -q " consistent $ck\$" "$dir/state" ||
        fail "nbdkit $*: state does not name $ck"
    grep -q '^status clean$' "$dir/state" ||
        fail "nbdkit $*: state not clean after --run"
}

serves d1 C1 --filter="$C" --filter=delay memory 64K delay-read=1
serves d2 C1 --filter="$C" --filter=delay memory 64K delay-open=1
serves d3 C1 --filter="$C" --filter=rate memory 64K rate=1M
serves d4 C1 --filter="$C" --filter=retry --filter=delay memory 64K \
    delay-open=1
# Again, with bitmaps to load (in .after_fork).
serves d4 C2 --filter="$C" --filter=retry --filter=delay memory 64K \
    delay-open=1

# Daemon mode.
img=$tmpdir/disk.img
truncate -s 1M "$img"
d=$tmpdir/cbt-daemon
pidf=$tmpdir/daemon.pid
sockf=$tmpdir/daemon.sock
log=$tmpdir/daemon.log
daemon_kill ()
{
    [ -s "$pidf" ] && kill "$(cat "$pidf")" 2>/dev/null
    return 0
}
cleanup_fn daemon_kill
timeout 60 nbdkit -v --log=stderr -U "$sockf" -P "$pidf" --filter="$C" \
    --filter=delay file "$img" delay-open=1 cbt-dir="$d" \
    </dev/null 2>"$log" || { cat "$log" >&2; fail "daemon mode: nbdkit failed"; }
for ((i = 0; i < 200; i++)); do [ -s "$pidf" ] && break; sleep 0.05; done
pid=$(cat "$pidf")
size=$(timeout 60 nbdinfo --size "nbd+unix:///?socket=$sockf") ||
    fail "daemon mode: cannot connect"
[ "$size" = 1048576 ] || fail "daemon mode: size $size"
cbt_ok "$sockf" @cbt:create/D1 >/dev/null
nbd_op "$sockf" "" "h.pwrite(b'x' * 4096, 65536); h.flush()"
[ "$(changed_blocks "$sockf" @cbt/D1 65536)" = 1 ] ||
    fail "daemon mode: change map wrong"
kill "$pid"
for ((i = 0; i < 600; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
kill -0 "$pid" 2>/dev/null && fail "daemon mode: nbdkit did not stop"
if grep "error:" "$log"; then
    fail "daemon mode: the log has errors"
fi
grep -q '^status clean$' "$d/state" || fail "daemon mode: state not clean"

# Refusals that need the disk still stop nbdkit, with their message.
truncate -s 512K "$img"
expect_start_fails "$tmpdir/shrank.log" 'shrank' --filter="$C" \
    --filter=delay file "$img" delay-open=1 cbt-dir="$d"
rm -f "$pidf" "$sockf"
st=0
timeout 60 nbdkit -v --log=stderr -U "$sockf" -P "$pidf" --filter="$C" \
    file "$img" cbt-dir="$d" </dev/null 2>"$log" || st=$?
# The parent forks before .after_fork: it may exit 0; the daemon must
# exit at once, leaving its message, and never serve.
for ((i = 0; i < 200; i++)); do
    grep -q shrank "$log" && break
    sleep 0.05
done
grep -q "shrank" "$log" || { cat "$log" >&2; fail "daemon mode: no refusal message"; }
[ -s "$pidf" ] || fail "daemon mode: no pidfile"
pid=$(cat "$pidf")
for ((i = 0; i < 200; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
if kill -0 "$pid" 2>/dev/null; then
    fail "daemon mode: nbdkit still runs although the disk shrank"
fi
if timeout 10 nbdinfo --size "nbd+unix:///?socket=$sockf" >/dev/null 2>&1; then
    fail "daemon mode: served although the disk shrank"
fi
echo "$testname: $n captive starts, daemon mode ok"
