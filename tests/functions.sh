# nbdsnap test helpers.  Sourced (by bash) from every tests/test-*.sh:
#
#   #!/usr/bin/env bash
#   [ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
#   . "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
#
# Environment (set by `make check`, defaulted when a test is run by hand):
#   top_srcdir, top_builddir   the source / build tree (default: the repo root)
#   SNAPSHOT_FILTER            absolute path of nbdkit-snapshot-filter.so
#   TMPDIR                     where the per-test temporary directory goes
#   TEST_TIMEOUT               seconds before the watchdog kills the test (300)
#   KEEP_TMPDIR=1              keep the temporary directory for debugging
#
# Every test gets: set -e, pipefail, $tmpdir (removed on exit), cleanup_fn,
# a watchdog, and helpers to run nbdkit servers in the background, to run
# snapshot commands and to check their JSON results.

set -e
set -o pipefail

# The pyenv python3 that comes first on PATH has no nbd module; nbdsh is
# "#!/usr/bin/env python3", so /usr/bin must come first.
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH
export LC_ALL=C
export PYTHONDONTWRITEBYTECODE=1      # no __pycache__ in the source tree
PYTHON=/usr/bin/python3

: "${top_srcdir:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
: "${top_builddir:=$top_srcdir}"
: "${SNAPSHOT_FILTER:=$top_builddir/filters/snapshot/.libs/nbdkit-snapshot-filter.so}"
: "${CBT_FILTER:=$top_builddir/filters/cbt/.libs/nbdkit-cbt-filter.so}"
: "${FREEZE_FILTER:=$top_builddir/filters/freeze/.libs/nbdkit-freeze-filter.so}"
: "${BACKUP_PLUGIN:=$top_builddir/plugins/backup/.libs/nbdkit-backup-plugin.so}"
: "${NBDSNAP:=$top_builddir/tools/nbdsnap}"
: "${FAULTINJECT:=$top_builddir/tests/.libs/libfaultinject.so}"
testsdir=$top_srcdir/tests
export top_srcdir top_builddir SNAPSHOT_FILTER CBT_FILTER FREEZE_FILTER \
       BACKUP_PLUGIN NBDSNAP testsdir
testname=$(basename "$0" .sh)
F=$SNAPSHOT_FILTER

# ------------------------------------------------------------------ cleanup
# cleanup_fn CMD [ARGS...]: run CMD when the test exits, however it exits.
# Registered commands run in reverse order of registration.
_cleanup_fns=()
cleanup_fn ()
{
    _cleanup_fns+=("$(printf '%q ' "$@")")
}

_run_cleanup ()
{
    local status=$? i
    set +e
    trap '' INT TERM
    if [ "$status" -ne 0 ] && [ "$status" -ne 77 ] && [ -d "$tmpdir" ]; then
        echo "$testname: FAILED (status $status); server logs follow:" >&2
        for i in "$tmpdir"/*.log; do
            [ -s "$i" ] || continue
            echo "----- $(basename "$i") (last 40 lines)" >&2
            tail -n 40 "$i" >&2
        done
    fi
    for ((i = ${#_cleanup_fns[@]} - 1; i >= 0; i--)); do
        eval "${_cleanup_fns[i]}"
    done
    _sanitizer_check
    _rm_tmpdir
    exit "$status"
}
trap _run_cleanup EXIT
trap 'exit 130' INT
trap 'echo "$testname: killed (watchdog timeout?)" >&2; exit 124' TERM

# quietly CMD [ARGS...]: run CMD, ignoring its errors (for cleanup_fn).
quietly ()
{
    "$@" >/dev/null 2>&1 || true
}

fail ()
{
    echo "$testname: FAIL: $*" >&2
    exit 1
}

skip ()
{
    echo "$testname: SKIP: $*" >&2
    exit 77
}

# requires CMD [ARGS...]: skip the test (77) unless CMD ARGS succeeds.
requires ()
{
    if ! "$@" >/dev/null 2>&1; then
        skip "requires: $*"
    fi
}

# require_built VAR...: the test is an error (99) unless the file each
# variable names (CBT_FILTER, FREEZE_FILTER, BACKUP_PLUGIN, NBDSNAP,
# FAULTINJECT...) is built.
require_built ()
{
    local v
    for v; do
        [ -f "${!v}" ] || {
            echo "$testname: ERROR: not built: ${!v} (\$$v)" >&2
            exit 99
        }
    done
}

# ------------------------------------------------------------------ tmpdir
# Removed last, after every cleanup_fn and the sanitizer check.
tmpdir=$(mktemp -d "${TMPDIR:-/tmp}/nbdsnap-$testname.XXXXXX")
_rm_tmpdir ()
{
    if [ -n "$KEEP_TMPDIR" ]; then
        echo "$testname: keeping $tmpdir" >&2
    else
        rm -rf "$tmpdir"
    fi
}

# ------------------------------------------------------------ sanitizers
# In a build configured with --enable-sanitizers (ASan + UBSan) or
# --enable-tsan, $NBDSNAP_SANITIZER is asan or tsan (tests/sanitizer.sh,
# made by configure), and:
#  - tests/bin comes first on PATH: its nbdkit preloads the sanitizer
#    runtime into nbdkit (which is not instrumented) and nothing else;
#    nbdsnap and the unit tests are instrumented themselves;
#  - every report of every process goes to $tmpdir/sanitizer.PID, and
#    fails the test whatever its exit status (a report of a server the
#    test killed, of a tool whose exit status it ignored...); an error
#    aborts the process at once;
#  - leaks are reported at exit (ASan's LeakSanitizer) and fail the test
#    if they are leaks of our code, not nbdkit's or a library's
#    (tests/sanitizer-reports.py says how it tells); servers still
#    running at the end of a test get SIGTERM, not SIGKILL, so that
#    they exit and check;
#  - tests that preload something that cannot share the process with a
#    sanitizer runtime (the fault shim, which replaces malloc) or run
#    valgrind are skipped (77) with a message.
NBDSNAP_SANITIZER=
# _sanitizer_check (from _run_cleanup): print every sanitizer report and
# fail the test (sets _run_cleanup's status).
_sanitizer_check ()
{
    local f reports=()
    [ -n "$NBDSNAP_SANITIZER" ] || return 0
    for f in "$tmpdir"/sanitizer.*; do
        [ -s "$f" ] && reports+=("$f")
    done
    [ ${#reports[@]} -gt 0 ] || return 0
    if ! $PYTHON "$testsdir/sanitizer-reports.py" "$top_srcdir" \
         "${reports[@]}" >&2; then
        echo "$testname: FAIL: $NBDSNAP_SANITIZER reported errors (above)" >&2
        status=1
    fi
    return 0
}

if [ -f "$top_builddir/tests/sanitizer.sh" ]; then
    . "$top_builddir/tests/sanitizer.sh"
fi
export NBDSNAP_SANITIZER
if [ -n "$NBDSNAP_SANITIZER" ]; then
    if [ ! -x "$top_builddir/tests/bin/nbdkit" ]; then
        echo "$testname: ERROR: $top_builddir/tests/bin/nbdkit missing" >&2
        exit 99
    fi
    export PATH=$top_builddir/tests/bin:$PATH
    _san_log=$tmpdir/sanitizer
    case $NBDSNAP_SANITIZER in
    asan)
        # An error aborts the process (abort_on_error) whatever exitcode
        # says; exitcode=0 only keeps leaks from changing exit statuses:
        # leaks are judged from the reports (nbdkit has its own).  The
        # slow unwinder follows nbdkit's frames (no frame pointers), so
        # that an allocation our code made through nbdkit is seen as ours.
        export ASAN_OPTIONS="log_path=$_san_log:detect_leaks=1:exitcode=0:abort_on_error=1:allocator_may_return_null=1:fast_unwind_on_malloc=0"
        export LSAN_OPTIONS="suppressions=$top_srcdir/tests/lsan.supp:print_suppressions=0"
        export UBSAN_OPTIONS="log_path=$_san_log:print_stacktrace=1:halt_on_error=1:abort_on_error=1"
        ;;
    tsan)
        export TSAN_OPTIONS="log_path=$_san_log:second_deadlock_stack=1:suppressions=$top_srcdir/tests/tsan.supp:print_suppressions=0"
        ;;
    esac
    # Which tests cannot run here: a line (not a comment) that uses the
    # fault shim or valgrind.
    if grep -Eq '^[^#]*(\bFAULTINJECT\b|\bWRITELOG\b|nbdsnap-faults\.sh|\bvalgrind\b)' "$0"; then
        echo "$testname: SKIP: uses the fault shim or valgrind, which cannot share a process with the $NBDSNAP_SANITIZER runtime (run it in a plain build)" >&2
        exit 77
    fi
fi


# Background processes whose pid is in $tmpdir/*.bgpid are killed on exit
# (servers started by python helpers write theirs there too).
_kill_leftovers ()
{
    local f
    for f in "$tmpdir"/*.bgpid; do
        [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null
    done
    return 0
}
cleanup_fn _kill_leftovers

# ------------------------------------------------------------------ watchdog
# After TEST_TIMEOUT seconds: kills every background process we registered
# ($tmpdir/*.bgpid), then the test shell's own children (by pid: whatever
# it is waiting for), then the test shell, whose EXIT trap cleans up.
_watchdog ()
{
    local sp f p
    trap 'kill $sp 2>/dev/null; exit 0' TERM
    sleep "${TEST_TIMEOUT:-300}" &
    sp=$!
    wait $sp
    echo "$testname: TIMEOUT after ${TEST_TIMEOUT:-300}s" >&2
    for f in "$tmpdir"/*.bgpid; do
        [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null
    done
    for p in $(ps -o pid= --ppid $$); do
        [ "$p" != "$BASHPID" ] && kill -TERM "$p" 2>/dev/null
    done
    kill -TERM $$
}
_watchdog &
_watchdog_pid=$!
cleanup_fn kill "$_watchdog_pid"

# bg_register PID: let the cleanup (and the watchdog) kill PID.
bg_register ()
{
    echo "$1" > "$tmpdir/bg-$1.bgpid"
    cleanup_fn _kill_bg "$1"
}
_kill_bg ()
{
    kill -9 "$1" 2>/dev/null
    rm -f "$tmpdir/bg-$1.bgpid"
}

# Basic requirements of every test.
requires nbdkit --version
requires nbdsh --version
requires $PYTHON -c 'import nbd'
if [ ! -f "$SNAPSHOT_FILTER" ]; then
    echo "$testname: ERROR: snapshot filter not built: $SNAPSHOT_FILTER" >&2
    exit 99
fi

# ------------------------------------------------------------------ servers
# start_server NAME NBDKIT-ARGS...
#   Runs "nbdkit -f -U $tmpdir/NAME.sock -P $tmpdir/NAME.pid NBDKIT-ARGS" in
#   the background (log in $tmpdir/NAME.log) and waits until it serves.
#   Returns 1 (printing the log) if it exits instead.
# start_server_tcp NAME NBDKIT-ARGS...
#   The same on 127.0.0.1 and a free TCP port.
# NAME is a shell word ([a-z0-9_]).  After it: uri NAME [EXPORT], sock NAME,
# server_pid NAME, stop_server NAME, kill9_server NAME, restart_server NAME.
declare -A _srv_pid=() _srv_args=() _srv_port=()

start_server ()
{
    local name=$1; shift
    _start_server "$name" "" "$@"
}

start_server_tcp ()
{
    local name=$1; shift
    local tries
    for tries in 1 2 3 4 5; do
        if _start_server "$name" "$(free_port)" "$@"; then return 0; fi
        # Retry only if the port was taken.
        grep -qi 'address already in use' "$tmpdir/$name.log" || return 1
    done
    return 1
}

free_port ()
{
    $PYTHON -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

_start_server ()
{
    local name=$1 port=$2; shift 2
    local sock=$tmpdir/$name.sock pidf=$tmpdir/$name.pid log=$tmpdir/$name.log
    local pid i
    rm -f "$sock" "$pidf"
    echo "=== $(date +%T) nbdkit $*" >> "$log"
    if [ -n "$port" ]; then
        nbdkit -f -i 127.0.0.1 -p "$port" -P "$pidf" "$@" >> "$log" 2>&1 &
    else
        nbdkit -f -U "$sock" -P "$pidf" "$@" >> "$log" 2>&1 &
    fi
    pid=$!
    _srv_pid[$name]=$pid
    _srv_port[$name]=$port
    _srv_args[$name]=$(printf '%q ' "$@")
    echo "$pid" > "$tmpdir/$name.bgpid"
    for ((i = 0; i < 600; i++)); do
        if [ -s "$pidf" ] && { [ -n "$port" ] || [ -S "$sock" ]; }; then
            # Listening, but the filters' .after_fork (state checks, stray
            # removal) may still be running: wait for the greeting.
            $PYTHON "$testsdir/wait-serving.py" "$pid" "${port:-$sock}" ||
                echo "$testname: nbdkit ($name) sent no greeting within 60s" >&2
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" || true
            rm -f "$tmpdir/$name.bgpid"
            unset "_srv_pid[$name]"
            echo "$testname: nbdkit ($name) exited during startup:" >&2
            sed -n '/^=== /h; /^=== /!H; ${x; p}' "$log" >&2
            return 1
        fi
        sleep 0.05
    done
    echo "$testname: nbdkit ($name) did not start within 30s" >&2
    return 1
}

_stop_all_servers ()
{
    local name i
    if [ -n "$NBDSNAP_SANITIZER" ]; then
        # Let them exit (and report leaks): SIGTERM, 10 s, then SIGKILL.
        for name in "${!_srv_pid[@]}"; do
            kill -TERM "${_srv_pid[$name]}" 2>/dev/null
        done
        for name in "${!_srv_pid[@]}"; do
            for ((i = 0; i < 200; i++)); do
                kill -0 "${_srv_pid[$name]}" 2>/dev/null || break
                sleep 0.05
            done
        done
    fi
    for name in "${!_srv_pid[@]}"; do
        kill -9 "${_srv_pid[$name]}" 2>/dev/null
        wait "${_srv_pid[$name]}" 2>/dev/null
    done
}
cleanup_fn _stop_all_servers

server_pid () { echo "${_srv_pid[$1]}"; }
server_port () { echo "${_srv_port[$1]}"; }
sock () { echo "$tmpdir/$1.sock"; }

# server_alive NAME: true if the server is still running.
server_alive ()
{
    local pid=${_srv_pid[$1]}
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# stop_server NAME: clean shutdown (SIGTERM).  Fails if the server had
# already died (crash) or does not exit within 30 seconds.
stop_server ()
{
    local name=$1 pid=${_srv_pid[$1]} i st=0
    [ -n "$pid" ] || fail "stop_server $name: not running"
    kill -0 "$pid" 2>/dev/null || fail "nbdkit ($name) died unexpectedly"
    kill -TERM "$pid"
    for ((i = 0; i < 600; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -9 "$pid"
        fail "nbdkit ($name) did not exit within 30s of SIGTERM"
    fi
    wait "$pid" || st=$?
    unset "_srv_pid[$name]"
    rm -f "$tmpdir/$name.bgpid"
    [ "$st" -eq 0 ] || fail "nbdkit ($name) exited with status $st on SIGTERM"
}

# term_server NAME: SIGTERM and wait (max 30s), whatever the exit status.
term_server ()
{
    local name=$1 pid=${_srv_pid[$1]} i
    [ -n "$pid" ] || fail "term_server $name: not running"
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 600; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "_srv_pid[$name]"
    rm -f "$tmpdir/$name.bgpid"
}

# kill9_server NAME: simulate a crash.
kill9_server ()
{
    local name=$1 pid=${_srv_pid[$1]}
    [ -n "$pid" ] || fail "kill9_server $name: not running"
    kill -0 "$pid" 2>/dev/null || fail "nbdkit ($name) died unexpectedly"
    kill -9 "$pid"
    wait "$pid" 2>/dev/null || true
    unset "_srv_pid[$name]"
    rm -f "$tmpdir/$name.bgpid"
}

# restart_server NAME [kill9]: stop (or kill -9) and start with the same args.
restart_server ()
{
    local name=$1 how=$2 args=${_srv_args[$1]} port=${_srv_port[$1]}
    if [ "$how" = kill9 ]; then kill9_server "$name"; else stop_server "$name"; fi
    eval "set -- $args"
    if [ -n "$port" ]; then start_server_tcp "$name" "$@"
    else start_server "$name" "$@"; fi
}

# uri NAME [EXPORT]: NBD URI of an export of a started server (export name
# percent-encoded).  NAME may also be a socket path.
uri ()
{
    local name=$1 export=$2 target
    if [ -n "${_srv_port[$name]}" ]; then
        target="nbd://127.0.0.1:${_srv_port[$name]}"
    elif [ -S "$name" ] || [[ "$name" == */* ]]; then
        target="nbd+unix://?socket=$name"
    else
        target="nbd+unix://?socket=$tmpdir/$name.sock"
    fi
    _make_uri "$target" "$export"
}

_make_uri ()
{
    NBDSNAP_TARGET=$1 NBDSNAP_EXPORT=$2 $PYTHON -c '
import os, urllib.parse as up
t = os.environ["NBDSNAP_TARGET"]
e = os.environb[b"NBDSNAP_EXPORT"]
u = up.urlsplit(t)
print(u.scheme + "://" + u.netloc + "/" + up.quote(e, safe=b"") +
      ("?" + u.query if u.query else ""))'
}

# captive FUNC NBDKIT-ARGS...
#   nbdkit captive mode: nbdkit -U - NBDKIT-ARGS --run '... FUNC'.
#   FUNC is a shell function of the test; it runs in a child bash (with -e
#   and pipefail) that has every function of the test and of this file,
#   $tmpdir and the other variables of this file, and nbdkit's $uri and
#   $unixsocket.  The test fails if nbdkit fails to start or FUNC fails.
#   (nbdkit runs --run with /bin/sh, which may drop exported bash
#   functions, so they go through a file.)
captive ()
{
    local func=$1 st=0 env=$tmpdir/captive-env.sh; shift
    {
        declare -f
        declare -p PYTHON testname testsdir tmpdir F SNAPSHOT_FILTER
    } > "$env"
    timeout "${TEST_TIMEOUT:-300}" \
        nbdkit -U - "$@" --run "export uri unixsocket; bash -e -o pipefail -c '. $env; $func'" || st=$?
    [ "$st" -eq 0 ] || fail "captive nbdkit running $func failed (status $st)"
}

# Commands, data, state and file size helpers (split out to keep each
# file small).
. "$testsdir/functions-io.sh"
