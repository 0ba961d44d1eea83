#!/usr/bin/env bash
# Snapshot filter, revert while the live disk is in use: refused with EBUSY
# (changing nothing) while another client is connected to the live disk;
# views do not count; @snapshot:revert/NAME/force reverts anyway, after which
# the connected client reads the snapshot and can go on writing; once the
# client has gone, a plain revert works.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires nbdcopy --version
requires mkfifo --version

size=$((4 * 1024 * 1024))
base=$tmpdir/base.img
mkdata "$base" $size 12
d=$tmpdir/snap
start_server srv --filter="$F" file "$base" snapshot-dir="$d"

snap_ok srv @snapshot:create/s >/dev/null
cp "$base" "$tmpdir/s"

# A client that stays connected to the live disk and runs the steps we send
# it through a fifo ("write", "check-s", "quit"), answering "done STEP".
mkfifo "$tmpdir/ctl"
cat > "$tmpdir/client.py" <<'EOF'
import sys, os
sys.path.insert(0, os.environ["testsdir"])
import snaptest as st
h = st.connect(sys.argv[1])
s = open(sys.argv[2], "rb").read()
print("connected", flush=True)
for line in sys.stdin:
    step = line.strip()
    if step == "write":
        h.pwrite(b"W" * 100000, 12345)
        h.flush()
    elif step == "check-s":
        assert st.read_all(h) == s, "after revert/force the client does not read s"
    elif step == "write2":
        h.pwrite(b"V" * 70000, 1000000)
        assert h.pread(70000, 1000000) == b"V" * 70000
    elif step == "quit":
        break
    print("done " + step, flush=True)
st.close(h)
print("closed", flush=True)
EOF
$PYTHON "$tmpdir/client.py" "$(sock srv)" "$tmpdir/s" < "$tmpdir/ctl" > "$tmpdir/client.out" 2>&1 &
client=$!
bg_register $client
exec 3> "$tmpdir/ctl"

step ()     # step NAME: have the client run a step and wait for it
{
    local i
    echo "$1" >&3
    for i in $(seq 300); do
        grep -q "^done $1\$" "$tmpdir/client.out" && return 0
        kill -0 $client 2>/dev/null || break
        sleep 0.1
    done
    cat "$tmpdir/client.out" >&2
    fail "client step $1 failed"
}

step write
dump srv "" "$tmpdir/live"

# Refused while the client is connected; nothing changed.
out=$(snap_err srv @snapshot:revert/s EBUSY)
same_content srv "" "$tmpdir/live"
json_check "$(snap_list srv)" 'j["live"]["bytes"] > 0'

# An open view does not count as a client of the live disk (checked below,
# once the client has gone): hold one open now to show it does not block
# /force either.
$PYTHON - "$(sock srv)" > "$tmpdir/view.out" 2>&1 <<'EOF' &
import sys, os, time
sys.path.insert(0, os.environ["testsdir"])
import snaptest as st
h = st.connect(sys.argv[1], "@snapshot/s")
print("open", flush=True)
time.sleep(600)
EOF
view=$!
bg_register $view
for i in $(seq 100); do grep -q open "$tmpdir/view.out" && break; sleep 0.1; done

# /force: reverts with the client still connected; it then reads s.
out=$(snap_ok srv @snapshot:revert/s/force)
json_check "$out" 'j["snapshot"] == "s"' 'j["discarded_bytes"] > 0'
same_content srv "" "$tmpdir/s"
step check-s
step write2
snap_err srv @snapshot:revert/s EBUSY >/dev/null

# The client disconnects: a plain revert works, with the view still open.
echo quit >&3
exec 3>&-
wait $client || { cat "$tmpdir/client.out"; fail "client failed"; }
out=$(snap_ok srv @snapshot:revert/s)
same_content srv "" "$tmpdir/s"
same_content srv @snapshot/s "$tmpdir/s"
kill $view; wait $view || true
stop_server srv
