#!/usr/bin/env bash
# Snapshot filter, durability against power loss (which kill -9 cannot
# show): with nbdkit traced by strace, an NBD flush, a FUA write, a FUA
# zero and a snapshot create each make what they acknowledge durable:
# fdatasync/fsync of the active layer's data file, then the layer map
# written to a new file, fsynced, renamed into place, and the directory
# fsynced; for create, the state file likewise.  The data is synced before
# the map that names it is renamed into place.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires strace -V

size=$((8 * 1024 * 1024))
base=$tmpdir/base.img
mkdata "$base" $size 22
d=$tmpdir/snap
start_server srv --filter="$F" file "$base" snapshot-dir="$d"
pid=$(server_pid srv)

log=$tmpdir/strace.out
strace -f -qq -y -o "$log" -p "$pid" \
    -e trace=fsync,fdatasync,sync_file_range,syncfs,sync,rename,renameat,renameat2 \
    2> "$tmpdir/strace.err" &
spid=$!
bg_register $spid
for i in $(seq 100); do
    [ "$(awk '/^TracerPid/ {print $2}' /proc/$pid/status)" = "$spid" ] && break
    kill -0 $spid 2>/dev/null || skip "strace cannot attach here: $(cat "$tmpdir/strace.err")"
    sleep 0.05
done
[ "$(awk '/^TracerPid/ {print $2}' /proc/$pid/status)" = "$spid" ] ||
    skip "strace did not attach"

timeout 120 $PYTHON - "$(sock srv)" "$log" <<'EOF'
import sys, os, re, time
sys.path.insert(0, os.environ["testsdir"])
import snaptest as st, nbd
sock, log = sys.argv[1:3]
SYNC = r"\b(fsync|fdatasync|sync_file_range|syncfs)\(\d+<([^>]*)>"
RENAME = r"\brename(?:at2?)?\((?:\d+<([^>]*)>, )?\"([^\"]*)\", (?:\d+<([^>]*)>, )?\"([^\"]*)\""

def segment(action):
    """Run action; return the traced syscall lines it caused."""
    time.sleep(0.3)
    start = os.path.getsize(log)
    action()
    time.sleep(0.5)
    with open(log) as f:
        f.seek(start)
        return f.read().splitlines()

def check_layer_durable(what, lines):
    syncs = [(i, m.group(2)) for i, l in enumerate(lines) for m in [re.search(SYNC, l)] if m]
    renames = [(i, m.group(4)) for i, l in enumerate(lines) for m in [re.search(RENAME, l)] if m]
    data = [i for i, p in syncs if re.search(r"/layer-\d+\.data$", p)]
    maps = [i for i, p in syncs if re.search(r"/layer-\d+\.map", p)]
    maprn = [i for i, n in renames if re.fullmatch(r"(.*/)?layer-\d+\.map", n)]
    dirs = [i for i, p in syncs if os.path.isdir(p)]
    print("%s:\n    %s" % (what, "\n    ".join(lines) or "(nothing)"))
    assert data, "%s: no fdatasync/fsync of the layer data file" % what
    assert maps, "%s: the layer map is not fsynced" % what
    if maprn:
        assert min(data) < min(maprn), \
            "%s: the map was renamed into place before the data was synced" % what
        assert any(i > min(maprn) for i in dirs), \
            "%s: the directory is not fsynced after renaming the map" % what

h = st.connect(sock)
B = 65536
segment(lambda: h.pwrite(b"a" * 100000, 0))      # unflushed: no requirement
check_layer_durable("flush", segment(lambda: h.flush()))
check_layer_durable("FUA write", segment(lambda: h.pwrite(b"b" * 1000, 40 * B, nbd.CMD_FLAG_FUA)))
check_layer_durable("FUA zero", segment(lambda: h.zero(2 * B, 60 * B, nbd.CMD_FLAG_FUA)))
check_layer_durable("FUA trim", segment(lambda: h.trim(2 * B, 80 * B, nbd.CMD_FLAG_FUA)))
segment(lambda: h.pwrite(b"c" * 1000, 90 * B))   # unflushed, made durable by create

lines = segment(lambda: st.command(sock, "@snapshot:create/s1"))
check_layer_durable("create (the frozen layer)", lines)
syncs = [(i, m.group(2)) for i, l in enumerate(lines) for m in [re.search(SYNC, l)] if m]
renames = [(i, m.group(4)) for i, l in enumerate(lines) for m in [re.search(RENAME, l)] if m]
st_rn = [i for i, n in renames if re.fullmatch(r"(.*/)?state", n)]
assert st_rn, "create: the state file was not replaced by rename"
assert any(i < st_rn[-1] and "state" in p for i, p in syncs), \
    "create: the new state file is not fsynced before the rename"
assert any(i > st_rn[-1] and os.path.isdir(p) for i, p in syncs), \
    "create: the directory is not fsynced after renaming the state"
st.close(h)
print("fsync: OK")
EOF
kill $spid 2>/dev/null || true
stop_server srv
