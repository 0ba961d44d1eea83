#!/usr/bin/env bash
# freeze filter: an aborted point gives all its scratch space back, even
# with a writer saving into it at that moment (issue 10, item 10).
#
# freeze-max-size is one block.  Writer A saves block 1 (it fits) and
# its scratch write is held back 0.3 s by the fault shim; meanwhile
# writer B's save of block 2 exceeds the limit and aborts the point.
# Truncating the scratch file at that moment would let A's write grow it
# back: after both writes the scratch file must be empty.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

require_built FREEZE_FILTER
require_built FAULTINJECT

fz=$tmpdir/fz
mkdir "$fz"
LD_PRELOAD=$FAULTINJECT FI_CALLS=pwrite FI_PATH="$fz/" FI_DELAY=300 \
    start_server srv --filter="$FREEZE_FILTER" memory 1M \
        freeze-dir="$fz" freeze-block-size=4K freeze-max-size=4K

SOCK=$(sock srv) timeout 120 $PYTHON - <<'PY' || fail "writers (above)"
import os, json, threading, time
import nbd

sock = os.environ["SOCK"]
def conn(export):
    h = nbd.NBD()
    h.connect_uri("nbd+unix:///%s?socket=%s" % (export, sock))
    return h
c = conn("@freeze:begin/P")
assert json.loads(c.pread(c.get_size(), 0))["ok"] is True
c.shutdown()
a, b = conn(""), conn("")
ta = threading.Thread(target=lambda: a.pwrite(b"A" * 4096, 4096))
ta.start()
time.sleep(0.1)
b.pwrite(b"B" * 4096, 8192)
ta.join()
a.shutdown(); b.shutdown()
PY

grep -q "scratch space reached freeze-max-size" "$tmpdir/srv.log" ||
    fail "the point was not aborted by the limit (test did not do what it meant)"
pid=$(server_pid srv)
found=0
for fd in /proc/$pid/fd/*; do
    case "$(readlink "$fd")" in
        "$fz"/*)
            found=1
            size=$(stat -L -c %s "$fd")
            [ "$size" -eq 0 ] ||
                fail "the aborted point's scratch file holds $size bytes"
            ;;
    esac
done
[ "$found" -eq 1 ] || fail "no scratch file found in nbdkit's descriptors"
stop_server srv
