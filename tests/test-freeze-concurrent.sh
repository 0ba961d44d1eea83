#!/usr/bin/env bash
# freeze filter under concurrent writers: 4 writer threads (own NBD
# connections) hammer the live disk with random writes, zeroes and trims
# while frozen views are copied (nbdcopy over several connections, plus a
# thread of random reads): @freeze/BASE and @freeze/NAME equal the disk at
# their instants byte for byte (instant = writers paused, whole disk read
# right after begin); BASE's image + the data/zero extents of
# @freeze:diff/BASE/NAME reproduces NAME's image; and a begin taken while
# the writers run (not paused) is consistent with the writers' logs.
# See tests/freeze-concurrent.py.  Block sizes differ on purpose
# (freeze 16K, cbt 64K).
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"

require_built FREEZE_FILTER
Z=$FREEZE_FILTER
requires nbdcopy --version

mkdir "$tmpdir/work"
start_server srv --filter="$Z" --filter="$C" memory 32M \
    freeze-dir="$tmpdir" cbt-dir="$tmpdir/cbt" \
    freeze-block-size=16K cbt-granularity=64K
timeout 200 $PYTHON "$testsdir/freeze-concurrent.py" "$(sock srv)" "$tmpdir/work" ||
    fail "concurrent freeze scenario failed (above)"
stop_server srv
