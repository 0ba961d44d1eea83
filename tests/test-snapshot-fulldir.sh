#!/usr/bin/env bash
# Snapshot filter, full snapshot directory (a 2M tmpfs): writes beyond the
# capacity fail with ENOSPC to the client (no crash, no silent loss); data
# flushed before reads back intact while full, and after growing the file
# system and restarting (both after a clean stop and after kill -9).  A
# snapshot create on the full directory either fails cleanly (ENOSPC/EIO)
# or, if it succeeded, its snapshot is intact.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires nbdcopy --version

mnt=$tmpdir/mnt
mkdir "$mnt"
mount -t tmpfs -o size=2M tmpfs "$mnt" 2>/dev/null ||
    skip "cannot mount a tmpfs (mount -t tmpfs needs privileges)"
cleanup_fn quietly umount "$mnt"

size=$((16 * 1024 * 1024))
base=$tmpdir/base.img
mkdata "$base" $size 18
d=$mnt/snap
start_server srv --filter="$F" file "$base" snapshot-dir="$d" snapshot-block-size=64K

# 512K flushed, then write until the directory is full.
mkdata "$tmpdir/first" $((512 * 1024)) 19
cp "$base" "$tmpdir/model"
file_pwrite "$tmpdir/model" 0 "$tmpdir/first"
timeout 120 $PYTHON - "$(sock srv)" "$tmpdir/first" <<'EOF'
import sys, os, errno
sys.path.insert(0, os.environ["testsdir"])
import snaptest as st, nbd
h = st.connect(sys.argv[1])
first = open(sys.argv[2], "rb").read()
h.pwrite(first, 0)
h.flush()
chunk = 256 * 1024
err = None
for i in range(4, 60):                       # 1M .. 15M
    try:
        h.pwrite(bytes([i]) * chunk, i * chunk)
    except nbd.Error as e:
        err = e
        break
if err is None:
    try:
        h.flush()
    except nbd.Error as e:
        err = e
assert err is not None, "wrote 14M to a 2M directory without any error"
print("first error: %s (errno %s)" % (err, err.errno))
assert err.errnum == errno.ENOSPC, "expected ENOSPC, got %s" % err
# The server is still there; flushed data is intact.
assert h.pread(len(first), 0) == first, "flushed data changed after ENOSPC"
st.close(h)
EOF

# A snapshot on the full directory: a clean failure, or a good snapshot.
out=$(snapcmd srv @snapshot:create/full)
echo "create on a full directory: $out"
created=$(json_get "$out" 'j["ok"]')
if [ "$created" = false ]; then
    json_check "$out" 'j["errno"] in ("ENOSPC", "EIO")'
fi
server_alive srv || fail "nbdkit died on a full directory"
dump srv "" "$tmpdir/now"
cmp -n $((512 * 1024)) "$tmpdir/now" "$tmpdir/model" ||
    fail "flushed data does not read back while the directory is full"

# Clean stop while full (it may not be able to save more), grow, restart.
term_server srv
mount -o remount,size=64M "$mnt"
start_server srv --filter="$F" file "$base" snapshot-dir="$d"
dump srv "" "$tmpdir/after"
cmp -n $((512 * 1024)) "$tmpdir/after" "$tmpdir/model" ||
    fail "flushed data lost after filling the directory and restarting"
if [ "$created" = true ]; then
    json_check "$(snap_list srv)" '"full" in [s["name"] for s in j["snapshots"]]'
fi

# Fill it again, kill -9 while full, grow, restart.
mount -o remount,size=3M "$mnt"
nbd_op srv "" "
try:
    for i in range(4, 60):
        h.pwrite(bytes([i]) * 262144, i * 262144)
    h.flush()
except nbd.Error as e:
    print('full again:', e)
" || true
kill9_server srv
mount -o remount,size=64M "$mnt"
start_server srv --filter="$F" file "$base" snapshot-dir="$d"
dump srv "" "$tmpdir/after"
cmp -n $((512 * 1024)) "$tmpdir/after" "$tmpdir/model" ||
    fail "flushed data lost after kill -9 on a full directory"
# And the disk works again.
nbd_op srv "" "h.pwrite(b'ok' * 1000, 0); h.flush()"
stop_server srv
