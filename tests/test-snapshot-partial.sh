#!/usr/bin/env bash
# Snapshot filter, partial blocks (issue 14): a layer holds single
# sectors (block size / 16: 4K of a 64K block) of a block, so the first
# 4K write into a block is one 4K write, with nothing read from below.
#  1. 4K writes into fresh blocks read nothing from the plugin (the log
#     filter below the snapshot filter counts the reads) and take 4K of
#     the layer's data file each, not 64K;
#  2. writes smaller than a sector read only the sector they touch;
#  3. 512-byte pieces of fresh blocks from four connections, all in
#     flight (several writers of one sector at once);
#  4. partial blocks in a chain: s1, s2 and the live disk each hold
#     other sectors of the same blocks; every view, then deletes (merges
#     of partial into partial, into the active layer), a block filled
#     sector by sector, a kill -9 and restart: every image compared with
#     a model, byte for byte, and the maps on disk hold the partial
#     blocks (format 4);
#  5. a directory of format 3 maps (before partial blocks) is read as it
#     is, and the active layer's map is written as format 4 at the next
#     flush.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

size=$((4 * 1024 * 1024))
base=$tmpdir/base.img
mkdata "$base" $size 15
d=$tmpdir/snap
log=$tmpdir/plugin.log
start_server srv --filter="$F" --filter=log file "$base" snapshot-dir="$d" \
    logfile="$log"

run_model () {
    timeout 120 $PYTHON - "$(sock srv)" "$base" "$log" "$d" "$@" <<'PYEOF'
import sys, os, random, json, re, struct
sys.path.insert(0, os.environ["testsdir"])
import snaptest as st, nbd
sock, basefile, logfile, snapdir, phase = sys.argv[1:6]
BS, SEC = 65536, 4096
state = os.path.join(os.path.dirname(logfile), "model.json")
r = random.Random(15 + len(phase))

def load():
    if os.path.exists(state):
        m = json.load(open(state))
        return {k: bytearray.fromhex(v) for k, v in m.items()}
    return {"live": bytearray(open(basefile, "rb").read())}

def save(m):
    json.dump({k: bytes(v).hex() for k, v in m.items()}, open(state, "w"))

def reads():
    # (count) of every plugin read the log filter saw so far
    return [int(x, 16) for x in
            re.findall(r" Read id=\d+ offset=0x[0-9a-f]+ count=(0x[0-9a-f]+)",
                       open(logfile).read())]

def cmd(export):
    h = st.connect(sock, export)
    res = json.loads(h.pread(h.get_size(), 0).decode())
    st.close(h)
    assert res.get("ok"), (export, res)
    return res

def same(export, want, what):
    h = st.connect(sock, export)
    got = st.read_all(h)
    st.close(h)
    if got != bytes(want):
        bad = next(i for i in range(len(want)) if got[i] != want[i])
        sys.exit("partial: %s: %s differs from the model at byte %d "
                 "(block %d, sector %d)" % (phase, what, bad, bad // BS,
                                            bad % BS // SEC))

def write(h, m, off, data):
    h.pwrite(data, off)
    m["live"][off:off + len(data)] = data

def partials(layer_map):
    # number of partial blocks in a format 4 map file (entries from 80:
    # leaf index with bit 63 set if 4096 u16 sector masks follow)
    b = open(layer_map, "rb").read()
    assert b[:8] == b"NBDSNAPM", layer_map
    ver = struct.unpack_from("<I", b, 8)[0]
    assert ver == 4, "%s: map version %d, want 4" % (layer_map, ver)
    off, n = 80, 0
    while off < len(b):
        raw = struct.unpack_from("<Q", b, off)[0]
        words = struct.unpack_from("<128Q", b, off + 8)
        part = sum(bin(w & (w >> 1) & 0x5555555555555555).count("1")
                   for w in words)
        has = raw >> 63
        assert bool(part) == bool(has), "%s: masks flag wrong" % layer_map
        if has:
            masks = struct.unpack_from("<4096H", b, off + 1032)
            assert sum(1 for m in masks if m) == part, layer_map
        n += part
        off += 1032 + (8192 if has else 0)
    return n

m = load()
nblocks = len(m["live"]) // BS
if phase == "fresh":
    h = st.connect(sock)
    before = len(reads())
    blocks = r.sample(range(nblocks), 32)
    for b in blocks:
        write(h, m, b * BS + r.randrange(16) * SEC, r.randbytes(SEC))
    h.flush()
    st.close(h)
    new = reads()[before:]
    assert new == [], "4K writes into fresh blocks read %d times from the " \
        "plugin: %s" % (len(new), new[:4])
    data = os.path.join(snapdir, "layer-1.data")
    used = os.stat(data).st_blocks * 512
    assert used <= 32 * SEC + 64 * 1024, \
        "32 4K writes took %d bytes of the layer file (64K each?)" % used
    same("", m["live"], "live disk")
    assert partials(os.path.join(snapdir, "layer-1.map")) == 32
    print("partial: fresh 4K writes: no plugin read, %d bytes used" % used)
elif phase == "small":
    h = st.connect(sock)
    before = len(reads())
    for _ in range(40):
        b = r.randrange(nblocks)
        off = b * BS + r.randrange(BS - 700)
        write(h, m, off, r.randbytes(r.randrange(1, 700)))
    h.flush()
    st.close(h)
    new = reads()[before:]
    assert new and max(new) <= SEC, \
        "sub-sector writes read %s from the plugin (want sectors)" % new[:6]
    same("", m["live"], "live disk")
    print("partial: %d sub-sector writes, plugin reads of at most %d "
          "bytes" % (40, max(new)))
elif phase == "race":
    conns = [st.connect(sock) for _ in range(4)]
    fresh = [b for b in range(nblocks) if b % 7 == 3][:8]
    pieces = [(b * BS + i * 512) for b in fresh for i in range(BS // 512)]
    r.shuffle(pieces)
    for i, off in enumerate(pieces):
        h = conns[i % 4]
        data = r.randbytes(512)
        h.aio_pwrite(data, off)
        m["live"][off:off + 512] = data
        if h.aio_in_flight() >= 16:
            h.poll(-1)
    for h in conns:
        while h.aio_in_flight() > 0:
            h.poll(-1)
    conns[0].flush()
    for h in conns:
        st.close(h)
    same("", m["live"], "live disk")
    print("partial: %d 512-byte pieces from 4 connections" % len(pieces))
elif phase == "chain":
    h = st.connect(sock)
    blocks = r.sample(range(nblocks), 12)
    for b in blocks:                      # s1: sectors 0-3 (some)
        for s in r.sample(range(0, 6), 3):
            write(h, m, b * BS + s * SEC, r.randbytes(SEC))
    h.flush()
    cmd("@snapshot:create/s1"); m["s1"] = bytearray(m["live"])
    for b in blocks:                      # s2: overlapping sectors
        for s in r.sample(range(3, 10), 3):
            write(h, m, b * BS + s * SEC, r.randbytes(SEC))
        write(h, m, b * BS + 11 * SEC + 100, r.randbytes(300))
    h.flush()
    cmd("@snapshot:create/s2"); m["s2"] = bytearray(m["live"])
    for b in blocks:                      # live: more of them
        for s in r.sample(range(8, 16), 3):
            write(h, m, b * BS + s * SEC, r.randbytes(SEC))
    full = blocks[0]                      # one block filled by sectors
    for s in range(16):
        write(h, m, full * BS + s * SEC, r.randbytes(SEC))
    h.flush()
    st.close(h)
    for name in ("s1", "s2"):
        same("@snapshot/" + name, m[name], "snapshot " + name)
    same("", m["live"], "live disk")
    cmd("@snapshot:delete/s1")
elif phase == "merged1":
    same("@snapshot/s2", m["s2"], "s2 after merging s1 into it")
    same("", m["live"], "live disk after merging s1")
    del m["s1"]
    cmd("@snapshot:delete/s2")
elif phase == "merged2":
    same("", m["live"], "live disk after merging s2 into it")
    del m["s2"]
    h = st.connect(sock)
    for b in r.sample(range(nblocks), 6):
        write(h, m, b * BS + r.randrange(16) * SEC, r.randbytes(SEC))
    h.flush()
    st.close(h)
    maps = [f for f in os.listdir(snapdir) if f.endswith(".map")]
    n = sum(partials(os.path.join(snapdir, f)) for f in maps)
    assert n > 0, "no partial block in the maps on disk"
    print("partial: %d partial blocks in %d maps" % (n, len(maps)))
elif phase == "restarted":
    same("", m["live"], "live disk after kill -9 and restart")
    print("partial: chain, merges, restart: every image as the model")
save(m)
PYEOF
}

run_model fresh || fail "fresh 4K writes"
run_model small || fail "sub-sector writes"
run_model race || fail "concurrent 512-byte pieces"
run_model chain || fail "partial blocks in a chain"
wait_merged srv
run_model merged1 || fail "merge of s1"
wait_merged srv
run_model merged2 || fail "merge of s2"
restart_server srv kill9
run_model restarted || fail "after kill -9"

# 5. Format 3 maps: convert the maps of a stopped server (no partial
# block in them) to format 3, start again, compare, write, check.
d3=$tmpdir/v3
start_server v3 --filter="$F" file "$base" snapshot-dir="$d3"
nbd_op v3 "" "h.pwrite(b'3' * 131072, 65536); h.flush()"
snap_ok v3 @snapshot:create/a >/dev/null
nbd_op v3 "" "h.pwrite(b'4' * 65536, 0); h.zero(5 * 65536, 65536); h.flush()"
dump v3 "" "$tmpdir/v3-live"
dump v3 @snapshot/a "$tmpdir/v3-a"
stop_server v3
for m in "$d3"/layer-*.map; do
    $PYTHON - "$m" <<'EOF' || fail "converting $m to format 3"
import sys, struct, hashlib
f = sys.argv[1]
b = bytearray(open(f, "rb").read())
assert struct.unpack_from("<I", b, 8)[0] == 4
off = 80
while off < len(b):
    assert not struct.unpack_from("<Q", b, off)[0] >> 63, "partial blocks"
    off += 1032
out = bytearray(b)
out[8:12] = struct.pack("<I", 3)
out[48:80] = bytes(32)
out[48:80] = hashlib.sha256(out).digest()
open(f, "wb").write(out)
EOF
done
mapver () { $PYTHON -c 'import sys, struct; print(struct.unpack_from("<I", open(sys.argv[1], "rb").read(), 8)[0])' "$1"; }
active=$(awk '$1 == "layer" && $5 == "active" { print $2 }' "$d3/state")
frozen=$(awk '$1 == "layer" && $5 == "frozen" && $6 == "a" { print $2 }' "$d3/state")
[ "$(mapver "$d3/layer-$active.map")" = 3 ] || fail "the conversion did not happen"
start_server v3 --filter="$F" file "$base" snapshot-dir="$d3"
dump v3 "" "$tmpdir/v3-live2"
dump v3 @snapshot/a "$tmpdir/v3-a2"
cmp "$tmpdir/v3-live" "$tmpdir/v3-live2" || fail "format 3: the live disk changed"
cmp "$tmpdir/v3-a" "$tmpdir/v3-a2" || fail "format 3: snapshot a changed"
nbd_op v3 "" "h.pwrite(b'5' * 4096, 8 * 65536 + 4096); h.flush()"
stop_server v3
echo "format 3: active layer $active, snapshot a layer $frozen"
[ "$(mapver "$d3/layer-$active.map")" = 4 ] || fail "the active map was not rewritten as format 4"
[ "$(mapver "$d3/layer-$frozen.map")" = 3 ] || fail "the snapshot's map was rewritten"
echo "partial: ok"
