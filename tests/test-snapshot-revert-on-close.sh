#!/usr/bin/env bash
# Snapshot filter, snapshot-revert-on-close=NAME: when the last client of
# the live disk disconnects, the live disk reverts to NAME.  Not while
# another live client is still connected; views and commands are not live
# clients; the snapshot cannot be deleted (EBUSY); the revert persists
# across a restart.  NAME need not exist at startup: until it is created,
# a disconnect changes nothing.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires nbdcopy --version

size=$((4 * 1024 * 1024))
base=$tmpdir/base.img
mkdata "$base" $size 13
d=$tmpdir/snap

# NAME need not exist at startup (only its syntax is checked, see
# test-snapshot-badparams.sh); until it exists, a disconnect does nothing.
start_server srv --filter="$F" file "$base" snapshot-dir="$d" \
    snapshot-revert-on-close=golden
nbd_op srv "" "h.pwrite(b'early' * 1000, 4096); h.flush()"
sleep 0.5
cp "$base" "$tmpdir/early"
nbd_op srv "" "h.pwrite(b'late' * 10, 0)"
$PYTHON -c '
import sys
f = open(sys.argv[1], "r+b"); f.seek(4096); f.write(b"early" * 1000)
f.seek(0); f.write(b"late" * 10)' "$tmpdir/early"
same_content srv "" "$tmpdir/early"
json_check "$(snap_list srv)" 'j["snapshots"] == []' 'j["live"]["bytes"] > 0'

# Create golden (the fixture); write more, to be discarded.
snap_ok srv @snapshot:create/golden >/dev/null
cp "$tmpdir/early" "$tmpdir/golden"

# wait_reverted: the live layer is empty on golden (polled with list, which
# is not a live client, since the server closes a connection a moment after
# the client has sent NBD_CMD_DISC).
wait_reverted ()
{
    local i out
    for i in $(seq 100); do
        out=$(snap_list srv)
        [ "$(json_get "$out" 'j["live"]["parent"] == "golden" and j["live"]["bytes"] == 0')" = true ] &&
            return 0
        sleep 0.1
    done
    fail "live disk not reverted to golden after the last client left: $out"
}

# 1. One client writes and disconnects: reverted to golden.
nbd_op srv "" "h.pwrite(b'x' * 100000, 0); h.flush()"
wait_reverted
same_content srv "" "$tmpdir/golden"

# 2. Two clients: A writes and leaves while B stays: not reverted (B
#    still reads A's write); when B leaves: reverted.
cat > "$tmpdir/b.py" <<'EOF'
import sys, os, time
sys.path.insert(0, os.environ["testsdir"])
import snaptest as st
h = st.connect(sys.argv[1])
print("connected", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
assert h.pread(5, 0) == b"AAAAA", "B does not see A's write: reverted too early"
st.close(h)
print("closed", flush=True)
EOF
$PYTHON "$tmpdir/b.py" "$(sock srv)" "$tmpdir/b.go" > "$tmpdir/b.out" 2>&1 &
b=$!
bg_register $b
for i in $(seq 100); do grep -q connected "$tmpdir/b.out" && break; sleep 0.1; done
nbd_op srv "" "h.pwrite(b'A' * 5, 0); h.flush()"
# Views and commands come and go meanwhile: they are not live clients.
dump srv @snapshot/golden "$tmpdir/view"
snap_list srv >/dev/null
sleep 1
json_check "$(snap_list srv)" 'j["live"]["bytes"] > 0'
touch "$tmpdir/b.go"
wait $b || { cat "$tmpdir/b.out"; fail "client B failed"; }
wait_reverted
same_content srv "" "$tmpdir/golden"

# 3. The revert-on-close snapshot cannot be deleted.
snap_err srv @snapshot:delete/golden EBUSY >/dev/null

# 4. A write, a disconnect, a restart: still golden, and still reverting.
nbd_op srv "" "h.pwrite(b'y' * 100, 0); h.flush()"
wait_reverted
restart_server srv
same_content srv "" "$tmpdir/golden"
nbd_op srv "" "h.pwrite(b'z' * 100, 50000); h.flush()"
wait_reverted
same_content srv "" "$tmpdir/golden"
stop_server srv
