#!/usr/bin/env bash
# Snapshot filter, starting over plugins and filters that can only be
# used once nbdkit serves (issue 10, item 11).  The filter reads the disk
# below (size, fingerprint) at start; nbdkit 1.32 sets up its quit pipe
# only after .get_ready, so a read that sleeps there (delay, rate, retry
# filters) trips an assertion when stdin is /dev/null, and in daemon mode
# .get_ready runs before the fork, where the nbd plugin's shared
# connection does not exist yet.  The probe runs in .after_fork:
#   - over the delay filter (delay-read), the rate filter, and the retry
#     filter over delay-open, with stdin on /dev/null, nbdkit starts and
#     serves (the size and the bytes read through it are right);
#   - in daemon mode (no -f, -P pidfile), over the file plugin and over
#     the nbd plugin (shared=true, to a second nbdkit serving memory):
#     it starts with a log free of errors, serves writes that survive a
#     restart, and stops on SIGTERM;
#   - a refusal that needs the disk (another disk's snapshot-dir) still
#     stops nbdkit with status 1 and the message, in captive mode.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires nbdinfo --version
for f in delay rate retry; do
    requires nbdkit --filter=$f null --dump-plugin
done

# captive_size NAME NBDKIT-ARGS...: nbdkit -U - ARGS with stdin on
# /dev/null, --run printing the size and the first 4K (sha256) of the
# live disk; prints "SIZE SUM".  Fails if nbdkit fails.
captive_size ()
{
    local name=$1 out st=0; shift
    out=$(timeout 120 nbdkit -U - "$@" --run '
        s=$(nbdinfo --size "$uri") &&
        c=$(nbdsh -u "$uri" -c "import hashlib; print(hashlib.sha256(h.pread(4096, 0)).hexdigest())") &&
        echo "$s $c"' </dev/null 2> "$tmpdir/$name.log") || st=$?
    if [ "$st" -ne 0 ]; then
        cat "$tmpdir/$name.log" >&2
        fail "$name: nbdkit failed (status $st): nbdkit $*"
    fi
    printf '%s\n' "$out"
}

zero4k=$(head -c 4096 /dev/zero | sha256sum | cut -d' ' -f1)

# 1. Over the delay filter (reads sleep).
out=$(captive_size delay --filter="$F" --filter=delay memory 64K \
          delay-read=100ms snapshot-dir="$tmpdir/d1")
[ "$out" = "65536 $zero4k" ] || fail "delay: got '$out'"
echo "delay filter: $out"

# 2. Over the rate filter: a bucket of 4K (64 kbit/s for 0.5 s), so the
# probe's second 4K read sleeps.
out=$(captive_size rate --filter="$F" --filter=rate memory 64K \
          rate=64K burstiness=0.5 snapshot-dir="$tmpdir/d2")
[ "$out" = "65536 $zero4k" ] || fail "rate: got '$out'"
echo "rate filter: $out"

# 3. Retry over delay-open (the probe's open sleeps).
out=$(captive_size retry --filter="$F" --filter=retry --filter=delay \
          memory 64K delay-open=100ms snapshot-dir="$tmpdir/d3")
[ "$out" = "65536 $zero4k" ] || fail "retry/delay-open: got '$out'"
echo "retry over delay-open: $out"

# 4. Daemon mode.  start_daemon NAME NBDKIT-ARGS...: nbdkit without -f,
# its log (-v --log=stderr, so that errors after the fork are seen) in
# $tmpdir/NAME.log; waits for the pid file and the socket.
start_daemon ()
{
    local name=$1 i; shift
    rm -f "$tmpdir/$name.pid" "$tmpdir/$name.sock"
    nbdkit -v --log=stderr -U "$tmpdir/$name.sock" -P "$tmpdir/$name.pid" \
        "$@" </dev/null >/dev/null 2>> "$tmpdir/$name.log" ||
        fail "$name: nbdkit (daemon) exited with status $?"
    for ((i = 0; i < 600; i++)); do
        [ -s "$tmpdir/$name.pid" ] && [ -S "$tmpdir/$name.sock" ] && break
        sleep 0.05
    done
    [ -s "$tmpdir/$name.pid" ] || fail "$name: no pid file"
    cat "$tmpdir/$name.pid" > "$tmpdir/$name.bgpid"
}
# stop_daemon NAME: SIGTERM, wait (max 30 s) until it is gone.
stop_daemon ()
{
    local pid i
    pid=$(cat "$tmpdir/$1.pid")
    kill -TERM "$pid" || fail "$1: the daemon is not running"
    for ((i = 0; i < 600; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -0 "$pid" 2>/dev/null && fail "$1: still running 30 s after SIGTERM"
    rm -f "$tmpdir/$1.bgpid"
}
# clean_log NAME: no error in the daemon's log.
clean_log ()
{
    if grep -E ' error: |Assertion|Segmentation' "$tmpdir/$1.log"; then
        fail "$1: errors in the daemon's log (above)"
    fi
}
# daemon_case NAME NBDKIT-ARGS... (snapshot-dir=$tmpdir/NAME.d appended):
# start, write, flush, read back, clean log, stop; restart in the
# foreground and read the write back.
daemon_case ()
{
    local name=$1; shift
    mkdata "$tmpdir/$name.data" 100000 7
    start_daemon "$name" --filter="$F" "$@" snapshot-dir="$tmpdir/$name.d"
    nbd_op "$tmpdir/$name.sock" "" "
d = open('$tmpdir/$name.data', 'rb').read()
h.pwrite(d, 12345)
h.flush()
assert h.pread(len(d), 12345) == d"
    json_check "$(snap_ok "$tmpdir/$name.sock" @snapshot:create/s)" \
        'j["snapshot"]["name"] == "s"'
    clean_log "$name"
    stop_daemon "$name"
    clean_log "$name"
    start_server "$name-fg" --filter="$F" "$@" snapshot-dir="$tmpdir/$name.d"
    nbd_op "$name-fg" "" "
assert h.pread(100000, 12345) == open('$tmpdir/$name.data', 'rb').read()"
    nbd_op "$name-fg" @snapshot/s "
assert h.pread(100000, 12345) == open('$tmpdir/$name.data', 'rb').read()"
    stop_server "$name-fg"
    echo "daemon mode ($*): started, served, stopped; clean log"
}

mkdata "$tmpdir/base.img" $((1024 * 1024)) 5
daemon_case file file "$tmpdir/base.img"

start_server mem memory 1M
daemon_case nbd nbd socket="$(sock mem)" shared=true

# 5. A refusal that needs the disk below comes from .after_fork: still a
# failed start (status 1) with the message.
expect_start_fails "$tmpdir/refused.log" 'made for a disk|another disk' \
    --filter="$F" file "$tmpdir/base.img" snapshot-dir="$tmpdir/d1"
echo "refused: $(grep -Ei -m1 'made for a disk|another disk' "$tmpdir/refused.log")"
stop_server mem
