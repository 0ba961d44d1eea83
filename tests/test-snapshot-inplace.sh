#!/usr/bin/env bash
# Snapshot filter, in-place partial writes (issue 14): once the active
# layer holds a block, a write to part of it goes straight into the layer
# file with no lock.  Many 4K writes and zeroes to disjoint pieces of the
# same 64K blocks, from four connections with all requests in flight,
# must all land: on blocks the layer does not hold yet (the first write
# of a block, a read-modify-write under the stripe lock, races with the
# in-place writes of the others), on blocks it holds, and after a
# snapshot made the active layer new again.  The result is compared with
# a model with cmp, then again after kill -9 (everything was flushed).
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

size=$((4 * 1024 * 1024))
base=$tmpdir/base.img
mkdata "$base" $size 14
d=$tmpdir/snap
start_server srv --filter="$F" file "$base" snapshot-dir="$d"

cp "$base" "$tmpdir/model"
timeout 120 $PYTHON - "$(sock srv)" "$tmpdir/model" <<'PYEOF'
import sys, os, random, json
sys.path.insert(0, os.environ["testsdir"])
import snaptest as st, nbd
sock, modelfile = sys.argv[1:3]
model = bytearray(open(modelfile, "rb").read())
r = random.Random(14)
conns = [st.connect(sock) for _ in range(4)]
piece = 4096

def phase(name):
    # Every 4K piece of the disk exactly once, in random order, spread
    # over the four connections, all in flight: no two requests overlap.
    pieces = list(range(len(model) // piece))
    r.shuffle(pieces)
    for i, p in enumerate(pieces):
        h = conns[i % 4]
        off = p * piece
        if r.random() < 0.2:
            h.aio_zero(piece, off)
            model[off:off + piece] = bytes(piece)
        else:
            data = r.randbytes(piece)
            h.aio_pwrite(data, off)
            model[off:off + piece] = data
        if h.aio_in_flight() >= 16:
            h.poll(-1)
    for h in conns:
        while h.aio_in_flight() > 0:
            h.poll(-1)
    conns[0].flush()
    got = st.read_all(conns[1])
    assert got == bytes(model), "%s: the disk is not what was written" % name
    print("inplace: %s ok" % name, flush=True)

phase("first writes of every block")
phase("blocks held by the active layer")
h = st.connect(sock, "@snapshot:create/s1")
res = json.loads(h.pread(h.get_size(), 0).decode())
assert res.get("ok"), res
phase("after a snapshot")
open(modelfile, "wb").write(model)
PYEOF

same_content srv "" "$tmpdir/model"
restart_server srv kill9
same_content srv "" "$tmpdir/model"
stop_server srv
