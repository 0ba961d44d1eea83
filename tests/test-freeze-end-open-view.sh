#!/usr/bin/env bash
# freeze filter: @freeze:end/NAME while a view of NAME is still open.
# A view's bytes are stable while it is open (docs/interface.md, "Views"),
# so after the end either the end was refused (EBUSY, the point stays),
# or the open view keeps reading the frozen bytes, or its reads fail.  An
# open view that goes on reading successfully but returns the bytes
# written after NAME is the failure.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

require_built FREEZE_FILTER
Z=$FREEZE_FILTER

start_server srv --filter="$Z" memory 1M freeze-dir="$tmpdir" freeze-block-size=4K

SOCK=$(sock srv) timeout 120 $PYTHON - <<'EOF' || fail "open view after @freeze:end (above)"
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
    assert j["filter"] == "freeze", j
    return j

live = conn("")
size = live.get_size()
old = b"old data" * (size // 8)
live.pwrite(old, 0)
assert cmd("@freeze:begin/B1")["ok"] is True
view = conn("@freeze/B1")
assert view.pread(size, 0) == old
j = cmd("@freeze:end/B1")
if j["ok"] is False:
    assert j["errno"] == "EBUSY", j
    print("end refused while a view is open:", json.dumps(j))
    sys.exit(0)
live.pwrite(b"NEW DATA" * (size // 8), 0)
try:
    got = view.pread(size, 0)
except nbd.Error as e:
    print("the open view fails after the end:", e)
    sys.exit(0)
if got != old:
    sys.exit("@freeze:end/B1 succeeded while @freeze/B1 was open, and the "
             "open view now reads the live disk's new bytes without error "
             "(first bytes %r)" % bytes(got[:8]))
EOF
stop_server srv
