#!/usr/bin/env bash
# freeze filter: starts wherever nbdkit runs (issue 10, item 11).
#
# The disk below is probed in .after_fork, where nbdkit allows it, not in
# .get_ready: there a filter below that sleeps made nbdkit assert in
# nbdkit_nanosleep when stdin was /dev/null (as under systemd or cron),
# and in daemon mode the probe ran in the parent before the fork.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

require_built FREEZE_FILTER
Z=$FREEZE_FILTER
mkdir "$tmpdir/fz"

# Over filters that sleep or limit, with stdin on /dev/null.
n=0
for below in "--filter=delay delay-open=1" \
             "--filter=delay rdelay=1" \
             "--filter=retry --filter=delay delay-open=1" \
             "--filter=rate rate=1M"; do
    n=$((n + 1))
    # shellcheck disable=SC2086
    if ! timeout 60 nbdkit -U - --filter="$Z" ${below%% *} memory 64K \
            ${below#* } freeze-dir="$tmpdir/fz" \
            --run 'nbdinfo --size "$uri"' \
            < /dev/null > "$tmpdir/case$n.out" 2>&1; then
        cat "$tmpdir/case$n.out" >&2
        fail "freeze over '$below' with stdin on /dev/null did not start"
    fi
    grep -qx 65536 "$tmpdir/case$n.out" || fail "case $n: wrong size"
done

# Daemon mode (no -f): a clean start log, serves, stops.
daemon ()   # NAME NBDKIT-ARGS...: start in the background as a daemon
{
    local name=$1 i; shift
    nbdkit -v --log=stderr -U "$tmpdir/$name.sock" -P "$tmpdir/$name.pid" \
        "$@" 2> "$tmpdir/$name.log" < /dev/null ||
        fail "daemon $name: nbdkit exited with $?"
    for ((i = 0; i < 300; i++)); do
        [ -s "$tmpdir/$name.pid" ] && [ -S "$tmpdir/$name.sock" ] && break
        sleep 0.1
    done
    [ -s "$tmpdir/$name.pid" ] || fail "daemon $name did not write its pid"
    bg_register "$(cat "$tmpdir/$name.pid")"
    nbdinfo --size "nbd+unix:///?socket=$tmpdir/$name.sock" \
        > "$tmpdir/$name.size" || fail "daemon $name does not serve"
    kill "$(cat "$tmpdir/$name.pid")"
    for ((i = 0; i < 300; i++)); do
        kill -0 "$(cat "$tmpdir/$name.pid")" 2>/dev/null || break
        sleep 0.1
    done
    if grep -E "error:|Assertion" "$tmpdir/$name.log"; then
        fail "daemon $name logged an error at start"
    fi
}

truncate -s 1M "$tmpdir/disk.img"
daemon dfile --filter="$Z" file "$tmpdir/disk.img" freeze-dir="$tmpdir/fz"
grep -qx 1048576 "$tmpdir/dfile.size" || fail "file daemon: wrong size"

start_server mem memory 2M
daemon dnbd --filter="$Z" nbd socket="$(sock mem)" freeze-dir="$tmpdir/fz"
grep -qx 2097152 "$tmpdir/dnbd.size" || fail "nbd daemon: wrong size"
