#!/usr/bin/env bash
# The freeze filter, the backup plugin and the nbdsnap tool under
# valgrind memcheck (test-filters-valgrind covers the snapshot and cbt
# filters' commands): nbdkit with freeze + cbt + snapshot under valgrind,
# and every nbdsnap run under valgrind too: a full backup, writes, an
# incremental (frozen views, change maps, copy-before-write), verify,
# restore, list; then a second nbdkit, the backup plugin under valgrind,
# serving the incremental point, read whole and compared.  Any invalid
# access, use of uninitialised memory or definite leak in our code, in
# any of these processes, fails the test.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires valgrind --version
require_built CBT_FILTER FREEZE_FILTER BACKUP_PLUGIN NBDSNAP
memory=$(nbdkit --dump-config | sed -n 's/^plugindir=//p')/nbdkit-memory-plugin.so
[ -f "$memory" ] || skip "no memory plugin"

VG=(valgrind -q --leak-check=full --show-leak-kinds=definite
    --errors-for-leak-kinds=definite
    --suppressions="$top_srcdir/tests/valgrind.supp"
    --log-file="$tmpdir/valgrind.%p.log")
# The tool under valgrind, from inside the --run script.
cat > "$tmpdir/vnbdsnap" <<SH
#!/bin/bash
exec ${VG[*]} "$NBDSNAP" "\$@"
SH
chmod +x "$tmpdir/vnbdsnap"
export N="$tmpdir/vnbdsnap" T=$tmpdir

# Preloading the .so files keeps their symbols after nbdkit dlcloses
# them, so valgrind's reports name our functions.
"${VG[@]}" --trace-children=yes \
  --trace-children-skip='*sh,*python*,*nbdinfo,*nbdsh,*sleep,*cat,*grep,*cmp,*vnbdsnap,*valgrind*' \
  env LD_PRELOAD="$FREEZE_FILTER:$CBT_FILTER:$SNAPSHOT_FILTER:$memory" \
  nbdkit -f -U - --filter="$FREEZE_FILTER" --filter="$CBT_FILTER" \
    --filter="$SNAPSHOT_FILTER" memory 8M \
    freeze-dir="$tmpdir" cbt-dir="$tmpdir/cbt" snapshot-dir="$tmpdir/snap" \
  --run '
set -e
nbdsh -u "$uri" -c "h.pwrite(b\"A\" * 300000, 4096); h.flush()"
$N backup "$uri" "$T/repo" --name F1 --full --no-progress --connections 2
nbdsh -u "$uri" -c "h.pwrite(b\"B\" * 70000, 1000000)" \
      -c "h.zero(65536, 2 * 1048576); h.trim(4096, 5 * 1048576); h.flush()"
$N snapshot create "$uri" S1 --checkpoint
nbdsh -u "$uri" -c "h.pwrite(b\"C\" * 5000, 3000000); h.flush()"
$N backup "$uri" "$T/repo" --name I1 --no-progress --connections 2 --compress
nbdsh -u "$uri" -c "open(\"$T/live.img\", \"wb\").write(h.pread(h.get_size(), 0))"
$N verify "$T/repo"
$N list "$T/repo" > /dev/null
$N restore "$T/repo" I1 -o "$T/restored.img" --no-progress
cmp "$T/restored.img" "$T/live.img"
$N checkpoint list "$uri" > /dev/null
$N freeze list "$uri" > /dev/null
' > "$tmpdir/run.log" 2>&1 || { cat "$tmpdir/run.log"; fail "workload failed"; }

# The backup plugin serving I1, read whole.
"${VG[@]}" env LD_PRELOAD="$BACKUP_PLUGIN" \
  nbdkit -f -U - "$BACKUP_PLUGIN" repo="$tmpdir/repo" point=I1 \
  --run 'nbdsh -u "$uri" -c "open(\"'"$tmpdir"'/served.img\", \"wb\").write(h.pread(h.get_size(), 0))"' \
  > "$tmpdir/plugin.log" 2>&1 || { cat "$tmpdir/plugin.log"; fail "serving the point failed"; }
cmp "$tmpdir/served.img" "$tmpdir/live.img" || fail "the served point differs"

bad=0
n=0
for f in "$tmpdir"/valgrind.*.log; do
    n=$((n + 1))
    if [ -s "$f" ]; then
        echo "----- $f"; cat "$f"; bad=1
    fi
done
[ "$n" -ge 8 ] || fail "only $n processes ran under valgrind"
[ $bad = 0 ] || fail "valgrind reported errors"
echo "$testname: $n processes under valgrind, clean"
echo "$testname: OK"
