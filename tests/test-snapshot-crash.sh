#!/usr/bin/env bash
# Snapshot filter, crash safety: after a successful NBD flush, or a write /
# zero / trim with FUA, the acknowledged data survives kill -9 of nbdkit.
# A snapshot created just before kill -9 survives too, and a kill -9 in the
# middle of heavy unflushed writing still restarts cleanly with all flushed
# data intact.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires nbdcopy --version

size=$((16 * 1024 * 1024))
base=$tmpdir/base.img
mkdata "$base" $size 3
d=$tmpdir/snap
m=$tmpdir/model
cp "$base" "$m"

start_server srv --filter="$F" file "$base" snapshot-dir="$d"

# 1. Writes + flush, kill -9, restart.
mkdata "$tmpdir/w1" 200000 31
mkdata "$tmpdir/w2" 65536 32
nbd_op srv "" "
w1 = open('$tmpdir/w1', 'rb').read(); w2 = open('$tmpdir/w2', 'rb').read()
h.pwrite(w1, 1000)
h.pwrite(w2, $((100 * 65536)))
h.pwrite(w1, $((size - 200000)))
h.flush()"
file_pwrite "$m" 1000 "$tmpdir/w1"
file_pwrite "$m" $((100 * 65536)) "$tmpdir/w2"
file_pwrite "$m" $((size - 200000)) "$tmpdir/w1"
restart_server srv kill9
same_content srv "" "$m"

# 2. FUA write, FUA zero, FUA trim (no flush), kill -9, restart.
nbd_op srv "" "
w2 = open('$tmpdir/w2', 'rb').read()
h.pwrite(w2, 3 * 65536 + 5, nbd.CMD_FLAG_FUA)
h.zero(70000, 7 * 65536 + 1, nbd.CMD_FLAG_FUA)
h.trim(2 * 65536, 10 * 65536, nbd.CMD_FLAG_FUA)"
file_pwrite "$m" $((3 * 65536 + 5)) "$tmpdir/w2"
file_zero "$m" $((7 * 65536 + 1)) 70000
file_zero "$m" $((10 * 65536)) $((2 * 65536))
restart_server srv kill9
same_content srv "" "$m"

# 3. A snapshot created (command acknowledged), then more flushed writes,
#    then kill -9: both the snapshot and the live disk survive.
snap_ok srv @snapshot:create/before >/dev/null
cp "$m" "$tmpdir/model-before"
nbd_op srv "" "
w1 = open('$tmpdir/w1', 'rb').read()
h.pwrite(w1, 50000)
h.flush()"
file_pwrite "$m" 50000 "$tmpdir/w1"
restart_server srv kill9
[ "$(snap_names srv)" = before ] || fail "snapshot 'before' lost by kill -9"
same_content srv @snapshot/before "$tmpdir/model-before"
same_content srv "" "$m"

# 4. kill -9 during heavy unflushed writing to the second half of the disk;
#    the first half (flushed) must be intact and the server must restart.
half=$((size / 2))
mkdata "$tmpdir/w3" $half 33
nbd_op srv "" "
h.pwrite(open('$tmpdir/w3', 'rb').read(), 0)
h.flush()"
file_pwrite "$m" 0 "$tmpdir/w3"
$PYTHON - "$(sock srv)" $half $size > "$tmpdir/storm.out" 2>&1 <<'EOF' &
import sys, os, random
sys.path.insert(0, os.environ["testsdir"])
import snaptest as st, nbd
sock, half, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
hs = [st.connect(sock) for _ in range(4)]
r = random.Random(4)
print("storm: started", flush=True)
try:
    while True:
        for h in hs:
            while h.aio_in_flight() < 16:
                n = r.choice([512, 4096, 65536, 200000])
                off = r.randrange(half, size - n)
                h.aio_pwrite(r.randbytes(n), off)
            h.poll(-1)
except nbd.Error as e:
    print("storm: server went away: %s" % e, flush=True)
EOF
storm=$!
bg_register $storm
for i in $(seq 100); do
    grep -q started "$tmpdir/storm.out" && break
    sleep 0.1
done
sleep 2
restart_server srv kill9
wait $storm || true
dump srv "" "$tmpdir/after"
cmp -n $half "$tmpdir/after" "$m" ||
    fail "flushed data lost after kill -9 during unflushed writes"
same_content srv @snapshot/before "$tmpdir/model-before"

# The restarted disk is fully usable: write, flush, kill -9 again.
dump srv "" "$m"
nbd_op srv "" "
w2 = open('$tmpdir/w2', 'rb').read()
h.pwrite(w2, $((size - 65536 - 3)))
h.flush()"
file_pwrite "$m" $((size - 65536 - 3)) "$tmpdir/w2"
restart_server srv kill9
same_content srv "" "$m"
stop_server srv
