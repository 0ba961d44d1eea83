#!/usr/bin/env bash
# freeze filter, scratch exhaustion (freeze-max-size=64K, 4K blocks):
# after @freeze:begin/B1, the first 16 blocks overwritten fit (64K of
# scratch, the point stays good and its view exact); the 17th aborts the
# point.  Then: every live write succeeds and reads back, @freeze:list
# shows the point aborted with an error, a view opened before the abort
# fails its reads (EIO), and a new open of the view fails.  The aborted
# point can be ended, and a new point works.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

require_built FREEZE_FILTER
Z=$FREEZE_FILTER
requires nbdcopy --version

frz_ok ()
{
    local out verb
    out=$(snapcmd "$1" "$2") || fail "command $2: open failed"
    verb=${2#@freeze:}; verb=${verb%%/*}
    json_check "$out" 'j.get("filter") == "freeze"' \
        "j.get('command') == '$verb'" 'j.get("ok") is True'
    printf '%s\n' "$out"
}

size=$((1 << 20))
mkdata "$tmpdir/initial" $size 7
start_server srv --filter="$Z" memory $size freeze-dir="$tmpdir" \
    freeze-max-size=64K freeze-block-size=4K
nbd_op srv "" "h.pwrite(open('$tmpdir/initial', 'rb').read(), 0)"

json_check "$(frz_ok srv @freeze:list)" 'j["max_size"] == 65536' \
    'j["block_size"] == 4096'
frz_ok srv @freeze:begin/B1 >/dev/null

SOCK=$(sock srv) INITIAL=$tmpdir/initial timeout 120 $PYTHON - <<'EOF' || fail "scratch exhaustion scenario (above)"
import os, json, random, sys
import nbd

sock = os.environ["SOCK"]
initial = open(os.environ["INITIAL"], "rb").read()
size = len(initial)
K = 4096

def conn(export):
    h = nbd.NBD()
    h.connect_uri("nbd+unix:///%s?socket=%s" % (export, sock))
    return h

def cmd(export):
    h = conn(export)
    j = json.loads(h.pread(h.get_size(), 0).decode())
    h.shutdown()
    assert j["filter"] == "freeze" and j["ok"] is True, j
    return j

def point():
    ps = cmd("@freeze:list")["points"]
    assert [p["name"] for p in ps] == ["B1"], ps
    return ps[0]

view = conn("@freeze/B1")
live = conn("")
assert view.pread(size, 0) == initial, "view differs from the frozen disk"

rnd = random.Random(3)
model = bytearray(initial)
def write(off, n):
    d = rnd.randbytes(n)
    live.pwrite(d, off)
    model[off:off + n] = d

# 16 distinct blocks, some writes spanning two blocks, overwrites of
# already saved blocks: exactly 64K of scratch.
for b in range(0, 16, 2):
    write(b * 2 * K + 100, K)          # blocks 2b and 2b+1 (unaligned)
for b in range(0, 16, 2):
    write(b * 2 * K, 512)              # again: nothing more to save
p = point()
assert p["aborted"] is False and p["scratch_bytes"] == 16 * K, p
assert view.pread(size, 0) == initial, "view changed before the limit"
v2 = conn("@freeze/B1")
assert v2.pread(size, 0) == initial, "a new view differs before the limit"
v2.shutdown()

# The 17th block: over freeze-max-size.  The live write still succeeds.
write(100 * K, K)
p = point()
assert p["aborted"] is True, p
assert isinstance(p["error"], str) and p["error"], p
print("aborted point:", json.dumps(p))

# More live writes, big and small, all succeed and read back.
write(200 * K, 32 * K)           # 128K
write(5 * K + 7, 3 * K)
live.zero(8 * K, 50 * K)
model[50 * K:58 * K] = bytes(8 * K)
live.flush()
assert live.pread(size, 0) == bytes(model), "live disk does not read back"

# The view opened before the abort fails every read.
for (n, off) in ((K, 0), (K, 200 * K), (size, 0)):
    try:
        view.pread(n, off)
    except nbd.Error as e:
        assert e.errno == "EIO", (e.errno, e.string)
    else:
        sys.exit("reading the aborted view at %d+%d succeeded" % (off, n))
view.shutdown()

# A new open of the view fails.
try:
    conn("@freeze/B1")
except nbd.Error:
    pass
else:
    sys.exit("opening the aborted view succeeded")
p = point()
assert p["aborted"] is True, p
live.shutdown()
open(os.environ["INITIAL"] + ".model", "wb").write(model)
EOF

grep -q "aborted" "$tmpdir/srv.log" || fail "no message about the aborted point in the log"

# The aborted point can be ended; a new point works.
out=$(frz_ok srv @freeze:end/B1)
json_check "$(frz_ok srv @freeze:list)" 'j["points"] == []'
same_content srv "" "$tmpdir/initial.model"
frz_ok srv @freeze:begin/B2 >/dev/null
nbd_op srv "" "h.pwrite(b'x' * 4096, 0)"
same_content srv @freeze/B2 "$tmpdir/initial.model"
frz_ok srv @freeze:end/B2 >/dev/null
stop_server srv
