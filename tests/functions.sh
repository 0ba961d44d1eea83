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

# ---------------------------------------------------------------- commands
# snapcmd TARGET EXPORT
#   TARGET: a server NAME (see start_server), a Unix socket path, or an NBD
#   URI (e.g. $uri in captive mode; its export name is replaced).
#   Opens EXPORT once with nbdsh, prints the content (the command's JSON).
#   Fails if the open fails, or if the content is not exactly one JSON
#   object followed by "\n".
snapcmd ()
{
    local target=$1 export=$2
    case "$target" in
        *://*) ;;
        *) target=$(uri "$target") ;;
    esac
    NBDSNAP_URI=$(_make_uri "$target" "$export") \
    timeout 60 nbdsh -c '
import os, sys, json
h.set_uri_allow_local_file(True)
h.connect_uri(os.environ["NBDSNAP_URI"])
n = h.get_size()
data = h.pread(n, 0) if n else b""
h.shutdown()
text = data.decode("utf-8")
if not text.endswith("\n") or text.count("\n") != 1:
    sys.exit("snapcmd: command result is not one line ending in newline: %r" % text)
if not isinstance(json.loads(text), dict):
    sys.exit("snapcmd: command result is not a JSON object: %r" % text)
sys.stdout.write(text)'
}

# json_check JSON PYEXPR...: every PYEXPR (python, the document is `j`)
# must be true.  Also defines re (module) for regexps.
json_check ()
{
    local json=$1; shift
    printf '%s' "$json" | $PYTHON -c '
import sys, json, re
j = json.load(sys.stdin)
for e in sys.argv[1:]:
    try:
        r = eval(e)
    except Exception as ex:
        r = False; print("exception: %r" % ex, file=sys.stderr)
    if not r:
        sys.exit("json_check failed: %s\n  document: %s" % (e, json.dumps(j)))
' "$@" || fail "JSON assertion failed"
}

# json_get JSON PYEXPR: print the value (strings raw, others as JSON).
json_get ()
{
    printf '%s' "$1" | $PYTHON -c '
import sys, json
j = json.load(sys.stdin)
v = eval(sys.argv[1])
print(v if isinstance(v, str) else json.dumps(v))' "$2"
}

# snap_ok TARGET EXPORT: run a command, require "ok":true, print the JSON.
# EBUSY is retried for up to 5 seconds: a client that just disconnected may
# not be closed yet on the server side (NBD_CMD_DISC has no reply).
snap_ok ()
{
    local out verb i
    for ((i = 0; i < 50; i++)); do
        out=$(snapcmd "$1" "$2") || fail "command $2: open failed"
        [[ "$out" == *'"EBUSY"'* ]] || break
        sleep 0.1
    done
    verb=${2#@snapshot:}; verb=${verb%%/*}
    json_check "$out" 'j.get("filter") == "snapshot"' \
        "j.get('command') == '$verb'" 'j.get("ok") is True'
    printf '%s\n' "$out"
}

# snap_err TARGET EXPORT ERRNO: run a command, require "ok":false with
# errno ERRNO and a non-empty "error" message; print the JSON.
snap_err ()
{
    local out verb
    out=$(snapcmd "$1" "$2") || fail "command $2: open failed (expected ok:false $3)"
    verb=${2#@snapshot:}; verb=${verb%%/*}
    json_check "$out" 'j.get("filter") == "snapshot"' \
        "j.get('command') == '$verb'" 'j.get("ok") is False' \
        "j.get('errno') == '$3'" \
        'isinstance(j.get("error"), str) and len(j["error"]) > 0'
    printf '%s\n' "$out"
}

# open_fails TARGET EXPORT: the NBD open of EXPORT must fail.
open_fails ()
{
    local u
    case "$1" in *://*) u=$(_make_uri "$1" "$2") ;; *) u=$(uri "$1" "$2") ;; esac
    if NBDSNAP_URI=$u timeout 60 nbdsh -c '
import os
h.set_uri_allow_local_file(True)
h.connect_uri(os.environ["NBDSNAP_URI"])' >/dev/null 2>&1; then
        fail "opening export '$2' succeeded, expected it to fail"
    fi
}

# snap_list TARGET: the @snapshot:list JSON (checked ok).
snap_list () { snap_ok "$1" @snapshot:list; }

# snap_names TARGET: the snapshot names, one per line, in list order.
snap_names ()
{
    json_get "$(snap_list "$1")" '"\n".join(s["name"] for s in j["snapshots"])'
}

# wait_merged TARGET: wait (max 60s) until no snapshot is merging.
wait_merged ()
{
    local i out
    for ((i = 0; i < 600; i++)); do
        out=$(snap_list "$1")
        if [ "$(json_get "$out" 'any(s.get("merging") for s in j["snapshots"])')" = false ]; then
            return 0
        fi
        sleep 0.1
    done
    fail "merge did not finish within 60s: $out"
}

# ---------------------------------------------------------------- data
# mkdata FILE SIZE SEED: deterministic pseudo-random bytes.
mkdata ()
{
    $PYTHON -c '
import sys, random
sys.stdout.buffer.write(random.Random(int(sys.argv[2])).randbytes(int(sys.argv[1])))' \
        "$2" "$3" > "$1"
}

# file_pwrite FILE OFFSET DATAFILE: write DATAFILE into FILE at OFFSET.
file_pwrite ()
{
    dd if="$3" of="$1" bs=64K conv=notrunc oflag=seek_bytes seek="$2" status=none
}

# file_zero FILE OFFSET LENGTH: zero LENGTH bytes of FILE at OFFSET.
file_zero ()
{
    head -c "$3" /dev/zero | dd of="$1" bs=64K conv=notrunc oflag=seek_bytes seek="$2" iflag=fullblock status=none
}

# nbd_pwrite TARGET EXPORT OFFSET DATAFILE [fua]: write DATAFILE at OFFSET
# (one NBD write; with "fua", FUA flag); no flush.
nbd_pwrite ()
{
    local u
    case "$1" in *://*) u=$(_make_uri "$1" "$2") ;; *) u=$(uri "$1" "$2") ;; esac
    NBDSNAP_URI=$u A_OFF=$3 A_FILE=$4 A_FUA=${5:-nofua} timeout 60 nbdsh -c '
import os, nbd
e = os.environ
h.set_uri_allow_local_file(True)
h.connect_uri(e["NBDSNAP_URI"])
data = open(e["A_FILE"], "rb").read()
h.pwrite(data, int(e["A_OFF"]), nbd.CMD_FLAG_FUA if e["A_FUA"] == "fua" else 0)
h.shutdown()'
}

# nbd_op TARGET EXPORT PYTHON-CODE: connect (h), run the code, shut down.
nbd_op ()
{
    local u
    case "$1" in *://*) u=$(_make_uri "$1" "$2") ;; *) u=$(uri "$1" "$2") ;; esac
    NBDSNAP_URI=$u timeout 120 nbdsh -c '
import os, nbd
h.set_uri_allow_local_file(True)
h.connect_uri(os.environ["NBDSNAP_URI"])' -c "$3" -c 'h.shutdown()'
}

# dump TARGET EXPORT FILE: copy the whole export to FILE (data only, no
# extents, so that this checks the data path alone).
dump ()
{
    local u
    case "$1" in *://*) u=$(_make_uri "$1" "$2") ;; *) u=$(uri "$1" "$2") ;; esac
    case "$3" in /dev/*|-) ;; *) rm -f "$3" ;; esac
    timeout 120 nbdcopy --no-extents "$u" "$3"
}

# same_content TARGET EXPORT FILE: the export must equal FILE byte for byte.
same_content ()
{
    local d=$tmpdir/same_content.$$.tmp
    dump "$1" "$2" "$d"
    if ! cmp "$d" "$3"; then
        rm -f "$d"
        fail "export '$2' differs from $(basename "$3")"
    fi
    rm -f "$d"
}

# dirsum DIR: content and names of every file in DIR (to prove "unchanged").
dirsum ()
{
    (cd "$1" && find . -print | sort && find . -type f -print0 | sort -z | xargs -0r sha256sum)
}

# same_dir BEFORE-SUM DIR: DIR must still have the checksum BEFORE-SUM.
same_dir ()
{
    local now
    now=$(dirsum "$2")
    if [ "$1" != "$now" ]; then
        diff <(printf '%s\n' "$1") <(printf '%s\n' "$now") >&2 || true
        fail "directory $2 was changed"
    fi
}

# expect_start_fails LOG REGEX NBDKIT-ARGS...: nbdkit with these args must
# refuse to start: exit with status 1 (not a crash, not a hang) without
# ever serving; its messages go to LOG and must match the (grep -E -i)
# REGEX.  A refusal can come late (from .after_fork, once nbdkit listens),
# so this does not stop at the first sign of life: it keeps trying to
# connect until nbdkit exits; a connection that succeeds means nbdkit
# started (failure), and so does still running after 60 seconds.
_esf_n=0
expect_start_fails ()
{
    local log=$1 re=$2 st=0 sock pid i; shift 2
    _esf_n=$((_esf_n + 1))
    sock=$tmpdir/esf-$_esf_n.sock
    rm -f "$sock"
    nbdkit -f -U "$sock" "$@" > "$log" 2>&1 &
    pid=$!
    echo "$pid" > "$tmpdir/esf.bgpid"
    for ((i = 0; i < 600; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        if [ -S "$sock" ] &&
           timeout 30 nbdinfo --size "nbd+unix://?socket=$sock" >/dev/null 2>&1; then
            kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
            rm -f "$tmpdir/esf.bgpid"
            cat "$log" >&2
            fail "nbdkit started although it should have refused: nbdkit $*"
        fi
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
        rm -f "$tmpdir/esf.bgpid"
        cat "$log" >&2
        fail "nbdkit neither served nor exited within 60s: nbdkit $*"
    fi
    wait "$pid" || st=$?
    rm -f "$tmpdir/esf.bgpid"
    if [ "$st" -ne 1 ]; then
        cat "$log" >&2
        fail "nbdkit exited with status $st (expected 1, a refusal): nbdkit $*"
    fi
    if ! grep -Eiq -- "$re" "$log"; then
        cat "$log" >&2
        fail "nbdkit refused to start (good) but its message does not match /$re/: nbdkit $*"
    fi
}

# map TARGET EXPORT: "nbdinfo --map" normalized: adjacent lines of the same
# type merged, columns "OFFSET LENGTH TYPE DESCRIPTION" separated by a space.
map ()
{
    local u
    case "$1" in *://*) u=$(_make_uri "$1" "$2") ;; *) u=$(uri "$1" "$2") ;; esac
    timeout 60 nbdinfo --map "$u" | awk '
        { if (n && $3 == t && $1 == o + l) { l += $2; next }
          if (n) print o, l, t, d
          o = $1; l = $2; t = $3; d = $4; n = 1 }
        END { if (n) print o, l, t, d }'
}

# same_text EXPECTED ACTUAL WHAT: compare two multi-line strings.
same_text ()
{
    if [ "$1" != "$2" ]; then
        echo "--- expected $3" >&2; printf '%s\n' "$1" >&2
        echo "--- actual $3" >&2; printf '%s\n' "$2" >&2
        fail "$3 differs from the expected result"
    fi
}

# fsize_limit_nbdkit: from now on, every nbdkit this test starts runs
# under a file size limit (RLIMIT_FSIZE) of $NBDKIT_FSIZE_KB KiB whenever
# that variable is set.  SIGXFSZ keeps its default action (it kills):
# the snapshot and freeze filters ignore it in .load, so that a write
# past the limit fails with EFBIG.  Simulates a file system whose
# largest file is smaller than the disk (ext4: 16 TiB - 4 KiB).
fsize_limit_nbdkit ()
{
    local real
    real=$(command -v nbdkit)
    mkdir -p "$tmpdir/fsize-bin"
    cat > "$tmpdir/fsize-bin/nbdkit" <<EOS
#!/bin/bash
if [ -n "\$NBDKIT_FSIZE_KB" ]; then
    trap - XFSZ
    ulimit -f "\$NBDKIT_FSIZE_KB" || exit 99
fi
exec $real "\$@"
EOS
    chmod +x "$tmpdir/fsize-bin/nbdkit"
    PATH=$tmpdir/fsize-bin:$PATH
}
