#!/usr/bin/env bash
# docs/concepts.md cannot go stale: every command of its walk-through of
# the seed's T1..T4 example runs, and prints exactly what the guide shows.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

export CBT_FILTER FREEZE_FILTER BACKUP_PLUGIN NBDSNAP
cleanup_fn sh -c "[ -s '$tmpdir/disk.pid' ] && kill \$(cat '$tmpdir/disk.pid') 2>/dev/null; true"
cd "$tmpdir"
$PYTHON "$testsdir/run-doc.py" "$top_srcdir/docs/concepts.md" ||
    fail "docs/concepts.md does not match what the tools do"
