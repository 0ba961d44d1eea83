#!/bin/bash
# nbdsnap cbt filter: costs against virtual size (issue 14, target 3).
# A benchmark, not a test: it never fails on a missed target.
#
#   bash bench/bench-cbt-scale.sh [SIZE...]      (default: 1G 64G 1T 16T)
#
# For each virtual size, nbdkit's memory plugin (thin: it keeps only
# what is written) under the cbt filter alone, default granularity
# (64K), cbt-sync=flush, cbt-dir on BENCH_TMPDIR (a real file system):
#   start0     start-up with an empty cbt-dir: nbdkit launched until the
#              first read of the disk is answered (bench/benchlib.py)
#   rss0       nbdkit's VmRSS then (kB)
#   create     @cbt:create/Ci, NCKPT times; between two, WRITE_MB MiB
#              are written (write-zeroes requests, which the cbt filter
#              marks like writes and the memory plugin does not store, so
#              that RSS is the filter's): NCKPT regions of WRITE_MB/NCKPT
#              MiB spread evenly over the disk; median and max (ms)
#   list       @cbt:list with NCKPT checkpoints (ms, best of 5)
#   map        the change map @cbt/C1 (every checkpoint's bitmap) read
#              with NBD block status over the whole disk, requests of
#              4 GiB - 64 KiB (ms, best of 3), and the one-interval map
#              @cbt:diff/C5/C6
#   (every time includes an NBD connection: about 1 ms here when the
#   machine is idle)
#   restart    stop (clean) and start with NCKPT checkpoints (ms), RSS
#   delete     @cbt:delete of a middle checkpoint (a merge) (ms)
#   du         du -sk of cbt-dir with NCKPT checkpoints
#   qcow2      qemu-img: a qcow2 of the same size, NCKPT persistent
#              bitmaps (qemu-img bitmap --add, the older ones disabled as
#              libvirt does), the same regions written with qemu-io
#              (write -z); qcow2_bm_B: what "qemu-img measure" says
#              its bitmaps need (it assumes them dense); qcow2_du_kB: du
#              of the qcow2; qcow2bm_kB: that du minus the du of the same
#              image with the same writes and no bitmap, i.e. what qcow2
#              really keeps for its bitmaps, to compare with cbt_du_kB.
#
# Environment:
#   CBT_FILTER=...        filter .so (default: the one built in this tree)
#   NCKPT=30              checkpoints
#   WRITE_MB=1024         MiB written in all
#   BENCH_TMPDIR=/var/tmp
#   BENCH_QCOW2=1         0: skip the qemu-img comparison
set -euo pipefail

top=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
FILTER=${CBT_FILTER:-$top/filters/cbt/.libs/nbdkit-cbt-filter.so}
NCKPT=${NCKPT:-30}
WRITE_MB=${WRITE_MB:-1024}
QCOW2=${BENCH_QCOW2:-1}
PY=${PYTHON:-/usr/bin/python3}
[ -f "$FILTER" ] || { echo "no filter: $FILTER" >&2; exit 1; }
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1G 64G 1T 16T)

work=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/bench-cbt-scale.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "# bench-cbt-scale: $(date -u +%F) $(uname -m) $(nproc) cores;" \
     "filter $FILTER; $NCKPT checkpoints, $WRITE_MB MiB written"
printf '%-5s %8s %8s %9s %8s %8s %9s %9s %9s %8s %8s %10s %10s %10s %10s\n' \
       size start0 rss0kB create_med create_max list map_all map_one \
       restart rss_kB delete cbt_du_kB qcow2_bm_B qcow2_du_kB qcow2bm_kB

for size in "${sizes[@]}"; do
    rm -rf "$work/cbt" "$work/sock"
    PYTHONPATH="$top/bench" $PY - "$FILTER" "$size" "$work" "$NCKPT" "$WRITE_MB" <<'EOF'
import json, os, subprocess, sys, time, statistics
import nbd
import benchlib

flt, size, work, nckpt, write_mb = sys.argv[1:6]
nckpt = int(nckpt); write_mb = int(write_mb)
sock = os.path.join(work, "sock")
cbtdir = os.path.join(work, "cbt")

def start():
    if os.path.exists(sock):
        os.unlink(sock)
    p, h, t = benchlib.start(["--filter=" + flt, "memory", size,
                              "cbt-dir=" + cbtdir], sock,
                             os.path.join(work, "log"))
    h.shutdown()
    return p, t

def stop(p):
    p.terminate(); p.wait()

def rss(p):
    return int(benchlib.rss(p) * 1024)          # kB

def cmd(name):
    return benchlib.cmd(sock, name) / 1000, None

def mapread(name):
    t0 = time.monotonic()
    h = nbd.NBD(); h.set_export_name(name)
    h.add_meta_context("base:allocation"); h.connect_unix(sock)
    n = h.get_size(); off = 0; changed = 0
    while off < n:
        ln = min(n - off, (1 << 32) - 65536)
        got = [0]
        def cb2(meta, o, entries, err):
            nonlocal changed
            got[0] = sum(entries[i] for i in range(0, len(entries), 2))
            # HOLE alone: unchanged; data or ZERO: changed
            changed += sum(entries[i] for i in range(0, len(entries), 2)
                           if not entries[i + 1] & 1)
            return 0
        h.block_status(ln, off, cb2)
        off += got[0]
    h.shutdown()
    return time.monotonic() - t0, changed

p, t_start0 = start()
rss0 = rss(p)
h = nbd.NBD(); h.connect_unix(sock)
disk = h.get_size()
region = (write_mb << 20) // nckpt // 65536 * 65536
stride = disk // nckpt // 65536 * 65536
creates = []
for i in range(nckpt):
    dt, _ = cmd("@cbt:create/C%d" % (i + 1))
    creates.append(dt)
    off = i * stride; left = region
    while left:
        n = min(left, 32 << 20)
        h.zero(n, off); off += n; left -= n
h.flush(); h.shutdown()
# The machine may be shared: the best of a few tries.
t_list = min(cmd("@cbt:list")[0] for _ in range(5))
t_map = min(mapread("@cbt/C1")[0] for _ in range(3))
t_map1 = min(mapread("@cbt:diff/C5/C6")[0] for _ in range(3))
stop(p)
p, t_restart = start()
rss1 = rss(p)
t_del, _ = cmd("@cbt:delete/C%d" % (nckpt // 2))
stop(p)
du = int(subprocess.check_output(["du", "-sk", cbtdir]).split()[0])
ms = lambda x: "%.1f" % (x * 1000)
print("%-5s %8s %8d %9s %8s %8s %9s %9s %9s %8d %8s %10d" % (
    size, ms(t_start0), rss0, ms(statistics.median(creates)),
    ms(max(creates)), ms(t_list), ms(t_map), ms(t_map1), ms(t_restart),
    rss1, ms(t_del), du), end="")
sys.stdout.flush()
EOF
    if [ "$QCOW2" = 1 ]; then
        q=$work/q.qcow2
        rm -f "$q"
        qemu-img create -q -f qcow2 "$q" "$size"
        $PY - "$q" "$size" "$NCKPT" "$WRITE_MB" <<'EOF'
import subprocess, sys, json
q, size, nckpt, write_mb = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
disk = json.loads(subprocess.check_output(
    ["qemu-img", "info", "--output=json", q]))["virtual-size"]
region = (write_mb << 20) // nckpt // 65536 * 65536
stride = disk // nckpt // 65536 * 65536
for i in range(nckpt):
    if i:
        subprocess.check_call(["qemu-img", "bitmap", "--disable", q,
                               "C%d" % i])
    subprocess.check_call(["qemu-img", "bitmap", "--add", q,
                           "C%d" % (i + 1)])
    subprocess.check_call(["qemu-io", "-f", "qcow2", "-c",
                           "write -z %d %d" % (i * stride, region), q],
                          stdout=subprocess.DEVNULL)
m = json.loads(subprocess.check_output(
    ["qemu-img", "measure", "--output=json", "-O", "qcow2", q]))
# The same image and writes without bitmaps: the difference in du is
# what qcow2 keeps for its bitmaps.
q2 = q + ".nobm"
subprocess.check_call(["qemu-img", "create", "-q", "-f", "qcow2", q2, size])
for i in range(nckpt):
    subprocess.check_call(["qemu-io", "-f", "qcow2", "-c",
                           "write -z %d %d" % (i * stride, region), q2],
                          stdout=subprocess.DEVNULL)
du = lambda f: int(subprocess.check_output(["du", "-sk", f]).split()[0])
print(" %10d %10d %10d" % (m.get("bitmaps", -1), du(q), du(q) - du(q2)),
      end="")
import os
os.unlink(q2)
EOF
        echo
    else
        printf ' %10s %10s %10s\n' - - -
    fi
done
