#!/bin/bash
# nbdsnap scale benchmark: costs against the virtual size of a thin disk
# (not a test: it never fails on a missed target, only on a broken setup).
#
#   bash bench/bench-scale.sh [SIZE...]        (default: 1G 64G 1T 16T)
#
# For each virtual SIZE: nbdkit --filter=snapshot memory SIZE, then
# BENCH_SNAPS rounds of (write BENCH_WRITE_MIB/BENCH_SNAPS MiB in 1 MiB
# pieces spread evenly over the disk; @snapshot:create/sN), then list,
# revert to the middle snapshot, a restart.  Reported:
#   start     seconds from starting nbdkit to the first answered read
#             (fresh dir, and the restart with every snapshot)
#   rss       VmRSS of nbdkit (MiB) after the restart's first read
#   create    median / max ms of @snapshot:create round trips
#   list      ms of @snapshot:list; revert: ms of @snapshot:revert
#   state     du -k of snapshot-dir (MiB), with the data files;
#   meta      the same without the layer data files (the metadata)
# qcow2 rows (same writes through qemu-io, qemu-img snapshot -c/-l/-a,
# du of the image; meta = du minus the data written) where qemu has
# the operation; "-" where not.
#
# Environment: BENCH_SNAPS=100, BENCH_WRITE_MIB=1024, BENCH_TMPDIR=/var/tmp,
# BENCH_QCOW2=1 (0: skip qcow2), SNAPSHOT_FILTER=... (default: this tree).
# Another filter's rows (cbt) may be added below the snapshot rows.
set -euo pipefail

top=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
FILTER=${SNAPSHOT_FILTER:-$top/filters/snapshot/.libs/nbdkit-snapshot-filter.so}
SNAPS=${BENCH_SNAPS:-100}
WMIB=${BENCH_WRITE_MIB:-1024}
BASEDIR=${BENCH_TMPDIR:-/var/tmp}
QCOW2=${BENCH_QCOW2:-1}
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH LC_ALL=C
[ -f "$FILTER" ] || { echo "bench: $FILTER not built" >&2; exit 1; }
[ $# -gt 0 ] || set -- 1G 64G 1T 16T
work=$(mktemp -d "$BASEDIR/bench-scale.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "# bench-scale: snaps=$SNAPS written=${WMIB}MiB (1 MiB pieces spread"
echo "# evenly over the disk), $(nproc) cpus, $(date -u +%F)"
printf '%-10s %-6s %7s %7s %8s %8s %7s %7s %8s %8s\n' \
    what size start rss create max list revert state meta

for size in "$@"; do
    PYTHONPATH="$top/bench" /usr/bin/python3 - "$FILTER" "$size" "$work" "$SNAPS" "$WMIB" <<'PY'
import os, re, sys, time, subprocess, statistics, nbd, json
import benchlib
flt, size, work, snaps, wmib = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
d = os.path.join(work, "snap-" + size); sock = os.path.join(work, "sock")
def start():
    return benchlib.start(["--filter=" + flt, "memory", size,
                           "snapshot-dir=" + d], sock,
                          os.path.join(work, "log"))
def stop(p, h):
    h.shutdown(); p.terminate(); p.wait()
    try: os.unlink(sock)
    except FileNotFoundError: pass
def cmd(c):
    return benchlib.cmd(sock, c)
rss = benchlib.rss
def du(path, meta):
    t = 0
    for f in os.listdir(path):
        if meta and re.search(r"\.data(\.[0-9]+)?$", f): continue
        t += os.stat(os.path.join(path, f)).st_blocks * 512
    return t / 1048576
p, h, t_start = start()
vsize = h.get_size(); M = 1 << 20
pieces = wmib; step = (vsize // pieces) // M * M
buf = b"\x5a" * M; creates = []
for s in range(snaps):
    for i in range(s * pieces // snaps, (s + 1) * pieces // snaps):
        h.pwrite(buf, i * step)
    h.flush()
    creates.append(cmd("@snapshot:create/s%d" % s))
t_list = cmd("@snapshot:list")
stop(p, h)
p, h, t_restart = start()
r = rss(p)
h.shutdown()
t_rev = cmd("@snapshot:revert/s%d" % (snaps // 2))
p.terminate(); p.wait(); os.unlink(sock)
print("%-10s %-6s %7.3f %7.1f %8.1f %8.1f %7.1f %7.1f %8.1f %8.2f" % (
    "snapshot", size, t_restart, r, statistics.median(creates), max(creates),
    t_list, t_rev, du(d, False), du(d, True)))
print("%-10s %-6s %7.3f %7s" % ("  (fresh)", size, t_start, "-"))
PY
    if [ "$QCOW2" = 1 ]; then
        /usr/bin/python3 - "$size" "$work" "$SNAPS" "$WMIB" <<'PY'
import os, sys, time, subprocess, statistics
size, work, snaps, wmib = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
img = os.path.join(work, "q-" + size + ".qcow2")
def run(*a):
    t0 = time.monotonic(); subprocess.run(a, check=True, stdout=subprocess.DEVNULL)
    return (time.monotonic() - t0) * 1000
run("qemu-img", "create", "-q", "-f", "qcow2", img, size)
vsize = int(subprocess.run(["qemu-img", "info", "--output=json", img], capture_output=True, check=True).stdout.decode().split('"virtual-size": ')[1].split(",")[0])
M = 1 << 20; step = (vsize // wmib) // M * M; creates = []
for s in range(snaps):
    cs = []
    for i in range(s * wmib // snaps, (s + 1) * wmib // snaps):
        cs += ["-c", "write -q -P 90 %d 1M" % (i * step)]
    if cs: subprocess.run(["qemu-io", "-f", "qcow2"] + cs + [img], check=True, stdout=subprocess.DEVNULL)
    creates.append(run("qemu-img", "snapshot", "-c", "s%d" % s, img))
t_list = run("qemu-img", "snapshot", "-l", img)
t_rev = run("qemu-img", "snapshot", "-a", "s%d" % (snaps // 2), img)
dk = os.stat(img).st_blocks * 512 / 1048576
print("%-10s %-6s %7s %7s %8.1f %8.1f %7.1f %7.1f %8.1f %8.2f" % (
    "qcow2", size, "-", "-", statistics.median(creates), max(creates), t_list, t_rev, dk, dk - wmib))
os.unlink(img)
PY
    fi
    rm -rf "$work/snap-$size"
done
