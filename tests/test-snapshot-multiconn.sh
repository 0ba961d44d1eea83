#!/usr/bin/env bash
# Snapshot filter, multi-conn: the live disk advertises can_multi_conn (and
# flush, FUA); command exports do not.  What it promises holds: a write
# completed on connection A is read by connection B, and a flush on B makes
# A's writes durable: they survive kill -9.  Also with several writer
# connections and many requests in flight.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires nbdinfo --version
requires nbdcopy --version

size=$((16 * 1024 * 1024))
base=$tmpdir/base.img
mkdata "$base" $size 20
d=$tmpdir/snap
start_server srv --filter="$F" file "$base" snapshot-dir="$d"

nbdinfo --json "$(uri srv)" > "$tmpdir/info.json"
json_check "$(cat "$tmpdir/info.json")" \
    'j["exports"][0]["can_multi_conn"] is True' \
    'j["exports"][0]["can_flush"] is True' \
    'j["exports"][0]["can_fua"] is True' \
    'j["exports"][0]["is_read_only"] is False'
nbd_op srv @snapshot:list 'assert not h.can_multi_conn(), "a command export advertises multi-conn"'

cp "$base" "$tmpdir/model"
timeout 120 $PYTHON - "$(sock srv)" "$tmpdir/model" <<'EOF'
import sys, os, random
sys.path.insert(0, os.environ["testsdir"])
import snaptest as st, nbd
sock, modelfile = sys.argv[1:3]
model = bytearray(open(modelfile, "rb").read())
r = random.Random(21)
conns = [st.connect(sock) for _ in range(4)]
a, b = conns[0], conns[1]

# A write on A is visible on B at once.
a.pwrite(b"A" * 70000, 123456)
model[123456:123456 + 70000] = b"A" * 70000
assert b.pread(70000, 123456) == b"A" * 70000, "B does not read A's completed write"

# Many writes in flight on three connections, each to its own slot (in
# flight requests may be served in any order, so no two overlap); then one
# flush on B.
slot = 102400
slots = list(range(len(model) // slot))
r.shuffle(slots)
for h in conns[:3]:
    for i in range(50):
        n = r.choice([1, 512, 4096, 65536, 100000])
        off = slots.pop() * slot + r.randrange(0, slot - n + 1)
        data = r.randbytes(n)
        h.aio_pwrite(data, off)
        model[off:off + n] = data
for h in conns[:3]:
    while h.aio_in_flight() > 0:
        h.poll(-1)
b.flush()
got = st.read_all(conns[3])
assert got == bytes(model), "connection 4 does not read what the others wrote"
open(modelfile, "wb").write(model)
print("multiconn: writes on A/C flushed through B", flush=True)
EOF

# kill -9 at once (no clean shutdown): everything flushed via B survives.
restart_server srv kill9
same_content srv "" "$tmpdir/model"
stop_server srv
