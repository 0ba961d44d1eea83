#!/bin/bash
# run-jobs.sh [WORKDIR]: CI disk fixtures with the snapshot filter.
#
# A golden image is served behind the snapshot filter with
# snapshot-revert-on-close=golden: every job gets the golden disk, writes
# what it likes, and when it lets go of the disk the filter throws its
# writes away (the golden image itself is never written).  A failed job's
# disk is kept as the snapshot failed-job-N, copied out and inspected
# read-only while the next job runs.  See README.md.
#
# Environment:
#   GOLDEN=FILE        the golden image (default: WORKDIR/golden.img, made
#                      here: 64 MiB of random data)
#   JOBS="1 2 3"       the jobs to run (each runs ./job.sh URI N)
#   FAIL_JOBS="2"      the jobs that fail (read by job.sh)
#   SNAPSHOT_FILTER    the filter: "snapshot" once installed (default:
#                      the build tree's if there is one)
#   NBDSNAP            the nbdsnap tool (default: likewise)
#   NBDKIT             the nbdkit to run (default: nbdkit on PATH, as it
#                      was before this script put /usr/bin first)
# Output: WORKDIR/failed-job-N.img (a failed job's disk) and
# WORKDIR/failed-job-N.map (what it changed); exit 0 if the fixture did
# its part (a failed job is not a failure of the fixture).
set -euo pipefail
NBDKIT=${NBDKIT:-$(command -v nbdkit || echo nbdkit)}
export PATH=/usr/bin:$PATH      # nbdsh needs Debian's python3

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../.." && pwd)
work=$(mkdir -p "${1:-ci-work}" && cd "${1:-ci-work}" && pwd)
if [ -z "${SNAPSHOT_FILTER:-}" ]; then
    SNAPSHOT_FILTER=snapshot
    f=$top/filters/snapshot/.libs/nbdkit-snapshot-filter.so
    [ -e "$f" ] && SNAPSHOT_FILTER=$f
fi
if [ -z "${NBDSNAP:-}" ]; then
    NBDSNAP=nbdsnap
    [ -x "$top/tools/nbdsnap" ] && NBDSNAP=$top/tools/nbdsnap
fi
GOLDEN=${GOLDEN:-$work/golden.img}
export FAIL_JOBS=${FAIL_JOBS-2}
sock=$work/fixture.sock
uri="nbd+unix:///?socket=$sock"

now() { date +%s%N; }
ms()  { echo $(( ($(now) - $1) / 1000000 )); }

server=
holder=
inspect=
cleanup() {
    set +e
    [ -n "$holder" ] && { exec 3>&-; wait "$holder"; }
    [ -n "$inspect" ] && wait "$inspect"
    [ -n "$server" ] && { kill "$server"; wait "$server"; }
}
trap cleanup EXIT

if [ ! -e "$GOLDEN" ]; then
    echo "== making a golden image: $GOLDEN"
    head -c 64M /dev/urandom > "$GOLDEN.tmp"
    mv "$GOLDEN.tmp" "$GOLDEN"
fi

echo "== serving $GOLDEN behind the snapshot filter"
rm -rf "$work/state" "$sock"
echo "\$ nbdkit -U $sock --filter=$SNAPSHOT_FILTER file $GOLDEN" \
     "snapshot-dir=$work/state snapshot-revert-on-close=golden"
"$NBDKIT" -f -U "$sock" -P "$work/fixture.pid" --filter="$SNAPSHOT_FILTER" \
    file "$GOLDEN" snapshot-dir="$work/state" \
    snapshot-revert-on-close=golden 2>"$work/nbdkit.log" &
server=$!
for i in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
"$NBDSNAP" snapshot create "$uri" golden      # what every job starts from

# attach: hold the live disk open for the length of a job, as a VM or an
# nbd-client would (the job's own connections may come and go).
attach() {
    rm -f "$work/attached"
    exec 3> >(ATTACHED=$work/attached exec nbdsh -u "$uri" \
        -c 'open(os.environ["ATTACHED"], "w").close(); sys.stdin.read()')
    holder=$!
    for i in $(seq 200); do [ -e "$work/attached" ] && return; sleep 0.05; done
    echo "run-jobs: could not attach the disk" >&2; exit 1
}
# detach: let go of the disk; the filter reverts it to golden.  Wait for
# the reset (the diff against golden is empty) before the next job may
# attach: a job that attached before the previous one let go would share
# its disk.
detach() {
    local t0 i
    t0=$(now)
    exec 3>&-
    wait "$holder"
    holder=
    for i in $(seq 1000); do
        "$NBDSNAP" snapshot diff "$uri" golden | grep -q '^changed: 0 bytes' &&
            { reset_ms=$(ms "$t0"); return; }
        sleep 0.01
    done
    echo "run-jobs: the disk was not reset to golden" >&2; exit 1
}

declare -a summary
for n in ${JOBS:-1 2 3}; do
    echo "== job $n"
    attach
    if (cd "$here" && ./job.sh "$uri" "$n"); then
        result=passed
    else
        result=failed
        # Keep the disk as the job left it: a snapshot, taken while the
        # job still holds the disk (after detach it is golden again).
        "$NBDSNAP" snapshot create "$uri" "failed-job-$n"
    fi
    detach
    echo "job $n $result; reset to golden in $reset_ms ms"
    summary+=("$(printf 'job %-3s %-7s reset %5s ms' "$n" "$result" "$reset_ms")")
    if [ "$result" = failed ]; then
        # Inspect the kept disk read-only while the next job runs.
        [ -n "$inspect" ] && wait "$inspect"
        (
            v="nbd+unix:///@snapshot/failed-job-$n?socket=$sock"
            "$NBDSNAP" snapshot diff "$uri" golden "failed-job-$n" \
                > "$work/failed-job-$n.map"
            nbdcopy "$v" "$work/failed-job-$n.img"
            echo "-- inspected failed-job-$n while the next job ran:" \
                 "$work/failed-job-$n.img, $(tail -n1 "$work/failed-job-$n.map")"
        ) &
        inspect=$!
    fi
done
[ -n "$inspect" ] && { wait "$inspect"; inspect=; }

echo "== snapshots kept"
"$NBDSNAP" snapshot list "$uri"
echo "== summary"
printf '%s\n' "${summary[@]}"
