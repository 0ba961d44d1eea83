#!/usr/bin/env bash
# Snapshot filter: a flush that races writes into new leaves of the map
# must still save every leaf that held blocks before it began.  (The map
# writer used to count the leaves, then copy them in order and stop at
# the count: a leaf made meanwhile below the last one took its place,
# and the last leaf, flushed before, was missing from the map on disk:
# lost at the next crash.)  Every other leaf of a 32 GiB thin disk with
# 4K blocks (4096 blocks per leaf) is written and flushed; then one
# connection writes into the leaves between them while another flushes
# in a loop, and after every flush the map on disk must list every
# leaf written before.  At the end: kill -9, restart, the last leaf
# reads back.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

d=$tmpdir/snap
start_server srv --filter="$F" memory 32G snapshot-dir="$d" \
    snapshot-block-size=4096
timeout 120 $PYTHON - "$(sock srv)" "$d" <<'EOF' || fail "a flushed leaf is missing from the map"
import sys, os, glob, struct, threading
sys.path.insert(0, os.environ["testsdir"])
import snaptest as st
sock, d = sys.argv[1:3]
LEAF = 4096 * 4096
NL = 2048

def leaves():
    (m,) = glob.glob(os.path.join(d, "layer-*.map"))
    b = open(m, "rb").read()
    off, got = 80, set()
    while off < len(b):
        raw = struct.unpack_from("<Q", b, off)[0]
        got.add(raw & ~(1 << 63))
        off += 1032 + (8192 if raw >> 63 else 0)
    return got

a = st.connect(sock)
for k in range(0, NL, 2):
    a.pwrite(b"e" * 4096, k * LEAF)
a.flush()
even = set(range(0, NL, 2))
assert even <= leaves(), "setup: the first flush did not save every leaf"

def writer():
    w = st.connect(sock)
    for k in range(NL - 1, 0, -2):
        w.pwrite(b"w" * 4096, k * LEAF)
    w.flush()
    st.close(w)

t = threading.Thread(target=writer)
t.start()
n = 0
while t.is_alive() or n < 3:
    a.flush()
    n += 1
    miss = even - leaves()
    assert not miss, "flush %d: the map on disk lacks leaves %s, written " \
        "and flushed before" % (n, sorted(miss)[:5])
t.join()
st.close(a)
print("flush-race: %d flushes, every leaf in every map" % n)
EOF
restart_server srv kill9
nbd_op srv "" "
d = h.pread(4096, 2046 * 4096 * 4096)
assert d == b'e' * 4096, 'leaf 2046 after kill -9: %r' % d[:8]
d = h.pread(4096, 2047 * 4096 * 4096)
assert d == b'w' * 4096, 'leaf 2047 after kill -9: %r' % d[:8]
" || fail "data lost after kill -9"
echo "flush-race: ok"
