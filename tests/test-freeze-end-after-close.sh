#!/usr/bin/env bash
# freeze filter: a view the client has closed is not "open" for the
# @freeze:end that follows (issue 10, item 13).
#
# nbdkit closes a client's socket before it calls the filters' .close.  A
# client that disconnects its view (libnbd's shutdown waits for the
# server to close the socket) and at once ends the point must get a
# clean end: the point not aborted and no "aborted" in the server log.
# The fault shim sleeps after every socket close in nbdkit, so the window
# between the socket close and .close is half a second wide: with the
# view released only in .close this fails every time.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

require_built FREEZE_FILTER
require_built FAULTINJECT

LD_PRELOAD=$FAULTINJECT FI_CALLS=close FI_PATH=socket: FI_DELAY=500 \
FI_DELAY_AFTER=1 \
    start_server srv --filter="$FREEZE_FILTER" memory 1M \
        freeze-dir="$tmpdir" freeze-block-size=4K

SOCK=$(sock srv) timeout 120 $PYTHON - <<'PY' || fail "end after a closed view (above)"
import os, json, sys
import nbd

sock = os.environ["SOCK"]
def conn(export):
    h = nbd.NBD()
    h.connect_uri("nbd+unix:///%s?socket=%s" % (export, sock))
    return h
def cmd(export):
    h = conn(export)
    j = json.loads(h.pread(h.get_size(), 0).decode())
    h.shutdown()
    return j

live = conn("")
for rnd in range(3):
    name = "P%d" % rnd
    live.pwrite(bytes([rnd + 1]) * 65536, 0)
    assert cmd("@freeze:begin/" + name)["ok"] is True
    view = conn("@freeze/" + name)
    view.pread(65536, 0)
    view.shutdown()              # waits until the server closed the socket
    j = cmd("@freeze:end/" + name)
    if j.get("ok") is not True or j["point"]["aborted"] is not False:
        sys.exit("@freeze:end/%s after its view was closed: %s" %
                 (name, json.dumps(j)))
live.shutdown()
PY
stop_server srv
if grep -q "aborted" "$tmpdir/srv.log"; then
    grep "aborted" "$tmpdir/srv.log" >&2
    fail "the server log reports an aborted backup although every view was closed"
fi
