#!/usr/bin/env bash
# The snapshot and cbt filters, stacked, under valgrind memcheck: every
# command, view and data path once; any invalid access, use of
# uninitialised memory or definite leak in our code fails the test.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires valgrind --version
[ -f "$CBT_FILTER" ] || fail "cbt filter not built: $CBT_FILTER"
memory=$(nbdkit --dump-config | sed -n 's/^plugindir=//p')/nbdkit-memory-plugin.so
[ -f "$memory" ] || skip "no memory plugin"

cat > "$tmpdir/cmd" <<'SH'
#!/bin/bash
# cmd SOCKET EXPORT: open a command export, print its JSON.
/usr/bin/nbdsh -c "h.connect_uri('nbd+unix:///$2?socket=$1')" \
  -c "print(h.pread(h.get_size(), 0).decode(), end='')"
SH
chmod +x "$tmpdir/cmd"

# Preloading the .so files keeps their symbols after nbdkit dlcloses them,
# so valgrind's reports name our functions.
valgrind -q --trace-children=yes \
  --trace-children-skip='*sh,*python*,*nbdinfo,*nbdsh,*sleep,*cmd,*cat,*grep' \
  --leak-check=full --show-leak-kinds=definite \
  --errors-for-leak-kinds=definite \
  --suppressions="$top_srcdir/tests/valgrind.supp" \
  --log-file="$tmpdir/valgrind.%p.log" \
  env LD_PRELOAD="$SNAPSHOT_FILTER:$CBT_FILTER:$memory" \
  nbdkit -f -U - --filter="$CBT_FILTER" --filter="$SNAPSHOT_FILTER" \
    memory 16M cbt-dir="$tmpdir/cbt" snapshot-dir="$tmpdir/snap" \
    cbt-sync=strict snapshot-block-size=4K \
  --run '
set -e
cmd="'"$tmpdir"'/cmd $unixsocket"
$cmd @cbt:create/B1 | grep -q "\"ok\":true"
nbdsh -u "$uri" -c "h.pwrite(b\"A\"*70000, 1000); h.flush()"
$cmd @snapshot:create/S1 | grep -q "\"ok\":true"
$cmd @cbt:create/B2 | grep -q "\"ok\":true"
nbdsh -u "$uri" -c "h.pwrite(b\"B\"*100, 65536*3, nbd.CMD_FLAG_FUA)" \
      -c "h.zero(65536, 65536*5); h.trim(4096*3, 100000)"
nbdinfo --map "nbd+unix:///@cbt/B1?socket=$unixsocket" >/dev/null
nbdinfo --map "nbd+unix:///@cbt:diff/B1/B2?socket=$unixsocket" >/dev/null
nbdinfo --map "nbd+unix:///@snapshot:diff/S1?socket=$unixsocket" >/dev/null
nbdinfo --map "$uri" >/dev/null
nbdsh -c "h.connect_uri(\"nbd+unix:///@snapshot/S1?socket=$unixsocket\")" \
      -c "assert h.pread(100, 1000) == b\"A\"*100"
nbdinfo --list "$uri" | grep -q "@snapshot/S1"
$cmd @snapshot:list | grep -q "\"ok\":true"
$cmd @cbt:list | grep -q "\"ok\":true"
$cmd @snapshot:revert/S1 | grep -q "\"ok\":true"
$cmd @snapshot:create/S2 | grep -q "\"ok\":true"
$cmd @snapshot:delete/S1 | grep -q "\"ok\":true"
$cmd @snapshot:revert/S2 | grep -q "\"ok\":true"
$cmd @cbt:delete/B2 | grep -q "\"ok\":true"
$cmd @cbt:create/I1/snapshot | grep -q "\"ok\":true"
$cmd @cbt:create/S2/snapshot | grep -q "was not made either"
$cmd @cbt:create/a..b | grep -q EINVAL
' > "$tmpdir/run.log" 2>&1 || { cat "$tmpdir/run.log"; fail "workload failed"; }

bad=0
for f in "$tmpdir"/valgrind.*.log; do
    if [ -s "$f" ]; then
        echo "----- $f"; cat "$f"; bad=1
    fi
done
[ $bad = 0 ] || fail "valgrind reported errors"
echo "$testname: OK"
