#!/usr/bin/env bash
# Snapshot filter, unaligned requests: writes, zeroes and trims at any byte
# offset and length (inside one block, across block boundaries, first
# write to a block the active layer does not hold yet) match a byte model;
# and several connections writing concurrently to distinct bytes of the
# same blocks (each first write to a block copies the rest of it from
# below) lose none of each other's bytes.  Checked again after a restart.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

size=$((2 * 1024 * 1024))
base=$tmpdir/base.img
mkdata "$base" $size 8
d=$tmpdir/snap
start_server srv --filter="$F" file "$base" snapshot-dir="$d" snapshot-block-size=4K

timeout 240 $PYTHON - "$(sock srv)" "$base" "$tmpdir/model" <<'EOF'
import sys, os, random, threading
sys.path.insert(0, os.environ["testsdir"])
import snaptest as st, nbd

sock, basefile, modelfile = sys.argv[1:4]
model = bytearray(open(basefile, "rb").read())
size, bs = len(model), 4096
r = random.Random(9)

def compare(h, what):
    got = st.read_all(h)
    if got != bytes(model):
        bad = next(i for i in range(size) if got[i] != model[i])
        sys.exit("%s: differs from the model at offset %d (block %d, byte %d "
                 "of it): got %r expected %r" % (what, bad, bad // bs, bad % bs,
                 got[bad:bad+8], bytes(model[bad:bad+8])))

# 1. Sequential unaligned writes / zeroes / trims, with snapshots in
#    between so that blocks come from lower layers again.
h = st.connect(sock)
for i in range(3000):
    n = r.choice([1, 2, 7, 511, 513, 4095, 4097, r.randint(1, 3 * bs)])
    off = r.randrange(0, size - n + 1)
    op = r.random()
    if op < 0.7:
        data = r.randbytes(n)
        h.pwrite(data, off)
        model[off:off + n] = data
    elif op < 0.85:
        h.zero(n, off)
        model[off:off + n] = bytes(n)
    else:
        h.trim(n, off)
        model[off:off + n] = bytes(n)
    if r.random() < 0.05:
        got = h.pread(n, off)
        assert got == bytes(model[off:off + n]), "read back after op %d differs" % i
    if i in (1000, 2000):
        st.close(h)
        j = st.command(sock, "@snapshot:create/u%d" % i)
        assert j["ok"], j
        h = st.connect(sock)
compare(h, "after sequential unaligned requests")
st.close(h)
j = st.command(sock, "@snapshot:create/before-concurrent")
assert j["ok"], j

# 2. Concurrent writers: writer k owns the bytes whose (offset // 100) % 4
#    == k, so every 4K block is shared by all four.  Each writer keeps up to
#    16 requests in flight on its own connection, each request one of its
#    own 100-byte stripes (or part of one), in random order, several rounds.
W, K = 100, 4
final = {}
lock = threading.Lock()
errors = []

def writer(k):
    try:
        rr = random.Random(100 + k)
        hk = st.connect(sock)
        stripes = [s for s in range(size // W) if s % K == k]
        for rnd in range(4):
            rr.shuffle(stripes)
            for s in stripes:
                while hk.aio_in_flight() >= 16:
                    hk.poll(-1)
                a = rr.randrange(0, W // 2)
                b = rr.randrange(W // 2 + 1, W + 1)
                data = rr.randbytes(b - a)
                hk.aio_pwrite(data, s * W + a)
                with lock:
                    final[(s, a, b, rnd)] = data
            while hk.aio_in_flight() > 0:
                hk.poll(-1)
        hk.flush()
        st.close(hk)
    except Exception as e:
        errors.append("writer %d: %r" % (k, e))

ts = [threading.Thread(target=writer, args=(k,)) for k in range(K)]
for t in ts: t.start()
for t in ts: t.join()
assert not errors, errors
# Apply to the model in round order (each stripe is written once per round).
for (s, a, b, rnd) in sorted(final, key=lambda x: x[3]):
    model[s * W + a:s * W + b] = final[(s, a, b, rnd)]

h = st.connect(sock)
compare(h, "after concurrent writers")
st.close(h)
open(modelfile, "wb").write(model)
print("unaligned: OK")
EOF

restart_server srv
same_content srv "" "$tmpdir/model"
stop_server srv
