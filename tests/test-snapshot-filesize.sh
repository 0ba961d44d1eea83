#!/usr/bin/env bash
# Snapshot filter on a file system whose largest file is smaller than the
# disk (ext4 with 4 KiB blocks: 16 TiB - 4 KiB, so a 16 TiB disk's last
# block does not fit).  The limit is simulated with RLIMIT_FSIZE
# (ulimit -f) on nbdkit alone: the layers' data must go into segments
# that fit, so that every byte of the disk is writable, across segment
# boundaries, in snapshots, through a merge and a restart.  A limit
# below one block, or one that would need too many files, is refused at
# start with what to do.  The randomized model test runs on segments
# for 10 s (MODEL_SEED, MODEL_SECONDS as in test-snapshot-model).  On
# ext4 the real 16 TiB case runs too.  (A failed sync of a segment:
# test-snapshot-filesize-faults.sh, apart, as the fault shim keeps a
# test out of the sanitizer builds.)
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires nbdcopy --version
requires nbdinfo --version

fsize_limit_nbdkit

# 1. 8 MiB + 12 KiB (the last block short), 64 KiB blocks, files of at
#    most 2 MiB: the data of a layer in 5 segments of 2 MiB.
export NBDKIT_FSIZE_KB=2048
M=$((1024 * 1024))
size=$((8 * M + 12288))
base=$tmpdir/base.img
mkdata "$base" $size 1
d=$tmpdir/snap
start_server srv --filter="$F" file "$base" snapshot-dir="$d"
cp "$base" "$tmpdir/m"

# An unaligned write across the first segment boundary, the last 4 KiB,
# the last byte, and a zero of whole blocks across another boundary.
mkdata "$tmpdir/w1" 600000 2
nbd_pwrite srv "" $((2 * M - 300000)) "$tmpdir/w1"
file_pwrite "$tmpdir/m" $((2 * M - 300000)) "$tmpdir/w1"
mkdata "$tmpdir/w2" 4096 3
nbd_pwrite srv "" $((size - 4096)) "$tmpdir/w2"
file_pwrite "$tmpdir/m" $((size - 4096)) "$tmpdir/w2"
nbd_op srv "" "
h.pwrite(b'Z', $size - 1)
h.zero(4 * 65536, 4 * $M - 2 * 65536)
h.flush()"
printf Z | file_pwrite "$tmpdir/m" $((size - 1)) /dev/stdin
file_zero "$tmpdir/m" $((4 * M - 2 * 65536)) $((4 * 65536))
same_content srv "" "$tmpdir/m"

# A snapshot, then writes over it everywhere (every segment).
snap_ok srv @snapshot:create/a >/dev/null
cp "$tmpdir/m" "$tmpdir/a"
mkdata "$tmpdir/w3" $((size - 5000)) 4
nbd_pwrite srv "" 2500 "$tmpdir/w3"
file_pwrite "$tmpdir/m" 2500 "$tmpdir/w3"
same_content srv "" "$tmpdir/m"
same_content srv @snapshot/a "$tmpdir/a"

# What is on disk: state version 2 naming the segment size, five data
# files per layer, none past the limit.
grep -qx 'version 2' "$d/state" || fail "state is not version 2: $(cat "$d/state")"
grep -qx "data-segment-size $((2 * M))" "$d/state" ||
    fail "no data-segment-size 2 MiB line: $(cat "$d/state")"
for f in layer-1.data layer-1.data.1 layer-1.data.4 layer-2.data.4; do
    [ -f "$d/$f" ] || fail "$f missing: $(ls "$d")"
done
[ ! -e "$d/layer-1.data.5" ] || fail "a sixth segment: $(ls "$d")"
big=$(find "$d" -name 'layer-*' -size +$((2 * M))c)
[ -z "$big" ] || fail "data files over the limit: $big"

# A restart, a stray segment of a layer never committed, the merge of a
# deleted snapshot into the live disk (the active layer takes the
# snapshot's blocks in every segment), a revert.
: > "$d/layer-9.data.3"
restart_server srv
same_content srv "" "$tmpdir/m"
[ ! -e "$d/layer-9.data.3" ] || fail "stray segment layer-9.data.3 not removed"
same_content srv @snapshot/a "$tmpdir/a"
snap_ok srv @snapshot:create/b >/dev/null
cp "$tmpdir/m" "$tmpdir/b"
nbd_op srv "" "h.zero($size - 4 * $M, 4 * $M)"
file_zero "$tmpdir/m" $((4 * M)) $((size - 4 * M))
snap_ok srv @snapshot:delete/a >/dev/null
wait_merged srv
same_content srv "" "$tmpdir/m"
same_content srv @snapshot/b "$tmpdir/b"
snap_ok srv @snapshot:revert/b >/dev/null
same_content srv "" "$tmpdir/b"
stop_server srv

# 2. Refusals on a new directory, nothing left behind: a limit below one
#    block; a limit that would need more than 1024 files per layer.
NBDKIT_FSIZE_KB=32 expect_start_fails "$tmpdir/r1.log" \
    'cannot hold a file of even one block \(65536 bytes' \
    --filter="$F" memory 1M snapshot-dir="$tmpdir/r1"
NBDKIT_FSIZE_KB=64 expect_start_fails "$tmpdir/r2.log" \
    'cannot hold a file as large as the disk \(1 GiB\).*16384 data files.*XFS' \
    --filter="$F" memory 1G snapshot-dir="$tmpdir/r2"
for r in r1 r2; do
    left=$(ls -A "$tmpdir/$r" | grep -v '^lock$' || true)
    [ -z "$left" ] || fail "a refused start left files in $r: $left"
done

# Each segment is a descriptor: 5 layers of 8 segments under a limit
# (soft and hard) of 30 open files more than the test already has open
# is refused, saying which limit to raise.  (Relative, because what a
# test inherits differs from machine to machine; the setup before the
# layers takes about 8.)
NBDKIT_FSIZE_KB=1024 start_server fds --filter="$F" memory 8M \
    snapshot-dir="$tmpdir/fds"
for n in a b c d; do snap_ok fds @snapshot:create/$n >/dev/null; done
stop_server fds
( ulimit -n $(( $(ls /proc/self/fd | wc -l) + 30 ))
  NBDKIT_FSIZE_KB=1024 expect_start_fails "$tmpdir/fds.log" \
      'Too many open files.*keep 8 data files open each.*ulimit -n' \
      --filter="$F" memory 8M snapshot-dir="$tmpdir/fds" )

# The same limit met at run time: a snapshot create that cannot open the
# new layer's 8 data files fails with the same hint, and loses nothing:
# with the limit raised again the list is as before and create works.
NBDKIT_FSIZE_KB=1024 start_server fds --filter="$F" memory 8M \
    snapshot-dir="$tmpdir/fds"
before=$(json_get "$(snap_list fds)" '[s["name"] for s in j["snapshots"]]')
pid=$(server_pid fds)
nofile=$(prlimit --pid "$pid" --nofile --noheadings --output SOFT)
prlimit --pid "$pid" --nofile=$(( $(ls /proc/"$pid"/fd | wc -l) + 4 )): ||
    fail "prlimit failed"
out=$(snap_err fds @snapshot:create/e EIO)
json_check "$out" \
    're.search(r"Too many open files.*keep 8 data files open each.*ulimit -n", j["error"])'
prlimit --pid "$pid" --nofile="$nofile": || fail "prlimit failed"
after=$(json_get "$(snap_list fds)" '[s["name"] for s in j["snapshots"]]')
[ "$before" = "$after" ] ||
    fail "a failed create changed the list: $before -> $after"
snap_ok fds @snapshot:create/e >/dev/null
stop_server fds

# 3. A version-1 directory (one data file per layer) on a file system
#    that cannot hold the disk: it starts, with a warning, and the bytes
#    below the limit stay writable.
unset NBDKIT_FSIZE_KB
start_server v1 --filter="$F" memory 8M snapshot-dir="$tmpdir/v1"
stop_server v1
grep -qx 'version 1' "$tmpdir/v1/state" || fail "small disk: not version 1"
export NBDKIT_FSIZE_KB=2048
start_server v1 --filter="$F" memory 8M snapshot-dir="$tmpdir/v1"
grep -q 'warning: it keeps one data file per layer.*cannot hold a file of 8388608 bytes' \
    "$tmpdir/v1.log" || fail "no warning for a version-1 directory"
nbd_op v1 "" "h.pwrite(b'x' * 4096, 0)"
# Past the limit: that write fails (EFBIG, ENOSPC to the client), nbdkit
# is not killed by SIGXFSZ, and the rest of the disk still works.
nbd_op v1 "" "import errno
try:
    h.pwrite(b'y' * 4096, 4 << 20)
    raise SystemExit('a write past the file size limit succeeded')
except nbd.Error as e:
    assert e.errnum == errno.ENOSPC, e
h.pwrite(b'z' * 4096, 8192)
assert h.pread(4096, 0) == b'x' * 4096
assert h.pread(4096, 8192) == b'z' * 4096
assert h.pread(4096, 4 << 20) == bytes(4096)" ||
    fail "version-1 directory: a write past the limit"
server_alive v1 || fail "nbdkit died on a write past the file size limit"
stop_server v1
unset NBDKIT_FSIZE_KB

# 4. The randomized model (tests/model-snapshot.py: writes, zeroes,
#    trims, flushes, snapshots, reverts, deletes and their merges,
#    restarts and kill -9) with the data of every layer in 8 segments.
seed=${MODEL_SEED:-$(( (RANDOM << 15) | RANDOM ))}
mkdir "$tmpdir/model"
NBDKIT_FSIZE_KB=1024 timeout 120 $PYTHON "$testsdir/model-snapshot.py" \
    --filter="$F" --workdir="$tmpdir/model" --block-size=65536 \
    --seed=$seed --seconds="${MODEL_SECONDS:-10}" ||
    fail "model test on segments failed: reproduce with MODEL_SEED=$seed"
grep -qx "data-segment-size $((1024 * 1024))" "$tmpdir/model/snap-65536/state" ||
    fail "the model's directory is not in segments of 1 MiB"

# 5. The real case, where the file system is ext4 (its largest file is
#    16 TiB - 4 KiB with 4 KiB blocks): a 16 TiB disk, written at its
#    last byte and across the middle.
if [ "$(stat -f -c %T "$tmpdir")" = ext2/ext3 ]; then
    T=$((16 << 40))
    start_server big --filter="$F" memory 16T snapshot-dir="$tmpdir/big"
    nbd_op big "" "
h.pwrite(b'L' * 65536, $T - 65536)
h.pwrite(b'M' * 8192, $T // 2 - 4096)
h.zero(65536, $T - 131072)
h.flush()
assert h.pread(65536, $T - 65536) == b'L' * 65536
assert h.pread(8192, $T // 2 - 4096) == b'M' * 8192
assert h.pread(65536, $T - 131072) == bytes(65536)"
    grep -qx "data-segment-size $((8 << 40))" "$tmpdir/big/state" ||
        fail "16 TiB on ext4: $(cat "$tmpdir/big/state")"
    restart_server big
    nbd_op big "" "assert h.pread(65536, $T - 65536) == b'L' * 65536"
    stop_server big
else
    echo "$testname: not on ext4: the real 16 TiB case is not run" >&2
fi
