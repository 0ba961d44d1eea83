#!/usr/bin/env bash
# Snapshot filter, scale (issue 14): on a thin 16 TiB disk (the memory
# plugin) with snapshots, the filter's memory and its state on disk follow
# the data written, not the size of the disk: nbdkit stays below 200 MB
# resident (the dense maps of map format 1 took ~600 MB at start, 64 MiB
# more per snapshot) and snapshot-dir below 8 MiB after writing 1 MiB in
# 16 places spread over the disk, with 5 snapshots, a revert and a
# restart.  Bytes written, snapshots and the revert read back right.
# A directory with a map in the old dense format 1 is refused, unchanged,
# with the message docs/snapshot-format.md ("Versions") documents.
# Not a timed test: the bounds are on memory and files.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires nbdcopy --version

d=$tmpdir/snap
T=$((16 << 40))
step=$((T / 16))

rss_mb () { awk '/^VmRSS:/ { print int($2 / 1024) }' "/proc/$(server_pid "$1")/status"; }
dir_kb () { du -sk "$1" | cut -f1; }

start_server srv memory 16T --filter="$F" snapshot-dir="$d"
# Round r writes 64 KiB of byte r+1 at 16 places, then snapshot s<r>.
for r in 0 1 2 3 4; do
    nbd_op srv "" "
for i in range(16):
    h.pwrite(bytes([$r + 1]) * 65536, i * $step + $r * 65536)
h.flush()"
    snap_ok srv "@snapshot:create/s$r" >/dev/null
done
snap_ok srv @snapshot:list >/dev/null
m=$(rss_mb srv); k=$(dir_kb "$d")
echo "after writes: rss ${m} MB, snapshot-dir ${k} KiB"
[ "$m" -lt 200 ] || fail "nbdkit uses $m MB resident on a thin 16T disk (want < 200)"
[ "$k" -lt 8192 ] || fail "snapshot-dir is $k KiB after writing 5 MiB (want < 8 MiB)"

# check EXPORT ROUNDS: blocks of rounds < ROUNDS hold their byte, the
# rest of each place (and the places' neighbours) read as zeroes.
check ()
{
    nbd_op srv "$1" "
for i in range(16):
    for r in range(5):
        want = bytes([r + 1] if r < $2 else [0]) * 65536
        assert h.pread(65536, i * $step + r * 65536) == want, (i, r)
    assert h.pread(4096, i * $step + 5 * 65536) == bytes(4096)
assert h.pread(4096, $T - 4096) == bytes(4096)"
}
check "" 5
check @snapshot/s1 2
stop_server srv

# The restart reads only the maps' leaves; revert builds the owner map
# from them.
start_server srv memory 16T --filter="$F" snapshot-dir="$d"
check "" 5
m=$(rss_mb srv)
echo "after restart: rss ${m} MB"
[ "$m" -lt 200 ] || fail "nbdkit uses $m MB resident after a restart (want < 200)"
snap_ok srv @snapshot:revert/s2 >/dev/null
check "" 3
check @snapshot/s4 5
stop_server srv
k=$(dir_kb "$d")
echo "at the end: snapshot-dir ${k} KiB: $(cd "$d" && ls | tr '\n' ' ')"
[ "$k" -lt 8192 ] || fail "snapshot-dir is $k KiB (want < 8 MiB)"
for f in "$d"/layer-*.map; do
    [ "$(stat -c %s "$f")" -lt 65536 ] || fail "$(basename "$f") is $(stat -c %s "$f") bytes"
done

# An old (format 1, dense) map: the same states, as nbdsnap wrote them
# before; its checksum is valid.  The start is refused, the directory
# unchanged.  (On a small disk: dirsum reads the sparse data files.)
d=$tmpdir/old
start_server old memory 64M --filter="$F" snapshot-dir="$d"
nbd_op old "" "h.pwrite(b'x' * 200000, 4096); h.pwrite(b'y' * 4096, (64 << 20) - 4096)"
snap_ok old @snapshot:create/a >/dev/null
stop_server old
m1=$(cd "$d" && ls layer-*.map | head -1)
$PYTHON - "$d/$m1" <<'PY'
import sys, struct, hashlib
f = sys.argv[1]
b = open(f, "rb").read()
nblocks = struct.unpack_from("<Q", b, 24)[0]
nwords = (nblocks + 31) // 32
words = bytearray(8 * nwords)
for off in range(80, len(b), 1032):  # no partial block: no masks
    leaf = struct.unpack_from("<Q", b, off)[0]
    words[leaf * 1024:(leaf + 1) * 1024] = b[off + 8:off + 1032]
h = bytearray(b[:80])
h[8:12] = struct.pack("<I", 1)
h[40:48] = struct.pack("<Q", len(words))
h[48:80] = bytes(32)
out = h + words
out[48:80] = hashlib.sha256(out).digest()
open(f, "wb").write(out)
PY
sum=$(dirsum "$d")
expect_start_fails "$tmpdir/old.out" \
    "$m1: old layer map format 1 .*reads formats 3 and 4 only.*Copy out the snapshots" \
    --filter="$F" memory 64M snapshot-dir="$d"
same_dir "$sum" "$d"
grep -Ei -m1 'old layer map' "$tmpdir/old.out"
echo "test-snapshot-scale: OK"
