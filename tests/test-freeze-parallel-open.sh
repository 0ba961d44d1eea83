#!/usr/bin/env bash
# freeze filter: many connections opening incremental views at once.
# Each open of @freeze:diff/BASE/NAME opens the cbt change map below in a
# shared context and asks it for its description.  In nbdkit 1.32 a
# string a filter interns there goes to a global list with no lock: with
# nbdkit_strdup_intern in our description callback, clients opening
# views together corrupted the heap (the rare "double free or
# corruption" of issue 10 item 14, an incremental backup reading over 4
# connections; ASan named it in CI).  Here 8 threads open and close
# views as fast as they can for a few seconds, reading each one's
# description and a block: every open must succeed and the server must
# stay up.  The race needs two appends to grow the list at the same
# moment: a plain build did not show it in 3 runs of 10 s with the old
# code; under ASan (CI's second pass, which checks every allocation) the
# stack stress test caught it.  This test is the focused form of that
# workload for both builds.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"

require_built FREEZE_FILTER
Z=$FREEZE_FILTER

start_server srv --filter="$Z" --filter="$C" memory 8M \
    freeze-dir="$tmpdir" cbt-dir="$tmpdir/cbt"
for p in A B; do
    nbd_op srv "" "h.pwrite(b\"$p\" * 4096, 0); h.flush()"
    json_check "$(snapcmd srv "@freeze:begin/$p")" 'j["ok"] is True'
done

cat > "$tmpdir/opens.py" <<'PY'
import sys, threading, time, nbd
sock, secs = sys.argv[1], float(sys.argv[2])
end = time.time() + secs
errs, count = [], [0]
lock = threading.Lock()

def worker():
    try:
        while time.time() < end:
            h = nbd.NBD()
            h.set_export_name("@freeze:diff/A/B")
            h.connect_unix(sock)
            if not h.get_size():
                raise Exception("empty view")
            h.pread(4096, 0)
            h.shutdown()
            with lock:
                count[0] += 1
    except Exception as e:
        errs.append(repr(e))

ts = [threading.Thread(target=worker) for _ in range(8)]
for t in ts: t.start()
for t in ts: t.join()
if errs:
    sys.exit("view opens failed: %s" % errs[:3])
print("%d opens" % count[0])
PY
timeout 120 $PYTHON "$tmpdir/opens.py" "$(sock srv)" "${OPEN_SECONDS:-5}" ||
    fail "parallel opens of incremental views failed"
server_alive srv || fail "nbdkit died under parallel view opens"
for p in A B; do
    json_check "$(snapcmd srv "@freeze:end/$p")" 'j["ok"] is True'
done
stop_server srv
echo "$testname: OK"
