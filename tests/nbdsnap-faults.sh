# Fault sweeps of the nbdsnap tool (sourced by tests/test-nbdsnap-faults-*.sh
# after functions.sh and nbdsnap-functions.sh).
#
#   sweep LABEL CALLS PATH OBJ RUN CHECK RESET
#
# RUN, CHECK and RESET are shell functions of the test.  RESET puts the
# state back to the baseline.  RUN runs the operation (the tool, with the
# shim preloaded through $FI_RUN: "$FI_RUN" "$N" ...).  First RUN goes
# once with the shim counting the calls CALLS (comma list; "malloc" with
# OBJ, the object whose allocations fail) on paths under PATH: K calls,
# and it must succeed.  Then for each fault point n (1..K, or a spread of
# them if K > FAULT_POINTS (default 40) and CHECK_LONG is not 1: every
# call that is not a data write, the first and last few, and a spread of
# the data writes), RESET,
# then RUN with the n-th call failing (EIO; ENOMEM for allocations):
#
#   - if the fault hit (the shim logged FAILED): the tool exits 1..127
#     (never 0, never a signal), says something on stderr and prints
#     nothing on stdout (no "ok" line, no result);
#   - if it did not hit (the run made fewer calls): it exits 0;
#
# With FI_COUNT=0 in the environment every call from the n-th on fails
# (a disk that stays broken: the cleanup after the failure fails too).
#
# then CHECK is called with the exit status in $rc and $hit (1 or 0): it
# checks the repository, the target and the server, and fails the test
# if something is wrong.  Every point tried and the outcomes are counted
# and printed ("LABEL: K calls, T points tried, H hits, ...").

: "${FAULT_POINTS:=40}"
# The calls of a sweep ("io" of the shim but close: closing a file that
# was only read cannot lose anything, and most closes are of those).
IO=pwrite,write,fsync,fdatasync,sync_file_range,rename,open,ftruncate,fallocate,mkdir,unlink
FI_RUN=_fi_run
_fi_run () { LD_PRELOAD=$FAULTINJECT "$@"; }

# The fault points to try out of K (LOG: the counting run): all of them,
# or every call that is not a data write (pwrite, write: the many calls
# of one site) plus the first and last few and an even spread of the
# data writes, FAULT_POINTS in all at least.
_fault_points ()
{
    local k=$1 log=$2 max=$FAULT_POINTS i
    if [ "${CHECK_LONG:-0}" = 1 ] || [ "$k" -le "$max" ]; then
        seq 1 "$k"
        return
    fi
    {
        awk '$2 != "pwrite" && $2 != "write" { print $1 }' "$log"
        seq 1 5
        seq $((k - 4)) "$k"
        for ((i = 0; i < max - 10; i++)); do
            echo $((6 + i * (k - 10) / (max - 10)))
        done
    } | sort -n | uniq
}

sweep ()
{
    local label=$1 calls=$2 path=$3 obj=$4 run=$5 check=$6 reset=$7
    local log=$tmpdir/fi.log k n tried=0 hits=0 t0=$SECONDS errno=EIO
    [ "$calls" = malloc ] && errno=ENOMEM
    $reset
    rm -f "$log"
    export FI_CALLS=$calls FI_PATH=$path FI_OBJ=$obj FI_ERRNO=$errno
    export FI_LOG=$log
    unset FI_NTH
    $run > "$tmpdir/sweep.out" 2> "$tmpdir/sweep.err" || {
        cat "$tmpdir/sweep.out" "$tmpdir/sweep.err" >&2
        fail "$label: the run without a fault failed"
    }
    k=$(wc -l < "$log")
    [ "$k" -gt 0 ] || fail "$label: the shim saw no call (CALLS=$calls PATH=$path)"
    cp "$log" "$tmpdir/fi-count.log"
    for n in $(_fault_points "$k" "$tmpdir/fi-count.log"); do
        $reset
        rm -f "$log"
        rc=0
        FI_NTH=$n $run > "$tmpdir/sweep.out" 2> "$tmpdir/sweep.err" || rc=$?
        tried=$((tried + 1))
        hit=0
        if grep -q ' FAILED$' "$log"; then hit=1; hits=$((hits + 1)); fi
        local what
        what=$(grep ' FAILED$' "$log" | head -1 | cut -d' ' -f2-3 || true)
        if [ "$hit" = 1 ]; then
            if [ "$rc" -eq 0 ] || [ "$rc" -ge 128 ] ||
               [ -s "$tmpdir/sweep.out" ] || [ ! -s "$tmpdir/sweep.err" ]; then
                echo "--- stdout" >&2; cat "$tmpdir/sweep.out" >&2
                echo "--- stderr" >&2; cat "$tmpdir/sweep.err" >&2
                fail "$label: fault $n ($what): exit $rc (a fault must fail with a message and no result)"
            fi
        elif [ "$rc" -ne 0 ]; then
            cat "$tmpdir/sweep.err" >&2
            fail "$label: fault $n did not hit, yet the run failed (exit $rc)"
        fi
        [ -z "$FAULT_VERBOSE" ] || echo "  $n ($what) rc=$rc: $(head -c 300 "$tmpdir/sweep.err")"
        unset FI_NTH
        ( unset FI_CALLS FI_PATH FI_OBJ FI_ERRNO FI_LOG; $check ) ||
            fail "$label: fault $n ($what): the state check failed"
    done
    unset FI_CALLS FI_PATH FI_OBJ FI_ERRNO FI_LOG
    $reset
    echo "$label${FI_COUNT:+ (FI_COUNT=$FI_COUNT)}: $k calls counted, $tried fault points tried, $hits hit (each failed with a message, state checked), $((SECONDS - t0))s"
}
