#!/usr/bin/env bash
# Snapshot filter, views while the live disk is in use: @snapshot/NAME and
# @snapshot:diff/BASE/NAME read exactly the snapshot's bytes, again and
# again, from several connections, while four other connections write the
# live disk as fast as they can (unaligned writes, zeroes, trims, to the
# blocks the snapshot holds and to others) and new snapshots are created.
# Views are read-only, the size of the disk, listed, and advertise
# multi-conn; nbdcopy (several connections) copies a view exactly meanwhile.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires nbdcopy --version
requires nbdinfo --version

size=$((8 * 1024 * 1024))
base=$tmpdir/base.img
mkdata "$base" $size 23
d=$tmpdir/snap
start_server srv --filter="$F" file "$base" snapshot-dir="$d" snapshot-block-size=4K

mkdata "$tmpdir/w" $((3 * 1024 * 1024)) 24
nbd_pwrite srv "" 1000000 "$tmpdir/w"
snap_ok srv @snapshot:create/base0 >/dev/null
nbd_pwrite srv "" 12345 "$tmpdir/w"
snap_ok srv @snapshot:create/s1 >/dev/null
dump srv @snapshot/s1 "$tmpdir/s1"

nbdinfo --json "$(uri srv @snapshot/s1)" > "$tmpdir/info.json"
json_check "$(cat "$tmpdir/info.json")" \
    'j["exports"][0]["is_read_only"] is True' \
    "j['exports'][0]['export-size'] == $size" \
    'j["exports"][0]["can_multi_conn"] is True'
nbdinfo --list --json "$(uri srv)" > "$tmpdir/list.json"
json_check "$(cat "$tmpdir/list.json")" \
    'sorted(e["export-name"] for e in j["exports"]) == ["", "@snapshot/base0", "@snapshot/s1"]'

timeout 200 $PYTHON - "$(sock srv)" "$tmpdir/s1" <<'EOF' &
import sys, os, random, threading, time
sys.path.insert(0, os.environ["testsdir"])
import snaptest as st, nbd
sock, s1file = sys.argv[1:3]
s1 = open(s1file, "rb").read()
size = len(s1)
stop = threading.Event()
errors = []
counts = {"writes": 0, "view-reads": 0, "diff-reads": 0, "creates": 0}

def writer(k):
    try:
        r = random.Random(k)
        h = st.connect(sock)
        while not stop.is_set():
            while h.aio_in_flight() < 8:
                n = r.randint(1, 200000)
                off = r.randrange(0, size - n)
                op = r.random()
                if op < 0.8:
                    h.aio_pwrite(r.randbytes(n), off)
                elif op < 0.9:
                    h.aio_zero(n, off)
                else:
                    h.aio_trim(n, off)
                counts["writes"] += 1
            h.poll(-1)
        while h.aio_in_flight() > 0:
            h.poll(-1)
        st.close(h)
    except Exception as e:
        errors.append("writer %d: %r" % (k, e))
        stop.set()

def reader(export, key):
    try:
        r = random.Random(hash(export))
        h = st.connect(sock, export)
        assert h.is_read_only(), export
        while not stop.is_set():
            if r.random() < 0.2:
                got, want = st.read_all(h), s1
            else:
                n = r.randint(1, 300000)
                off = r.randrange(0, size - n)
                got, want = h.pread(n, off), s1[off:off + n]
            if got != want:
                raise AssertionError("%s changed while the live disk was written" % export)
            counts[key] += 1
        st.close(h)
    except Exception as e:
        errors.append("reader %s: %r" % (export, e))
        stop.set()

ts = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
ts += [threading.Thread(target=reader, args=("@snapshot/s1", "view-reads")),
       threading.Thread(target=reader, args=("@snapshot/s1", "view-reads")),
       threading.Thread(target=reader, args=("@snapshot:diff/base0/s1", "diff-reads"))]
for t in ts: t.start()
end = time.time() + 8
i = 0
while time.time() < end and not stop.is_set():
    time.sleep(1)
    j = st.command(sock, "@snapshot:create/during%d" % i)
    if not j["ok"]:
        errors.append("create during I/O failed: %r" % j)
        break
    counts["creates"] += 1
    i += 1
stop.set()
for t in ts: t.join()
print("views:", counts)
if errors:
    sys.exit("\n".join(errors))
EOF
load=$!
bg_register $load

# Meanwhile, nbdcopy (multi-conn) copies the view exactly, twice.
sleep 1
for i in 1 2; do
    nbdcopy "$(uri srv @snapshot/s1)" "$tmpdir/copy"
    cmp "$tmpdir/copy" "$tmpdir/s1" || fail "nbdcopy of @snapshot/s1 during writes differs"
done
wait $load || fail "views changed, or I/O failed, under load"

same_content srv @snapshot/s1 "$tmpdir/s1"
restart_server srv
same_content srv @snapshot/s1 "$tmpdir/s1"
stop_server srv
