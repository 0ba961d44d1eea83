#!/usr/bin/env bash
# examples/stacking.md cannot go stale: its commands (the full stack with
# nbdkit's rate, cache and retry filters over the nbd plugin, a remote
# restart under retry, and the orders that do not work) run and print
# exactly what the page shows.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

: "${CBT_FILTER:=$top_builddir/filters/cbt/.libs/nbdkit-cbt-filter.so}"
: "${FREEZE_FILTER:=$top_builddir/filters/freeze/.libs/nbdkit-freeze-filter.so}"
: "${BACKUP_PLUGIN:=$top_builddir/plugins/backup/.libs/nbdkit-backup-plugin.so}"
: "${NBDSNAP:=$top_builddir/tools/nbdsnap}"
export CBT_FILTER FREEZE_FILTER BACKUP_PLUGIN NBDSNAP
fdir=$(pkg-config nbdkit --variable=filterdir)
for f in rate cache retry; do
    [ -e "$fdir/nbdkit-$f-filter.so" ] || skip "nbdkit's $f filter is not installed"
done
cleanup_fn sh -c "cd '$tmpdir' && for p in *.pid; do [ -s \"\$p\" ] && kill \$(cat \"\$p\") 2>/dev/null; done; true"
cd "$tmpdir"
$PYTHON "$testsdir/run-doc.py" "$top_srcdir/examples/stacking.md" ||
    fail "examples/stacking.md does not match what the tools do"
